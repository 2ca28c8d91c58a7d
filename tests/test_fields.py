"""parse_fields: whatever an extraction model writes, the result has exactly the spec's fields, in
the spec's order, each a string or None; repairs invent nothing and are always flagged."""

from __future__ import annotations

import json

import pytest

from adapters.fields import Extraction, parse_fields, parts_the_text_negates, support_in_text, value_items

FIELDS = ("cancer_type", "stage", "gene_mutation", "biomarker", "treatment", "response",
          "metastasis_site")
EXAMPLE = {"cancer_type": "melanoma", "stage": "IV", "gene_mutation": "BRAF V600E",
           "biomarker": None, "treatment": "nivolumab", "response": "partial response",
           "metastasis_site": "liver"}
CLEAN = json.dumps(EXAMPLE)


def parse(raw: str) -> Extraction:
    result = parse_fields(raw, FIELDS)
    # the invariants every result keeps, whatever the model wrote
    assert list(result.fields) == list(FIELDS)
    assert all(v is None or (isinstance(v, str) and v.strip() == v and v) for v in result.fields.values())
    assert result.raw == raw
    return result


def test_clean_json_is_valid_and_not_repaired():
    result = parse(CLEAN)
    assert result.valid and not result.repaired and result.error is None
    assert result.fields == EXAMPLE


def test_keys_in_another_order_come_back_in_spec_order_without_repair():
    result = parse(json.dumps(dict(reversed(list(EXAMPLE.items())))))
    assert not result.repaired
    assert list(result.fields) == list(FIELDS) and result.fields == EXAMPLE


def test_whitespace_around_clean_json_is_not_a_repair():
    result = parse(f"\n  {CLEAN}\n")
    assert result.valid and not result.repaired and result.fields == EXAMPLE


def test_all_null_object_is_valid_and_clean():
    result = parse(json.dumps({f: None for f in FIELDS}))
    assert result.valid and not result.repaired
    assert result.fields == {f: None for f in FIELDS}


@pytest.mark.parametrize("raw", [
    f"Here is the extraction:\n{CLEAN}\nLet me know if you need anything else.",
    f"```json\n{CLEAN}\n```",
    f"```\n{CLEAN}\n```",
    f"Sure!\n```json\n{CLEAN}\n```\nDone.",
])
def test_prose_and_code_fences_are_cut_and_flagged(raw):
    result = parse(raw)
    assert result.valid and result.repaired and result.error is None
    assert not result.closed  # a whole object with text around it: nothing was cut off
    assert result.fields == EXAMPLE


def test_object_cut_by_max_tokens_keeps_the_complete_values():
    cut = CLEAN[:CLEAN.index('"treatment"') + len('"treatment": "nivol')]
    result = parse(cut)
    assert result.valid and result.repaired and result.closed  # it ended inside the object
    assert {k: result.fields[k] for k in ("cancer_type", "stage", "gene_mutation", "biomarker")} == {
        "cancer_type": "melanoma", "stage": "IV", "gene_mutation": "BRAF V600E", "biomarker": None}
    assert result.fields["response"] is None and result.fields["metastasis_site"] is None


@pytest.mark.parametrize("cut_after", [
    '"treat',  # inside a key
    '"treatment"',  # right after a key
    '"treatment":',  # after the colon
    '"treatment": ',  # after the colon and a space
    '"nivolumab",',  # after a comma
    '"nivolumab"',  # after a complete value
])
def test_truncation_at_any_point_still_parses(cut_after):
    cut = CLEAN[:CLEAN.index(cut_after) + len(cut_after)]
    result = parse(cut)
    assert result.valid and result.repaired
    assert result.fields["cancer_type"] == "melanoma" and result.fields["gene_mutation"] == "BRAF V600E"
    assert result.fields["metastasis_site"] is None
    expected_treatment = "nivolumab" if "nivolumab" in cut_after else None
    assert result.fields["treatment"] == expected_treatment


@pytest.mark.parametrize("raw", [
    "",
    "   \n",
    "I could not find any cancer information.",
    "<|im_end|>ham spam null null",
    "[1, 2, 3]",
    json.dumps([EXAMPLE, EXAMPLE]),
    "42",
    "null",
    '"melanoma"',
    "{not json at all}",
])
def test_output_without_an_object_is_invalid_with_every_field_none(raw):
    result = parse(raw)
    assert not result.valid and not result.repaired
    assert result.fields == {f: None for f in FIELDS}
    assert result.error and "JSON object" in result.error


def test_a_single_object_wrapped_in_an_array_is_unwrapped_and_flagged():
    result = parse(json.dumps([EXAMPLE]))
    assert result.valid and result.repaired and result.fields == EXAMPLE


def test_missing_keys_become_none_and_are_flagged():
    result = parse(json.dumps({"cancer_type": "melanoma", "stage": "IV"}))
    assert result.valid and result.repaired
    assert result.fields == {**{f: None for f in FIELDS}, "cancer_type": "melanoma", "stage": "IV"}


def test_an_empty_object_is_valid_all_none_and_flagged():
    result = parse("{}")
    assert result.valid and result.repaired
    assert result.fields == {f: None for f in FIELDS}


def test_extra_keys_are_dropped_and_flagged():
    result = parse(json.dumps({**EXAMPLE, "patient_name": "Jane Doe", "age": 54}))
    assert result.valid and result.repaired
    assert result.fields == EXAMPLE
    assert "patient_name" not in result.fields and "age" not in result.fields


def test_list_values_are_joined_with_semicolons():
    result = parse(json.dumps({**EXAMPLE, "treatment": ["nivolumab", " ipilimumab ", "", None],
                               "metastasis_site": ["liver", "lung"]}))
    assert result.valid and result.repaired
    assert result.fields["treatment"] == "nivolumab; ipilimumab"
    assert result.fields["metastasis_site"] == "liver; lung"


def test_an_empty_list_is_none():
    result = parse(json.dumps({**EXAMPLE, "metastasis_site": []}))
    assert result.repaired and result.fields["metastasis_site"] is None


def test_numbers_and_booleans_become_strings():
    result = parse(json.dumps({**EXAMPLE, "stage": 4, "biomarker": 0.5, "response": True}))
    assert result.valid and result.repaired
    assert result.fields["stage"] == "4"
    assert result.fields["biomarker"] == "0.5"
    assert result.fields["response"] == "true"  # JSON's spelling, not Python's "True"


def test_a_nested_object_is_kept_as_json_text():
    result = parse(json.dumps({**EXAMPLE, "biomarker": {"PD-L1": "50%"}}))
    assert result.repaired
    assert json.loads(result.fields["biomarker"]) == {"PD-L1": "50%"}


@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_whitespace_only_strings_are_none(blank):
    result = parse(json.dumps({**EXAMPLE, "response": blank}))
    assert result.valid and result.repaired
    assert result.fields["response"] is None


def test_values_are_stripped_and_that_counts_as_a_repair():
    result = parse(json.dumps({**EXAMPLE, "cancer_type": "  melanoma\n"}))
    assert result.repaired and result.fields["cancer_type"] == "melanoma"


def test_non_ascii_values_survive_unchanged():
    result = parse(json.dumps({**EXAMPLE, "cancer_type": "carcinome épidermoïde"}, ensure_ascii=False))
    assert not result.repaired and result.fields["cancer_type"] == "carcinome épidermoïde"


def test_the_spec_decides_the_fields_and_their_order():
    result = parse_fields(CLEAN, ["stage", "cancer_type", "grade"])
    assert list(result.fields) == ["stage", "cancer_type", "grade"]
    assert result.fields == {"stage": "IV", "cancer_type": "melanoma", "grade": None}
    assert result.repaired  # "grade" was missing and five keys were dropped


def test_invalid_output_still_has_exactly_the_spec_fields():
    result = parse_fields("nonsense", ["b", "a"])
    assert list(result.fields) == ["b", "a"] and not result.valid


def test_parsing_never_raises_on_odd_text():
    for raw in ["{", "}", "{{{{", '{"a": "\\', "```json```", "```", '{"cancer_type": [', "\x00{}\x00"]:
        parse(raw)  # the invariants in parse() hold; no exception


def test_a_value_cut_mid_string_becomes_null_rather_than_a_wrong_value():
    result = parse_fields('{"cancer_type": "melanoma", "stage": "I', ["cancer_type", "stage"])
    assert result.valid and result.repaired
    assert result.fields == {"cancer_type": "melanoma", "stage": None}


NARRATIVE = ("70-year-old man with widely metastatic cutaneous melanoma. PD-L1 was 5% on IHC and NGS "
             "reported TMB-high; multiple hepatic lesions. Nivolumab plus ipilimumab. Ki-67 of 5.5%.")


@pytest.mark.parametrize("value, support", [
    ("melanoma (cutaneous)", "all"),  # word order and brackets do not matter
    ("PD-L1 5%; TMB-high", "all"),  # nor case, hyphens or separators
    ("nivolumab and ipilimumab", "all"),  # "and" need not be in the text
    ("Ki-67 5.5%", "all"),
    ("PD-L1 50%", "some"),  # 50% is not 5%
    ("brain and liver", "none"),  # inferred from "hepatic", or invented: either way, check it
    ("IV", "none"),  # inferred from "widely metastatic"
    (None, None),
    ("", None),
])
def test_support_in_text_says_how_many_words_of_a_value_the_text_holds(value, support):
    assert support_in_text(value, NARRATIVE) == support


@pytest.mark.parametrize("value, support", [
    ("II", "all"),  # written without a space before 期
    ("乳腺癌", "all"),
    ("他莫昔芬", "all"),
    ("III", "none"),  # "II" is in the text, "III" is not
    ("肺癌", "some"),  # 癌 is there, 肺 is not
])
def test_support_in_text_reads_chinese_and_japanese_character_by_character(value, support):
    assert support_in_text(value, "乳腺癌II期，雌激素受体阳性，使用他莫昔芬治疗。") == support


@pytest.mark.parametrize("value, text, support", [
    ("lung", "Lungs clear.", "all"),  # a walkthrough's note: "lung" had been marked ○, inferred or invented
    ("bone", "Multiple bones involved.", "all"),
    ("lymph node", "Enlarged lymph nodes.", "all"),
    ("liver, lung", "Mets to liver and lungs.", "all"),
    ("metastasis", "Liver metastases.", "none"),  # not a plural "s"
])
def test_support_in_text_reads_a_plural_as_its_singular(value, support, text):
    assert support_in_text(value, text) == support


@pytest.mark.parametrize("value, text, negated", [
    # a walkthrough's case: the negation lost, every word in the text
    ("PD-L1 80%; EGFR/ALK alterations", "PD-L1 80%, no EGFR or ALK alterations.",
     [("EGFR/ALK alterations", "no EGFR or ALK alterations")]),
    ("liver", "CT: no liver metastases; two lung nodules.", [("liver", "no liver metastases")]),
    ("BRAF", "BRAF testing was not performed prior to treatment.", [("BRAF", "BRAF testing was not performed")]),
    ("KRAS", "Colon cancer, KRAS wild-type.", [("KRAS", "KRAS wild-type")]),
    ("adjuvant immunotherapy", "No adjuvant immunotherapy was given.",
     [("adjuvant immunotherapy", "No adjuvant immunotherapy")]),
    ("HER2 amplified", "ER positive, HER2 not amplified by FISH.", [("HER2 amplified", "HER2 not amplified")]),
    # a list runs past its commas when it closes with "and"/"or"
    ("ROS1 alterations", "NGS negative for EGFR, ALK, and ROS1 alterations; KRAS G12C detected.",
     [("ROS1 alterations", "negative for EGFR, ALK, and ROS1 alterations")]),
    ("KRAS", "Colon adenocarcinoma. KRAS and NRAS wild-type.", [("KRAS", "KRAS and NRAS wild-type")]),
    ("brain", "Brain MRI negative for metastases.", [("brain", "Brain MRI negative for metastases")]),
    ("FGFR3 alterations", "FGFR3 alterations: none detected.", [("FGFR3 alterations", "FGFR3 alterations: none detected")]),
    ("del(17p)", "FISH: del(17p) not detected.", [("del(17p)", "del(17p) not detected")]),
    # an imaging study named by a body part, and a negative result: the body part is ruled out
    ("bone", "Bone scan: no osseous metastases.", [("bone", "Bone scan: no osseous metastases")]),
    ("brain", "MRI brain: negative.", [("brain", "MRI brain: negative")]),
    ("liver", "Liver ultrasound unremarkable.", [("liver", "Liver ultrasound unremarkable")]),
    ("para-aortic nodes", "Para-aortic nodes not enlarged.", [("para-aortic nodes", "Para-aortic nodes not enlarged")]),
    ("EGFR", "EGFR neg., ALK neg.", [("EGFR", "EGFR neg")]),
    ("EGFR mutation", "Adenocarcinoma w/o EGFR mutation.", [("EGFR mutation", "w/o EGFR mutation")]),
    ("brain", "MRI brain showed no evidence of metastatic disease.",
     [("brain", "MRI brain showed no evidence of metastatic disease")]),
    # a heading and its result
    ("ulceration", "Ulceration: absent.", [("ulceration", "Ulceration: absent")]),
    ("LVSI", "LVSI: none.", [("LVSI", "LVSI: none")]),
    ("liver", "Liver: no focal lesion.", [("liver", "Liver: no focal lesion")]),
    ("perineural invasion", "Perineural invasion: not identified.",
     [("perineural invasion", "Perineural invasion: not identified")]),
    # a phrase said once, negated, though another finding shares a word with it
    ("lymphovascular invasion", "Perineural invasion present; lymphovascular invasion absent.",
     [("lymphovascular invasion", "lymphovascular invasion absent")]),
    # a marker's minus sign, "non-amplified", a result and how it was found
    ("MUM1", "IHC: CD20+, CD10+, MUM1-.", [("MUM1", "MUM1-")]),
    ("ER", "ER-/PR-/HER2 3+.", [("ER", "ER-")]),
    ("HER2", "HER2 non-amplified on FISH.", [("HER2", "HER2 non-amplified")]),
    ("MRD", "MRD negative by flow at day 29.", [("MRD", "MRD negative")]),
    # "and" adding a last item
    ("BCL2", "MYC not detected; BCL2 and BCL6 rearrangements absent.",
     [("BCL2", "BCL2 and BCL6 rearrangements absent")]),
    ("BRCA2", "Germline testing negative for BRCA1 and BRCA2.", [("BRCA2", "negative for BRCA1 and BRCA2")]),
    ("lymph node", "No lymph nodes involved.", [("lymph node", "No lymph nodes involved")]),  # a plural
    ("EGFR mutation", "Molecular: EGFR mutation: negative. ALK: negative.", [("EGFR mutation", "EGFR mutation: negative")]),
])
def test_a_value_the_text_says_is_absent_is_found_with_the_words_that_say_so(value, text, negated):
    assert parts_the_text_negates(value, text) == negated


@pytest.mark.parametrize("value, text", [
    ("ER positive", "ER positive, PR negative, HER2 negative."),  # the negation is another finding's
    ("ER positive", "ER positive and PR negative."),
    ("KRAS wild-type", "KRAS wild-type."),  # the value itself says absent
    ("PR-", "ER positive, PR negative."),
    ("no evidence of disease", "Now no evidence of disease."),
    ("lumpectomy", "She underwent lumpectomy with negative margins."),  # "negative" describes the margins
    ("stable disease", "No new lesions \u2014 overall stable disease."),  # a dash ends the negation
    ("lung", "No interval growth of lung nodules."),  # "no growth" says the nodules are there
    ("liver", "No liver lesions at first; liver metastases by March."),  # said present once
    ("EGFR mutation", "No EGFR alterations."),  # "mutation" is not in the text: not a copy
    ("PD-L1 80%", "PD-L1 80%, no EGFR or ALK alterations."),
    ("EGFR L858R", "A patient with no smoking history has EGFR L858R."),  # the verb ends what "no" governs
    ("nivolumab", "She did not respond to nivolumab."),  # "not" negates the verb, not the drug
    ("cisplatin", "He could not tolerate cisplatin, so carboplatin was given."),
    ("sentinel node biopsy", "Sentinel node biopsy negative (0/3)."),  # the biopsy was done; its result is negative
    ("lumpectomy", "Lumpectomy margins negative."),
    ("lung", "No liver, bone, or brain metastases, lung nodules stable."),  # the list ended at "brain metastases"
    ("PD-L1 50%", "Negative for EGFR, PD-L1 50%."),  # no "and"/"or": not a list
    ("L858R", "EGFR L858R and KRAS wild-type."),
    ("bone", "Bone scan: osseous metastases in the spine."),  # the study found them
    ("brain", "Brain MRI: no new lesions; known brain metastases stable."),  # said of disease that is there
    ("brain", "MRI brain: no evidence of progression."),
    ("liver", "Labs: no liver dysfunction. CT: liver metastases."),  # no imaging study before the ":"
    ("lumpectomy", "An unremarkable recovery after lumpectomy."),  # "unremarkable" describes what follows
    ("ER", "ER+ and PR negative."),
    ("ER", "ER- and PR-positive."),  # ER-positive and PR-positive
    ("HER2", "ER-/PR-/HER2 3+."),
    ("CD20", "IHC: CD20+, CD10+, MUM1-."),
    ("perineural invasion", "Perineural invasion present; lymphovascular invasion absent."),
    ("mastectomy", "Pathology after mastectomy: no residual invasive carcinoma."),  # a heading, not a finding
    ("adjuvant FOLFOX", "She completed adjuvant FOLFOX x 12 cycles without major complications."),
    ("liver", "Liver: no new lesions; known liver metastases stable."),
    ("stable disease", "Interval imaging demonstrates stable disease without distant metastases."),
    ("lung", "No nodal disease and lung metastases present."),
    (None, "No EGFR alterations."),
])
def test_a_value_the_text_does_not_negate_is_not_flagged(value, text):
    assert parts_the_text_negates(value, text) == []


@pytest.mark.parametrize("value, items", [
    ("bone; liver, lung", ["bone", "liver", "lung"]),
    # a walkthrough's value: split at the comma in brackets, its "no word in the text" list read
    # "neoplasms (cutaneous, occlusion)" as two odd halves
    ("neoplasms (cutaneous, occlusion)", ["neoplasms (cutaneous, occlusion)"]),
    ("t(11;14); del(17p), MYC", ["t(11;14)", "del(17p)", "MYC"]),
    (None, []),
])
def test_a_list_value_splits_into_items_outside_brackets(value, items):
    assert value_items(value) == items
