"""Two-label classification metrics as an `evaluate` module: accuracy, and precision, recall, F1 and
AUROC of the positive class (the spec's last label: spam). Loaded by path, so it works with no Hub
access."""

import datasets
import evaluate

_DESCRIPTION = """Binary classification metrics with label 1 (spam) as the positive class. `scores` are
P(label 1) per example; AUROC is computed from them (a perfect scorer gets 1.0, an inverted one 0.0)."""


class BinaryClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description="predictions, references: 0/1; scores: P(1)",
            features=datasets.Features({"predictions": datasets.Value("int32"),
                                        "references": datasets.Value("int32")}))

    def _compute(self, predictions, references, scores=None):
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, pos_label=1, average="binary", zero_division=0)
        result = {"accuracy": float(accuracy_score(references, predictions)),
                  "precision": float(precision), "recall": float(recall), "f1": float(f1)}
        if scores is not None:
            result["auroc"] = float(roc_auc_score(references, scores)) if len(set(references)) == 2 else None
        return result
