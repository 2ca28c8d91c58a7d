"""A/B of batched spam classification on the GPU, in one process on one host (hosts differ by
1.6x here): prompts rendered per text and tokenized whole, every text counted, vs filled once
with the shared head tokenized once and short texts not counted; and the transformers + PEFT
forward vs the fused one. Run on the device after tools/device/setup.sh:
``python3 tools/device/classify_probe.py OUT.json``; prints and writes
messages/s per variant (median of the rounds, interleaved), the largest P(spam) difference from
the per-text + PEFT variant (and, for scale, PEFT's own between batch sizes 64 and 512), and one
message's latency on each forward."""

import json
import statistics
import sys
import time

import torch

from adapters.base_models import LoadOptions
from adapters.environment import environment
from benchmarks.serve import SAMPLE_SMS
from adapters.prompts import task_messages
from adapters.runtime import Runtime

BATCH, ROUNDS = 512, 7
runtime = Runtime.local(options=LoadOptions(device="cuda"), only=["spam"], progress=False)
backend = runtime.backend
texts = [f"{SAMPLE_SMS} [{i}]" for i in range(BATCH)]
fast_prompts, fast_head, fused = runtime._task_prompts, backend._special_head, None
byte_level = backend._tokens_within_bytes()


def per_text_prompts(spec, texts, system, examples):
    frame = runtime._template_frame(spec, system, examples)
    return ([backend.render(task_messages(spec, t, system=system, examples=examples)) for t in texts],
            frame[0] if frame else "")


def use(prompts: str, forward: str) -> None:
    runtime._task_prompts = fast_prompts if prompts == "filled" else per_text_prompts
    backend._special_head = fast_head if prompts == "filled" else (lambda text: "")
    backend._byte_level = byte_level if prompts == "filled" else False  # False: every text counted
    backend._fused = fused if forward == "fused" else None


runtime.classify("spam", texts, batch_size=BATCH)  # builds the fused path
fused = backend._fused
variants = [(p, f) for p in ("per_text", "filled") for f in ("peft", "fused")]
seconds = {v: [] for v in variants}
probs = {}
for round_ in range(ROUNDS):
    for variant in variants:
        use(*variant)
        # untimed: the prefix cache holds one forward's format, so a switched forward recomputes it
        result = runtime.classify("spam", texts, batch_size=BATCH)
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = runtime.classify("spam", texts, batch_size=BATCH)
        seconds[variant].append(time.perf_counter() - start)
        probs[variant] = [r.probs["spam"] for r in result]
reference = probs[("per_text", "peft")]
single = {"peft": [], "fused": []}
for _ in range(3):  # one message, as the app classifies it
    for forward in single:
        use("filled", forward)
        runtime.classify("spam", [SAMPLE_SMS])  # untimed, as above
        for _ in range(10):
            torch.cuda.synchronize()
            start = time.perf_counter()
            runtime.classify("spam", [SAMPLE_SMS])
            single[forward].append((time.perf_counter() - start) * 1000)
use("filled", "peft")  # how far bf16 results move with the batch size alone, for scale
smaller = [r.probs["spam"] for r in runtime.classify("spam", texts, batch_size=64)]
report = {**environment("cuda"), "command": " ".join(["python3", *sys.argv]), "batch": BATCH, "rounds": ROUNDS,
          "variants": {f"{p}+{f}": {"messages_per_s": round(BATCH / statistics.median(seconds[(p, f)]), 1),
                                    "ms_median": round(statistics.median(seconds[(p, f)]) * 1000, 1),
                                    "max_abs_p_spam_diff": max(abs(a - b) for a, b in zip(probs[(p, f)], reference))}
                       for p, f in variants},
          "one_message_ms_p50": {f: round(statistics.median(v), 2) for f, v in single.items()},
          "peft_batch_64_vs_512_max_abs_p_spam_diff": max(abs(a - b) for a, b in zip(smaller, reference))}
print(json.dumps(report, indent=1))
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=1)
