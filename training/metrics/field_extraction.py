"""Field extraction metrics (the oncology adapter's, any extract adapter's) as an `evaluate` module: JSON-valid rate, exact match per field after
normalisation, and micro-averaged field accuracy. Loaded by path, so it works with no Hub access.

The comparison (normalisation, exact match, token F1) is ``adapters/field_match.py``'s, the one the
app's batch uploads with reference fields use too; its docstring says what is normalised.
An output that is not a JSON object (``valid`` false) misses every field, a null one too.
``micro_field_accuracy`` is the measure; ``micro_field_token_f1``, word overlap, is for reading
the errors.
"""

import json

import datasets
import evaluate

from adapters.field_match import field_hits, micro_field_accuracy, per_field_accuracy, token_f1


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
        hits = [field_hits(p, r, fields, valid=ok) for p, r, ok in zip(preds, refs, valid)]
        per_field_f1 = {f: sum(token_f1(p.get(f), r.get(f)) if ok else 0.0 for p, r, ok in zip(preds, refs, valid))
                        / max(1, len(refs)) for f in fields}
        return {"json_valid": sum(bool(v) for v in valid) / len(valid) if valid else 0.0,
                "micro_field_accuracy": micro_field_accuracy(hits, fields),
                "exact_match_all_fields": sum(all(row.values()) for row in hits) / max(1, len(refs)),
                "per_field": per_field_accuracy(hits, fields),
                "micro_field_token_f1": sum(per_field_f1.values()) / len(fields) if fields else 0.0,
                "per_field_token_f1": per_field_f1}
