"""Turning an extraction model's text into exactly the spec's fields.

The result always has every field and nothing else, each value a string or None. Output that is
not clean JSON is repaired only in ways that invent nothing (cutting prose around the object,
closing a truncated object); when that fails the result is flagged invalid with all fields None.
"""

from __future__ import annotations

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


def parts_not_in_text(value: str | None, text: str) -> list[str]:
    """The items of a list value ("bone; liver; lung") with no word in the text: one invented item
    hides behind the others' words, and the value as a whole reads "some words"."""
    if value is None:
        return []
    parts = [p.strip() for p in re.split(r"[;,]", value) if p.strip()]
    return [p for p in parts if len(parts) > 1 and support_in_text(p, text) == "none"]
