"""The ⊘ check (``adapters.fields.parts_the_text_negates``) on hand-labelled oncology notes.

Two sets of 40 notes written for this test, in the styles of clinic letters, pathology reports,
radiology impressions and tumour-board summaries. Each note lists values an extraction could copy
from it: "present" ones the text affirms (the check must never flag them: a false alarm on a real
finding teaches users to ignore the mark), and "absent" ones the text rules out ("EGFR" from
"negative for EGFR", "liver" from "no liver metastases"; the check should flag most). Each set was
written by someone who had not read the check's code or its tests, so it did not share their blind
spots when it was written: ``negation_cases.jsonl`` on 2026-12-01 before the check existed,
``negation_cases_later.jsonl`` on 2026-12-01 after (hedged findings, family history and planned
treatments are in neither list). Run with ``-rP`` to see the misses.
"""

import json
from pathlib import Path

import pytest

from adapters.fields import parts_the_text_negates


def read_cases(name: str) -> list[dict]:
    lines = (Path(__file__).parent / "data" / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


SETS = {"negation_cases.jsonl": read_cases("negation_cases.jsonl"),
        "negation_cases_later.jsonl": read_cases("negation_cases_later.jsonl")}
# share of "absent" values flagged, a little below the share measured, so that a change to the cues
# that loses some shows up. The first set: 48 of 63 when it was written, 57 once its misses were read
# and taken into the cues (lists, "KRAS and NRAS wild-type", "none detected", "del(17p)"), 60 with
# imaging studies ("Bone scan: no osseous metastases"), 61 with the later set's misses. The later
# set: 41 of 77 when it was written, 45 with imaging studies (before its misses were read), 63 once
# they were (headings, "MUM1-", "BCL2 and BCL6 … absent", a phrase said once).
MIN_ABSENT_FLAGGED = {"negation_cases.jsonl": 0.95, "negation_cases_later.jsonl": 0.80}


@pytest.mark.parametrize("name", SETS)
def test_the_set_is_as_described(name):
    assert len(SETS[name]) == 40
    assert all(case["present"] and {"text", "present", "absent"} == set(case) for case in SETS[name])


@pytest.mark.parametrize("name", SETS)
def test_no_value_the_text_affirms_is_flagged(name):
    false_flags = [(value, phrase, case["text"]) for case in SETS[name] for value in case["present"]
                   for _, phrase in parts_the_text_negates(value, case["text"])]
    assert not false_flags, "\n".join(f"{v!r} <- {p!r} in: {t}" for v, p, t in false_flags)


@pytest.mark.parametrize("name", SETS)
def test_most_values_the_text_rules_out_are_flagged(name):
    absent = [(value, case["text"]) for case in SETS[name] for value in case["absent"]]
    misses = [(value, text) for value, text in absent if not parts_the_text_negates(value, text)]
    share = 1 - len(misses) / len(absent)
    print(f"{name}: {len(absent) - len(misses)} of {len(absent)} absent values flagged ({share:.0%}); missed:")
    print("\n".join(f"  {v!r} in: {t}" for v, t in misses))
    assert share >= MIN_ABSENT_FLAGGED[name], f"only {share:.0%} flagged; missed {[v for v, _ in misses]}"
