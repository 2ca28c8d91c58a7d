"""How many operations does one LoRA training step of the embedded base launch? (CPU, no GPU needed)

On the H100 a training step of the 135M base is bound by the CPU launching its operations
(benchmarks/results/train-cuda-profile.txt), so fewer operations per step is the lever; this counts
them on a CPU with the GPU's set-up: bf16 base, float32 LoRA on all seven projections, bf16 autocast,
packed attention, fused LoRA projections (``--unfused``: PEFT's own path) and TRL's fused LM head.
Counts, not times: a CPU step says nothing about GPU speed.

Usage: ``python tools/step_ops.py [--unfused] [--top 25]``. Measured 2026-11-29 (8 packed examples of
40 tokens): PEFT's path 50,519 operations a step (8,361 that compute or copy); fused projections
37,445 (6,635). Tried and dropped: adding the scaled LoRA output with one addmm (alpha = scaling)
instead of scale, matmul and add: 36,631 operations but 6,695 that compute or copy, so no fewer kernels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# operations that only make views or allocate: cheap to dispatch, no kernel on a GPU
VIEWS = {"aten::as_strided", "aten::view", "aten::reshape", "aten::t", "aten::transpose", "aten::slice",
         "aten::narrow", "aten::resolve_conj", "aten::_unsafe_view", "aten::expand", "aten::detach",
         "aten::alias", "aten::split", "aten::split_with_sizes", "aten::unsqueeze", "aten::squeeze",
         "aten::permute", "aten::empty", "aten::empty_strided", "aten::to", "aten::_to_copy", "aten::linear",
         "aten::matmul", "aten::select", "aten::contiguous", "aten::lift_fresh", "aten::result_type",
         "aten::_reshape_alias", "aten::view_as", "aten::unbind", "aten::chunk", "aten::zeros",
         "aten::zero_", "aten::zeros_like", "aten::empty_like"}


def main(argv=None) -> int:
    import torch
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from adapters.base_models import LoadOptions, load_base
    from training.fused_lora import fuse_lora_projections
    from training.packed_attention import use_packed_attention

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unfused", action="store_true", help="PEFT's own LoRA path")
    parser.add_argument("--top", type=int, default=25, help="operations listed")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--length", type=int, default=40)
    args = parser.parse_args(argv)

    model, _ = load_base("smollm2-135m-instruct", LoadOptions(device="cpu", dtype="bfloat16"), progress=False)
    use_packed_attention(model)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer asks for
    model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    if not args.unfused:
        fuse_lora_projections(model)
    model.train()
    n, length = args.examples, args.length
    ids = torch.randint(3, model.config.vocab_size, (1, n * length), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(length).repeat(n)[None]
    labels = ids.clone()
    labels[:, ::2] = -100

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, position_ids=positions, labels=labels, fused_lm_head=True)
        out.loss.backward()

    step()  # the first step builds what later steps reuse
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    computing = [(e.key, e.count) for e in events if e.key.startswith("aten::") and e.key not in VIEWS]
    print(f"{'PEFT path' if args.unfused else 'fused projections'}: {sum(e.count for e in events):,} operations "
          f"a step, {sum(c for _, c in computing):,} that compute or copy")
    for key, count in sorted(computing, key=lambda kc: -kc[1])[:args.top]:
        print(f"{count:8,d}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
