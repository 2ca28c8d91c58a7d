"""Strict JSON, the one way every JSONL reader here (training data, ``predict --input``, the app's
uploads) parses a line.

``json.loads`` keeps the last value of a key given twice and reads NaN and Infinity. Neither is
JSON, and which of two values was meant cannot be known, so both are errors here.
"""

from __future__ import annotations

import json


class NotStrictJSON(ValueError):
    """Valid for ``json.loads``, but not JSON: a repeated key, or NaN / Infinity."""


class RepeatedKey(NotStrictJSON):
    pass


def loads_strict(line: str) -> object:
    """``line`` parsed as JSON; raises ``json.JSONDecodeError`` or ``NotStrictJSON`` (both ValueError)."""
    return json.loads(line, object_pairs_hook=_object_without_repeated_keys, parse_constant=_refuse_constant)


def _object_without_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise RepeatedKey(f"key {json.dumps(repeated[0])} appears twice in one object")
    return dict(pairs)


def _refuse_constant(name: str):
    raise NotStrictJSON(f"{name} is not JSON (write null, or the number as a string)")
