"""How consistently do the oncology references word the same finding? (analysis, not part of the package)

For each phrase given, takes the training narratives that contain it and counts the reference
values of one field among them (after the metric's normalisation). When one narrative phrase maps to
several reference wordings, exact match on that field has a ceiling below 1.0: a model that gives one
wording per phrase scores at most the share of the most common wording on those narratives.

Could the wording still be told from other cues in the narrative (its template, its other words)?
``--predict`` fits a text classifier (TF-IDF of words and characters, logistic regression) on the
training narratives with the phrase, to name the reference wording, and scores it on the validation
and test narratives with the phrase, beside always answering the most common training wording. A
classifier no better than that says the wording is not in the text for any model to read.

Usage: ``python tools/reference_wordings.py [--field cancer_type] [--predict] "cutaneous melanoma" "invasive ductal carcinoma"``
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
from adapters.field_match import normalise  # noqa: E402


def wordings(train, field: str, phrase: str) -> Counter:
    """Normalised reference values of ``field`` over the narratives that contain ``phrase``."""
    return Counter(normalise(ex.target.get(field)) for ex in train if phrase.lower() in ex.input.lower())


def wording_predictability(train, held_out, field: str, phrase: str) -> tuple[int, float, float]:
    """(held-out narratives with ``phrase``, exact-match accuracy of always giving the most common
    training wording, that of a text classifier trained on the training narratives) for ``field``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    def pairs(examples):
        return [(ex.input, normalise(ex.target.get(field))) for ex in examples if phrase.lower() in ex.input.lower()]

    seen, unseen = pairs(train), pairs(held_out)
    if not seen or not unseen:
        return len(unseen), float("nan"), float("nan")
    wordings_seen = [w for _, w in seen]
    majority = Counter(wordings_seen).most_common(1)[0][0]
    majority_accuracy = sum(w == majority for _, w in unseen) / len(unseen)
    if len(set(wordings_seen)) == 1:
        return len(unseen), majority_accuracy, majority_accuracy
    classifier = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 3), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        LogisticRegression(C=10, max_iter=3000))
    classifier.fit([text for text, _ in seen], wordings_seen)
    predicted = classifier.predict([text for text, _ in unseen])
    return len(unseen), majority_accuracy, sum(p == w for p, (_, w) in zip(predicted, unseen)) / len(unseen)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phrases", nargs="+")
    parser.add_argument("--adapter", default="oncology")
    parser.add_argument("--field", default="cancer_type")
    parser.add_argument("--data", default=None)
    parser.add_argument("--predict", action="store_true",
                        help="also try to tell the wording from the narrative with a text classifier")
    args = parser.parse_args(argv)
    spec = get_spec(load_catalog(), args.adapter)
    splits = load_splits(spec, path=args.data)
    train = list(splits.train)
    held_out = [*splits.validation, *splits.test]
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
        if args.predict:
            n, majority, classifier = wording_predictability(train, held_out, args.field, phrase)
            print(f"  on the {n} validation and test narratives with it: the most common training wording "
                  f"{majority:.1%} exact, a text classifier {classifier:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
