"""What an adapter's ``metrics.json`` says, read one way by everything that shows it.

Evaluation (training/) writes the file; the model card, the README's results table and the app's
page (chat_app/) show it. They share this module so that they read the same checks, the same
variant names and the same numbers, and so that the targets a spec sets (``targets:``) are judged
one way everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .catalog import catalog_option
from .spec import AdapterSpec, TargetSpec

# the variants evaluation measures, in the order every table shows them, and what the tables call them
VARIANTS = ("base", "few_shot", "fine_tuned")
VARIANT_TITLES = {"base": "base", "few_shot": "few-shot", "fine_tuned": "fine-tuned"}


def read_metrics_file(path: Path, spec: AdapterSpec | None = None) -> dict:
    """An adapter's ``metrics.json``, checked for the shape evaluation writes (an object whose
    ``variants`` maps each variant to its metrics, and ``targets`` a list of checked targets) and,
    given the ``spec`` it is shown for, that it measured an adapter of that task; every problem
    names the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    variants = data.get("variants") if isinstance(data, dict) else None
    if not variants or not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ValueError(f'{path}: not the metrics an evaluation writes (an object with "variants": '
                         "{variant: {metric: value}}); `adapterlab eval <name>` writes it")
    targets = data.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, dict) and {"metric", "target", "met"} <= t.keys()
                                                for t in targets):
        raise ValueError(f'{path}: "targets" must be a list of {{"metric", "target", "met", ...}} objects')
    if spec is not None and data.get("task", spec.task) != spec.task:  # e.g. written by `eval other --output`
        raise ValueError(f"{path}: holds the metrics of {data.get('adapter')!r}, a {data['task']} adapter, not of "
                         f"{spec.name!r} ({spec.task}); run `adapterlab eval {spec.name}{catalog_option(spec)}` or remove the file")
    return data


def adapter_metrics(spec: AdapterSpec) -> dict | None:
    """The adapter's checked ``metrics.json``, or None when it has none (not evaluated yet); a broken
    one is a ValueError naming it."""
    path = spec.directory / "metrics.json"
    return read_metrics_file(path, spec) if path.exists() else None


def shown_value(value: Any) -> str:
    """A measured value as the card, the results table and the app's page print it."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def variant_title(variant: str, metrics: dict) -> str:
    """A column's title: ``few-shot (k=4)`` names the number of examples the prompt held."""
    if variant == "few_shot":
        return f"{VARIANT_TITLES[variant]} (k={metrics.get('few_shot_k', '?')})"
    return VARIANT_TITLES[variant]


def measured_variants(metrics: dict) -> list[str]:
    """The variants ``metrics`` holds results of (a variant not asked for is recorded as skipped)."""
    variants = metrics.get("variants", {})
    return [v for v in VARIANTS if "skipped" not in variants.get(v, {"skipped": True})]


def _bounds(target: TargetSpec, base: float | None) -> list[tuple[str, Any]]:
    """(what the target says, how to test a value) for each bound the target gives."""
    shown_base = "base" if base is None else f"base ({base:.3f})"
    bounds = []
    if target.at_least is not None:
        bounds.append((f">= {target.at_least}", lambda v: v >= target.at_least))
    if target.at_most is not None:
        bounds.append((f"<= {target.at_most}", lambda v: v <= target.at_most))
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
