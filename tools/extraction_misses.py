"""Where do an extraction adapter's fields miss on the test split? (analysis, not part of the package)

Reads what ``adapterlab predict`` wrote for the test narratives and sets each field beside its
reference. Per field it prints the exact-match accuracy, the same metric normalisation the evaluation
uses, and the misses counted by whether the reference's parts appear word for word in the narrative.
A reference paraphrased away from the text is one no copying model can match. Then it prints a few
misses to read.

Usage, for the oncology test split (7–13 min on the 2-core CPU):
    python tools/extraction_misses.py --write-inputs /tmp/test.jsonl
    adapterlab predict oncology --input /tmp/test.jsonl --output /tmp/pred.jsonl --batch-size 16
    python tools/extraction_misses.py /tmp/pred.jsonl [--field treatment] [--show 8]
``--split train --limit 150`` (with both steps) asks how well the adapter reproduces narratives it
trained on: 0.830 micro accuracy on 2026-11-29, 0.832 for the adapter retrained that day (as in the
text 0.928, null 0.971, paraphrased 203 / 332 = 0.611), so it learned each finding's usual wording.
By how the reference is worded, all fields of the test split, with the oncology adapter retrained on
2026-11-29 (predictions made on the 2-core CPU in 13 min): as in the text 1663 / 1836 = 0.906, null
323 / 336 = 0.961, paraphrased 502 / 978 = 0.513. Even with every other value right, 0.90 micro
accuracy would need 0.678 on the paraphrased ones. Micro accuracy 0.790, as its evaluation gave.
By the app's "in your text" column (the predicted value's words in the narrative), the same
predictions (made again on 2026-11-29, 9.5 min): every word 0.814 right (2,134 values), some words
0.463 (374), no word 0.833 (305), null 0.958 (337): the column says where to look, not whether to trust.
Treatment misses 227 of 450; in 153 of them the reference's parts are not in the narrative. The misses
mix wordings ("wide local excision (surgery)") with real errors (ER-negative read as ER positive).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.catalog import get_spec, load_catalog  # noqa: E402
from adapters.fields import support_in_text  # noqa: E402
from training.data import load_splits  # noqa: E402
from adapters.field_match import SEPARATORS, normalise  # noqa: E402


def in_text(value, text: str) -> bool:
    """Whether every part of ``value`` appears word for word (ignoring case) in ``text``: phrases,
    in order. Stricter than the app's ``support_in_text`` (words in any order), which asks another
    question: a reordered reference ("melanoma (cutaneous)") is one no copying model can match."""
    parts = [p.strip(" .") for p in SEPARATORS.split(str(value).lower()) if p.strip(" .")]
    return all(part in text.lower() for part in parts)


def miss_kind(predicted, reference, text: str) -> str:
    if normalise(reference) is None:
        return "reference empty"
    if normalise(predicted) is None:
        return "prediction empty"
    return (f"reference {'in' if in_text(reference, text) else 'not in'} text, "
            f"prediction {'in' if in_text(predicted, text) else 'not in'} text")


def reference_kind(reference, text: str) -> str:
    """"null", "as in the text" or "paraphrased": how a reference value relates to its narrative."""
    if normalise(reference) is None:
        return "null"
    return "as in the text" if in_text(reference, text) else "paraphrased"


def accuracy_by(kind_of, fields, rows, examples) -> dict[str, tuple[int, int]]:
    """(hits, values) over all ``fields`` for each ``kind_of(predicted, reference, text)``."""
    counts: dict[str, list[int]] = {}
    for field in fields:
        for row, ex in zip(rows, examples):
            predicted, reference = row["fields"].get(field), ex.target.get(field)
            tally = counts.setdefault(kind_of(predicted, reference, ex.input), [0, 0])
            tally[0] += normalise(predicted) == normalise(reference)
            tally[1] += 1
    return {kind: (hits, total) for kind, (hits, total) in counts.items()}


def accuracy_by_reference_kind(fields, rows, examples) -> dict[str, tuple[int, int]]:
    """(hits, values) for each kind of reference (``reference_kind``)."""
    return accuracy_by(lambda predicted, reference, text: reference_kind(reference, text), fields, rows, examples)


def accuracy_by_support(fields, rows, examples) -> dict[str, tuple[int, int]]:
    """(hits, values) for each support level of the *prediction* in its narrative, as the app's "in
    your text" column shows it (``adapters.fields.support_in_text``; "null" for none)."""
    return accuracy_by(lambda predicted, reference, text: support_in_text(predicted, text) or "null",
                       fields, rows, examples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", nargs="?", help="JSONL written by `adapterlab predict`")
    parser.add_argument("--adapter", default="oncology")
    parser.add_argument("--data", default=None)
    parser.add_argument("--write-inputs", metavar="FILE", help="write the narratives for predict, and stop")
    parser.add_argument("--field", action="append", help="fields whose misses to list (default: all)")
    parser.add_argument("--show", type=int, default=5, help="misses printed per field")
    parser.add_argument("--split", choices=["test", "validation", "train"], default="test",
                        help="which split's narratives (train: does the adapter reproduce what it saw?)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N narratives of the split")
    args = parser.parse_args(argv)
    spec = get_spec(load_catalog(), args.adapter)
    examples = list(getattr(load_splits(spec, path=args.data), args.split))[:args.limit]
    if args.write_inputs:
        Path(args.write_inputs).write_text("".join(json.dumps({"text": ex.input}) + "\n" for ex in examples))
        print(f"wrote {len(examples)} {args.split} narratives to {args.write_inputs}")
        return 0
    if not args.predictions:
        parser.error("give the predictions file, or --write-inputs FILE")
    rows = [json.loads(line) for line in Path(args.predictions).read_text().splitlines() if line.strip()]
    if [r["text"] for r in rows] != [ex.input for ex in examples]:
        raise SystemExit(f"{args.predictions}: its lines are not the {args.adapter} {args.split} narratives in order "
                         "(write them with --write-inputs)")
    fields = list(spec.fields)
    accuracy = {}
    for field in fields:
        misses = [(r["fields"].get(field), ex.target.get(field), ex.input) for r, ex in zip(rows, examples)
                  if normalise(r["fields"].get(field)) != normalise(ex.target.get(field))]
        accuracy[field] = 1 - len(misses) / len(examples)
        if args.field and field not in args.field:
            continue
        kinds = Counter(miss_kind(p, ref, text) for p, ref, text in misses)
        print(f"\n{field}: accuracy {accuracy[field]:.3f}, {len(misses)} misses")
        for kind, count in kinds.most_common():
            print(f"  {count:4d}  {kind}")
        for predicted, reference, _ in misses[:args.show]:
            print(f"    predicted {predicted!r}\n    reference {reference!r}")
    print("\nall fields, by how the reference is worded:")
    for kind, (hits, total) in sorted(accuracy_by_reference_kind(fields, rows, examples).items()):
        print(f"  {kind:15s} {hits:5d} / {total:5d} = {hits / total:.3f}")
    print("\nall fields, by how many of the predicted value's words are in the narrative (the app's column):")
    for level, (hits, total) in sorted(accuracy_by_support(fields, rows, examples).items()):
        print(f"  {level:15s} {hits:5d} / {total:5d} = {hits / total:.3f}")
    print(f"\nmicro field accuracy {sum(accuracy.values()) / len(fields):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
