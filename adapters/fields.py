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


def _singular(word: str) -> str:
    """``word`` without a plural "s", for matching a value's words with the text's: a site is named
    "lung" where the note says "Lungs clear." ("metastasis" and "status" keep theirs)."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")) else word


def support_in_text(value: str | None, text: str) -> str | None:
    """How far an extracted value is backed by the text it came from, word by word (case, hyphens,
    a plural "s" and word order ignored): "all" when every word of it occurs in the text, "some", "none" (the
    model inferred it, e.g. stage IV from "widely metastatic", or invented it), or None for a null
    value. Neither "all" nor "none" says the value is right: it says where to look."""
    if value is None:
        return None
    words = _words(value)
    words = [w for w in words if w not in _FILLER] or words
    if not words:
        return None
    found = {_singular(w) for w in _words(text)}
    hits = sum(_singular(w) in found for w in words)
    return "all" if hits == len(words) else ("some" if hits else "none")


def value_items(value: str | None) -> list[str]:
    """The items of a list value, as the app names them: "bone; liver, lung" -> bone, liver, lung; a
    comma or semicolon in brackets does not split ("neoplasms (cutaneous, occlusion)" is one item)."""
    if not value:
        return []
    items, depth, start = [], 0, 0
    for i, char in enumerate(value):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if char in ";," and depth <= 0:
            items.append(value[start:i])
            start, depth = i + 1, 0
    return [item.strip() for item in [*items, value[start:]] if item.strip()]


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
# finding; a heading and its result ("LVSI: none", "Bone scan: no osseous metastases"). Measured on
# the 4,500 synthetic narratives' own references (true findings; tools/negations.py) and on two sets
# of 40 hand-labelled notes, each written by someone who had not read this code (tests/test_negation_cases.py).

_CLAUSE_BREAKS = frozenset(".;:!?()[],\u2013\u2014")  # en and em dashes too: "no new lesions — stable disease"
# a marker's sign is a token of its own: "ER-/PR-" and "MUM1-." say ER, PR and MUM1 are negative, "ER+" ends a
# negation read back from a later cue ("ER+ and PR negative" says nothing of ER)
_NEGATION_TOKEN = re.compile(_WORD.pattern + "|[+\u2212" + re.escape("".join(sorted(_CLAUSE_BREAKS))) + "]")
_TRAILING_MINUS = re.compile(r"(?<=\w)[-\u2212](?=\s*(?:[/,;.)]|$))")  # not "ER- and PR-positive" (ER-positive)
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
                   "non amplified": 4, "ruled out": 4, "wild type": 1, "wildtype": 1, "\u2212": 1,
                   # "Brain MRI negative for metastases" (the words after "negative for" are negated too)
                   **{f"negative for {what}": 4 for what in ("metastases", "metastasis", "metastatic", "malignancy",
                                                              "tumor", "tumour", "disease", "lesions", "involvement")}}
# like "negative", these say what comes before them only at a clause's end or before how it was
# found ("MRD negative by flow"): "with negative margins", "an unremarkable course" describe what follows
_RESULT_CUES = frozenset({"negative", "neg", "unremarkable"})
_AFTER_A_RESULT = _CLAUSE_BREAKS | {"and", "or", "by", "on", "at", "per", "via"}
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
# nothing of ER (but "; BCL2 and BCL6 rearrangements absent" says BCL2 is, see ``_governed_before``)
_ENDS_A_NEGATION_BEFORE = frozenset("positive amplified amplification overexpressed overexpression high elevated "
                                    "present mutated detected and or margin margins +".split())
# a value that itself says absent ("KRAS wild-type", "ER-", "no evidence of disease") is not contradicted
_NEGATIVE_WORDS = frozenset("no not without negative absent absence free wild wildtype denies denied never "
                            "neither nor ruled excluded declined undetectable none".split())
# a heading and its result: "LVSI: none", "Liver: no focal lesion", "Extrathyroidal extension — none";
# an imaging study named by what it looks at ("Bone scan", "MRI brain", "CT chest, abdomen and pelvis")
# may also run into its result ("MRI brain showed no evidence of metastatic disease")
_IMAGING = frozenset("scan scans mri ct pet ultrasound imaging scintigraphy radiograph radiographs ray xray "
                     "mammogram mammography".split())
_HEADING_REACH = 5  # words of a heading before ":" or a dash, when its result is a word ("LVSI: none")
_HEADING_REACH_AFTER = 2  # and when it is a phrase: "Liver: no focal lesion", not "Pathology after mastectomy: no residual …"
_STUDY_REACH = 8  # words of an imaging study's heading, read back to a sentence break
_STUDY_BREAKS = frozenset(".;:!?()[]\u2013\u2014")
_HEADING_ENDS = frozenset(":\u2013\u2014")
_STUDY_VERBS = frozenset("showed shows revealed demonstrated was is with".split())
_NEGATIVE_RESULTS = frozenset("negative neg unremarkable normal clear none absent nil".split())  # "Bone scan: negative."
# "MRI brain: no new lesions", "no evidence of progression": said of disease that is there
_CHANGE = frozenset("new progression progressive change changes growth interval increase enlargement "
                    "recurrence recurrent worsening".split())
_MINUS_SIGN = re.compile(r"\u2212|-\s*(?:$|[/;,)\s])")
_CUES_AFTER = sorted(_NEGATES_AFTER, key=len, reverse=True)  # the longest first: "negative for" before "no"
_CUES_BEFORE = sorted(_NEGATES_BEFORE, key=len, reverse=True)


def _negation_tokens(text: str) -> list[tuple[str, int, int]]:
    """``text``'s words and clause breaks, each folded as ``_words`` folds them, with where it is."""
    spaced = _TRAILING_MINUS.sub("\u2212", text)  # one for one, as below: positions hold
    spaced = re.sub(r"[-\u2010-\u2012/]", " ", spaced)  # hyphens as spaces
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


def _one_more_item(words: Sequence[str], k: int) -> bool:
    """Whether word ``k`` is an "and" that adds one last word to a list, closing its clause: "negative
    for BRCA1 and BRCA2." (but not "no nodal disease and ER positive")."""
    return (k + 1 < len(words) and words[k] == "and" and words[k + 1].isalnum()
            and words[k + 1] not in _ENDS_A_NEGATION_BEFORE and words[k + 1] not in _ENDS_A_NEGATION
            and (k + 2 == len(words) or words[k + 2] in _CLAUSE_BREAKS))


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
    if _one_more_item(words, end):
        end += 2  # "negative for BRCA1 and BRCA2."
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
    if cue in _RESULT_CUES and following not in _AFTER_A_RESULT:
        return None  # "with negative margins": it describes what follows
    if cue.endswith(" not") and following not in _CLAUSE_BREAKS:
        last += 1  # "was not tested": quoted with "tested"
    end = i - 1 if i > 0 and words[i - 1] in _HEADING_ENDS else i  # "Perineural invasion: not identified"
    start = end
    while (start > 0 and end - start < _NEGATES_BEFORE[cue] and words[start - 1] not in _CLAUSE_BREAKS
           and words[start - 1] not in _ENDS_A_NEGATION_BEFORE):
        start -= 1
    if start >= 2 and words[start - 1] == "and" and words[start - 2].isalnum() and (
            words[start - 2] not in _ENDS_A_NEGATION_BEFORE) and (start == 2 or words[start - 3] in _CLAUSE_BREAKS):
        start -= 2  # "KRAS and NRAS wild-type", the first word alone after a clause break
    negated = [k for k in range(start, end) if not (cue in _RESULT_CUES and words[k] in _PROCEDURES)]
    if words[last - 1] == "not":
        negated.append(last)  # "HER2 not amplified", "was not tested": the word after "not" too
    return negated, start, last


def _heading_ruled_out(words: Sequence[str], i: int) -> tuple[list[int], int, int] | None:
    """For a heading whose result, starting at word ``i``, is negative: its words, and the first and
    last word of the phrase; None otherwise. A heading is a few words before ":" or a dash ("LVSI:
    none", "Liver: no focal lesion"), or an imaging study named by a body part, which may run into
    its result ("Bone scan: no osseous metastases", "MRI brain showed no evidence of metastatic
    disease"): the body part is ruled out, though the result names it otherwise or not at all."""
    if i == 0:
        return None
    heading_end = i - 1 if words[i - 1] in _HEADING_ENDS | _STUDY_VERBS else i
    start = heading_end
    breaks = _STUDY_BREAKS if words[heading_end] == ":" else _CLAUSE_BREAKS | _ENDS_A_NEGATION
    while start > 0 and heading_end - start < _STUDY_REACH and words[start - 1] not in breaks:
        start -= 1
    heading = range(start, heading_end)
    if words[heading_end] == ":":
        is_study = any(words[k] in _IMAGING for k in heading)  # "CT chest, abdomen and pelvis: …"
    else:  # the study's name just before its result: "MRI brain showed no …", "Brain MRI negative for …"
        is_study = any(words[k] in _IMAGING for k in heading[-2:])
    is_heading = words[heading_end] in _HEADING_ENDS and all(words[k] not in _CLAUSE_BREAKS for k in heading)
    if not heading or not (is_study or is_heading and len(heading) <= _HEADING_REACH):
        return None
    if after := _governed_after(words, i):
        if any(words[k] in _CHANGE for k in after[0]):
            return None  # "MRI brain: no new lesions" is said of known disease
        if not is_study and len(heading) > _HEADING_REACH_AFTER:
            return None
        last = after[1]
    elif words[i] in _NEGATIVE_RESULTS and heading_end < i and (i + 1 == len(words) or words[i + 1] in _CLAUSE_BREAKS):
        last = i  # "Bone scan: negative."
    else:
        return None
    return [k for k in heading if words[k] not in _IMAGING and words[k] not in _CLAUSE_BREAKS], start, last


def _negated_words(words: Sequence[str]) -> dict[int, tuple[int, int]]:
    """Each negated word's index -> the first and last index of the phrase that negates it."""
    negated: dict[int, tuple[int, int]] = {}
    for i in range(len(words)):
        for found in (_governed_before(words, i), _heading_ruled_out(words, i)):
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
        wanted = {_singular(w) for w in part_words}
        places = _phrase_places(part, words) or [k for k, word in enumerate(words) if _singular(word) in wanted]
        if {_singular(words[k]) for k in places} == wanted and all(k in negated for k in places):
            first = min(negated[k][0] for k in places)
            last = max(negated[k][1] for k in places)
            found.append((part, text[tokens[first][1]:tokens[last][2]]))
    return found


def _phrase_places(part: str, words: Sequence[str]) -> list[int]:
    """Where the text says ``part`` as a phrase (its words in order, fillers aside), word by word;
    empty when it never does. "lymphovascular invasion absent" rules out lymphovascular invasion
    though "perineural invasion present" affirms another invasion."""
    phrase = [_singular(w) for w in _words(part) if w not in _FILLER]
    said = [k for k, word in enumerate(words) if word not in _FILLER]  # clause breaks kept: a phrase ends there
    n = len(phrase)
    return [k for j in range(len(said) - n + 1) if [_singular(words[m]) for m in said[j:j + n]] == phrase
            for k in said[j:j + n]]
