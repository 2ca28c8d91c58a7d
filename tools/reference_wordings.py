"""How consistently do the oncology references word the same finding? (analysis, not part of the package)

For each phrase given, takes the training narratives that contain it and counts the reference
values of one field among them (after the metric's normalisation). When one narrative phrase maps to
several reference wordings, exact match on that field has a ceiling below 1.0: a model that gives one
wording per phrase scores at most the share of the most common wording on those narratives.

Usage: ``python tools/reference_wordings.py [--field cancer_type] "cutaneous melanoma" "invasive ductal carcinoma"``
(the data from the spec's ``local_path``, or ``--data FILE``).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.catalog import get_spec, load_catalog  # noqa: E402
from training.data import load_splits  # noqa: E402
from training.metrics.oncology_fields import normalise  # noqa: E402


def wordings(train, field: str, phrase: str) -> Counter:
    """Normalised reference values of ``field`` over the narratives that contain ``phrase``."""
    return Counter(normalise(ex.target.get(field)) for ex in train if phrase.lower() in ex.input.lower())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phrases", nargs="+")
    parser.add_argument("--adapter", default="oncology")
    parser.add_argument("--field", default="cancer_type")
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    spec = get_spec(load_catalog(), args.adapter)
    train = list(load_splits(spec, path=args.data).train)
    for phrase in args.phrases:
        counts = wordings(train, args.field, phrase)
        total = sum(counts.values())
        if not total:
            print(f"{phrase!r}: in no training narrative")
            continue
        top = counts.most_common(1)[0][1]
        shown = ", ".join(f"{value!r} {n}" for value, n in counts.most_common(5))
        print(f"{phrase!r}: {total} narratives, {len(counts)} wordings of {args.field}; most common "
              f"{top / total:.0%}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
