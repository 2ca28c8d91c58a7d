"""metrics.json as everything shows it: the spec's targets judged one way for the card, the README
table and the app's page."""

from __future__ import annotations

import dataclasses

from adapters.catalog import load_catalog
from adapters.metrics_file import check_targets
from adapters.spec import TargetSpec


def test_targets_are_judged_as_the_spec_says_against_the_fine_tuned_and_base_values():
    spec = dataclasses.replace(load_catalog()["medquad"], targets=(
        TargetSpec("rougeL", at_least=0.25, at_least_base_plus=0.10), TargetSpec("bertscore_f1", above_base=True)))
    variants = {"base": {"rougeL": 0.16, "bertscore_f1": 0.57},
                "fine_tuned": {"rougeL": 0.255, "bertscore_f1": 0.57}}
    assert check_targets(spec, variants) == [
        {"metric": "rougeL", "target": ">= 0.25", "value": 0.255, "met": True},
        {"metric": "rougeL", "target": ">= base (0.160) + 0.1", "value": 0.255, "met": False},
        {"metric": "bertscore_f1", "target": "> base (0.570)", "value": 0.57, "met": False},  # equal is not above
    ]


def test_an_at_most_target_is_met_at_or_below_its_bound():
    """Perplexity and repaired_rate are better lower; a target says so with ``at_most``."""
    spec = dataclasses.replace(load_catalog()["medquad"], targets=(TargetSpec("perplexity", at_most=5.0),))
    judged = [check_targets(spec, {"fine_tuned": {"perplexity": value}})[0]["met"] for value in (4.9, 5.0, 5.1)]
    assert judged == [True, True, False]
    assert check_targets(spec, {"fine_tuned": {"perplexity": 4.9}})[0]["target"] == "<= 5.0"


def test_a_target_on_the_base_is_not_met_when_the_base_was_not_measured():
    """It was checked against 0 (`--variants fine_tuned` met "> base" with any positive value)."""
    spec = dataclasses.replace(load_catalog()["medquad"], targets=(TargetSpec("bertscore_f1", above_base=True),))
    checks = check_targets(spec, {"base": {"skipped": "not asked for"}, "fine_tuned": {"bertscore_f1": 0.6}})
    assert checks == [{"metric": "bertscore_f1", "target": "> base", "value": 0.6, "met": False}]
    unmeasured = check_targets(spec, {"base": {"bertscore_f1": 0.5}, "fine_tuned": {"skipped": "not asked for"}})
    assert unmeasured == [{"metric": "bertscore_f1", "target": "> base (0.500)", "value": None, "met": False}]



def test_eval_keeps_a_fuller_measurement_read_through_the_checked_reader(tmp_path):
    from training.cli import measurements_lost

    path = tmp_path / "metrics.json"
    assert measurements_lost(path, ("fine_tuned",), 10) is None  # none yet
    for broken in ("{not json", '{"variants": [1]}', '{"variants": {"base": {"f1": 0.5}}}'):  # the last: no test_examples
        path.write_text(broken)
        assert measurements_lost(path, ("fine_tuned",), 10) is None  # not one evaluation wrote: nothing to keep
    path.write_text('{"test_examples": 50, "variants": {"base": {"f1": 0.5}, "few_shot": {"skipped": "not asked"}, '
                    '"fine_tuned": {"f1": 0.9}}}')
    assert measurements_lost(path, ("base", "fine_tuned"), 50) is None
    assert measurements_lost(path, ("fine_tuned",), 50) == (
        f"{path} holds base, fine_tuned on 50 test examples; this evaluation (fine_tuned on 50) would replace it")
    assert "holds base, fine_tuned on 50" in measurements_lost(path, ("base", "fine_tuned"), 20)


def test_metrics_of_an_adapter_of_another_task_are_refused_naming_the_file(tmp_path):
    """`eval spam --output adapters/oncology` had left spam's metrics there: the results table showed
    them as oncology's, and `adapterlab card oncology` failed with a KeyError traceback."""
    import json

    import pytest

    from adapters.metrics_file import adapter_metrics, read_metrics_file

    spec = dataclasses.replace(load_catalog()["oncology"], directory=tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"adapter": "spam", "task": "classify", "test_examples": 4, "variants": {"base": {"accuracy": 1.0}}}))
    with pytest.raises(ValueError, match=r"metrics\.json: holds the metrics of 'spam', a classify adapter, "
                                         r"not of 'oncology' \(extract\)"):
        adapter_metrics(spec)
    assert read_metrics_file(tmp_path / "metrics.json")["adapter"] == "spam"  # without a spec: its shape only
