"""``adapterlab bench qlora``: does QLoRA training of an 8B model fit a 24 GB card, and how fast is it?

The claim checked: ``train_adapter`` with ``method: qlora`` (4-bit NF4 base with double
quantization, LoRA on top, gradient checkpointing, paged 8-bit AdamW on CUDA) trains a
Llama-3.1-8B-shaped model at sequence length 2048 within 20 GiB of GPU memory.

No 8B weights are downloadable here, so the model is built from its config with random weights,
saved once as a normal checkpoint, and loaded by the same loader every adapter uses. Memory and
throughput do not depend on the weight values (the same shapes, the same kernels); the loss does,
so none is reported. The tokens are the spam training texts packed into rows of exactly
``--seq-len`` tokens (the SmolLM2 tokenizer: its ids are a subset of Llama 3.1's vocabulary).
Results go to ``benchmarks/results/train-qlora-<shape>-<cpu|cuda>.json``.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from adapters.environment import environment
from adapters.catalog import CATALOG_DIR, get_spec, load_catalog
from adapters.cli import check_output_path

from .serve import RESULTS_DIR
from .train import write_json_atomic

GIB = 2**30
# Llama-3.1-8B's published config.json, minus the rope scaling that does not change the cost
SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=False),
    # for tests on CPU: the same architecture, tiny
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152, max_position_embeddings=4096,
                 tie_word_embeddings=False),
}
MEMORY_TARGET_GIB = 20.0


def parameter_count(shape: str) -> int:
    """Parameters of the shape, counted on the meta device (no memory used)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape]))
    return sum(p.numel() for p in model.parameters())


def write_random_checkpoint(shape: str, tokenizer_source: str, directory: Path, device: str) -> Path:
    """Save a randomly initialised bf16 model of ``shape`` with ``tokenizer_source``'s tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"shape {shape!r}: vocabulary {config.vocab_size} < tokenizer's {len(tokenizer)}")
    torch.manual_seed(0)
    with torch.device(device):  # initialising 8B parameters is seconds on a GPU, minutes on a CPU
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    del model
    return directory


def cmd_bench_qlora(args) -> int:
    import torch

    from adapters.base_models import LoadOptions, resolve

    from training.data import Splits, load_splits
    from training.train import train_adapter

    if args.shape not in SHAPES:
        raise ValueError(f"--shape {args.shape!r}: use one of {', '.join(SHAPES)}")
    if args.seq_len < 16 or args.steps < 2:
        raise ValueError("--seq-len must be >= 16 and --steps >= 2")
    if args.output:  # named before the run, not when its result is written
        check_output_path(Path(args.output))
    device = LoadOptions(device=args.device).torch_device()
    on_cuda = device.startswith("cuda")
    spec = get_spec(load_catalog(args.catalog), args.adapter)
    spec = dataclasses.replace(spec, training=dataclasses.replace(
        spec.training, method="qlora", batch_size=1, gradient_accumulation=1, max_seq_length=args.seq_len,
        eval_steps=10**6))
    splits = load_splits(spec, path=args.data)
    splits = Splits(train=splits.train, validation=splits.validation[:8], test=[], report=splits.report)

    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        checkpoint = write_random_checkpoint(args.shape, resolve(args.tokenizer, progress=False),
                                             work / "model", device)
        build_seconds = time.perf_counter() - start
        if on_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result = train_adapter(spec, splits, base=str(checkpoint), max_steps=args.steps, run_dir=work / "run",
                               output_dir=work / "adapter", device=device, progress=not args.quiet,
                               # rows of exactly seq_len tokens: the packed layout is what a long sequence costs
                               extra_args={"packing": True, "padding_free": True, "save_steps": 10**6})
        peak = int(torch.cuda.max_memory_allocated()) if on_cuda else None
        reserved = int(torch.cuda.max_memory_reserved()) if on_cuda else None

    env = environment(device)
    out = {"benchmark": "train-qlora", **env, "command": command_line(args),
           "device_kind": "cuda" if on_cuda else "cpu", "shape": args.shape,
           "parameters": parameter_count(args.shape), "random_weights": True,
           "note": "random weights: memory and throughput do not depend on weight values; no loss is reported",
           "sequence_length": args.seq_len, "batch_size": 1, "method": "qlora (NF4, double quantization)",
           "optimizer": "paged_adamw_8bit" if on_cuda else "adamw_torch", "gradient_checkpointing": True,
           "lora": dataclasses.asdict(spec.lora), "steps": result.steps, "train_seconds": result.train_seconds,
           "real_tokens": result.train_tokens, "tokens_per_s": result.tokens_per_second,
           "checkpoint_build_seconds": round(build_seconds, 1),
           "peak_gpu_memory_bytes": peak, "peak_gpu_memory_reserved_bytes": reserved,
           "peak_gpu_memory_gib": round(peak / GIB, 2) if peak else None,
           "memory_target_gib": MEMORY_TARGET_GIB,
           "meets_memory_target": (peak / GIB <= MEMORY_TARGET_GIB) if peak else None}
    path = Path(args.output) if args.output else RESULTS_DIR / f"train-qlora-{args.shape}-{out['device_kind']}.json"
    write_json_atomic(path, out)
    peak_text = f"{out['peak_gpu_memory_gib']} GiB peak (target <= {MEMORY_TARGET_GIB})" if peak else "no GPU"
    print(f"{args.shape} QLoRA, seq {args.seq_len}: {result.tokens_per_second:.0f} tokens/s over "
          f"{result.steps} steps, {peak_text}; wrote {path}", file=sys.stderr)
    return 0


def command_line(args) -> str:
    import shlex

    parts = ["adapterlab", "bench", "qlora", "--shape", args.shape, "--seq-len", str(args.seq_len),
             "--steps", str(args.steps), "--device", args.device]
    if args.output:
        parts += ["--output", str(args.output)]
    return shlex.join(parts)


def add_parser(bench_sub) -> None:
    p = bench_sub.add_parser("qlora", help="QLoRA memory and tokens/s of train_adapter on an "
                                           "8B-shaped model with random weights")
    p.add_argument("--shape", default="llama-3.1-8b", help=f"model shape: {', '.join(SHAPES)}")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per training row")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps to measure")
    p.add_argument("--adapter", default="spam", help="adapter whose training texts are used")
    p.add_argument("--tokenizer", default="smollm2-135m-instruct", help="tokenizer source (base name or folder)")
    p.add_argument("--data", default=None, help="data file (default: the spec's local_path)")
    p.add_argument("--catalog", default=str(CATALOG_DIR), help="adapter catalogue folder")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--output", default=None,
                   help="JSON path (default: benchmarks/results/train-qlora-<shape>-<cpu|cuda>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_qlora)
