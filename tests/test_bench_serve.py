"""`adapterlab bench serve` and the serving paths it measures, on the tiny model (no timing asserts):
adapter switching between requests, concurrent streams, prefix-cached scoring, the README table."""

from __future__ import annotations

import shutil

import pytest

from adapters import Runtime
from benchmarks.serve import bench_adapter_switch, bench_classify_during_streams, bench_concurrent_streams, max_overlap
from adapters.catalog import CATALOG_DIR, load_catalog
from conftest import train_tiny_lora

SPAMMY = ["win a free prize call now", "free cash prize win now", "call now to win cash"]
HAMMY = ["meet for dinner tonight", "lecture notes from today", "hello see you at dinner"]


@pytest.fixture(scope="module")
def trained_weights(tiny_base, tmp_path_factory):
    """spam and oncology LoRA weights trained a few steps on the tiny base, once for this module."""
    specs = load_catalog(CATALOG_DIR)
    out = tmp_path_factory.mktemp("weights")
    train_tiny_lora(tiny_base, specs["spam"], [(t, "spam") for t in SPAMMY] + [(t, "ham") for t in HAMMY],
                    out / "spam", steps=10)
    train_tiny_lora(tiny_base, specs["oncology"], [(t, '{"stage": "IV"}') for t in SPAMMY],
                    out / "oncology", steps=10, seed=1)
    return out


@pytest.fixture()
def two_adapters(catalog, trained_weights):
    """The catalogue with spam and oncology trained (different weights, same base)."""
    for name in ("spam", "oncology"):
        for file in (trained_weights / name).iterdir():
            shutil.copy(file, catalog / name / file.name)
    return catalog


def runtime(tiny_base, catalog) -> Runtime:
    return Runtime.local(catalog, base=str(tiny_base), progress=False)


def flat(rows: list[list[float]]) -> list[float]:
    return [value for row in rows for value in row]


def test_switching_adapters_in_any_order_scores_like_a_fresh_runtime(tiny_base, two_adapters):
    prompts, options = ["win a prize", "dinner tonight"], [["spam", "ham"]] * 2
    order = ["spam", None, "oncology", "oncology", None, None, "spam", "oncology", "spam"]
    expected = {}
    for adapter in dict.fromkeys(order):
        expected[adapter] = flat(runtime(tiny_base, two_adapters).backend.score(adapter, prompts, options))
    backend = runtime(tiny_base, two_adapters).backend
    for adapter in order:
        assert flat(backend.score(adapter, prompts, options)) == pytest.approx(expected[adapter], abs=1e-5)
    assert expected["spam"] != pytest.approx(expected[None], abs=1e-3)  # the adapters do change scores
    assert expected["spam"] != pytest.approx(expected["oncology"], abs=1e-3)


def test_an_unknown_adapter_is_refused_naming_the_loaded_ones(tiny_base, two_adapters):
    backend = runtime(tiny_base, two_adapters).backend
    with pytest.raises(KeyError, match="'medquad' is not loaded.*oncology.*spam"):
        backend.activate("medquad")


def test_adapter_switch_benchmark_cycles_every_adapter_and_the_base(tiny_base, two_adapters):
    result = bench_adapter_switch(runtime(tiny_base, two_adapters).backend, rounds=2)
    assert result["cycle"] == ["oncology", "spam", "base"]
    assert result["switches"] == 6
    assert "activate" in result["definition"]
    for key in ("switch_ms", "to_adapter_ms", "to_base_ms", "from_base_ms", "same_adapter_ms"):
        assert result[key]["p50"] >= 0 and result[key]["p95"] >= result[key]["p50"]
    assert set(result["request"]) == {"cycling_ms_p50", "same_adapter_ms_p50", "difference_ms"}


def test_adapter_switch_benchmark_says_why_it_is_skipped_without_adapters(tiny_base, catalog):
    result = bench_adapter_switch(runtime(tiny_base, catalog).backend, rounds=2)
    assert result == {"skipped": "no in-process adapters loaded (nothing to switch)"}


def test_concurrent_streams_cycle_through_adapters_and_base_and_add_up(tiny_base, two_adapters):
    rt = runtime(tiny_base, two_adapters)
    result = bench_concurrent_streams(rt, streams=4, tokens=3)
    for way in ("batched", "one_at_a_time"):
        measured = result[way]
        streams = measured["per_stream"]
        assert [s["adapter"] for s in streams] == ["oncology", "spam", "base", "oncology"]
        assert measured["total_tokens"] == sum(s["tokens"] for s in streams) > 0
        assert all(0 <= s["ttft_ms"] <= s["seconds"] * 1000 + 1 for s in streams)  # + rounding
        assert measured["wall_seconds"] >= max(s["seconds"] for s in streams) - 0.01
    assert result["one_at_a_time"]["max_streams_decoding_at_once"] == 1  # max_stream_batch = 1: never two
    assert 1 <= result["batched"]["max_streams_decoding_at_once"] <= 4  # how many share a batch depends on arrival
    assert result["batched"]["total_tokens"] == result["one_at_a_time"]["total_tokens"]  # greedy, same answers
    assert result["speedup_batched_over_one_at_a_time"] == pytest.approx(
        result["batched"]["aggregate_tokens_per_s"] / result["one_at_a_time"]["aggregate_tokens_per_s"], abs=0.01)
    assert result["served_by_default"] == "batched" and rt.backend.max_stream_batch > 1  # on a CPU; put back
    assert "joins them between two steps" in result["notes"]


def test_classify_during_streams_measures_checks_made_while_the_streams_decode_both_ways(tiny_base, two_adapters):
    rt = runtime(tiny_base, two_adapters)
    result = bench_classify_during_streams(rt, streams=2, tokens=40, base=False)
    for way in ("lent_between_steps", "kept_to_the_end"):
        measured = result[way]
        assert len(measured["checks_per_round"]) == result["rounds"] and measured["checks"] == sum(measured["checks_per_round"])
        assert all(n >= 1 for n in measured["checks_per_round"])  # each round made a check while the streams ran
        assert 0 < measured["latency_ms"]["p50"] <= measured["latency_ms"]["max"]
        assert measured["streams_aggregate_tokens_per_s"] > 0
    assert result["served_by_default"] == "lent_between_steps" and rt.backend.lend_between_steps  # put back


@pytest.mark.parametrize(("intervals", "expected"), [
    ([], 0), ([(0, 1)], 1), ([(0, 1), (1, 2), (2, 3)], 1), ([(0, 2), (1, 3)], 2),
    ([(0, 10), (1, 2), (1.5, 3), (2.5, 4)], 3)])
def test_max_overlap_counts_intervals_open_at_one_moment(intervals, expected):
    assert max_overlap(intervals) == expected


# --- prefix-cached scoring -------------------------------------------------------------------

def spam_prompts(rt: Runtime, texts: list[str], system: str | None = None) -> tuple[list[str], list, str]:
    """Rendered spam prompts, the label continuations for each, and the template prefix."""
    from adapters.prompts import task_messages

    spec = rt.spec("spam")
    prompts = [rt.backend.render(task_messages(spec, t, system=system)) for t in texts]
    labels = [rt._label_continuation(spec, label) for label in spec.labels]
    return prompts, [labels] * len(prompts), rt._task_prompts(spec, texts, system, ())[1]


@pytest.mark.parametrize("adapter", ["spam", None])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_prefix_cached_scores_equal_full_scores(tiny_base, two_adapters, adapter, batch_size):
    rt = runtime(tiny_base, two_adapters)
    texts = [*SPAMMY, *HAMMY, "x", "Message: a message that starts like the template's own lead-in"]
    prompts, options, prefix = spam_prompts(rt, texts)
    full = rt.backend.score(adapter, prompts, options, batch_size=batch_size)
    assert rt.backend.cached_prefixes() == []
    cached = rt.backend.score(adapter, prompts, options, batch_size=batch_size, shared_prefix=prefix)
    (entry,) = rt.backend.cached_prefixes()
    assert entry[0] == adapter and entry[1] >= 8  # the cached path really ran
    assert flat(cached) == pytest.approx(flat(full), abs=1e-4)
    again = rt.backend.score(adapter, prompts, options, batch_size=batch_size, shared_prefix=prefix)
    assert flat(again) == pytest.approx(flat(full), abs=1e-4)  # reused, not consumed by the first call
    assert len(rt.backend.cached_prefixes()) == 1


def test_classify_uses_one_cached_prefix_per_adapter_and_matches_uncached_scoring(tiny_base, two_adapters):
    rt = runtime(tiny_base, two_adapters)
    tuned, base = rt.classify("spam", SPAMMY + HAMMY, batch_size=4), rt.classify("spam", HAMMY, base=True)
    assert [adapter for adapter, _ in rt.backend.cached_prefixes()] == ["spam", None]
    prompts, options, _ = spam_prompts(rt, SPAMMY + HAMMY)
    full = rt.backend.score("spam", prompts, options)
    from adapters.runtime import _softmax

    assert [r.probs["spam"] for r in tuned] == pytest.approx([_softmax(row)[1] for row in full], abs=1e-4)
    assert len(base) == 3


# texts that a shortcut through the template would be most likely to get wrong
AWKWARD = ["x", "  padded on both sides \n", "{text} and {{ braces }}", "<b>markup</b> & \"quotes\"",
           "line one\nline two", "ünïcödé £900 — 💊", "Message: a text that starts like the template's lead-in",
           "<|im_end|> a special token typed by a user"]


def counting_renders(rt: Runtime) -> list:
    """Make the backend record every chat-template render; returns the record."""
    calls, render = [], rt.backend.render
    rt.backend.render = lambda messages: calls.append(messages) or render(messages)
    return calls


@pytest.mark.parametrize("system", [None, "Answer spam or ham."])
def test_task_prompts_fill_the_template_once_and_equal_rendering_each_text(tiny_base, catalog, system):
    from adapters.prompts import task_messages

    rt = runtime(tiny_base, catalog)
    spec, examples = rt.spec("spam"), [("free cash", "spam"), ("dinner?", "ham")]
    texts = AWKWARD * 8
    want = [rt.backend.render(task_messages(spec, t, system=system, examples=examples)) for t in texts]
    renders = counting_renders(rt)
    assert rt._task_prompts(spec, texts, system, examples)[0] == want
    assert len(renders) <= 3  # the marker, the probe and the first text, not one per text


def test_a_template_that_rewrites_messages_gets_each_text_rendered(tiny_base, catalog):
    from adapters.prompts import task_messages

    rt = runtime(tiny_base, catalog)
    rt.backend.tokenizer.chat_template = rt.backend.tokenizer.chat_template.replace(
        "message['content']", "message['content'] | trim")
    spec = rt.spec("spam")
    want = [rt.backend.render(task_messages(spec, t)) for t in AWKWARD]
    assert "padded on both sides<|im_end|>" in want[1]  # the template really trims
    renders = counting_renders(rt)
    assert rt._task_prompts(spec, AWKWARD, None, ())[0] == want
    assert len(renders) > len(AWKWARD)


def test_prompt_ids_tokenize_the_head_once_and_equal_whole_tokenization(tiny_base, catalog):
    rt = runtime(tiny_base, catalog)
    prompts, _, prefix = spam_prompts(rt, AWKWARD)
    backend = rt.backend
    assert backend._special_head(prefix).endswith("<|im_start|>")
    encoded = []
    encode = backend.encode
    backend.encode = lambda texts, **kw: encoded.append(texts) or encode(texts, **kw)
    got = backend._prompt_ids(prompts, prefix)
    assert got == encode(prompts)["input_ids"]
    batch = next(texts for texts in encoded if isinstance(texts, list))
    assert not any("You are an SMS spam filter" in text for text in batch)  # the head was not re-tokenized
    assert backend._prompt_ids(prompts, "") == got  # no prefix: every prompt whole


def test_prompt_ids_fall_back_to_whole_prompts_where_the_head_would_tokenize_differently(tiny_base, catalog):
    rt = runtime(tiny_base, catalog)
    prompts, _, prefix = spam_prompts(rt, AWKWARD)
    whole = rt.backend.encode(prompts)["input_ids"]
    # a head cut inside a word ("...Message: Me" + "ssage"): its tokens are not the prompt's
    rt.backend._special_head = lambda text: prompts[0][:prompts[0].index("Message:") + 2]
    assert rt.backend._prompt_ids(prompts, prefix) == whole


def test_special_head_passes_over_special_tokens_that_swallow_the_space_after_them(tiny_base, catalog):
    from tokenizers import AddedToken

    backend = runtime(tiny_base, catalog).backend
    backend.tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken("<|sep|>", rstrip=True)]})
    assert backend._special_head("<|im_start|>user\nhi<|sep|> there") == "<|im_start|>"
    assert backend._special_head("<|im_start|>user\nhi<|im_end|>\nthere") == "<|im_start|>user\nhi<|im_end|>"
    assert backend._special_head("no special tokens here") == ""


def test_a_prefix_the_prompts_do_not_share_changes_nothing(tiny_base, two_adapters):
    rt = runtime(tiny_base, two_adapters)
    prompts, options, _ = spam_prompts(rt, SPAMMY)
    full = rt.backend.score("spam", prompts, options)
    unrelated = rt.backend.score("spam", prompts, options, shared_prefix="lecture notes from today " * 4)
    assert flat(unrelated) == pytest.approx(flat(full), abs=1e-6)
    assert rt.backend.cached_prefixes() == []


def test_prefix_cache_is_bounded_and_emptied_when_an_adapter_is_added(tiny_base, two_adapters):
    from adapters.backends import PREFIX_CACHE_ENTRIES

    rt = runtime(tiny_base, two_adapters)
    for i in range(PREFIX_CACHE_ENTRIES + 2):
        rt.classify("spam", ["hello"], system=f"You are an SMS spam filter number {i}. Reply with one word.")
    assert len(rt.backend.cached_prefixes()) == PREFIX_CACHE_ENTRIES
    rt.backend.add_adapter("spam_again", two_adapters / "spam")
    assert rt.backend.cached_prefixes() == []


@pytest.mark.parametrize(("prefix", "prompts", "expected"), [
    (list(range(10)), [list(range(20))], 9),  # the prefix's last token may merge with the input's
    (list(range(12)), [list(range(20)), [*range(10), 99, 100]], 10),  # the prompts share 10
    (list(range(12)), [list(range(10))], 9),  # the prompt keeps its last token
    (list(range(10)), [[*range(7), 99]], 0),  # fewer than MIN_CACHED_PREFIX shared: not worth a pass
    ([], [list(range(20))], 0)])
def test_shared_prefix_length_counts_tokens_every_prompt_shares(prefix, prompts, expected):
    from adapters.backends import shared_prefix_length

    assert shared_prefix_length(prefix, prompts) == expected


# --- the README table ------------------------------------------------------------------------

SERVE_H100 = {
    "benchmark": "serve", "device": "NVIDIA H100 80GB HBM3", "torch": "2.9.0", "transformers": "5.17.0",
    "peft": "0.18.0", "date": "2026-11-24T10:00:00+00:00", "command": "adapterlab bench serve",
    "classify": {"base": False, "latency_ms_p50": 12.34, "latency_ms_p95": 15.0, "batch_size": 64,
                 "batched_messages_per_s": 2345.6},
    "generate": {"max_new_tokens": 64, "ttft_ms_p50": 61.2, "decode_tokens_per_s": 312.5},
    "adapter_switch": {"switch_ms": {"p50": 3.21, "p95": 4.0}, "to_adapter_ms": {"p50": 3.0},
                       "to_base_ms": {"p50": 2.0}, "from_base_ms": {"p50": 5.0},
                       "same_adapter_ms": {"p50": 0.004}},
    "concurrent_streams": {"streams": 8, "aggregate_tokens_per_s": 287.4, "wall_seconds": 1.9,
                           "ttft_ms": {"p50": 700.0}, "max_streams_decoding_at_once": 1},
    "classify_during_streams": {
        "streams": 8, "served_by_default": "lent_between_steps",
        "lent_between_steps": {"checks": 40, "latency_ms": {"p50": 61.5, "p95": 90.2, "max": 120.0},
                               "streams_aggregate_tokens_per_s": 250.1},
        "kept_to_the_end": {"checks": 3, "latency_ms": {"p50": 900.4, "p95": 1500.0, "max": 1700.9},
                            "streams_aggregate_tokens_per_s": 280.2}},
}
TRAIN_H100 = {
    "benchmark": "train", "device": "NVIDIA H100 80GB HBM3", "device_kind": "cuda", "trl": "0.20.0",
    "date": "2026-11-24T11:00:00+00:00", "command": "adapterlab bench train --adapter spam --device cuda",
    "recipes": {name: {"tokens_per_s": tps, "validation_loss": loss, "peak_gpu_memory_bytes": 3 * 2**30}
                for name, tps, loss in (("reference", 10111.0, 0.5012), ("strong_baseline", 20222.0, 0.4321),
                                        ("adapterlab", 40444.0, 0.4123))},
    "ratios": {"tokens_per_s_adapterlab_over_reference": 4.0,
               "tokens_per_s_adapterlab_over_strong_baseline": 2.0},
}


@pytest.fixture()
def results_and_readme(tmp_path):
    import json

    results = tmp_path / "results"
    results.mkdir()
    (results / "serve-cuda-h100.json").write_text(json.dumps(SERVE_H100))
    (results / "train-cuda.json").write_text(json.dumps(TRAIN_H100))
    (results / "train-qlora-8b.json").write_text(json.dumps(
        {"benchmark": "train-qlora", "device": "NVIDIA H100 80GB HBM3", "device_kind": "cuda", "shape": "llama-3.1-8b",
         "sequence_length": 2048, "peak_gpu_memory_gib": 21.5, "tokens_per_s": 1500.0, "steps": 12}))
    (results / "train-unknown.json").write_text(json.dumps({"benchmark": "train-distill", "x": 1}))
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\n## Benchmarks\n\n<!-- bench-table:start -->\nold table\n"
                      "<!-- bench-table:end -->\n\n## Tests\n")
    return results, readme


def table_command(results, readme, *extra) -> list[str]:
    return ["bench", "table", "--results", str(results), "--readme", str(readme), *extra]


def test_the_readme_table_holds_the_numbers_and_targets_of_each_result(results_and_readme):
    from adapters.cli import main

    results, readme = results_and_readme
    assert main(table_command(results, readme)) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# project\n") and text.endswith("## Tests\n")
    rows = {line.split(" | ")[2]: line for line in text.splitlines() if line.startswith("| `bench")}
    assert "p50 12.3 ms" in rows["classify one message (spam adapter), latency"]
    assert "2,345.6 msg/s" in rows["classify batched (64 messages)"]
    assert rows["classify batched (64 messages)"].endswith(">= 2,000 msg/s (H100) ✅ |")
    assert rows["generate one stream, time to first token"].endswith("p50 <= 50 ms (H100) ❌ |")
    assert "312.5 tokens/s" in rows["generate one stream, decode (64 new tokens)"]
    assert "p50 3.21 ms" in rows["adapter switch between requests"] and "❌" in rows["adapter switch between requests"]
    assert "287.4 tokens/s aggregate" in rows["8 concurrent streams, adapters + base"]
    during = rows["classify one message while 8 streams decode, latency"]
    assert "lend the model between steps (the default): p50 62 ms" in during and "end: p50 900 ms, max 1,701 ms" in during
    assert rows["classify one message (spam adapter), latency"].endswith(" |  |")  # the CPU target is not the H100's
    assert "40,444.0 real tokens/s, validation loss 0.4123, peak GPU memory 3.00 GiB" in rows["train, recipe `adapterlab`"]
    assert rows["train, adapterlab speed-up over `reference` (real tokens/s)"].endswith("| ×4.00 | >= 10x (H100) ❌ |")
    assert rows["train, adapterlab speed-up over `strong_baseline` (real tokens/s)"].endswith("| ×2.00 | >= 3x (H100) ❌ |")
    assert rows["train, adapterlab validation loss vs the Trainer recipes"].endswith(
        "| 0.4123 vs 0.4321–0.5012 | no worse than the others ✅ |")
    qlora = "QLoRA train, llama-3.1-8b (random weights), sequence 2048"
    assert rows[f"{qlora}, peak GPU memory"].endswith("| 21.50 GiB | <= 20 GiB (H100) ❌ |")
    assert "1,500.0 real tokens/s over 12 steps" in rows[f"{qlora}, throughput"]
    assert "`train-unknown.json` (benchmark 'train-distill')" in text
    assert "not run yet" not in text  # both CUDA results are there
    assert "- `serve-cuda-h100.json`: `adapterlab bench serve` on NVIDIA H100 80GB HBM3, 2026-11-24; " \
           "torch 2.9.0, transformers 5.17.0, peft 0.18.0" in text


def test_regenerating_the_readme_table_is_idempotent_and_check_reports_staleness(results_and_readme):
    from adapters.cli import main

    results, readme = results_and_readme
    check = table_command(results, readme, "--check")
    assert main(check) == 1
    assert main(check[:-1]) == 0
    first = readme.read_text()
    assert main(check[:-1]) == 0
    assert readme.read_text() == first
    assert main(check) == 0


def test_a_cpu_result_alone_leaves_cuda_rows_pending_with_their_targets(tmp_path):
    import json

    from benchmarks.table import table

    cpu = {**SERVE_H100, "device": "CPU x86_64, 2 cores, 2 threads"}
    text = table([("serve-cpu.json", json.loads(json.dumps(cpu)))])
    assert "p50 <= 150 ms (2-core CPU) ✅" in text
    assert "| `bench serve` on CUDA (H100) | H100 |  | not run yet (needs the GPU machine) | " \
           ">= 2,000 msg/s; p50 <= 50 ms; >= 300 tokens/s; <= 1 ms |" in text
    assert "`bench train` on CUDA (H100) | H100 |  | not run yet" in text


def test_missing_markers_and_broken_results_are_named_and_nothing_is_written(results_and_readme, capsys):
    from adapters.cli import main

    results, readme = results_and_readme
    readme.write_text("# no markers\n")
    assert main(table_command(results, readme)) == 2
    assert "README.md: no <!-- bench-table:start --> ... <!-- bench-table:end --> pair" in capsys.readouterr().err
    readme.write_text("<!-- bench-table:start -->\nold table\n<!-- bench-table:end -->\n")
    (results / "serve-bad.json").write_text("{not json")
    assert main(table_command(results, readme)) == 2
    assert "serve-bad.json: not valid JSON" in capsys.readouterr().err
    assert "old table" in readme.read_text()


def test_the_committed_readme_table_matches_the_committed_results():
    from adapters.files import with_table
    from adapters.results_table import README
    from benchmarks.table import END, RESULTS_DIR, START, read_results, table

    text = README.read_text(encoding="utf-8")
    assert with_table(text, table(read_results(RESULTS_DIR)), README, (START, END)) == text, "run `adapterlab bench table`"


def test_bench_serve_writes_every_measure_to_json(tiny_base, two_adapters, tmp_path):
    import json

    from adapters.cli import main

    out = tmp_path / "serve.json"
    rc = main(["bench", "serve", "--catalog", str(two_adapters), "--base-model", str(tiny_base),
               "--calls", "2", "--batch", "3", "--batch-runs", "2", "--runs", "1", "--tokens", "3",
               "--switch-rounds", "1", "--streams", "2", "--output", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "serve" and result["device"].startswith("CPU")
    assert {"torch", "transformers", "peft", "date", "command"} <= set(result)
    classify = result["classify"]
    assert classify["adapter"] == "spam" and classify["base"] is False and classify["batch_size"] == 3
    assert classify["batched_runs"] == 2 and classify["batched_first_call_messages_per_s"] > 0
    assert 8 <= classify["cached_prefix_tokens"] < classify["prompt_tokens"]
    assert result["generate"]["max_new_tokens"] == 3
    assert result["adapter_switch"]["cycle"] == ["oncology", "spam", "base"]
    assert [s["adapter"] for s in result["concurrent_streams"]["batched"]["per_stream"]] == ["oncology", "spam"]
    assert result["classify_during_streams"]["streams"] == 2


@pytest.mark.parametrize(("device", "slug"), [("NVIDIA H100 80GB HBM3", "cuda-h100"), ("NVIDIA H200", "cuda-h200"),
                                              ("CPU x86_64, 2 cores, 2 threads", "cpu")])
def test_result_files_are_named_after_the_device_kind(device, slug):
    from benchmarks.serve import device_slug

    assert device_slug(device) == slug


def test_bench_serve_profiles_the_batched_classify_by_function(tiny_base, two_adapters, tmp_path):
    import json

    from adapters.cli import main

    out = tmp_path / "serve.json"
    rc = main(["bench", "serve", "--catalog", str(two_adapters), "--base-model", str(tiny_base), "--calls", "1",
               "--batch", "4", "--skip-generate", "--switch-rounds", "1", "--streams", "0", "--profile",
               "--output", str(out)])
    assert rc == 0
    profile = json.loads(out.read_text())["classify_profile"]
    assert profile["batch_size"] == 4 and profile["table"] == "serve-profile.txt"
    # the model's scoring (cProfile under torch 2.11 lost Runtime.classify itself from the list)
    assert any("score" in name for name in profile["top_cumulative_ms"]) and profile["wall_ms"] > 0
    assert "cumulative" in (tmp_path / "serve-profile.txt").read_text()


def test_bench_serve_on_a_catalogue_without_spam_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    from adapters.cli import main
    from adapters.runtime import Runtime

    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "mine").mkdir()
    assert main(["bench", "serve", "--catalog", str(tmp_path / "mine"), "--device", "cpu"]) == 2
    assert "has no adapter called spam" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["serve"], ["train"], ["qlora", "--shape", "tiny"]])
def test_a_bench_output_that_cannot_be_written_is_refused_before_running(command, tmp_path, capsys, monkeypatch):
    """`bench serve --output FILE/x.json` measured for minutes, then ended with "[Errno 17] File exists"."""
    from adapters.base_models import LoadOptions
    from adapters.cli import main
    from adapters.runtime import Runtime

    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(LoadOptions, "torch_device", lambda self: pytest.fail("the benchmark went on"))
    (tmp_path / "a-file").write_text("")
    output = tmp_path / "a-file" / "result.json"
    assert main(["bench", *command, "--device", "cpu", "--output", str(output)]) == 2
    assert f"--output {output}: {tmp_path / 'a-file'} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--calls", "--batch", "--runs", "--tokens", "--switch-rounds"])
def test_bench_serve_refuses_a_count_below_one_before_loading(option, capsys, monkeypatch):
    """`--batch 0` ran until after the model loaded, then ended with "range() arg 3 must not be zero"."""
    from adapters.cli import main
    from adapters.runtime import Runtime

    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit):
        main(["bench", "serve", option, "0", "--device", "cpu"])
    assert f"argument {option}: must be >= 1, got 0" in capsys.readouterr().err


def test_the_decoder_check_row_names_what_the_graph_decoder_was_compared_with():
    """The H200 result compared it with the row decoder, and the table said `generate`."""
    from benchmarks.table import serve_rows

    def row(definition: str) -> str:
        result = {"device": "NVIDIA H200", "decoder_check": {"definition": definition, "base": {"identical": True}}}
        return next(r.measure for r in serve_rows("serve-cuda-h200.json", result) if "CUDA-graph" in r.measure)

    assert row("... static decoder vs. the row decoder (LoRA unmerged) ...") == \
        "CUDA-graph decoder vs the row decoder, greedy text"
    assert row("... static decoder vs. model.generate on a batch ...") == "CUDA-graph decoder vs `generate`, greedy text"


def test_bench_serve_refuses_a_negative_stream_count_before_it_runs(capsys):
    from adapters.cli import main

    with pytest.raises(SystemExit) as exited:  # it had been taken as 0: no stream benchmark, no word
        main(["bench", "serve", "--streams", "-1"])
    assert exited.value.code == 2 and "--streams: must be >= 0, got -1" in capsys.readouterr().err
