"""How often does the app's ⊘ mark (a value the text says is absent) fire, and when is it right?
(analysis, not part of the package)

The mark is ``adapters.fields.parts_the_text_negates``. Three questions:
- On the references (true findings), how often does it fire where it should not? Every flag there
  is a false alarm, or a reference that copied a negated phrase:
      python tools/negations.py --references
  On 2026-12-01: 1 of 34,474 items ("liver" from "no measurable disease in the liver"; 34,595 items
  before a comma in brackets stopped splitting a value).
- On an adapter's predictions for the test split, how often does it fire, and how often is the
  flagged field wrong? Write the narratives and predict as ``tools/extraction_misses.py`` says, then:
      python tools/negations.py /tmp/pred.jsonl --test
  On 2026-12-01, with the shipped adapter (predictions made on the 2-core CPU in 9 min): no flag
  in 3,150 values. The synthetic narratives' negations are in its training data; it copies none.
- On notes of one's own, what does it flag? ``tools/negation_notes.jsonl`` holds eight hand-written
  notes full of negations, unlike the training data's:
      adapterlab predict oncology --input tools/negation_notes.jsonl --output /tmp/notes.jsonl
      python tools/negations.py /tmp/notes.jsonl
  On 2026-12-01 the shipped adapter copied two negated findings, both flagged ("Brain MRI
  negative" as the metastasis site brain, "without EGFR mutation" as the biomarker "EGFR
  mutation"), and nothing else was flagged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.catalog import get_spec, load_catalog  # noqa: E402
from adapters.field_match import SEPARATORS, normalise  # noqa: E402
from adapters.fields import parts_the_text_negates, value_items  # noqa: E402
from training.data import load_splits  # noqa: E402


def flags_on_references(spec, data) -> int:
    splits = load_splits(spec, path=data)
    examples = [*splits.train, *splits.validation, *splits.test]
    flagged, items = [], 0
    for ex in examples:
        for field in spec.fields:
            value = ex.target.get(field)
            items += len(value_items(value))
            flagged += [(field, part, phrase) for part, phrase in parts_the_text_negates(value, ex.input)]
    print(f"references: {len(flagged)} of {items:,} items flagged ({len(flagged) / items:.3%}) "
          f"in {len(examples):,} narratives; by field {dict(Counter(f for f, _, _ in flagged))}")
    for field, part, phrase in flagged:
        print(f"  {field}: {part!r} <- {phrase!r}")
    return 0


def predicted_rows(predictions: Path) -> list[dict]:
    return [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]


def flags_on_predictions(spec, predictions: Path) -> int:
    rows = predicted_rows(predictions)
    flagged = [(n, field, part, phrase) for n, row in enumerate(rows, 1) for field in spec.fields
               for part, phrase in parts_the_text_negates(row["fields"].get(field), row["text"])]
    print(f"{len(flagged)} items flagged in {len(rows) * len(spec.fields):,} field values of {len(rows)} texts")
    for n, field, part, phrase in flagged:
        print(f"  line {n} {field}: {part!r} <- {phrase!r}")
    return 0


def flags_on_test_predictions(spec, data, predictions: Path) -> int:
    examples = list(load_splits(spec, path=data).test)
    rows = predicted_rows(predictions)
    if [r["text"] for r in rows] != [ex.input for ex in examples]:
        raise SystemExit(f"{predictions}: its lines are not the {spec.name} test narratives in order "
                         "(write them with tools/extraction_misses.py --write-inputs)")
    flagged = []
    for row, ex in zip(rows, examples):
        for field in spec.fields:
            predicted, reference = row["fields"].get(field), ex.target.get(field)
            for part, phrase in parts_the_text_negates(predicted, ex.input):
                right = normalise(predicted) == normalise(reference)
                in_reference = normalise(part) in {normalise(p) for p in SEPARATORS.split(str(reference or ""))}
                flagged.append((field, part, phrase, right, in_reference, reference))
    values = len(rows) * len(spec.fields)
    wrong = sum(not right for *_, right, _, _ in flagged)
    print(f"test split: {len(flagged)} items flagged in {values:,} field values; the flagged field is wrong "
          f"in {wrong}, the flagged item is in the reference in {sum(f[4] for f in flagged)}; "
          f"by field {dict(Counter(f[0] for f in flagged))}")
    for field, part, phrase, right, in_reference, reference in flagged:
        print(f"  {'right' if right else 'WRONG'} {field}: {part!r} <- {phrase!r} (reference {reference!r})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", nargs="?", type=Path, help="JSONL written by `adapterlab predict`")
    parser.add_argument("--references", action="store_true", help="flag the references of every split")
    parser.add_argument("--test", action="store_true", help="the predictions are of the test split: score the flags")
    parser.add_argument("--adapter", default="oncology")
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    spec = get_spec(load_catalog(), args.adapter)
    if args.references:
        return flags_on_references(spec, args.data)
    if not args.predictions:
        parser.error("give the predictions file, or --references")
    if args.test:
        return flags_on_test_predictions(spec, args.data, args.predictions)
    return flags_on_predictions(spec, args.predictions)


if __name__ == "__main__":
    sys.exit(main())
