"""Row decoding (adapters/row_decoding.py) on a GPU, where each decode step over the rows is replayed
as a CUDA graph: are the streams' texts those of each stream alone, and how fast is it?

``tiny``: a tiny random model (tests/conftest.py) with two random LoRA adapters in float32: six
streams over the base and both adapters queued together, then one that joins a running one; each
text compared with the same stream alone (the CUDA-graph decoder, adapter merged). ``real``: the
embedded model in bf16 with the shipped adapters: 8 mixed streams together and one stream alone,
through the row decoder and the single-stream graph decoder, tokens/s and how many texts match.

Run from the repository root (``CHECK_DEVICE=cpu`` tries the tiny part here) with the wheels of tools/device/setup.sh on PYTHONPATH:
``python3 tools/device/rows_cuda_check.py tiny|real``; the result goes to $OUT/rows-cuda-check-*.json too.
"""
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, "tests")

import torch  # noqa: E402

from adapters.backends import GenerationParams  # noqa: E402
from adapters.batching import MAX_STREAM_BATCH  # noqa: E402
from lend_cuda_check import tiny_backend  # noqa: E402 - this folder is on the path of a script run from it


def together(backend, asks) -> tuple[list[str], float]:
    """The texts of ``asks`` [(adapter, prompt, params)] queued while the model is busy (one batch)."""
    texts: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i, a=a: texts.__setitem__(i, "".join(backend.stream(*a))))
               for i, a in enumerate(asks)]
    with backend._lock.hold():
        for t in threads:
            t.start()
        while backend._streams.waiting() < len(threads):
            time.sleep(0.005)
        started = time.perf_counter()
    for t in threads:
        t.join()
    return [texts[i] for i in range(len(asks))], time.perf_counter() - started


def tiny() -> dict:
    backend = tiny_backend(Path(tempfile.mkdtemp()), os.environ.get("CHECK_DEVICE", "cuda"))
    backend.max_stream_batch = MAX_STREAM_BATCH
    prompt = backend.render([{"role": "user", "content": "hello"}])
    params = GenerationParams(max_new_tokens=100)
    asks = [(adapter, prompt + extra, params) for adapter in (None, "a", "b") for extra in ("", " there")]
    alone = ["".join(backend.stream(*ask)) for ask in asks]  # one stream: the CUDA-graph decoder
    batch, _ = together(backend, asks)
    rows = backend._rows
    report = {"mixed batch of 6 same as alone": [a == b for a, b in zip(alone, batch)],
              "graphs": sorted(f"{r} rows x {c}" for r, c in rows._graphs)}
    long_ask, join_ask = (None, prompt, GenerationParams(max_new_tokens=400)), ("b", prompt + " there", params)
    long_alone = "".join(backend.stream(*long_ask))
    times: dict = {}
    texts: dict = {}

    def ask(name, request):
        pieces = []
        for piece in backend.stream(*request):
            times.setdefault(name, time.perf_counter())
            pieces.append(piece)
        texts[name], times[name + " end"] = "".join(pieces), time.perf_counter()

    # two queued together start the row decoder (one alone would take the graph decoder); a third joins
    first = [threading.Thread(target=ask, args=(name, long_ask)) for name in ("long", "long 2")]
    with backend._lock.hold():
        for t in first:
            t.start()
        while backend._streams.waiting() < 2:
            time.sleep(0.005)
    while "long" not in times:
        time.sleep(0.001)
    joiner = threading.Thread(target=ask, args=("joiner", join_ask))
    joiner.start()
    for t in [*first, joiner]:
        t.join()
    report["joiner same as alone"] = texts["joiner"] == alone[5]
    report["running rows same as alone"] = texts["long"] == long_alone == texts["long 2"]
    report["joiner started before the running rows ended"] = times["joiner"] < times["long end"]
    return report


def real() -> dict:
    from adapters import Runtime
    from benchmarks.serve import SAMPLE_QUESTION, STREAM_INPUTS

    runtime = Runtime.local(progress=False)
    backend = runtime.backend
    backend.max_stream_batch = MAX_STREAM_BATCH
    names = [*backend.adapter_names(), None]
    params = GenerationParams(max_new_tokens=64)
    asks = [(a, runtime.rendered_prompt(a, [{"role": "user", "content": STREAM_INPUTS.get(a or "", SAMPLE_QUESTION)}]),
             params) for a in names * 2]
    tokens = backend.token_counts
    graph_alone = ["".join(backend.stream(*ask)) for ask in asks]
    report: dict = {}
    for rounds in range(2):  # the first round captures graphs
        batch, seconds = together(backend, asks)
        report["8 streams, row decoder: tokens/s"] = round(sum(tokens(batch)) / seconds, 1)
    report["8 streams: texts same as alone"] = sum(a == b for a, b in zip(graph_alone, batch))
    started = time.perf_counter()
    for ask in asks:
        "".join(backend.stream(*ask))
    report["8 streams one at a time, graph decoder: tokens/s"] = round(
        sum(tokens(graph_alone)) / (time.perf_counter() - started), 1)
    graph_decoder = backend._decoder
    backend._decoder = lambda: None  # a lone stream through the row decoder too
    try:
        "".join(backend.stream(*asks[-1]))
        started = time.perf_counter()
        one = "".join(backend.stream(*asks[-1]))
        report["one stream, row decoder: tokens/s"] = round(tokens([one])[0] / (time.perf_counter() - started), 1)
    finally:
        backend._decoder = graph_decoder
    started = time.perf_counter()
    one = "".join(backend.stream(*asks[-1]))
    report["one stream, graph decoder: tokens/s"] = round(tokens([one])[0] / (time.perf_counter() - started), 1)
    report["row decoder step ms (replay + reading the tokens), by rows"] = step_times(backend, asks)
    report["timeline of 8 streams started together (ms)"] = timeline(backend, asks)
    return report


def timeline(backend, asks) -> list:
    """What the decoding thread does when 8 streams start at once, as the bench's concurrent streams
    do: (ms since start, event, ms it took), events being the row decoder's calls and the hand-over."""
    decoder = backend._rows
    events: list = []
    start = time.perf_counter()

    def timed(name, method):
        def wrapper(*args, **kwargs):
            begun = time.perf_counter()
            out = method(*args, **kwargs)
            if name == "step":
                out[1].tolist()
            elif torch.cuda.is_available():
                torch.cuda.synchronize()
            events.append((round((begun - start) * 1000, 1), name, round((time.perf_counter() - begun) * 1000, 2)))
            return out
        return wrapper

    originals = {name: getattr(decoder, name) for name in ("prefill", "step", "reserve", "adopt", "_capture")}
    for name, method in originals.items():
        setattr(decoder, name, timed(name, method))
    try:
        gate = threading.Barrier(len(asks))

        def run(ask):
            gate.wait()
            pieces = iter(backend.stream(*ask))
            next(pieces, None)
            events.append((round((time.perf_counter() - start) * 1000, 1), f"first piece {ask[0]}", 0))
            for _ in pieces:
                pass

        threads = [threading.Thread(target=run, args=(ask,)) for ask in asks]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for name in originals:
            delattr(decoder, name)
    steps = [e for e in events if e[1] == "step"]
    return sorted(e for e in events if e[1] != "step") + [("steps", len(steps), round(sum(e[2] for e in steps), 1))]


def step_times(backend, asks) -> dict:
    """Milliseconds per ``RowDecoder.step`` (graph replay and reading the greedy tokens back), for
    1 to 16 rows at a 512-position cache, median of 50 after 5 warm-up steps."""
    import statistics

    with backend._lock.hold():
        decoder = backend._row_decoder()
        ids = backend.encode(asks[0][1])["input_ids"]
        decoder.reserve(16, 512)
        decoder.prefill(0, [asks[slot % len(asks)][0] for slot in range(16)], [ids] * 16)
        times = {}
        for rows in (1, 2, 4, 8, 16):
            args = ([1] * rows, [len(ids)] * rows, [decoder.adapter_index(asks[i % len(asks)][0]) for i in range(rows)])
            laps = []
            for i in range(55):
                started = time.perf_counter()
                decoder.step(*args)[1].tolist()
                laps.append((time.perf_counter() - started) * 1000)
            times[rows] = round(statistics.median(laps[5:]), 2)
    return times


def main() -> None:
    which = sys.argv[1]
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
              "date": time.strftime("%Y-%m-%d"), "command": f"python3 tools/device/rows_cuda_check.py {which}",
              **(tiny() if which == "tiny" else real())}
    print(json.dumps(report, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"rows-cuda-check-{which}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
