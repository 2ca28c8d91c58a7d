"""Field extraction metrics (the oncology adapter's, any extract adapter's) as an `evaluate` module: JSON-valid rate, exact match per field after
normalisation, and micro-averaged field accuracy. Loaded by path, so it works with no Hub access.

Normalisation (applied to prediction and reference alike):
- null, "", "null", "none", "n/a", "na", "not mentioned", "not reported", "unknown" → null;
- Unicode NFKC, lower case, hyphens and dashes read as spaces ("ER-negative" equals "ER negative"),
  whitespace collapsed, trailing punctuation dropped;
- a value is a set of parts split on ";", ",", "/", "+", " and ", " with ", " plus ": parts are
  compared as a sorted set, so "HER2 amplification; ER positive" equals "ER positive, HER2 amplification".

An output that is not a JSON object (``valid`` false) misses every field, a null one too: the model
extracted nothing, and counting its empty fields as right would credit prose with the reference's
nulls (a base model that rambles had scored about the share of null references).

Exact match is the measure (``micro_field_accuracy``). Beside it, a lenient one for reading the
errors: token F1 per field (SQuAD-style, over the words of the normalised values; both null 1, one
null 0), micro-averaged as ``micro_field_token_f1``. It credits "cutaneous melanoma" against a
reference "melanoma (cutaneous)" — the references themselves word the same finding in several ways.
"""

import json
import re
import unicodedata
from collections import Counter

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


def token_f1(prediction, reference) -> float:
    """Overlap of the words of two normalised values: 1.0 for equal ones, 0.0 for disjoint ones."""
    pred, ref = normalise(prediction), normalise(reference)
    if pred is None or ref is None:
        return float(pred == ref)
    pred_words, ref_words = Counter(re.findall(r"\w+", pred)), Counter(re.findall(r"\w+", ref))
    common = sum((pred_words & ref_words).values())
    if not common:
        return 0.0
    precision, recall = common / sum(pred_words.values()), common / sum(ref_words.values())
    return 2 * precision * recall / (precision + recall)


class FieldExtraction(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="",
            inputs_description="predictions, references: JSON strings of field dicts; valid: per-example flags",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, fields, valid=None):
        preds = [json.loads(p) for p in predictions]
        refs = [json.loads(r) for r in references]
        valid = valid if valid is not None else [True] * len(preds)
        hits = {f: [bool(ok) and normalise(p.get(f)) == normalise(r.get(f)) for p, r, ok in zip(preds, refs, valid)]
                for f in fields}
        per_field = {f: sum(h) / len(h) if h else 0.0 for f, h in hits.items()}
        per_field_f1 = {f: sum(token_f1(p.get(f), r.get(f)) if ok else 0.0 for p, r, ok in zip(preds, refs, valid))
                        / max(1, len(refs)) for f in fields}
        return {"json_valid": sum(bool(v) for v in valid) / len(valid) if valid else 0.0,
                "micro_field_accuracy": sum(per_field.values()) / len(fields) if fields else 0.0,
                "exact_match_all_fields": sum(all(row) for row in zip(*hits.values())) / max(1, len(refs)),
                "per_field": per_field,
                "micro_field_token_f1": sum(per_field_f1.values()) / len(fields) if fields else 0.0,
                "per_field_token_f1": per_field_f1}
