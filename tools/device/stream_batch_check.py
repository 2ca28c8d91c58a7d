"""Greedy text of streams decoded alone vs as rows of one batch (adapters.batching), on the real model.

On a CPU in float32 they are equal (tests/test_runtime.py, tiny model); in bf16 on a GPU the batch runs
model.generate through PEFT's mixed-adapter forward while one stream alone runs the CUDA-graph decoder
with the adapter merged, so rounding may pick another token where two are nearly tied. This prints,
per row, whether the texts match and where they first differ. On the GPU machine after
tools/device/setup.sh: ``python3 tools/device/stream_batch_check.py OUT.json``."""

import json
import sys
import threading
import time

from adapters import Runtime
from adapters.environment import environment
from benchmarks.serve import SAMPLE_QUESTION, STREAM_INPUTS

from adapters.batching import MAX_STREAM_BATCH

runtime = Runtime.local(progress=False)
backend = runtime.backend
backend.max_stream_batch = MAX_STREAM_BATCH  # a GPU serves streams one at a time by default
plan = [*backend.adapter_names(), None] * 2


def generation(adapter):
    return runtime.generate(adapter, [{"role": "user", "content": STREAM_INPUTS.get(adapter or "", SAMPLE_QUESTION)}],
                            temperature=0, max_new_tokens=64)


alone = [generation(a).read() for a in plan]
together: dict[int, str] = {}
threads = [threading.Thread(target=lambda i=i, a=a: together.__setitem__(i, generation(a).read()))
           for i, a in enumerate(plan)]
with backend._lock.hold():  # busy: every stream queues, and one batch takes them all
    for t in threads:
        t.start()
    while len(backend._streams._waiting) < len(plan):
        time.sleep(0.005)
for t in threads:
    t.join()


def first_difference(a: str, b: str) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


rows = [{"adapter": a or "base", "same": alone[i] == together[i], "first_difference_at_char": first_difference(alone[i], together[i]),
         "chars": [len(alone[i]), len(together[i])]} for i, a in enumerate(plan)]
result = {**environment("cuda"), "rows": rows, "same": sum(r["same"] for r in rows), "of": len(rows)}
print(json.dumps(result, indent=2))
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump(result, f, indent=2)
