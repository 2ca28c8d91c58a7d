"""The adapter catalogue: every ``adapters/<name>/adapter.yaml`` and the weights beside it."""

from __future__ import annotations

from pathlib import Path

from .spec import SPEC_FILE, AdapterSpec, SpecError, load_spec

CATALOG_DIR = Path(__file__).resolve().parent


class UnknownAdapterError(ValueError):
    """No adapter of that name; the message lists the known ones."""


def load_catalog(directory: str | Path = CATALOG_DIR) -> dict[str, AdapterSpec]:
    """All adapter specs in ``directory``, by name, validated; two specs may not share a name."""
    specs = {}
    for spec_file in sorted(Path(directory).glob(f"*/{SPEC_FILE}")):
        spec = load_spec(spec_file)
        if spec.name in specs:
            raise SpecError(f"{spec_file}: name: {spec.name!r} is already the name of "
                            f"{specs[spec.name].directory / SPEC_FILE}")
        specs[spec.name] = spec
    return specs


def get_spec(specs: dict[str, AdapterSpec], name: str) -> AdapterSpec:
    """The spec called ``name``, or an error that lists the known names."""
    try:
        return specs[name]
    except KeyError:
        known = ", ".join(sorted(specs)) or "(none)"
        raise UnknownAdapterError(f"unknown adapter {name!r}; known adapters: {known}") from None
