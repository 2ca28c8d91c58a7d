"""Where does a training step's time go? (GPU probe, not part of the package.)

Runs ``train_adapter`` for a few steps under several variants of the spam spec and prints the
steady-state step time and real tokens/s of each, then a torch.profiler table of the default.
Usage on the GPU machine: ``python3 tools/device/speed_probe.py [variant ...] > $OUT/probe.txt``.
Measured 2026-11-23 (H100, 30 steps each): default (packed) 539 ms/step 7.7k tokens/s; grouped
batch 16 457 ms 2.6k; grouped 64 441 ms 11.8k; grouped 64 dropout 0 323 ms 16.2k; grouped 128
dropout 0 357 ms 24.8k; packed batch 64 886 ms 19.0k. The torch.compile variant did not finish
inside the 500 s the call allowed (compilation with varying shapes): run it alone if you try again.
Later, on another H100 host (its CPU faster; the spec's dropout still 0.05), with packed attention:
default 255 ms/step 17.1k tokens/s; block_mask 276 ms 16.1k; no_autocast 294 ms 15.7k;
no_autocast_dropout0 270 ms 16.6k; batch32 324 ms 27.4k. Compare variants within one run only.
2026-11-29, H200, 40 steps, before the specs compiled: default 245 ms 18.4k; compiled 165 ms 27.1k
(its first steps compile: ~110 s); compiled_batch32 167 ms 53.3k. Since the specs say compile: true,
"default" is the compiled run (eager: set compile false in a replaced spec, as "compiled" does).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time

import torch

import training.train as T
from adapters.catalog import get_spec, load_catalog
from training.data import load_splits

STEPS = int(os.environ.get("PROBE_STEPS", 30))


class StepClock(T.ThroughputCallback):
    """ThroughputCallback that also records (time, tokens seen) after every step."""

    marks: list = []
    profile: bool = False

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        StepClock.marks.append((time.perf_counter(), state.num_input_tokens_seen))
        if StepClock.profile and state.global_step == 12:
            StepClock.prof = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
            StepClock.prof.__enter__()
        if StepClock.profile and state.global_step == 17:
            StepClock.prof.__exit__(None, None, None)


T.ThroughputCallback = StepClock


_load_base = T.load_base
_use_packed = T.use_packed_attention
_fuse = T.fuse_lora_projections


def run(name, spec, splits, **extra):
    attn = extra.pop("_attn", None)
    T.use_packed_attention = (lambda model: None) if extra.pop("_block_mask", False) else _use_packed
    T.fuse_lora_projections = (lambda model: 0) if extra.pop("_unfused", False) else _fuse
    torch.backends.cuda.enable_cudnn_sdp(not extra.pop("_no_cudnn_sdp", False))

    def load_with_attention(*a, **k):
        model, tok = _load_base(*a, **k)
        if attn:
            model.set_attn_implementation(attn)
        return model, tok

    T.load_base = load_with_attention
    StepClock.marks = []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    T.train_adapter(spec, splits, base=os.environ.get("PROBE_BASE"), max_steps=STEPS, run_dir=f"/tmp/probe/{name}", output_dir=f"/tmp/probe/{name}/out",
                    restart=True, progress=False, extra_args={"eval_steps": 1000, "save_steps": 1000, **extra})
    total = time.perf_counter() - start
    marks = StepClock.marks[8:]  # steady state
    dts = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    toks = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    step = statistics.median(dts)
    rate = sum(toks) / sum(dts)
    print(f"{name:28} step {step*1000:7.1f} ms  tokens/step {statistics.mean(toks):8.0f}  "
          f"tokens/s {rate:9.0f}  peak {(torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0)/2**30:5.2f} GiB  total {total:6.1f} s",
          flush=True)


def main():
    spec = get_spec(load_catalog(), "spam")
    splits = load_splits(spec)
    wanted = set(sys.argv[1:])
    lora0 = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, dropout=0.0))
    grouped = {"packing": False, "padding_free": False, "train_sampling_strategy": "group_by_length"}
    variants = {
        "default": (spec, {}),
        "unfused": (spec, {"_unfused": True}),  # PEFT's per-module LoRA forward (before fused_lora.py)
        "block_mask": (spec, {"_block_mask": True}),  # transformers' sdpa with a block mask (the default until this change)
        "no_autocast": (spec, {"bf16": False}),  # bf16 base weights, fp32 LoRA, no autocast casts
        "no_autocast_dropout0": (lora0, {"bf16": False}),
        "batch32": (spec, {"per_device_train_batch_size": 32}),
        "packed_no_cudnn_sdp": (spec, {"_no_cudnn_sdp": True}),
        "packed_no_cudnn_sdp_dropout0": (lora0, {"_no_cudnn_sdp": True}),
        "nopack_grouped": (spec, grouped),
        "nopack_grouped_b64": (spec, {**grouped, "per_device_train_batch_size": 64}),
        "nopack_grouped_b64_dropout0": (lora0, {**grouped, "per_device_train_batch_size": 64}),
        "nopack_grouped_b128_dropout0": (lora0, {**grouped, "per_device_train_batch_size": 128}),
        "batch64": (spec, {"per_device_train_batch_size": 64}),
        # regional torch.compile of the decoder layers (training.compile: true); the first steps compile,
        # the steady-state step time (marks from step 8 on) is what to compare with "default"
        "compiled": (dataclasses.replace(spec, training=dataclasses.replace(spec.training, compile=True)), {}),
        "compiled_batch32": (dataclasses.replace(spec, training=dataclasses.replace(spec.training, compile=True)),
                             {"per_device_train_batch_size": 32}),
        "nopack_grouped_b64_dropout0_compile": (lora0, {**grouped, "per_device_train_batch_size": 64,
                                                        "torch_compile": True}),
    }
    for name, (s, extra) in variants.items():
        if wanted and name not in wanted:
            continue
        try:
            run(name, s, splits, **extra)
        except Exception as exc:  # keep probing the other variants
            print(f"{name:28} FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    profiled = os.environ.get("PROBE_PROFILE")
    if profiled:
        StepClock.profile = True
        s, extra = variants[profiled]
        run(f"{profiled}(profiled)", s, splits, **extra)
        table = StepClock.prof.key_averages().table
        print(table(sort_by="self_cpu_time_total", row_limit=25))
        print(table(sort_by="self_cuda_time_total", row_limit=25))


if __name__ == "__main__":
    main()
