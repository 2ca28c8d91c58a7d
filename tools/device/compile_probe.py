"""What does compiling the decoder layers cost per process, and does inductor's disk cache cut it?
(GPU probe, not part of the package.)

Builds a random-weight model of the embedded base's shape (no GGUF needed), sets it up as training
does (LoRA on all projections, packed attention, fused LoRA, compiled layers), runs one packed
forward + backward and prints its time, dynamo's compile phases and the cache counters. Run it twice
on one host: the second process should read the compiled code from /tmp/torchinductor_$USER.
Usage on the GPU machine: ``python3 tools/device/compile_probe.py; python3 tools/device/compile_probe.py``.

Measured 2026-11-29 on a fresh H200 host: first process, first step 80.9 s (61.6 s of it inductor
generating the forward's Triton code), second step 203 ms. Second process: the FX-graph and AOTAutograd
caches hit, yet the first step still took 46.9 s, 38.5 s of it loading the cached module
(``PyCodeCache.load_by_key_path``: its 78 Triton kernels, ~0.5 s each); TORCHINDUCTOR_COMPILE_THREADS=1
or 16 made no difference (50.2 / 51.9 s). So the disk cache saves ~35 s of the ~80 s, not all of it.
Under cProfile (another fresh host: 65.3 s, then 44.4 s), 20–30 s of the second process went to
inductor's CPU vector-ISA check (gcc builds and dlopen probes in subprocesses): see DEVELOPERS.md.
Its cause was the layers' Python floats becoming 0-d CPU tensor inputs of the graph; with them made
constants (``compile_decoder_layers`` sets ``specialize_float``), measured on another fresh H200 host:
first step 18.7 s, then 3.8 s in the second process (whole processes 47.7 and 32.7 s), and no ISA check.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch._dynamo.utils import compile_times, counters
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.fused_lora import fuse_lora_projections  # noqa: E402
from training.packed_attention import use_packed_attention  # noqa: E402
from training.train import compile_decoder_layers  # noqa: E402

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only to try the script out
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def packed_batch(lengths, vocab, device):
    generator = torch.Generator().manual_seed(0)
    examples = [{"input_ids": torch.randint(3, vocab, (n,), generator=generator).tolist()} for n in lengths]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def step(model, batch) -> float:
    start = time.perf_counter()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = model(**batch, use_cache=False).loss
    loss.backward()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M, attn_implementation="sdpa")).to(DEVICE, torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    model.train()
    use_packed_attention(model)
    fuse_lora_projections(model)
    compile_decoder_layers(model)
    vocab = model.config.vocab_size
    first = step(model, packed_batch([40, 120, 64, 88] * 4, vocab, DEVICE))
    second = step(model, packed_batch([56, 24, 200, 32] * 4, vocab, DEVICE))
    print(f"first step {first:.1f} s (compiles), second step {second * 1000:.0f} ms")
    print({k: dict(v) for k, v in counters.items() if k in ("inductor", "aot_autograd", "stats")})
    print(compile_times())


if __name__ == "__main__":
    main()
