"""Classification metrics for three labels or more as an `evaluate` module: accuracy, and precision,
recall and F1 macro-averaged over the labels (each label counts the same, however rare), with F1 per
label. Loaded by path, so it works with no Hub access. Two-label adapters use binary_classification."""

import datasets
import evaluate

_DESCRIPTION = """Multi-class classification. `predictions` and `references` are label indices in
0..num_labels-1; macro averages include every label, also one never predicted (its F1 is 0)."""


class MulticlassClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description="predictions, references: label indices",
            features=datasets.Features({"predictions": datasets.Value("int32"),
                                        "references": datasets.Value("int32")}))

    def _compute(self, predictions, references, num_labels):
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support

        labels = list(range(num_labels))
        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, labels=labels, average="macro", zero_division=0)
        _, _, per_label, _ = precision_recall_fscore_support(
            references, predictions, labels=labels, average=None, zero_division=0)
        return {"accuracy": float(accuracy_score(references, predictions)), "macro_precision": float(precision),
                "macro_recall": float(recall), "macro_f1": float(f1), "f1_per_label": [float(x) for x in per_label]}
