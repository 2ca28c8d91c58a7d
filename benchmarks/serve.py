"""Serving benchmarks: latency and throughput of the runtime, written as JSON with the device,
library versions and the exact command, so the README table is generated from them
(``adapterlab bench table``).

``adapterlab bench serve`` measures: spam classification (one message p50/p95, messages/s in a
batch), one generation stream (time to first token p50, decode tokens/s), the cost of switching
adapters between requests, and concurrent streams that use different adapters. Each measure says
how it was taken where that is not obvious (``definition``, ``notes``). Timings never live in tests.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from pathlib import Path

from adapters.catalog import CATALOG_DIR, load_catalog
from adapters.cli import check_output_path, non_negative_int, positive_int
from adapters.environment import environment
from adapters.files import write_text_atomic
from adapters.runtime import Runtime

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SAMPLE_SMS = "URGENT! You have won a £1,000 cash prize. Call 09061234567 now to claim. T&Cs apply."
SAMPLE_QUESTION = "What are the symptoms of type 2 diabetes?"
SAMPLE_NOTE = ("Clinic note: 61-year-old woman with invasive ductal carcinoma of the left breast, stage IIA, "
               "ER/PR positive, HER2 negative. Started on letrozole after lumpectomy; no evidence of disease "
               "at the 6-month follow-up.")
STREAM_INPUTS = {"spam": SAMPLE_SMS, "oncology": SAMPLE_NOTE}  # any other adapter, and base: the question
STREAM_ROUNDS = 3  # of the concurrent-streams benchmark, each one at a time and batched
STREAMS_NOTES = (
    "Batched: streams decode as rows of one key/value cache, each row at its own position with its own adapter "
    "and settings (adapters.row_decoding: one gathered LoRA matmul per projection for all rows; on a GPU each step "
    "a CUDA graph), and a stream that arrives while others decode joins them between two steps (continuous "
    "batching). On a GPU a stream that finds the model free runs alone through the CUDA-graph decoder (adapter "
    "merged) until another stream or a call asks for the model, then goes on as a row. One at a time: max_stream_batch = 1, each stream alone "
    "through the single-stream path (on a GPU, the CUDA-graph decoder). max_streams_decoding_at_once says how "
    "many streams were ever decoding at the same moment. Models the row decoder does not cover (not Llama-"
    "shaped, 4-bit, float16) batch through PEFT's mixed-adapter generate on a CPU and stream one at a time on a GPU.")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def timed_ms(call) -> float:
    """Wall time of ``call()`` in milliseconds."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def p50_p95(values: list[float], digits: int = 3) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    return {"p50": round(statistics.median(values), digits), "p95": round(percentile(values, 95), digits)}


SWITCH_DEFINITION = (
    "switch_ms: wall time of LocalBackend.activate(next) when the next request's adapter differs from the "
    "active one, i.e. exactly what a request pays before its forward pass when the previous request used "
    "another adapter; cycle: every loaded adapter in turn, then the base (adapters disabled). to_adapter: "
    "adapter -> adapter, to_base: adapter -> base, from_base: base -> adapter. same_adapter_ms: the same "
    "call when the adapter does not change. request_ms: p50 of a one-token scoring request "
    "(backend.score on a 3-token prompt) cycling adapters vs repeating one; their difference is a "
    "cross-check of the switch cost that includes everything a request does.")


def bench_adapter_switch(backend, rounds: int) -> dict:
    """p50/p95 cost of changing the active adapter between requests, and of not changing it."""
    names = backend.adapter_names() if hasattr(backend, "activate") else []
    if not names:
        return {"skipped": "no in-process adapters loaded (nothing to switch)"}
    cycle: list[str | None] = [*names, None]
    kinds: dict[str, list[float]] = {"to_adapter": [], "to_base": [], "from_base": []}
    same: list[float] = []
    backend.activate(cycle[-1])
    for i in range(rounds * len(cycle)):
        previous, target = cycle[i % len(cycle) - 1], cycle[i % len(cycle)]
        kind = "to_base" if target is None else "from_base" if previous is None else "to_adapter"
        kinds[kind].append(timed_ms(lambda: backend.activate(target)))
        same.append(timed_ms(lambda: backend.activate(target)))
    switches = [ms for values in kinds.values() for ms in values]
    tiny_prompt, option = "Hello there", [[" friend"]]
    backend.score(cycle[0], [tiny_prompt], option)  # warm-up
    cycling = [timed_ms(lambda: backend.score(cycle[i % len(cycle)], [tiny_prompt], option))
               for i in range(rounds * len(cycle))]
    repeating = [timed_ms(lambda: backend.score(cycle[0], [tiny_prompt], option))
                 for _ in range(rounds * len(cycle))]
    request = {"cycling_ms_p50": round(statistics.median(cycling), 2),
               "same_adapter_ms_p50": round(statistics.median(repeating), 2)}
    request["difference_ms"] = round(request["cycling_ms_p50"] - request["same_adapter_ms_p50"], 2)
    return {"definition": SWITCH_DEFINITION, "cycle": [n or "base" for n in cycle],
            "switches": len(switches), "switch_ms": p50_p95(switches),
            **{f"{kind}_ms": p50_p95(values) for kind, values in kinds.items()},
            "same_adapter_ms": p50_p95(same, digits=4), "request": request}


def bench_classify(runtime: Runtime, adapter: str, base: bool, calls: int, batch: int,
                   batch_runs: int = 3) -> dict:
    """p50/p95 latency of one message, and messages/s when classifying a batch: the median of
    ``batch_runs`` calls after one at that batch size (the first call at a new size also pays for
    the allocator growing and kernels being chosen; it is reported beside)."""
    runtime.classify(adapter, [SAMPLE_SMS], base=base)  # warm-up
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        runtime.classify(adapter, [SAMPLE_SMS], base=base)
        latencies.append((time.perf_counter() - start) * 1000)
    texts = [f"{SAMPLE_SMS} ({i})" for i in range(batch)]
    first, *runs = [timed_ms(lambda: runtime.classify(adapter, texts, base=base, batch_size=batch)) / 1000
                    for _ in range(1 + batch_runs)]
    prompt = runtime.rendered_prompt(adapter, [{"role": "user", "content": SAMPLE_SMS}])
    cached = getattr(runtime.backend, "cached_prefixes", list)()
    return {"adapter": adapter, "base": base, "calls": calls,
            "definition": "wall time of Runtime.classify for one message (the same SMS each call), calls in "
                          "a row on the same adapter (no adapter switch), after one warm-up call",
            "prompt_tokens": runtime.backend.count_tokens(prompt),
            "cached_prefix_tokens": max((n for _, n in cached), default=0),
            "latency_ms_p50": round(statistics.median(latencies), 2),
            "latency_ms_p95": round(percentile(latencies, 95), 2),
            "batch_size": batch, "batched_runs": batch_runs,
            "batched_messages_per_s": round(batch / statistics.median(runs), 1),
            "batched_first_call_messages_per_s": round(batch / first, 1)}


def profile_batched_classify(runtime: Runtime, adapter: str, base: bool, batch: int, out: Path) -> dict:
    """cProfile of one batched classify call: where its wall time goes by Python function (the
    model's forward vs. templates, tokenizer, masks), written to ``out``; the top entries for the JSON."""
    import cProfile
    import io
    import pstats

    texts = [f"{SAMPLE_SMS} [{i}]" for i in range(batch)]
    runtime.classify(adapter, texts, base=base, batch_size=batch)  # warm-up at this batch size
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    runtime.classify(adapter, texts, base=base, batch_size=batch)
    profiler.disable()
    wall = time.perf_counter() - start
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).sort_stats("cumulative")
    stats.print_stats(40)
    write_text_atomic(out, f"{' '.join(['adapterlab', *sys.argv[1:]])}\nbatched classify of {batch} messages, "
                           f"{wall * 1000:.1f} ms wall\n\n{stream.getvalue()}")
    top = sorted(((f"{Path(file).name}:{line}({name})", cumulative) for (file, line, name), (_, _, _, cumulative, _)
                  in stats.stats.items() if not file.startswith("<")), key=lambda item: -item[1])[:15]
    return {"batch_size": batch, "wall_ms": round(wall * 1000, 1), "table": out.name,
            "top_cumulative_ms": {name: round(seconds * 1000, 1) for name, seconds in top}}


def bench_generate(runtime: Runtime, adapter: str | None, base: bool, runs: int, tokens: int) -> dict:
    """Time to first token (p50) and decode tokens/s of one greedy stream."""
    messages = [{"role": "user", "content": SAMPLE_QUESTION}]
    runtime.generate(adapter, messages, base=base, temperature=0, max_new_tokens=4).read()
    ttft, rates = [], []
    tokenizer_count = runtime.backend.count_tokens
    for _ in range(runs):
        g = runtime.generate(adapter, messages, base=base, temperature=0, max_new_tokens=tokens)
        g.read()
        done = time.perf_counter()
        ttft.append((g.first_piece_at - g.started) * 1000)
        produced = tokenizer_count(g.text)
        if produced > 1 and done > g.first_piece_at:
            rates.append((produced - 1) / (done - g.first_piece_at))
    return {"adapter": adapter, "base": base, "runs": runs, "max_new_tokens": tokens,
            "ttft_ms_p50": round(statistics.median(ttft), 1),
            "decode_tokens_per_s": round(statistics.median(rates), 1) if rates else None}


def decoder_check(runtime: Runtime, tokens: int) -> dict:
    """Whether the backend's fast one-prompt decoder (CUDA graphs) gives the greedy text of the path
    that decodes several prompts (rows of the row decoder, or ``generate`` for other models)."""
    from adapters.backends import GenerationParams

    backend = runtime.backend
    decoder = getattr(backend, "_decoder", lambda: None)()
    if decoder is None:
        return {"skipped": "no static decoder on this device: one-prompt requests use generate"}
    params = GenerationParams(temperature=0.0, max_new_tokens=tokens)
    checks = {}
    for adapter in [None, *backend.adapter_names()[:1]]:
        prompt = runtime.rendered_prompt(adapter, [{"role": "user", "content": SAMPLE_QUESTION}])
        fast = backend.complete(adapter, [prompt], params)[0]
        plain = backend.complete(adapter, [prompt, prompt], params)[0]  # two prompts: rows (or generate)
        same = 0
        while same < min(len(fast), len(plain)) and fast[same] == plain[same]:
            same += 1
        checks[adapter or "base"] = {"identical": fast == plain, "common_prefix_chars": same,
                                     "chars": [len(fast), len(plain)]}
    several = "the row decoder (LoRA unmerged, gathered per row)" if backend._rows_apply else "model.generate (PEFT, unmerged)"
    return {"definition": "greedy text of one prompt through the static decoder (CUDA graph; an adapter merged "
                          f"into the base weights) vs. {several} on the same prompt twice; bf16 rounding differs "
                          "between the two paths, so a late divergence is rounding, an early one a bug", **checks,
            "graphs_captured": sum(slot.graph is not None for slot in decoder._slots.values())}


def bench_concurrent_streams(runtime: Runtime, streams: int, tokens: int) -> dict:
    """``streams`` greedy generations started together from threads, cycling through every loaded
    adapter and the base, each on its adapter's kind of input: aggregate tokens/s, wall time, TTFTs;
    decoded one at a time and as batches of up to ``MAX_STREAM_BATCH``, alternated in one process."""
    from adapters.batching import MAX_STREAM_BATCH

    runtime.generate(None, [{"role": "user", "content": "hi"}], temperature=0, max_new_tokens=2).read()
    backend = runtime.backend
    default = backend.max_stream_batch
    ways = {"one_at_a_time": 1, "batched": MAX_STREAM_BATCH}
    runs: dict[str, list[dict]] = {way: [] for way in ways}
    try:
        for _ in range(STREAM_ROUNDS):
            for way, rows in ways.items():
                backend.max_stream_batch = rows
                runs[way].append(_concurrent_run(runtime, streams, tokens))
    finally:
        backend.max_stream_batch = default
    median = {way: median_round(results) for way, results in runs.items()}
    return {"streams": streams, "max_new_tokens": tokens, "rounds": STREAM_ROUNDS,
            "definition": f"median by wall time of {STREAM_ROUNDS} rounds; each round runs the streams one at a "
                          f"time (max_stream_batch = 1), then with max_stream_batch = {MAX_STREAM_BATCH}, in this process",
            "served_by_default": "one_at_a_time" if default == 1 else "batched", "default_max_stream_batch": default,
            **{way: {"max_stream_batch": ways[way], **median[way]} for way in ways},
            "speedup_batched_over_one_at_a_time": round(
                median["batched"]["aggregate_tokens_per_s"] / max(median["one_at_a_time"]["aggregate_tokens_per_s"], 1e-9), 2),
            "notes": STREAMS_NOTES}


def bench_classify_during_streams(runtime: Runtime, streams: int, tokens: int, base: bool) -> dict:
    """One-message spam checks asked one after another while ``streams`` streams decode (those of
    ``bench_concurrent_streams``, served the default way): their latency when the model is lent to
    them between two decoding steps (the default, ``adapters.model_lock``) and when a generation keeps
    it to its end, alternated in one process; and what the loans cost the streams."""
    backend = runtime.backend
    default = backend.lend_between_steps
    ways = {"kept_to_the_end": False, "lent_between_steps": True}
    runs: dict[str, list[dict]] = {way: [] for way in ways}

    def check() -> float:
        return timed_ms(lambda: runtime.classify("spam", [SAMPLE_SMS], base=base))

    check()
    try:
        for _ in range(STREAM_ROUNDS):
            for way, lend in ways.items():
                backend.lend_between_steps = lend
                runs[way].append(_concurrent_run(runtime, streams, tokens, during=check))
    finally:
        backend.lend_between_steps = default

    def summary(results: list[dict]) -> dict:
        latencies = [ms for r in results for ms in r["during_ms"]]
        median = median_round(results)
        return {"checks": len(latencies), "checks_per_round": [len(r["during_ms"]) for r in results],
                "latency_ms": p50_p95(latencies, digits=1) | {"max": round(max(latencies), 1)},
                "streams_wall_seconds": median["wall_seconds"],
                "streams_aggregate_tokens_per_s": median["aggregate_tokens_per_s"]}

    return {"streams": streams, "max_new_tokens": tokens, "rounds": STREAM_ROUNDS,
            "served_by_default": "lent_between_steps" if default else "kept_to_the_end",
            "definition": f"{STREAM_ROUNDS} rounds, each both ways: the streams start together; from the first "
                          "streamed piece until the last stream ends, one spam check after another from this "
                          "thread; every check's latency counts, the streams' figures are the median round's",
            **{way: summary(results) for way, results in runs.items()}}


def median_round(results: list[dict]) -> dict:
    """The round of the median wall time (of an odd number of rounds: the middle one)."""
    return sorted(results, key=lambda r: r["wall_seconds"])[len(results) // 2]


def _concurrent_run(runtime: Runtime, streams: int, tokens: int, during=None) -> dict:
    """``streams`` greedy streams started together; ``during`` (returning milliseconds) is called over
    and over from this thread while they decode, its results under ``during_ms``."""
    import threading

    cycle: list[str | None] = [*runtime.backend.adapter_names(), None]
    plan = [cycle[i % len(cycle)] for i in range(streams)]
    gate = threading.Barrier(streams)
    finished: list[dict] = [{} for _ in plan]
    decoding = threading.Event()

    def one_stream(index: int, adapter: str | None) -> None:
        text = STREAM_INPUTS.get(adapter or "", SAMPLE_QUESTION)
        gate.wait()
        g = runtime.generate(adapter, [{"role": "user", "content": text}], temperature=0, max_new_tokens=tokens)
        for _ in g:
            decoding.set()
        done = time.perf_counter()
        finished[index] = {"started": g.started, "first": g.first_piece_at or done, "done": done,
                           "decoded": g.finished_at or done, "tokens": runtime.backend.count_tokens(g.text),
                           "adapter": adapter or "base"}

    threads = [threading.Thread(target=one_stream, args=(i, a)) for i, a in enumerate(plan)]
    for thread in threads:
        thread.start()
    during_ms: list[float] = []
    if during is not None:
        while not decoding.wait(timeout=0.01) and any(t.is_alive() for t in threads):
            pass
        while any(t.is_alive() for t in threads):
            during_ms.append(during())
    for thread in threads:
        thread.join()
    start = min(f["started"] for f in finished)
    wall = max(f["done"] for f in finished) - start
    total = sum(f["tokens"] for f in finished)
    ttfts = [(f["first"] - f["started"]) * 1000 for f in finished]
    return {"streams": streams, "max_new_tokens": tokens, "wall_seconds": round(wall, 2),
            "total_tokens": total, "aggregate_tokens_per_s": round(total / wall, 1),
            "ttft_ms": p50_p95(ttfts, digits=1) | {"max": round(max(ttfts), 1)},
            # from its first piece read to its decoding's end, in the decoding thread: a stream read
            # after the next one started (its reader not yet scheduled) is not counted as decoding
            "max_streams_decoding_at_once": max_overlap([(min(f["first"], f["decoded"]), f["decoded"])
                                                         for f in finished]),
            "per_stream": [{"adapter": f["adapter"], "tokens": f["tokens"], "ttft_ms": round(t, 1),
                            "seconds": round(f["done"] - f["started"], 3)} for f, t in zip(finished, ttfts)],
            **({"during_ms": [round(ms, 1) for ms in during_ms]} if during is not None else {})}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at one moment (an end closes before a start)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda event: (event[0], event[1]))
    open_now = most = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return most


def run_serve(args) -> int:
    from adapters.base_models import LoadOptions

    if args.output:  # named before minutes of measuring, not when the result is written
        check_output_path(Path(args.output))
    options = LoadOptions(dtype=args.dtype, device=args.device)
    if "spam" not in load_catalog(args.catalog):  # the benchmark times the spam check: refused before loading
        raise ValueError(f"bench serve times the `spam` adapter's checks, and the catalogue {args.catalog} "
                         "has no adapter called spam; give --catalog a catalogue that holds it")
    start = time.perf_counter()
    runtime = Runtime.local(args.catalog, base=args.base_model, options=options)
    load_s = time.perf_counter() - start
    use_base = "spam" not in runtime.backend.adapter_names()
    result = {"benchmark": "serve", **environment(options.torch_device()), "load_seconds": round(load_s, 2),
              "dtype": str(options.torch_dtype()).removeprefix("torch."),
              "note": "adapters disabled (spam not trained yet): base model with the spam prompt"
              if use_base else "trained spam adapter",
              "classify": bench_classify(runtime, "spam", use_base, args.calls, args.batch, args.batch_runs)}
    out = Path(args.output) if args.output else RESULTS_DIR / f"serve-{device_slug(result['device'])}.json"
    if args.profile:
        result["classify_profile"] = profile_batched_classify(
            runtime, "spam", use_base, args.batch, out.with_name(out.stem + "-profile.txt"))
    if not args.skip_generate:
        result["generate"] = bench_generate(runtime, None, False, args.runs, args.tokens)
        adapter = next((a for a in ("medquad", *runtime.backend.adapter_names())
                        if a in runtime.backend.adapter_names()), None)
        if adapter:
            result["generate_with_adapter"] = bench_generate(runtime, adapter, False, args.runs, args.tokens)
        result["decoder_check"] = decoder_check(runtime, args.tokens)
    result["adapter_switch"] = bench_adapter_switch(runtime.backend, args.switch_rounds)
    if not args.skip_generate and args.streams > 0:
        result["concurrent_streams"] = bench_concurrent_streams(runtime, args.streams, args.tokens)
        result["classify_during_streams"] = bench_classify_during_streams(runtime, args.streams, args.tokens,
                                                                          use_base)
    print(json.dumps(result, indent=2))
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def device_slug(device: str) -> str:
    """``cpu``, or ``cuda-`` and the GPU model ("NVIDIA H100 80GB HBM3" -> ``cuda-h100``)."""
    if device.startswith("CPU"):
        return "cpu"
    model = re.search(r"\b[A-Z]\d{2,4}[A-Za-z]?\b", device)
    return "cuda-" + (model.group(0) if model else device.split()[-1]).lower()


def add_parser(bench_sub) -> None:
    serve = bench_sub.add_parser("serve", help="classify latency/throughput, generate TTFT and tokens/s")
    serve.add_argument("--calls", type=positive_int, default=50, help="single-message classify calls")
    serve.add_argument("--batch", type=positive_int, default=64, help="messages in the batched classify run")
    serve.add_argument("--batch-runs", type=positive_int, default=3,
                       help="timed batched classify calls after a warm-up one (their median is reported)")
    serve.add_argument("--runs", type=positive_int, default=5, help="generation runs")
    serve.add_argument("--tokens", type=positive_int, default=64, help="max new tokens per generation run")
    serve.add_argument("--switch-rounds", type=positive_int, default=20,
                       help="times through the cycle of adapters + base when timing adapter switches")
    serve.add_argument("--streams", type=non_negative_int, default=8,
                       help="concurrent generation streams, cycling through the adapters and the base (0: skip)")
    serve.add_argument("--skip-generate", action="store_true", help="no generation benchmarks")
    serve.add_argument("--profile", action="store_true",
                       help="also profile one batched classify call by Python function (*-profile.txt)")
    serve.add_argument("--base-model", default=None, help="base model name, Hub id or folder (default: the specs')")
    serve.add_argument("--catalog", default=str(CATALOG_DIR), help="adapter catalogue folder")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    serve.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    serve.add_argument("--output", default=None,
                       help="JSON path (default: benchmarks/results/serve-<device>.json)")
    serve.set_defaults(func=run_serve)
