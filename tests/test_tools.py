"""The analysis scripts in tools/ whose figures the README quotes."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from extraction_misses import accuracy_by_reference_kind, accuracy_by_support, reference_kind  # noqa: E402
from reference_wordings import wording_predictability  # noqa: E402


def test_extraction_misses_counts_hits_by_how_the_reference_is_worded():
    text = "Lung adenocarcinoma with an EGFR exon 19 deletion; started osimertinib."
    example = SimpleNamespace(input=text, target={"cancer_type": "lung adenocarcinoma", "stage": None,
                                                  "gene_mutation": "EGFR exon 19 deletion",
                                                  "treatment": "targeted therapy (osimertinib)"})
    assert reference_kind("Lung Adenocarcinoma", text) == "as in the text"
    assert reference_kind("targeted therapy (osimertinib)", text) == "paraphrased"
    assert reference_kind("not mentioned", text) == "null"

    predicted = {"fields": {"cancer_type": "lung adenocarcinoma", "stage": "IV",
                            "gene_mutation": "EGFR", "treatment": "Targeted therapy (osimertinib)."}}
    fields = ["cancer_type", "stage", "gene_mutation", "treatment"]
    assert accuracy_by_reference_kind(fields, [predicted], [example]) == {
        "as in the text": (1, 2), "null": (0, 1), "paraphrased": (1, 1)}
    # the same predictions by the app's column: cancer_type (right) and gene_mutation (wrong) have
    # every word in the text, "IV" (wrong) none, the treatment (right) some ("targeted therapy" is not)
    assert accuracy_by_support(fields, [predicted], [example]) == {"all": (1, 2), "none": (0, 1), "some": (1, 1)}


def test_wording_predictability_finds_a_wording_cue_in_the_narrative_and_none_in_noise():
    def narratives(count: int, cue: bool, seed: int):
        rng = random.Random(seed)
        out = []
        for i in range(count):
            report = rng.random() < 1 / 3  # a third of the notes are "Report:"s
            text = ("Report: " if report else "Clinic note. ") + f"Patient {i} with cutaneous melanoma, stage IV."
            rare = report if cue else rng.random() < 1 / 3
            out.append(SimpleNamespace(input=text, target={
                "cancer_type": "melanoma (cutaneous)" if rare else "cutaneous melanoma"}))
        return out

    # the wording follows the note's template: a classifier reads it, unlike the most common wording
    n, majority, classifier = wording_predictability(narratives(90, True, 1), narratives(30, True, 2),
                                                     "cancer_type", "cutaneous melanoma")
    assert n == 30 and classifier == 1.0 and majority < 0.8
    # the wording is drawn apart from the text: nothing to read, no better than the most common one
    n, majority, classifier = wording_predictability(narratives(90, False, 1), narratives(30, False, 2),
                                                     "cancer_type", "cutaneous melanoma")
    assert n == 30 and classifier <= majority + 0.1
