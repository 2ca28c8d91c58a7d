"""Does a spam check on the caller's thread slow the streams after it? (CPU; analysis, not part of the package)

Loads the embedded base with the medquad and spam adapters, streams one medquad answer, runs a spam
check on this (the main) thread as the CLI and the app's worker threads do, and streams again; then
a spam check while an answer streams (it borrows the model between two steps). ``--keep-teams``
turns off ``adapters.openmp.release_thread_team``, so this thread keeps its OpenMP workers as before
2026-11-30: with libgomp, two threads' teams make every later token slower (adapters/openmp.py says
why). Compare the two in separate processes, on an idle machine and beside load
(``python -c "while True: pass" &`` twice).

Usage: ``python tools/openmp_probe.py [--keep-teams] [--tokens 48] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-teams", action="store_true", help="the behaviour before adapters/openmp.py")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from adapters import Runtime, openmp
    from adapters.backends import GenerationParams

    if args.keep_teams:
        openmp.release_thread_team = lambda: None
        import adapters.model_lock
        adapters.model_lock.release_thread_team = openmp.release_thread_team
    rt = Runtime.local(only=["medquad", "spam"])
    backend = rt.backend
    prompt = backend.render([{"role": "user", "content": "What is glaucoma and how is it treated?"}])
    params = GenerationParams(max_new_tokens=args.tokens)

    def tokens_per_second() -> float:
        start = time.perf_counter()
        for _ in backend.stream("medquad", prompt, params):
            pass
        return args.tokens / (time.perf_counter() - start)

    def spam_check_ms() -> float:
        start = time.perf_counter()
        rt.classify("spam", ["Hi, see you at 5 by the station"])
        return (time.perf_counter() - start) * 1000

    before = [tokens_per_second() for _ in range(args.rounds)]
    checks = [spam_check_ms() for _ in range(args.rounds)]
    after = [tokens_per_second() for _ in range(args.rounds)]
    during: list[float] = []
    streamed: list[float] = []
    worker = threading.Thread(target=lambda: streamed.append(tokens_per_second()))
    worker.start()
    time.sleep(0.5)
    while worker.is_alive() and len(during) < args.rounds:
        during.append(spam_check_ms())
    worker.join()
    print(json.dumps({
        "keep_teams": args.keep_teams, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "stream_tokens_per_s_before_a_check": round(statistics.median(before), 1),
        "spam_check_ms_on_this_thread": round(statistics.median(checks), 1),
        "stream_tokens_per_s_after_checks": round(statistics.median(after), 1),
        "spam_check_ms_during_a_stream": round(statistics.median(during), 1) if during else None,
        "stream_tokens_per_s_with_checks": round(streamed[0], 1) if streamed else None,
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
