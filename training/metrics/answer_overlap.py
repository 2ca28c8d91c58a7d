"""Answer-quality metrics for generated answers (the MedQuAD adapter's, any generate adapter's) as an
`evaluate` module: ROUGE-1/2/L (rouge-score),
corpus BLEU (sacrebleu) and the length ratio of predictions to references. BERTScore and perplexity need
models and are computed in training/evaluate.py. Loaded by path, so it works with no Hub access."""

import datasets
import evaluate


class AnswerOverlap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: strings",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        import sacrebleu
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
        for p, r in zip(predictions, references):
            for key, score in scorer.score(r, p).items():
                sums[key] += score.fmeasure
        n = max(1, len(predictions))
        bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)])
        pred_words = sum(len(p.split()) for p in predictions)
        ref_words = sum(len(r.split()) for r in references)
        return {**{k: v / n for k, v in sums.items()}, "bleu": bleu.score / 100,
                "length_ratio": pred_words / max(1, ref_words)}
