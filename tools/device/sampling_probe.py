"""Sampled streams decoded together: drawn row by row, or all rows at once? (GPU or CPU; analysis)

Starts ``--streams`` Chat-profile answers at once (the base model, temperature 0.7, top-p 0.9, the
app's defaults) and measures their aggregate tokens/s with the rows' draws made together
(``adapters.row_decoding.chosen_tokens``, the default) and one row at a time (as before
2026-11-30), alternating, in one process. Greedy rows are unaffected.

Usage: ``python tools/device/sampling_probe.py [--device cuda] [--streams 8] [--tokens 64] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

QUESTIONS = ["Write a short poem about the sea.", "Explain what a LoRA adapter is.",
             "Give me three tips for sleeping well.", "What is the capital of France and why is it famous?",
             "Tell me a story about a cat.", "How do vaccines work?", "Describe a sunset.",
             "What is machine learning?"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from adapters import LoadOptions, Runtime, row_decoding
    from adapters.backends import GenerationParams

    rt = Runtime.local(only=["medquad"], options=LoadOptions(device=args.device))
    backend = rt.backend
    prompts = [backend.render([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
               for i in range(args.streams)]
    params = GenerationParams(max_new_tokens=args.tokens, temperature=0.7, top_p=0.9)
    together = row_decoding.chosen_tokens

    def one_by_one(rows, logits, greedy):
        return [row.choose(logits[i], greedy[i]) for i, row in enumerate(rows)]

    def aggregate() -> float:
        counts: list[int] = []

        def ask(prompt):
            counts.append(sum(1 for _ in backend.stream(None, prompt, params)))

        threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
        with backend._lock.hold():  # every stream queues, then they start as one batch
            for t in threads:
                t.start()
            while backend.waiting_streams() < len(threads):
                time.sleep(0.005)
        start = time.perf_counter()
        for t in threads:
            t.join()
        return args.streams * args.tokens / (time.perf_counter() - start)

    results: dict[str, list[float]] = {"together": [], "one_by_one": []}
    aggregate()  # warm-up (graph captures)
    for _ in range(args.rounds):
        for name, choose in (("together", together), ("one_by_one", one_by_one)):
            row_decoding.chosen_tokens = choose
            results[name].append(round(aggregate(), 1))
    row_decoding.chosen_tokens = together
    device = str(next(backend.model.parameters()).device)
    print(json.dumps({"device": device, "streams": args.streams, "tokens": args.tokens,
                      "tokens_per_s": results,
                      "median": {k: statistics.median(v) for k, v in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
