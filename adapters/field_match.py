"""Whether an extracted field value matches a reference value: the one comparison that evaluation
(``training/metrics/field_extraction.py``) and the app's batch uploads with references (``chat_app``)
make, so that an upload's agreement and the adapter's measured accuracy mean the same thing.

Normalisation (applied to prediction and reference alike):
- null, "", "null", "none", "n/a", "na", "not mentioned", "not reported", "unknown" → null;
- Unicode NFKC, lower case, hyphens and dashes read as spaces ("ER-negative" equals "ER negative"),
  whitespace collapsed, trailing punctuation dropped;
- a value is a set of parts split on ";", ",", "/", "+", " and ", " with ", " plus ": parts are
  compared as a sorted set, so "HER2 amplification; ER positive" equals "ER positive, HER2 amplification".

An output that is not a JSON object misses every field, a null one too: the model extracted
nothing, and counting its empty fields as right would credit prose with the reference's nulls (a
base model that rambled had scored about the share of null references).

Exact match after normalisation is the measure (``field_hits``; micro field accuracy is the share of
hits over every field of every example). Beside it, a lenient one for reading the errors: token F1
(SQuAD-style, over the words of the normalised values; both null 1, one null 0). It credits
"cutaneous melanoma" against a reference "melanoma (cutaneous)" — the references themselves word
the same finding in several ways.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence

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


def field_hits(prediction: Mapping, reference: Mapping, fields: Sequence[str], valid: bool = True) -> dict[str, bool]:
    """Each field's exact match between a prediction and its reference, after ``normalise`` (a field
    missing from either is null); none when the output was not valid JSON (``valid`` false)."""
    return {f: bool(valid) and normalise(prediction.get(f)) == normalise(reference.get(f)) for f in fields}


def per_field_accuracy(hits: Sequence[Mapping[str, bool]], fields: Sequence[str]) -> dict[str, float]:
    """Each field's share of matches over the examples' ``field_hits`` (0.0 with no example)."""
    return {f: sum(row[f] for row in hits) / len(hits) if hits else 0.0 for f in fields}


def micro_field_accuracy(hits: Sequence[Mapping[str, bool]], fields: Sequence[str]) -> float:
    """The mean of the fields' accuracies (the evaluation's headline; every field of every example
    weighs the same)."""
    per_field = per_field_accuracy(hits, fields)
    return sum(per_field.values()) / len(fields) if fields else 0.0


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
