"""The adapter catalogue: every ``adapters/<name>/adapter.yaml`` and the weights beside it."""

from __future__ import annotations

from pathlib import Path

from .files import finish_staged_writes
from .spec import SPEC_FILE, AdapterSpec, SpecError, load_spec

CATALOG_DIR = Path(__file__).resolve().parent


class UnknownAdapterError(ValueError):
    """No adapter of that name; the message lists the known ones."""


def load_catalog(directory: str | Path = CATALOG_DIR) -> dict[str, AdapterSpec]:
    """All adapter specs in ``directory``, by name, validated; two specs may not share a name."""
    specs = {}
    for _, spec in scan_catalog(directory):
        if isinstance(spec, SpecError):
            raise spec
        specs[spec.name] = spec
    return specs


def scan_catalog(directory: str | Path = CATALOG_DIR) -> list[tuple[Path, AdapterSpec | SpecError]]:
    """Each ``<folder>/adapter.yaml`` in ``directory`` with its spec, or the error that refuses it
    (``adapterlab adapters`` lists them all; every other command stops at the first error)."""
    if not Path(directory).is_dir():
        raise SpecError(f"{directory}: no such adapter catalogue folder")
    found: list[tuple[Path, AdapterSpec | SpecError]] = []
    names: dict[str, Path] = {}
    for spec_file in sorted(Path(directory).glob(f"*/{SPEC_FILE}")):
        try:
            spec = load_spec(spec_file)
            if spec.name in names:
                raise SpecError(f"{spec_file}: name: {spec.name!r} is already the name of {names[spec.name]}")
        except SpecError as exc:
            found.append((spec_file, exc))
            continue
        names[spec.name] = spec_file
        finish_staged_writes(spec.directory)  # a training run killed while moving its files in
        found.append((spec_file, spec))
    return found


def in_project_catalog(spec: AdapterSpec) -> bool:
    """Whether ``spec`` is one of the project's own adapters (``adapters/``), not another catalogue's."""
    return spec.directory.resolve().parent == CATALOG_DIR.resolve()


def catalog_option(spec: AdapterSpec) -> str:
    """`` --catalog DIR`` for an adapter outside the project's catalogue (commands need it), else ""."""
    return "" if in_project_catalog(spec) else f" --catalog {spec.directory.parent}"


def shown_path(path: Path) -> str:
    """``path`` as cards and the app's page name it: relative to the project inside it, else whole."""
    project, path = CATALOG_DIR.parent.resolve(), Path(path).resolve()
    return path.relative_to(project).as_posix() if path.is_relative_to(project) else str(path)


def get_spec(specs: dict[str, AdapterSpec], name: str) -> AdapterSpec:
    """The spec called ``name``, or an error that lists the known names."""
    try:
        return specs[name]
    except KeyError:
        known = ", ".join(sorted(specs)) or "(none)"
        raise UnknownAdapterError(f"unknown adapter {name!r}; known adapters: {known}") from None

