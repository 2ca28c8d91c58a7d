"""The README's results table is generated from the adapters' metrics.json, so it cannot drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.catalog import CATALOG_DIR
from adapters.cli import main
from adapters.results_table import MARKERS, evaluated_adapters, table


def spam_metrics(f1: float) -> dict:
    variants = {v: {"accuracy": 0.5, "f1": value} for v, value in
                (("base", 0.2), ("few_shot", 0.4), ("fine_tuned", f1))}
    return {"test_examples": 10, "test_split_size": 20, "variants": variants,
            "headline": {"accuracy": 0.5, "f1": f1},
            "targets": [{"metric": "f1", "target": ">= 0.95", "value": f1, "met": f1 >= 0.95}]}


def write_spam_spec(root: Path, targets: str = "{f1: 0.95}") -> Path:
    """The shipped spam spec in ``root/spam``, with ``targets``."""
    (root / "spam").mkdir(parents=True, exist_ok=True)
    text = (CATALOG_DIR / "spam" / "adapter.yaml").read_text(encoding="utf-8")
    kept = [line for line in text.splitlines() if not line.startswith("targets:")]
    (root / "spam" / "adapter.yaml").write_text("\n".join(kept + [f"targets: {targets}", ""]), encoding="utf-8")
    return root / "spam"


def write_catalog(root: Path, f1: float) -> Path:
    write_spam_spec(root)
    (root / "spam" / "metrics.json").write_text(json.dumps(spam_metrics(f1)))
    return root


def test_results_rewrites_a_stale_table_and_check_says_when_it_is_stale(tmp_path, capsys):
    catalog = write_catalog(tmp_path / "catalog", f1=0.97)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{MARKERS[0]}\nold table\n{MARKERS[1]}\n\nafter\n")
    args = ["results", "--catalog", str(catalog), "--readme", str(readme)]

    assert main([*args, "--check"]) == 1 and "stale" in capsys.readouterr().err
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--check"]) == 0 and "the results table is up to date" in capsys.readouterr().err
    text = readme.read_text()
    assert "old table" not in text and text.endswith(f"{MARKERS[1]}\n\nafter\n")
    assert "| spam (10 of 20 test) | f1 | 0.200 | 0.400 | 0.970 | >= 0.95 ✅ |" in text
    assert "| spam (10 of 20 test) | accuracy | 0.500 | 0.500 | 0.500 |  |" in text

    write_catalog(catalog, f1=0.90)  # a retrained adapter: the README no longer says what metrics.json says
    assert main([*args, "--check"]) == 1
    assert main(args) == 0 and "| 0.900 | >= 0.95 ❌ |" in readme.read_text()


def test_a_readme_without_the_markers_and_a_broken_metrics_file_are_named(tmp_path, capsys):
    catalog = write_catalog(tmp_path / "catalog", f1=0.97)
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert main(["results", "--catalog", str(catalog), "--readme", str(readme)]) == 2
    assert f"{readme}: no {MARKERS[0]}" in capsys.readouterr().err
    missing = tmp_path / "elsewhere.md"
    assert main(["results", "--catalog", str(catalog), "--readme", str(missing), "--check"]) == 2
    assert f"adapterlab: error: {missing}: no such file; --readme names" in capsys.readouterr().err
    (catalog / "spam" / "metrics.json").write_text("{not json")
    assert main(["results", "--catalog", str(catalog), "--readme", str(readme)]) == 2
    assert "spam/metrics.json: not valid JSON" in capsys.readouterr().err


def test_the_committed_readme_results_table_matches_the_committed_metrics():
    from adapters.files import with_table
    from adapters.results_table import README

    text = README.read_text(encoding="utf-8")
    assert with_table(text, table(evaluated_adapters()), README, MARKERS) == text, "run `adapterlab results`"


@pytest.mark.parametrize(("content", "said"), [
    ("[1, 2]", "not the metrics an evaluation writes"),
    ("{}", "not the metrics an evaluation writes"),
    ('{"variants": {"base": "x"}}', "not the metrics an evaluation writes"),
    ('{"variants": {}}', "not the metrics an evaluation writes"),
    ('{"variants": {"base": {"f1": 0.5}}, "targets": [{"metric": "f1"}]}', '"targets" must be a list'),
    ("{not json", "not valid JSON"),
])
def test_a_metrics_file_of_another_shape_is_named_not_a_traceback(tmp_path, capsys, content, said):
    """`card` and `results` crashed with AttributeError/KeyError on these, or wrote an empty table."""
    from adapters.cli import main

    metrics = write_spam_spec(tmp_path / "catalog") / "metrics.json"
    metrics.write_text(content)
    readme = tmp_path / "README.md"
    readme.write_text(f"{MARKERS[0]}\n{MARKERS[1]}\n")
    assert main(["results", "--catalog", str(tmp_path / "catalog"), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert f"{metrics}: {said}" in err and "Traceback" not in err


def test_a_catalogue_or_results_folder_that_is_not_there_is_named(tmp_path, capsys):
    """A typo in --catalog emptied the README's table ("results table updated") instead."""
    from adapters.cli import main

    readme = tmp_path / "README.md"
    readme.write_text(f"{MARKERS[0]}\nrows\n{MARKERS[1]}\n")
    missing = tmp_path / "no-such-catalog"
    assert main(["results", "--catalog", str(missing), "--readme", str(readme)]) == 2
    assert f"{missing}: no such adapter catalogue folder" in capsys.readouterr().err
    assert main(["adapters", "--catalog", str(missing)]) == 2
    assert f"{missing}: no such adapter catalogue folder" in capsys.readouterr().err
    assert main(["bench", "table", "--results", str(missing), "--readme", str(readme)]) == 2
    assert f"{missing}: no such results folder" in capsys.readouterr().err
    assert "rows" in readme.read_text()


def test_the_targets_shown_are_the_specs_not_those_recorded_when_it_was_evaluated(tmp_path):
    """Targets live in the spec: changing one there changes the table at the next `adapterlab results`."""
    catalog = write_catalog(tmp_path / "catalog", f1=0.97)  # metrics.json recorded f1 >= 0.95
    write_spam_spec(catalog, targets="{f1: 0.98, accuracy: {above_base: true}}")
    text = table(evaluated_adapters(catalog))
    assert "| f1 | 0.200 | 0.400 | 0.970 | >= 0.98 ❌ |" in text
    assert "| accuracy | 0.500 | 0.500 | 0.500 | > base (0.500) ❌ |" in text
    write_spam_spec(catalog, targets="{}")
    assert "| f1 | 0.200 | 0.400 | 0.970 |  |" in table(evaluated_adapters(catalog))
    (catalog / "spam" / "metrics.json").unlink()  # an adapter not evaluated has no rows
    assert "spam" not in table(evaluated_adapters(catalog))
