"""What an adapter's ``metrics.json`` says, read one way by everything that shows it.

Evaluation (training/) writes the file; the model card, the README's results table and the app's
page (chat_app/) show it. They share this module so that they read the same checks, the same
variant names and the same numbers, and so that the targets a spec sets (``targets:``) are judged
one way everywhere.
"""

from __future__ import annotations

from typing import Any

from .spec import AdapterSpec, TargetSpec


def _bounds(target: TargetSpec, base: float | None) -> list[tuple[str, Any]]:
    """(what the target says, how to test a value) for each bound the target gives."""
    shown_base = "base" if base is None else f"base ({base:.3f})"
    bounds = []
    if target.at_least is not None:
        bounds.append((f">= {target.at_least}", lambda v: v >= target.at_least))
    if target.at_least_base_plus is not None:
        bounds.append((f">= {shown_base} + {target.at_least_base_plus}",
                       lambda v: base is not None and v >= base + target.at_least_base_plus))
    if target.above_base:
        bounds.append((f"> {shown_base}", lambda v: base is not None and v > base))
    return bounds


def check_targets(spec: AdapterSpec, variants: dict) -> list[dict]:
    """Each bound of the spec's targets with the fine-tuned value and whether it was met; a bound on
    the base model is not met when the base was not measured."""
    tuned, base = variants.get("fine_tuned", {}), variants.get("base", {})
    checks = []
    for target in spec.targets:
        value = tuned.get(target.metric)
        for text, holds in _bounds(target, base.get(target.metric)):
            checks.append({"metric": target.metric, "target": text, "value": value,
                           "met": value is not None and bool(holds(value))})
    return checks
