"""`adapterlab bench serve` and the serving paths it measures, on the tiny model (no timing asserts):
adapter switching between requests, concurrent streams, prefix-cached scoring, the README table."""

from __future__ import annotations

import pytest

from adapters import Runtime
from adapters.bench import bench_adapter_switch, bench_concurrent_streams, max_overlap
from adapters.catalog import load_catalog
from conftest import train_tiny_lora

SPAMMY = ["win a free prize call now", "free cash prize win now", "call now to win cash"]
HAMMY = ["meet for dinner tonight", "lecture notes from today", "hello see you at dinner"]


@pytest.fixture()
def two_adapters(tiny_base, catalog):
    """The catalogue with spam and oncology trained a few steps (different weights, same base)."""
    specs = load_catalog(catalog)
    train_tiny_lora(tiny_base, specs["spam"], [(t, "spam") for t in SPAMMY] + [(t, "ham") for t in HAMMY],
                    specs["spam"].directory, steps=10)
    train_tiny_lora(tiny_base, specs["oncology"], [(t, '{"stage": "IV"}') for t in SPAMMY],
                    specs["oncology"].directory, steps=10, seed=1)
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
    result = bench_concurrent_streams(runtime(tiny_base, two_adapters), streams=4, tokens=3)
    streams = result["per_stream"]
    assert [s["adapter"] for s in streams] == ["oncology", "spam", "base", "oncology"]
    assert result["total_tokens"] == sum(s["tokens"] for s in streams) > 0
    assert all(0 <= s["ttft_ms"] <= s["seconds"] * 1000 + 1 for s in streams)  # + rounding
    assert result["wall_seconds"] >= max(s["seconds"] for s in streams) - 0.01
    assert 1 <= result["max_streams_decoding_at_once"] <= 4  # 1 in practice (one model lock), not raced on
    assert "lock" in result["notes"]


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
    return prompts, [labels] * len(prompts), rt._template_prefix(spec, system, ())


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
