"""``adapterlab bench train``: what the project's training recipe buys, measured.

``train_adapter`` (TRL SFT, padding-free packing, loss on the completion only, bf16) is claimed to
train faster than the plain ``transformers.Trainer`` recipe this project grew from, and faster than a
well-tuned version of it. This benchmark checks the claim in ONE process, on the same device, base
model, data and training examples, and writes the numbers as JSON (device, versions, date, command)
into ``benchmarks/results/train-<cpu|cuda>.json`` so the README can quote them:

* ``reference``: the recipe of the notebooks this project grew from (see ``reference_recipe``);
* ``strong_baseline``: the same Trainer with the usual fixes (bf16, dynamic padding, length grouping,
  larger batches);
* ``adapterlab``: ``training.train.train_adapter`` with the spec's own hyper-parameters.

Every recipe sees the same examples once (one epoch). For each: real (non-padding) tokens seen,
training seconds (evaluation and checkpointing excluded), real tokens/s, examples/s, peak GPU memory,
and the validation loss of the trained adapter, computed by one shared function (``completion_loss``)
on the same validation subset. The speed of a recipe is its real tokens/s: compute spent on padding
is not progress.
"""

from __future__ import annotations

import gc
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters.environment import environment
from adapters.catalog import CATALOG_DIR, get_spec, load_catalog
from adapters.cli import check_output_path
from adapters.files import write_text_atomic

from .serve import RESULTS_DIR

RECIPES = ("reference", "strong_baseline", "adapterlab")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainerRecipe:
    """A plain ``transformers.Trainer`` LoRA recipe (the two baselines)."""

    name: str
    pad_to_max_length: bool  # True: every example padded to max_length; False: per-batch padding
    group_by_length: bool
    batch_size: int
    gradient_accumulation: int
    cuda_precision: str  # "fp16" (autocast over an fp32 base) or "bf16" (bf16 base); fp32 on CPU
    max_length: int = 256
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1


def reference_recipe() -> TrainerRecipe:
    # The recipe of the notebooks this project grew from: each example tokenized as prompt+completion
    # and padded to 256 tokens, fp16 autocast, batch 4 x accumulation 4, LoRA r=16/alpha=32/dropout
    # 0.1 on the attention projections, AdamW at 2e-4, loss on every (non-padding) token.
    return TrainerRecipe("reference", pad_to_max_length=True, group_by_length=False, batch_size=4,
                         gradient_accumulation=4, cuda_precision="fp16")


def strong_baseline_recipe() -> TrainerRecipe:
    # What a careful user of the same Trainer would do: bf16, per-batch padding, batches of
    # similar lengths, batch 16 (the same effective batch as the reference's 4 x 4).
    return TrainerRecipe("strong_baseline", pad_to_max_length=False, group_by_length=True, batch_size=16,
                         gradient_accumulation=1, cuda_precision="bf16")


# --- examples ----------------------------------------------------------------------------------

def select_examples(train: list, n: int) -> list:
    """The first ``n`` training examples, repeated cyclically when the split has fewer."""
    if not train:
        raise ValueError("the training split is empty")
    return [train[i % len(train)] for i in range(n)]


def tokenize_full_sequences(tokenizer, rows: list[dict[str, str]], max_length: int,
                            pad_to_max_length: bool) -> dict[str, list[list[int]]]:
    """prompt+completion as one text; labels are the input ids (loss on all tokens), -100 on padding."""
    encoded = tokenizer([r["prompt"] + r["completion"] for r in rows], add_special_tokens=False,
                        truncation=True, max_length=max_length,
                        padding="max_length" if pad_to_max_length else False)
    labels = [[tok if keep else -100 for tok, keep in zip(ids, mask)]
              for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "labels": labels, "length": [sum(mask) for mask in encoded["attention_mask"]]}


class CountingPadCollator:
    """Pads a batch to its longest sequence (labels with -100) and counts what the model is fed:
    real tokens (attention mask ones) and padded tokens (every position computed)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)

        def pad(key, value):
            return torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features])

        batch = {"input_ids": pad("input_ids", self.pad_token_id), "attention_mask": pad("attention_mask", 0),
                 "labels": pad("labels", -100)}
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += batch["input_ids"].numel()
        return batch


# --- the shared validation loss ----------------------------------------------------------------

def completion_loss(model, tokenizer, rows: list[dict[str, str]], *, batch_size: int = 8,
                    max_length: int = 512) -> float:
    """Mean cross-entropy over the completion tokens only (prompt tokens and padding ignored),
    token-weighted over all of ``rows``; the same for every recipe."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            pairs = []
            for row in rows[start:start + batch_size]:
                p = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
                c = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
                ids, labels = (p + c)[-max_length:], ([-100] * len(p) + c)[-max_length:]
                pairs.append((ids, labels))
            width = max(len(ids) for ids, _ in pairs)
            input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in pairs], device=device)
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in pairs], device=device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in pairs], device=device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
            shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
            total += F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.size(-1)),
                                     shifted_labels.reshape(-1), ignore_index=-100, reduction="sum").item()
            count += int((shifted_labels != -100).sum())
    model.train(was_training)
    return total / count if count else float("nan")


# --- recipes -----------------------------------------------------------------------------------

def run_trainer_recipe(recipe: TrainerRecipe, base: str, device: str, train_rows, val_rows, seed: int,
                       work_dir: Path) -> dict:
    """Train one epoch over ``train_rows`` with ``transformers.Trainer`` + PEFT LoRA; measure it."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from adapters.base_models import LoadOptions, load_base

    from training.train import ThroughputCallback, sampling_args

    on_cuda = device.startswith("cuda")
    dtype = "float32" if not on_cuda or recipe.cuda_precision == "fp16" else "bfloat16"
    _reset_peak_memory(on_cuda)
    model, tokenizer = load_base(base, LoadOptions(device=device, dtype=dtype), progress=False)
    model = get_peft_model(model, LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                                             lora_dropout=recipe.lora_dropout,
                                             target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"))
    data = Dataset.from_dict(tokenize_full_sequences(tokenizer, train_rows, recipe.max_length,
                                                     recipe.pad_to_max_length))
    collator = CountingPadCollator(tokenizer.pad_token_id)
    args = TrainingArguments(
        output_dir=str(work_dir / recipe.name), num_train_epochs=1,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation,
        learning_rate=recipe.learning_rate, optim="adamw_torch",
        fp16=on_cuda and recipe.cuda_precision == "fp16", bf16=on_cuda and recipe.cuda_precision == "bf16",
        eval_strategy="no", save_strategy="no", logging_steps=10, report_to=[], seed=seed, data_seed=seed,
        dataloader_num_workers=0, use_cpu=not on_cuda, remove_unused_columns=False,
        **sampling_args(recipe.group_by_length))
    timer = ThroughputCallback()
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator,
                      processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    _synchronize(on_cuda)
    peak = _peak_memory(on_cuda)
    loss = completion_loss(trainer.model, tokenizer, val_rows)
    result = _measurement(recipe.name, len(train_rows), collator.real_tokens, collator.padded_tokens,
                          timer.train_seconds, peak, loss, trainer.state.global_step)
    result["settings"] = {**asdict(recipe), "dtype": dtype, "epochs": 1}
    del trainer, model, data
    _free_memory(on_cuda)
    return result


def run_adapterlab_recipe(spec, base: str, device: str, train_examples, val_examples, val_rows,
                          work_dir: Path, splits_report, profiler: "StepProfiler | None" = None) -> dict:
    """``train_adapter`` with the spec's hyper-parameters, one epoch over the same examples, into a
    temporary folder; its adapter is then loaded back for the shared validation loss."""
    from peft import PeftModel

    from adapters.base_models import LoadOptions, load_base

    from training.data import Splits
    from training.train import train_adapter

    on_cuda = device.startswith("cuda")
    splits = Splits(train=list(train_examples), validation=list(val_examples), test=[], report=splits_report)
    out = work_dir / "adapterlab" / "adapter"
    _reset_peak_memory(on_cuda)
    result = train_adapter(spec, splits, base=base, max_steps=None, run_dir=work_dir / "adapterlab" / "run",
                           output_dir=out, device=device, progress=False, restart=True,
                           extra_args={"num_train_epochs": 1},  # the same single pass as the baselines
                           callbacks=[profiler] if profiler else None)
    _synchronize(on_cuda)
    peak = _peak_memory(on_cuda)
    _free_memory(on_cuda)
    # the same dtype the Trainer recipes are measured in on a CPU (float32); bf16 on a GPU
    model, tokenizer = load_base(base, LoadOptions(device=device, dtype="bfloat16" if on_cuda else "float32"),
                                 progress=False)
    model = PeftModel.from_pretrained(model, str(out))
    loss = completion_loss(model, tokenizer, val_rows)
    # the Trainer counts real tokens only (packed batches have no padding; grouped ones are not counted)
    padded = result.train_tokens if result.batching == "padding-free packing" else None
    measured = _measurement("adapterlab", len(train_examples), result.train_tokens, padded,
                            result.train_seconds, peak, loss, result.steps)
    measured["settings"] = {**asdict(spec.training), "lora": asdict(spec.lora), "epochs": 1,
                            "batches": result.batching, "completion_only_loss": True,
                            "best_eval_loss_during_training": result.best_eval_loss}
    del model
    _free_memory(on_cuda)
    return measured


def _measurement(name: str, examples: int, real: int, padded: int, seconds: float, peak: int | None,
                 loss: float, steps: int) -> dict:
    return {"recipe": name, "examples": examples, "optimizer_steps": steps, "real_tokens": int(real),
            "padded_tokens": int(padded) if padded is not None else None,
            "real_token_share": round(real / padded, 4) if padded else None,
            "train_seconds": round(seconds, 3),
            "tokens_per_s": round(real / seconds, 2) if seconds > 0 else 0.0,
            "examples_per_s": round(examples / seconds, 3) if seconds > 0 else 0.0,
            "peak_gpu_memory_bytes": peak,
            "validation_loss": round(loss, 5) if math.isfinite(loss) else None}


# --- device helpers ----------------------------------------------------------------------------

def _reset_peak_memory(on_cuda: bool) -> None:
    if on_cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()


def _synchronize(on_cuda: bool) -> None:
    if on_cuda:
        import torch

        torch.cuda.synchronize()


def _peak_memory(on_cuda: bool) -> int | None:
    if not on_cuda:
        return None
    import torch

    return int(torch.cuda.max_memory_allocated())


def _free_memory(on_cuda: bool) -> None:
    gc.collect()
    if on_cuda:
        import torch

        torch.cuda.empty_cache()


# --- the command -------------------------------------------------------------------------------

WARMUP_EXAMPLES = 64  # enough for a few optimizer steps of every recipe


def median_run(measured: list[dict]) -> dict:
    """The run with the median tokens/s (the lower middle one for an even count), with every run's
    tokens/s and seconds beside it."""
    ordered = sorted(measured, key=lambda r: r["tokens_per_s"])
    middle = ordered[(len(ordered) - 1) // 2]
    return {**middle, "tokens_per_s_runs": [r["tokens_per_s"] for r in measured],
            "train_seconds_runs": [r["train_seconds"] for r in measured]}


RATIOS_DEFINITION = (
    "adapterlab's real tokens/s over each Trainer recipe's, taken within each round (runs close in time), "
    "then the median over rounds (the lower middle for an even count, so two rounds report the smaller); "
    "ratios_per_round lists them all")


def ratios(runs: dict[str, list[dict]]) -> tuple[dict[str, float | None], dict[str, list[float | None]]]:
    """(median over rounds, every round's value) of adapterlab's tokens/s over each Trainer recipe's."""
    per_round: dict[str, list[float | None]] = {}
    for other in ("reference", "strong_baseline"):
        per_round[f"tokens_per_s_adapterlab_over_{other}"] = [
            mine["tokens_per_s"] / theirs["tokens_per_s"] if theirs["tokens_per_s"] else None
            for mine, theirs in zip(runs["adapterlab"], runs[other])]
    medians = {}
    for name, values in per_round.items():
        known = sorted(v for v in values if v is not None)
        medians[name] = known[(len(known) - 1) // 2] if known else None
    return medians, per_round


def command_line(args) -> str:
    """The command, with every option spelt out, that reproduces this run."""
    parts = ["adapterlab", "bench", "train", "--adapter", args.adapter, "--device", args.device,
             "--examples", str(args.examples), "--val-examples", str(args.val_examples)]
    for flag, value in (("--base-model", args.base_model), ("--data", args.data), ("--output", args.output)):
        if value:
            parts += [flag, str(value)]
    if str(args.catalog) != str(CATALOG_DIR):
        parts += ["--catalog", str(args.catalog)]
    if args.repeat != 1:
        parts += ["--repeat", str(args.repeat)]
    if args.warmup_examples != WARMUP_EXAMPLES:
        parts += ["--warmup-examples", str(args.warmup_examples)]
    if args.profile:
        parts.append("--profile")
    return shlex.join(parts)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def print_table(recipes: dict[str, dict], ratio: dict) -> None:
    header = f"{'recipe':16} {'real tokens':>12} {'padded':>10} {'seconds':>9} {'tokens/s':>10} {'ex/s':>8} {'peak GiB':>9} {'val loss':>9}"
    print(header, file=sys.stderr)
    for r in recipes.values():
        peak = f"{r['peak_gpu_memory_bytes'] / 2**30:.2f}" if r["peak_gpu_memory_bytes"] else "-"
        loss = f"{r['validation_loss']:.4f}" if r["validation_loss"] is not None else "-"
        print(f"{r['recipe']:16} {r['real_tokens']:>12} {str(r['padded_tokens'] or '-'):>10} {r['train_seconds']:>9.2f} "
              f"{r['tokens_per_s']:>10.1f} {r['examples_per_s']:>8.2f} {peak:>9} {loss:>9}", file=sys.stderr)
    for name, value in ratio.items():
        print(f"{name}: {value:.2f}" if value else f"{name}: -", file=sys.stderr)


def cmd_bench_train(args) -> int:
    import trl
    from tqdm.auto import tqdm

    from transformers import AutoTokenizer

    from adapters.base_models import LoadOptions, canonical_name, resolve

    from training.data import load_splits, portable_source
    from training.train import compiles_layers, sft_rows

    if args.examples < 1 or args.val_examples < 1 or args.repeat < 1:
        raise ValueError("--examples, --val-examples and --repeat must be >= 1")
    if args.warmup_examples < 0:
        raise ValueError("--warmup-examples must be >= 0")
    if args.output:  # named before the runs, not when their result is written
        check_output_path(Path(args.output))
    spec = get_spec(load_catalog(args.catalog), args.adapter)
    base = args.base_model or spec.base_model
    device = LoadOptions(device=args.device).torch_device()
    on_cuda = device.startswith("cuda")
    splits = load_splits(spec, path=args.data)
    train_examples = select_examples(splits.train, args.examples)
    val_examples = splits.validation[:args.val_examples]
    if not val_examples:
        raise ValueError("the validation split is empty")

    tokenizer = AutoTokenizer.from_pretrained(resolve(base, progress=False))
    train_rows, val_rows = sft_rows(tokenizer, spec, train_examples), sft_rows(tokenizer, spec, val_examples)

    runs: dict[str, list[dict]] = {"reference": [], "strong_baseline": [], "adapterlab": []}
    from .step_profiler import StepProfiler  # imports transformers: only when this command runs

    profiler = StepProfiler(on_cuda) if args.profile else None
    warmup = min(args.warmup_examples, len(train_examples))
    warmup_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp, \
            tqdm(total=len(RECIPES) * args.repeat + bool(profiler) + bool(warmup), desc="bench train",
                 unit="run") as bar:
        work = Path(tmp)
        if warmup:  # each recipe's one-time costs (CUDA kernels loaded on first use, adapterlab's compiled
            # layers on a GPU) are paid here, outside the timed runs; their wall time is reported
            bar.set_postfix_str("warm-up")
            for recipe in (reference_recipe(), strong_baseline_recipe()):
                start = time.perf_counter()
                run_trainer_recipe(recipe, base, device, train_rows[:warmup], val_rows[:8], spec.training.seed, work)
                warmup_seconds[recipe.name] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            run_adapterlab_recipe(spec, base, device, train_examples[:warmup], val_examples[:8], val_rows[:8],
                                  work, splits.report)
            warmup_seconds["adapterlab"] = round(time.perf_counter() - start, 2)
            bar.update()
        # rounds of all three recipes, so drift of the machine over time touches each recipe alike
        for _ in range(args.repeat):
            for recipe in (reference_recipe(), strong_baseline_recipe()):
                bar.set_postfix_str(recipe.name)
                runs[recipe.name].append(run_trainer_recipe(recipe, base, device, train_rows, val_rows,
                                                            spec.training.seed, work))
                bar.update()
            bar.set_postfix_str("adapterlab")
            runs["adapterlab"].append(run_adapterlab_recipe(spec, base, device, train_examples, val_examples,
                                                            val_rows, work, splits.report))
            bar.update()
        if profiler is not None:  # a run of its own: the profiler's overhead never touches a timed run
            bar.set_postfix_str("adapterlab, profiled")
            run_adapterlab_recipe(spec, base, device, train_examples, val_examples, val_rows, work,
                                  splits.report, profiler)
            bar.update()
    recipes = {name: median_run(measured) for name, measured in runs.items()}

    env = environment(device)
    result = {"benchmark": "train", **env, "trl": trl.__version__, "command": command_line(args),
              "device_kind": "cuda" if on_cuda else "cpu", "base_model": canonical_name(base),
              "adapter": spec.name, "data_source": portable_source(splits.report.source),
              "data_sha256": splits.report.source_sha256, "examples": len(train_examples),
              "distinct_examples": len({id(e) for e in train_examples}),
              "validation_examples": len(val_examples),
              "validation_loss_definition": "mean cross-entropy on the completion tokens of the validation subset",
              "repeats": args.repeat, "warmup_examples": warmup, "warmup_seconds": warmup_seconds,
              "compiled_layers": compiles_layers(spec.training, on_cuda),
              "repeats_definition": "each recipe ran this many times, in rounds of all three; each recipe "
                                    "reports its median-throughput run, tokens_per_s_runs lists every run "
                                    "(in round order); before the first round each recipe "
                                    "trained once, untimed, on warmup_examples examples (warmup_seconds: "
                                    "its wall time, which includes compiling the layers when "
                                    "compiled_layers is true)",
              "recipes": recipes, "ratios_definition": RATIOS_DEFINITION}
    result["ratios"], result["ratios_per_round"] = ratios(runs)
    out = Path(args.output) if args.output else RESULTS_DIR / f"train-{result['device_kind']}.json"
    if profiler is not None:
        numbers, table = profiler.summary()
        profile_path = out.with_name(out.stem + "-profile.txt")
        result["adapterlab_profile"] = {**numbers, "table": profile_path.name} if numbers else {
            "skipped": f"fewer than {profiler.skip + profiler.steps} optimizer steps"}
        if numbers:
            write_text_atomic(profile_path, f"{result['command']}\n{json.dumps(numbers)}\n\n{table}\n")
    write_json_atomic(out, result)
    print_table(recipes, result["ratios"])
    print(f"wrote {out}", file=sys.stderr)
    return 0


def add_parser(bench_sub) -> None:
    p = bench_sub.add_parser("train", help="training throughput: notebook Trainer recipe, a strong "
                                           "Trainer baseline and adapterlab's train_adapter")
    p.add_argument("--adapter", default="spam", help="adapter whose spec, data and train split are used")
    p.add_argument("--base-model", default=None, help="base model name, Hub id or folder (default: the spec's)")
    p.add_argument("--data", default=None, help="data file (default: the spec's local_path, else the Hub)")
    p.add_argument("--catalog", default=str(CATALOG_DIR), help="adapter catalogue folder")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--examples", type=int, default=2048,
                   help="training examples per recipe (the train split, repeated if it is smaller)")
    p.add_argument("--val-examples", type=int, default=200, help="validation examples for the loss")
    p.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/train-<cpu|cuda>.json)")
    p.add_argument("--warmup-examples", type=int, default=WARMUP_EXAMPLES,
                   help="each recipe first trains once on this many examples, untimed (0: no warm-up)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every recipe this many times and report each one's median run")
    p.add_argument("--profile", action="store_true",
                   help="profile 5 steps of an extra, untimed run of adapterlab's recipe "
                        "(table next to the JSON, *-profile.txt)")
    p.set_defaults(func=cmd_bench_train)
