"""The analysis scripts in tools/ whose figures the README quotes."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from extraction_misses import accuracy_by_reference_kind, accuracy_by_support, reference_kind  # noqa: E402


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
