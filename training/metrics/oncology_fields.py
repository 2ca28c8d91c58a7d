"""Oncology extraction metrics as an `evaluate` module: JSON-valid rate, exact match per field after
normalisation, and micro-averaged field accuracy. Loaded by path, so it works with no Hub access.

Normalisation (applied to prediction and reference alike):
- null, "", "null", "none", "n/a", "na", "not mentioned", "not reported", "unknown" → null;
- Unicode NFKC, lower case, hyphens and dashes read as spaces ("ER-negative" equals "ER negative"),
  whitespace collapsed, trailing punctuation dropped;
- a value is a set of parts split on ";", ",", "/", "+", " and ", " with ", " plus ": parts are
  compared as a sorted set, so "HER2 amplification; ER positive" equals "ER positive, HER2 amplification".
"""

import json
import re
import unicodedata

import datasets
import evaluate

NULLS = {"", "null", "none", "n/a", "na", "not mentioned", "not reported", "unknown", "not specified"}
SEPARATORS = re.compile(r"\s*(?:;|,|/|\+|\band\b|\bwith\b|\bplus\b)\s*")


def normalise(value):
    """The comparable form of a field value: None or a canonical string."""
    if value is None:
        return None
    text = unicodedata.normalize("NFKC", str(value)).lower()
    text = re.sub(r"[-\u2010-\u2015]", " ", text)
    text = re.sub(r"\s+", " ", text).strip().strip(".;,: ")
    if text in NULLS:
        return None
    parts = sorted({p.strip(" .") for p in SEPARATORS.split(text) if p.strip(" .")})
    return " | ".join(parts) or None


class OncologyFields(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="",
            inputs_description="predictions, references: JSON strings of field dicts; valid: per-example flags",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, fields, valid=None):
        preds = [json.loads(p) for p in predictions]
        refs = [json.loads(r) for r in references]
        per_field = {}
        for f in fields:
            hits = [normalise(p.get(f)) == normalise(r.get(f)) for p, r in zip(preds, refs)]
            per_field[f] = sum(hits) / len(hits) if hits else 0.0
        total = len(refs) * len(fields)
        correct = sum(per_field[f] * len(refs) for f in fields)
        valid = valid if valid is not None else [True] * len(preds)
        return {"json_valid": sum(bool(v) for v in valid) / len(valid) if valid else 0.0,
                "micro_field_accuracy": correct / total if total else 0.0,
                "exact_match_all_fields": sum(all(normalise(p.get(f)) == normalise(r.get(f)) for f in fields)
                                              for p, r in zip(preds, refs)) / max(1, len(refs)),
                "per_field": per_field}
