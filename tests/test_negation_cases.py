"""The ⊘ check (``adapters.fields.parts_the_text_negates``) on hand-labelled oncology notes.

``tests/data/negation_cases.jsonl`` holds 40 notes written for this test, in the styles of clinic
notes, pathology reports, radiology impressions and tumour-board summaries. Each note lists values
an extraction could copy from it: "present" ones the text affirms (the check must never flag them:
a false alarm on a real finding teaches users to ignore the mark), and "absent" ones the text rules
out ("EGFR" from "negative for EGFR", "liver" from "no liver metastases"; the check should flag most).
The notes and labels were written before the check's code or its tests were read, so the set does
not share their blind spots. Run with ``-rP`` to see the misses.
"""

import json
from pathlib import Path

from adapters.fields import parts_the_text_negates

CASES = [json.loads(line) for line in
         (Path(__file__).parent / "data" / "negation_cases.jsonl").read_text(encoding="utf-8").splitlines()
         if line.strip()]
# share of "absent" values flagged: 48 of 63 when the set was written, 57 of 63 once its findings
# were taken into the cues (lists, "KRAS and NRAS wild-type", "none detected", "del(17p)"); a little
# below, so that a change to the cues that loses some shows up
MIN_ABSENT_FLAGGED = 0.88


def test_the_set_is_as_described():
    assert len(CASES) == 40
    assert all(case["present"] and {"text", "present", "absent"} == set(case) for case in CASES)


def test_no_value_the_text_affirms_is_flagged():
    false_flags = [(value, phrase, case["text"]) for case in CASES for value in case["present"]
                   for _, phrase in parts_the_text_negates(value, case["text"])]
    assert not false_flags, "\n".join(f"{v!r} <- {p!r} in: {t}" for v, p, t in false_flags)


def test_most_values_the_text_rules_out_are_flagged():
    absent = [(value, case["text"]) for case in CASES for value in case["absent"]]
    misses = [(value, text) for value, text in absent if not parts_the_text_negates(value, text)]
    share = 1 - len(misses) / len(absent)
    print(f"{len(absent) - len(misses)} of {len(absent)} absent values flagged ({share:.0%}); missed:")
    print("\n".join(f"  {v!r} in: {t}" for v, t in misses))
    assert share >= MIN_ABSENT_FLAGGED, f"only {share:.0%} flagged; missed {[v for v, _ in misses]}"
