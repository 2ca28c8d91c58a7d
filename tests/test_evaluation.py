"""Evaluation of generate and extract adapters with a tiny random base: every variant answers the
same test examples through the runtime and gets the task's metrics (classify: test_training.py)."""

import math

from test_cli import limit_generation
from test_data import FIELDS, medquad_csv, oncology_line
from test_training import write_sms_collection

from adapters import Runtime
from adapters.runtime import Classification
from adapters.catalog import load_catalog
from adapters.fields import parse_fields
from adapters.spec import TASK_METRICS
from training.data import load_splits
from training.evaluate import _with_progress, choose_few_shot, evaluate_adapter, few_shot_pairs, negated_value_rate


def oncology_jsonl(path, n=40):
    stages = ["II", "III", "IV"]
    path.write_text("\n".join(oncology_line(f"Patient {i}: melanoma, stage {stages[i % 3]}.", cancer_type="melanoma",
                                            stage=stages[i % 3]) for i in range(n)) + "\n")
    return path


def test_extract_evaluation_reports_exact_match_and_token_f1_per_variant(catalog, tiny_base, tmp_path):
    limit_generation(catalog, "oncology", 12)
    spec = load_catalog(catalog)["oncology"]
    splits = load_splits(spec, path=oncology_jsonl(tmp_path / "onc.jsonl"))
    runtime = Runtime.local(catalog, base=str(tiny_base), only=["oncology"], progress=False)

    report = evaluate_adapter(runtime, spec, splits, batch_size=2, out_dir=tmp_path / "out", progress=False)

    assert report["test_examples"] == len(splits.test) > 2
    assert report["variants"]["fine_tuned"] == {"skipped": "no trained weights"}
    for variant in ("base", "few_shot"):
        metrics = report["variants"][variant]
        assert set(TASK_METRICS["extract"]) <= set(metrics)  # every number the model card shows
        assert set(metrics["per_field"]) == set(FIELDS) == set(metrics["per_field_token_f1"])
        assert 0.0 <= metrics["micro_field_accuracy"] <= metrics["micro_field_token_f1"] <= 1.0
    assert (tmp_path / "out" / "fields.png").stat().st_size > 0
    chosen = report["few_shot"]  # the best of five draws by micro field accuracy on validation
    assert chosen["draws"] == 5 and chosen["validation_examples"] == len(splits.validation) > 0
    assert chosen["criterion"] == "micro field accuracy on the validation split"
    scores = [d["score"] for d in chosen["scores"]]
    assert chosen["seed"] == chosen["scores"][scores.index(max(scores))]["seed"]
    assert all(d["score"] == d["micro_field_accuracy"] for d in chosen["scores"])


def test_the_negated_value_rate_counts_values_the_text_rules_out_among_the_values_extracted():
    """The card's *negated_value_rate*: the app's ⊘ over the test split. Nulls and invalid outputs
    hold no value; a value with one negated item counts once."""
    fields = ["biomarker", "metastasis_site", "treatment"]
    texts = ["PD-L1 80%, no EGFR or ALK alterations. Brain MRI negative. Pembrolizumab.",
             "Liver metastases. Pembrolizumab.", "No liver metastases."]
    outputs = [parse_fields('{"biomarker": "PD-L1 80%; EGFR/ALK alterations", "metastasis_site": "brain", '
                            '"treatment": "pembrolizumab"}', fields),
               parse_fields('{"metastasis_site": "liver", "treatment": "pembrolizumab", "biomarker": null}', fields),
               parse_fields("liver", fields)]  # not JSON: no values, whatever its text says
    assert negated_value_rate(outputs, texts) == 2 / 5
    assert negated_value_rate(outputs[1:], texts[1:]) == 0.0
    assert negated_value_rate([], []) == 0.0


def test_a_generators_few_shot_examples_are_the_draw_with_the_best_validation_rouge(catalog, tmp_path):
    spec = load_catalog(catalog)["medquad"]
    rows = [(f"What are the symptoms of disease {i} ?", f"Disease {i} causes fever and cough.", f"disease {i}")
            for i in range(60)]
    (tmp_path / "medquad.csv").write_text(medquad_csv(rows))
    splits = load_splits(spec, path=tmp_path / "medquad.csv")
    truth = {ex.input: ex.target for ex in splits.validation}
    good_seed = spec.training.seed + 2
    good = few_shot_pairs(spec, splits.train, 2, good_seed)
    asked = []

    class FewShotSensitive:  # the reference with the third draw's examples, an unrelated answer with others
        def answer(self, adapter, questions, *, base, examples, batch_size):
            assert base and adapter == "medquad"
            asked.append(len(questions))
            return [truth[q] if list(examples) == good else "Unrelated words entirely." for q in questions]

    shots, record = choose_few_shot(FewShotSensitive(), spec, splits)

    assert shots == good and record["seed"] == good_seed
    assert record["criterion"] == "ROUGE-L on the validation split"
    assert record["scores"][2]["rougeL"] == 1.0 > max(d["rougeL"] for i, d in enumerate(record["scores"]) if i != 2)
    # a generation per validation question and draw: at most the first 50 are scored
    assert record["validation_examples"] == min(50, len(splits.validation)) and sum(asked) == 5 * min(50, len(truth))


def test_generate_evaluation_reports_overlap_bertscore_and_perplexity(catalog, tiny_base, tmp_path):
    limit_generation(catalog, "medquad", 6)
    spec = load_catalog(catalog)["medquad"]
    rows = [(f"What are the symptoms of disease {i} ?", f"Disease {i} causes fever.", f"disease {i}") for i in range(30)]
    (tmp_path / "medquad.csv").write_text(medquad_csv(rows))
    splits = load_splits(spec, path=tmp_path / "medquad.csv")
    runtime = Runtime.local(catalog, base=str(tiny_base), only=["medquad"], progress=False)

    report = evaluate_adapter(runtime, spec, splits, limit=3, variants=("base",), batch_size=2, progress=False)

    base = report["variants"]["base"]
    assert report["test_examples"] == 3
    assert set(TASK_METRICS["generate"]) <= set(base)  # every number the model card shows
    assert 0.0 <= base["rougeL"] <= 1.0 and base["bertscore_encoder"]
    assert math.isfinite(base["perplexity"])


def test_evaluation_runs_in_parts_of_whole_batches_and_keeps_the_order():
    calls = []

    def call(items, batch_size):
        calls.append((len(items), batch_size))
        return [item * 10 for item in items]

    in_batches = _with_progress("test", batch_size=3, progress=False)
    assert in_batches(call, list(range(29))) == [i * 10 for i in range(29)]
    assert calls == [(12, 3), (12, 3), (5, 3)]  # each part a multiple of the batch, but the last


def test_a_classifiers_few_shot_examples_are_the_draw_with_the_best_validation_f1(catalog, tmp_path):
    spec = load_catalog(catalog)["spam"]
    splits = load_splits(spec, path=write_sms_collection(tmp_path / "SMSSpamCollection"))
    truth = {ex.input: ex.target for ex in splits.validation}
    good_seed = spec.training.seed + 3
    good = few_shot_pairs(spec, splits.train, 4, good_seed)

    class FewShotSensitive:  # right with the fourth draw's examples, "spam" for everything with any other
        def classify(self, adapter, texts, *, base, examples, batch_size):
            assert base and adapter == "spam"
            labels = [truth[t] if list(examples) == good else "spam" for t in texts]
            return [Classification(label, {"ham": float(label == "ham"), "spam": float(label == "spam")})
                    for label in labels]

    shots, record = choose_few_shot(FewShotSensitive(), spec, splits)

    assert shots == good and record["seed"] == good_seed
    assert [d["seed"] for d in record["scores"]] == [spec.training.seed + i for i in range(5)]
    assert record["scores"][3]["f1"] == 1.0 > max(d["f1"] for i, d in enumerate(record["scores"]) if i != 3)
    assert record["validation_examples"] == len(splits.validation)


def test_three_labels_are_scored_as_three_classes_not_the_last_against_the_rest(catalog):
    import dataclasses

    from training.data import Example
    from training.evaluate import _classify, plot_results

    spec = dataclasses.replace(load_catalog(catalog)["spam"], labels=("positive", "negative", "neutral"),
                               decision="argmax", metrics=())
    test = [Example(text, label, text) for text, label in
            [("good", "positive"), ("great", "positive"), ("bad", "negative"), ("meh", "neutral")]]
    said = {"good": "positive", "great": "negative", "bad": "negative", "meh": "neutral"}

    class Runtime:
        def classify(self, adapter, texts, *, base, examples, batch_size):
            return [Classification(said[t], {label: float(label == said[t]) for label in spec.labels}) for t in texts]

    result, _ = _classify(Runtime(), spec, test, {"base": True, "examples": ()}, _with_progress("t", 2, False))

    assert result["accuracy"] == 0.75
    assert result["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]  # rows: reference, columns: predicted
    assert result["f1_per_label"] == {"positive": 2 / 3, "negative": 2 / 3, "neutral": 1.0}
    assert math.isclose(result["macro_f1"], (2 / 3 + 2 / 3 + 1) / 3)
    assert spec.headline_metrics == TASK_METRICS["classify_multi"] and set(spec.headline_metrics) <= set(result)
    assert "f1" not in result and "auroc" not in result  # no binary score of one label against the rest
    report = {"variants": {"base": result}, "test_examples": 4}
    plot_results(spec, report, {"base": []}, test, catalog)  # a 3 x 3 confusion matrix
    assert (catalog / "confusion.png").stat().st_size > 0
