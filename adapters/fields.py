"""Turning an extraction model's text into exactly the spec's fields.

The result always has every field and nothing else, each value a string or None. Output that is
not clean JSON is repaired only in ways that invent nothing (cutting prose around the object,
closing a truncated object); when that fails the result is flagged invalid with all fields None.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Extraction:
    """Fields parsed from one model output, with flags saying how far it could be trusted."""

    fields: dict[str, str | None]
    valid: bool  # the output held a JSON object (possibly after repair)
    repaired: bool  # it needed cutting, closing or value coercion to fit the fields
    raw: str  # the model's text, unchanged
    error: str | None = None
    truncated: bool = False  # the input was cut to fit the context
    cut_at: int | None = None  # the output ended inside the object at this max_new_tokens limit
    closed: bool = False  # the output ended inside the object (closed by repair when ``valid``)
    text_read: str | None = None  # the input as the model read it, when it was cut (``truncated``)


def parse_fields(raw: str, fields: Sequence[str]) -> Extraction:
    """Parse a model's output into exactly ``fields``; never raises on bad output."""
    obj, repaired, closed = _find_json_object(raw)
    if obj is None:
        return Extraction({f: None for f in fields}, valid=False, repaired=False, raw=raw,
                          error="the model's output is not a JSON object",
                          closed="{" in raw)  # an object began and no repair could close it: it ended inside
    values: dict[str, str | None] = {}
    for name in fields:
        value, changed = _as_text(obj.get(name))
        values[name] = value
        repaired |= changed or name not in obj
    repaired |= bool(set(obj) - set(fields))
    return Extraction(values, valid=True, repaired=repaired, raw=raw, closed=closed)


def _find_json_object(raw: str) -> tuple[dict | None, bool, bool]:
    """The object in ``raw``, whether it needed repair, and whether repair had to close it."""
    text = raw.strip()
    for candidate, repaired, cut_in_string, closed in _candidates(text):
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            if cut_in_string and obj:
                # the last value was cut mid-string ("stage": "I of "IV"): a plausible-looking
                # wrong value is worse than none, so it becomes null
                obj[list(obj)[-1]] = None
            return obj, repaired, closed
    return None, False, False


def _candidates(text: str):
    """(candidate JSON text, whether it is a repair, whether the last string value was cut, whether
    the object was closed by the repair)."""
    yield text, False, False, False
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        yield fenced.group(1).strip(), True, False, False
    start = text.find("{")
    if start < 0:
        return
    end = text.rfind("}")
    if end > start:
        yield text[start:end + 1], True, False, False
    body = text[start:].rstrip().rstrip(",")
    # an object cut off by max_new_tokens: in a value, after a value, in a key, after a key, after ':'
    for closing in ('"}', "}", '": null}', ": null}", "null}"):
        yield body + closing, True, closing == '"}', True



def _as_text(value: Any) -> tuple[str | None, bool]:
    """A field value as a string or None, and whether it had to be changed."""
    if value is None:
        return None, False
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return None, True
        return stripped, stripped != value
    if isinstance(value, list):
        parts = [p for p in (_as_text(v)[0] for v in value) if p]
        return ("; ".join(parts) or None), True
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False), True
    return str(value).lower() if isinstance(value, bool) else str(value), True


# --- how far a value is backed by the text --------------------------------------------------------

# words that carry no finding of their own: a value's "and"/"of" need not be found in the text
_FILLER = frozenset("a an and or of the with plus in on to for by at".split())


# Chinese and Japanese are written without spaces: each of their characters counts as a word, so
# "II" is found in "乳腺癌II期"
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"\d+(?:\.\d+)?%?|[{_CJK}]|[^\W{_CJK}]+")


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WORD.findall(re.sub(r"[-\u2010-\u2015/]", " ", text))


def support_in_text(value: str | None, text: str) -> str | None:
    """How far an extracted value is backed by the text it came from, word by word (case, hyphens
    and word order ignored): "all" when every word of it occurs in the text, "some", "none" (the
    model inferred it, e.g. stage IV from "widely metastatic", or invented it), or None for a null
    value. Neither "all" nor "none" says the value is right: it says where to look."""
    if value is None:
        return None
    words = _words(value)
    words = [w for w in words if w not in _FILLER] or words
    if not words:
        return None
    found = set(_words(text))
    hits = sum(w in found for w in words)
    return "all" if hits == len(words) else ("some" if hits else "none")


def value_items(value: str | None) -> list[str]:
    """The items of a list value, as the app names them: "bone; liver, lung" -> bone, liver, lung."""
    return [p.strip() for p in re.split(r"[;,]", value) if p.strip()] if value else []


def parts_not_in_text(value: str | None, text: str) -> list[str]:
    """The items of a list value ("bone; liver; lung") with no word in the text: one invented item
    hides behind the others' words, and the value as a whole reads "some words"."""
    if value is None:
        return []
    parts = value_items(value)
    return [p for p in parts if len(parts) > 1 and support_in_text(p, text) == "none"]


# --- whether the text says a value is absent ------------------------------------------------------
# "no EGFR or ALK alterations" came back as the biomarker "EGFR/ALK alterations", every word in the
# text and so marked as backed by it. A NegEx-style check (Chapman et al., 2001), English only: a
# negation cue, and the words it governs up to a comma, a clause break or a word that starts another
# finding. Measured on the 4,500 synthetic narratives' own references (true findings; tools/negations.py)
# and on 40 hand-labelled notes written before this code was read (tests/test_negation_cases.py).

_CLAUSE_BREAKS = frozenset(".;:!?()[],\u2013\u2014")  # en and em dashes too: "no new lesions — stable disease"
_NEGATION_TOKEN = re.compile(_WORD.pattern + "|[" + re.escape("".join(sorted(_CLAUSE_BREAKS))) + "]")
_REACH_AFTER = 5  # words a cue before a finding governs: "no EGFR or ALK alterations"
_LIST_REACH = 12  # words a list it governs may run on past a comma: "no EGFR, ALK, or ROS1 alterations"
# not "not": it mostly negates a verb ("did not respond to nivolumab" says nothing against nivolumab)
_NEGATES_AFTER = ["negative for", "absence of", "free of", "no", "without", "w o", "absent", "denies", "denied",
                  "neither", "nor", "never", "declined"]  # "w o": "w/o", its slash read as a space
# cue after a finding -> the words before it that it governs: "BRAF testing was not performed"; a
# cue's own last word is negated too when "not" comes before it ("HER2 not amplified")
_NEGATES_BEFORE = {"not detected": 4, "not identified": 4, "not seen": 4, "not found": 4, "not present": 4,
                   "not performed": 4, "not done": 4, "not given": 4, "not received": 4, "not administered": 4,
                   "not amplified": 4, "not expressed": 4, "not mutated": 4, "not tested": 4,
                   "not involved": 4, "not recommended": 4, "not indicated": 4, "none detected": 4,
                   "none identified": 4, "not enlarged": 4, "was not": 4, "were not": 4, "negative": 4, "neg": 4,
                   "unremarkable": 4, "absent": 4, "excluded": 4,
                   "ruled out": 4, "wild type": 1, "wildtype": 1,
                   # "Brain MRI negative for metastases" (the words after "negative for" are negated too)
                   **{f"negative for {what}": 4 for what in ("metastases", "metastasis", "metastatic", "malignancy",
                                                              "tumor", "tumour", "disease", "lesions", "involvement")}}
# like "negative", these say what comes before them only at a clause's end: "with negative margins",
# "an unremarkable course" describe what follows
_RESULT_CUES = frozenset({"negative", "neg", "unremarkable"})
# a result said of a procedure does not say the procedure was not done: "Sentinel node biopsy negative"
_PROCEDURES = frozenset("biopsy biopsies aspirate aspiration cytology dissection resection excision sampling".split())
# "no change in the liver lesions", "no interval growth of lung nodules": the finding is there
_NOT_A_NEGATION = {"no change", "no interval", "no further", "no increase", "no growth", "no significant", "not only"}
# a cue's reach ends at these: "no nodal disease and ER positive" says nothing of ER, nor "no smoking
# history has EGFR L858R" of EGFR
_ENDS_A_NEGATION = frozenset("but however although though except apart yet whereas while which who and "
                             "with plus then is was are were has had have shows showed revealed demonstrated "
                             "received underwent started began".split())
# going back from a cue after a finding, its reach ends at these: "ER positive and PR negative" says
# nothing of ER (nor, to be safe, "EGFR and ALK were negative" of EGFR)
_ENDS_A_NEGATION_BEFORE = frozenset("positive amplified amplification overexpressed overexpression high elevated "
                                    "present mutated detected and or margin margins".split())
# a value that itself says absent ("KRAS wild-type", "ER-", "no evidence of disease") is not contradicted
_NEGATIVE_WORDS = frozenset("no not without negative absent absence free wild wildtype denies denied never "
                            "neither nor ruled excluded declined undetectable none".split())
# an imaging study named by what it looks at ("Bone scan", "MRI brain", "CT chest, abdomen and pelvis"),
# read back from its ":" up to a sentence break
_IMAGING = frozenset("scan scans mri ct pet ultrasound us imaging scintigraphy radiograph radiographs x ray "
                     "xray mammogram mammography".split())
_STUDY_REACH = 8
_STUDY_BREAKS = frozenset(".;:!?()[]\u2013\u2014")
_NEGATIVE_RESULTS = frozenset("negative neg unremarkable normal clear".split())  # "Bone scan: negative."
# "MRI brain: no new lesions", "no evidence of progression": said of disease that is there
_CHANGE = frozenset("new progression progressive change changes growth interval increase enlargement "
                    "recurrence recurrent worsening".split())
_MINUS_SIGN = re.compile(r"\u2212|-\s*(?:$|[/;,)\s])")
_CUES_AFTER = sorted(_NEGATES_AFTER, key=len, reverse=True)  # the longest first: "negative for" before "no"
_CUES_BEFORE = sorted(_NEGATES_BEFORE, key=len, reverse=True)


def _negation_tokens(text: str) -> list[tuple[str, int, int]]:
    """``text``'s words and clause breaks, each folded as ``_words`` folds them, with where it is."""
    spaced = re.sub(r"[-\u2010-\u2012/]", " ", text)  # hyphens as spaces, one for one: positions hold
    # brackets inside a word ("del(17p)", "t(11;14)") are not clause breaks
    spaced = re.sub(r"(?<=\w)\(([^()\s]*)\)", lambda m: f" {m.group(1)} ", spaced)
    return [(unicodedata.normalize("NFKC", m.group()).casefold(), m.start(), m.end())
            for m in _NEGATION_TOKEN.finditer(spaced)]


def _cue_at(words: Sequence[str], i: int, cues) -> str | None:
    """The cue of ``cues`` (phrases, the longest first) that starts at word ``i``."""
    return next((c for c in cues if " ".join(words[i:i + c.count(" ") + 1]) == c), None)


def _list_end(words: Sequence[str], comma: int) -> int | None:
    """Where a list that a cue governs ends, when its reach stopped at the comma at ``comma``: "no
    EGFR, ALK, or ROS1 alterations" runs on as it closes with "and"/"or" and a last item, up to a
    clause break or the next comma. None when the words are no such list ("negative for EGFR,
    PD-L1 50%": no "and"/"or"; a word that starts another finding or clause; longer than
    ``_LIST_REACH``)."""
    closed = False
    for j in range(comma, min(len(words), comma + _LIST_REACH)):
        if words[j] in ("and", "or"):
            closed = True
        elif words[j] in _CLAUSE_BREAKS and (closed or words[j] != ","):
            return j if closed else None
        elif words[j] in _ENDS_A_NEGATION or words[j] in _ENDS_A_NEGATION_BEFORE:
            return None
    text_ended = comma + _LIST_REACH >= len(words)
    return len(words) if closed and text_ended else None


def _governed_after(words: Sequence[str], i: int) -> tuple[list[int], int] | None:
    """For a cue starting at word ``i`` that negates what follows ("no EGFR or ALK alterations"): the
    words it negates and the last word of the phrase; None when no such cue starts there."""
    cue = _cue_at(words, i, _CUES_AFTER)
    if cue is None or " ".join(words[i:i + 2]) in _NOT_A_NEGATION:
        return None
    first = end = i + cue.count(" ") + 1
    while (end < len(words) and end - first < _REACH_AFTER and words[end] not in _CLAUSE_BREAKS
           and words[end] not in _ENDS_A_NEGATION):
        end += 1
    if end < len(words) and words[end] == ",":
        end = _list_end(words, end) or end
    return list(range(first, end)), end - 1


def _governed_before(words: Sequence[str], i: int) -> tuple[list[int], int, int] | None:
    """For a cue starting at word ``i`` that negates what comes before it ("BRAF testing was not
    performed"): the words it negates, and the first and last word of the phrase; None when no such
    cue starts there."""
    cue = _cue_at(words, i, _CUES_BEFORE)
    if cue is None:
        return None
    last = i + cue.count(" ")
    following = words[last + 1] if last + 1 < len(words) else "."
    if cue in _RESULT_CUES and following not in _CLAUSE_BREAKS | {"and", "or"}:
        return None  # "with negative margins": it describes what follows
    if cue.endswith(" not") and following not in _CLAUSE_BREAKS:
        last += 1  # "was not tested": quoted with "tested"
    end = i - 1 if cue.startswith("none") and i > 0 and words[i - 1] == ":" else i  # "FGFR3: none detected"
    start = end
    while (start > 0 and end - start < _NEGATES_BEFORE[cue] and words[start - 1] not in _CLAUSE_BREAKS
           and words[start - 1] not in _ENDS_A_NEGATION_BEFORE):
        start -= 1
    if cue in ("wild type", "wildtype") and start >= 2 and words[start - 1] == "and" and (
            start == 2 or words[start - 3] in _CLAUSE_BREAKS):
        start -= 2  # "KRAS and NRAS wild-type", the first gene alone after a clause break
    negated = [k for k in range(start, end) if not (cue in _RESULT_CUES and words[k] in _PROCEDURES)]
    if words[last - 1] == "not":
        negated.append(last)  # "HER2 not amplified", "was not tested": the word after "not" too
    return negated, start, last


def _study_ruled_out(words: Sequence[str], i: int) -> tuple[list[int], int, int] | None:
    """For a ":" at word ``i`` between an imaging study named by a body part and a negative result
    ("Bone scan: no osseous metastases", "MRI brain: negative"): the study's words other than the
    imaging ones, and the first and last word of the phrase; None otherwise. The body part is the
    finding ruled out, though the result names it otherwise ("osseous") or not at all."""
    if words[i] != ":" or i + 1 == len(words):
        return None
    start = i
    while start > 0 and i - start < _STUDY_REACH and words[start - 1] not in _STUDY_BREAKS:
        start -= 1
    study = range(start, i)
    if not any(words[k] in _IMAGING for k in study):
        return None
    if after := _governed_after(words, i + 1):
        if any(words[k] in _CHANGE for k in after[0]):
            return None  # "MRI brain: no new lesions" is said of known disease
        last = after[1]
    elif words[i + 1] in _NEGATIVE_RESULTS and (i + 2 == len(words) or words[i + 2] in _CLAUSE_BREAKS):
        last = i + 1
    else:
        return None
    return [k for k in study if words[k] not in _IMAGING and words[k] not in _CLAUSE_BREAKS], start, last


def _negated_words(words: Sequence[str]) -> dict[int, tuple[int, int]]:
    """Each negated word's index -> the first and last index of the phrase that negates it."""
    negated: dict[int, tuple[int, int]] = {}
    for i in range(len(words)):
        for found in (_governed_before(words, i), _study_ruled_out(words, i)):
            if found:
                for k in found[0]:
                    negated.setdefault(k, (found[1], found[2]))
        if after := _governed_after(words, i):
            for k in after[0]:
                negated.setdefault(k, (i, after[1]))
    return negated


@functools.lru_cache(maxsize=64)  # a text's seven fields are checked against it one by one
def _negation_scopes(text: str) -> tuple[list[tuple[str, int, int]], list[str], dict[int, tuple[int, int]]]:
    """``text``'s tokens, their words, and which of them are negated (``_negated_words``)."""
    tokens = _negation_tokens(text)
    words = [word for word, _, _ in tokens]
    return tokens, words, _negated_words(words)


def parts_the_text_negates(value: str | None, text: str) -> list[tuple[str, str]]:
    """The items of ``value`` ("PD-L1 80%; EGFR/ALK alterations") whose every word is in ``text``
    but only where the text says it is absent, each with the text's phrase that says so ("no EGFR or
    ALK alterations"). Like ``support_in_text``, it says where to look: a finding copied from a
    negated phrase is the worst kind of wrong, and reads as "every word in the text" otherwise."""
    if value is None:
        return []
    tokens, words, negated = _negation_scopes(text)
    found = []
    for part in value_items(value):
        part_words = {w for w in _words(part) if w not in _FILLER}
        if not part_words or part_words & _NEGATIVE_WORDS or _MINUS_SIGN.search(part):
            continue
        places = [[k for k, word in enumerate(words) if word == w] for w in part_words]
        if all(places) and all(k in negated for ks in places for k in ks):
            first = min(negated[k][0] for ks in places for k in ks)
            last = max(negated[k][1] for ks in places for k in ks)
            found.append((part, text[tokens[first][1]:tokens[last][2]]))
    return found
