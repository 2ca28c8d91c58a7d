"""Turn an adapter spec into trained LoRA weights in ``adapters/<name>/``.

TRL's ``SFTTrainer`` does the work: prompt/completion examples rendered by the runtime's own
prompt renderer (so training sees exactly the inference prompt), loss on the completion only,
padding-free packing or length-grouped batches (``training.batching``, see ``batching_args``),
evaluation loss every ``eval_steps``, the best checkpoint kept, early stopping, and resumption from
the last checkpoint after a kill. Three speed-ups for the GPU, each tested against the library's
own path: packed examples are attended one at a time (``packed_attention``), PEFT's LoRA
projections that read the same input run as one (``fused_lora``), and with ``training.compile``
the decoder layers run compiled on CUDA (``compile_decoder_layers``; evaluation runs them eagerly). LoRA runs in bf16 on CUDA (fp32
on CPU); QLoRA loads the base in 4-bit NF4 with double quantization, recomputes activations
(gradient checkpointing) and uses paged 8-bit AdamW on CUDA. ``accelerate launch -m training.cli
train <name>`` runs the same code with DDP on several GPUs.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import inspect
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import ProgressCallback, TrainerCallback

from adapters.base_models import LoadOptions, canonical_name, load_base, cudnn_attention
from adapters.catalog import in_project_catalog
from adapters.files import STAGING_PREFIX, give_default_modes, move_staged_files, write_text_atomic
from adapters.prompts import render_example, target_text, task_messages
from adapters.runtime import THRESHOLD_FILE
from adapters.spec import AdapterSpec
from training.card import EVALUATION_FILES, unevaluated_card_text
from training.data import PROJECT_ROOT
from training.fused_lora import fuse_lora_projections
from training.packed_attention import use_packed_attention

RUNS_DIR = PROJECT_ROOT / "runs"  # checkpoints of the project catalogue's runs in progress (git-ignored)
RUN_ENTRIES = ("checkpoint-*", "README.md")  # what a run writes into its folder (README.md: TRL's card)
FINGERPRINT_FILE = "fingerprint"  # in a run folder: what the run trained, and that a run made the folder


@dataclass
class TrainResult:
    """What a training run did, for metrics.json and the model card."""

    adapter: str
    base_model: str
    method: str
    device: str
    steps: int
    epochs: float
    train_examples: int
    train_seconds: float
    train_tokens: int  # real (non-padding) tokens the optimizer saw
    tokens_per_second: float
    best_eval_loss: float | None
    best_checkpoint: str | None
    resumed_from: str | None
    seed: int
    batching: str | None = None  # absent in runs before 2026-11-23 (they used padding-free packing)
    compiled_layers: bool = False  # decoder layers torch.compiled; train_seconds includes compiling them
    processes: int = 1  # data-parallel processes (DDP through torchrun / accelerate launch), one GPU each
    settings: dict | None = None  # the spec's training and lora sections as trained (absent before 2026-11-30)


def sft_rows(tokenizer: Any, spec: AdapterSpec, examples) -> list[dict[str, str]]:
    """Prompt/completion pairs, rendered exactly as the runtime renders them at inference."""
    rows = []
    for ex in examples:
        prompt, completion = render_example(tokenizer, task_messages(spec, ex.input), target_text(spec, ex.target))
        rows.append({"prompt": prompt, "completion": completion})
    return rows


def check_answers_fit(tokenizer: Any, rows: list[dict[str, str]], max_length: int, where: str) -> str | None:
    """Refuse rows whose prompt alone fills ``max_length`` tokens (training.max_seq_length): cut
    there, they keep no answer token, so they teach nothing, and when every row is so the loss is 0
    and the run looks perfect. A note when some answers are cut short or some rows are lost, else None."""
    no_answer = cut = 0
    for row in rows:
        prompt = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
        whole = prompt + len(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
        no_answer += prompt >= max_length
        cut += prompt < max_length < whole
    if rows and no_answer == len(rows):
        raise ValueError(f"{where}: training.max_seq_length is {max_length} tokens, and every training "
                         f"prompt is that long or longer, so no answer token would be trained; raise it "
                         f"(the prompts are the system prompt, template and text as rendered)")
    notes = []
    if no_answer:
        notes.append(f"{no_answer} of {len(rows)} training examples have a prompt of {max_length} tokens or "
                     "more and train nothing")
    if cut:
        notes.append(f"{cut} of {len(rows)} have their answer cut at {max_length} tokens")
    return "; ".join(notes) + " (training.max_seq_length)" if notes else None


def batching_args(batching: str) -> dict:
    """TRL arguments for the spec's ``training.batching``.

    ``packed`` (the default): best-fit packing, padding-free: a batch is one long row of examples,
    attended one example at a time (``training.packed_attention``). ``length_grouped``: one example
    per row, rows of similar length batched together, padded to the longest. Measured on the H100
    with the spam spec (tools/device/speed_probe.py, 2026-11-23): packed 16 rows of 320 tokens 539
    ms/step, 7.7k real tokens/s; length-grouped 64 examples (about as many per step) 441 ms/step,
    11.8k tokens/s. But the spam adapter trained length-grouped (batch 64, LoRA dropout 0) reached
    F1 0.881 against 0.942 packed: grouping by length also groups by label (spam is longer than
    ham), so batches are nearly one-class. Packing stays the default.
    """
    if batching == "packed":
        return {"packing": True, "padding_free": True}
    return {"packing": False, "padding_free": False, **sampling_args(group_by_length=True)}


def sampling_args(group_by_length: bool) -> dict:
    """transformers 5 replaced ``group_by_length=True`` with ``train_sampling_strategy``."""
    from transformers import TrainingArguments

    if "train_sampling_strategy" in inspect.signature(TrainingArguments).parameters:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


def is_main_process() -> bool:
    """False in the other processes of a data-parallel run (rank > 0), which train but write nothing.
    Before training starts the process group, the launcher's ``RANK`` says it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def end_process_group() -> None:
    """Leave the data-parallel process group once training is over (PyTorch warns at exit otherwise);
    nothing outside a data-parallel run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def compiles_layers(training, on_cuda: bool) -> bool:
    """Whether a run compiles its decoder layers: ``training.compile``, for LoRA (a 4-bit base does
    not compile), on a GPU only. On a GPU, inductor needs only Triton, which CUDA builds of torch
    ship; on a CPU it needs a C++ toolchain that a user's machine may lack, so CPU runs stay eager."""
    return bool(training.compile) and training.method == "lora" and on_cuda


def compile_decoder_layers(model) -> int:
    """``torch.compile`` each decoder layer of ``model`` (a transformers model, PEFT-wrapped or not);
    the number compiled.

    Regional compilation: the layers share one compiled code, so compiling costs one layer's time,
    and token counts are dynamic, so packed batches of any length reuse it (fused LoRA and packed
    attention trace as one graph a layer; a test checks loss and gradients against eager)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # The first layer's input (frozen embeddings) would not require grad and the others' would: a
    # second compiled graph. Making the embeddings' output require grad costs no computation.
    base.enable_input_require_grads()
    # The Python floats the layers read (RMSNorm's epsilon, LoRA's scaling and dropout rate) are
    # constants of a run. Unspecialised (dynamo's default), each becomes a 0-d CPU tensor input of
    # the graph, and on an H200 the compiled layers then built C++ code and ran inductor's CPU
    # vector-ISA check, which only CPU code needs. As constants, neither happens: the first step
    # (compiling) went from 80.9 to 18.7 s in a fresh host's first process and from 46.9 to 3.8 s
    # in a later one (tools/device/compile_probe.py). Process-wide, and only training compiles.
    import torch

    torch._dynamo.config.specialize_float = True
    layers = getattr(getattr(base, "model", None), "layers", None) or []
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def evaluate_eagerly(trainer) -> None:
    """Make ``trainer``'s evaluation run its compiled layers' eager code. Evaluation runs without
    gradients, for which each layer would be compiled again (two more graphs on an H200, each costing
    tens of seconds) to save little on a few validation batches."""
    import torch

    prediction_step = trainer.prediction_step

    def eager_prediction_step(*args, **kwargs):
        with torch.compiler.set_stance("force_eager"):
            return prediction_step(*args, **kwargs)

    trainer.prediction_step = eager_prediction_step


def activation_checkpointing(on: bool) -> dict:
    """The Trainer's recompute-activations switch: transformers 5.24 renamed ``gradient_checkpointing``
    to ``activation_checkpointing`` (the old name goes in v6); the GPU image has 5.17."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": on}


# spec fields that never reach training (its prose, and what only evaluation and inference read):
# editing them while a killed run waits must not discard its checkpoints, as fixing a typo in the
# title or limitations did when the fingerprint was the spec file's text
UNTRAINED_SPEC_FIELDS = ("title", "description", "limitations", "tags", "metrics", "targets", "generation",
                         "decision", "max_input_tokens", "directory")


def run_fingerprint(spec: AdapterSpec, base: str, overrides: dict, splits=None) -> str:
    """Checkpoints are resumed only by a run with the same trained spec fields (all but
    ``UNTRAINED_SPEC_FIELDS``), base, overrides and data (the training and validation examples
    themselves, so another --data file starts afresh)."""
    trained = {k: v for k, v in asdict(spec).items() if k not in UNTRAINED_SPEC_FIELDS}
    digest = hashlib.sha256()
    for part in (json.dumps(trained, sort_keys=True), base, json.dumps(overrides, sort_keys=True)):
        digest.update(part.encode())
    for examples in ((splits.train, splits.validation) if splits is not None else ()):
        for ex in examples:
            digest.update(json.dumps([ex.input, ex.target], ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def train_adapter(spec: AdapterSpec, splits, *, base: str | None = None, output_dir: Path | None = None,
                  run_dir: Path | None = None, max_steps: int | None = None, device: str = "auto",
                  restart: bool = False, progress: bool = True, extra_args: dict | None = None,
                  callbacks: list | None = None) -> TrainResult:
    """Train ``spec`` on ``splits.train`` (early-stopped on ``splits.validation``) and write the
    adapter into ``output_dir`` (default: the spec's folder), replacing any previous one atomically."""
    run_dir = Path(run_dir or default_run_dir(spec))
    with _only_run_in(run_dir, spec):
        return _train(spec, splits, base, output_dir, run_dir, max_steps, device, restart, progress,
                      extra_args, callbacks)


@contextlib.contextmanager
def _only_run_in(run_dir: Path, spec: AdapterSpec):
    """Hold ``run_dir`` for this run: a second `train` of the same adapter started meanwhile took the
    first's live checkpoints for another run's, deleted them, and the two runs' weights overwrote
    each other. Data-parallel processes of one run share it: only the main process locks."""
    if not is_main_process():
        yield
        return
    from filelock import FileLock, Timeout

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"{spec.name}: another `adapterlab train` is using {run_dir} (its lock: {lock.lock_file}); "
                         "wait for it to end, or give this run another --run-dir") from None
    try:
        yield
    finally:
        lock.release()


def _train(spec: AdapterSpec, splits, base, output_dir, run_dir: Path, max_steps, device, restart, progress,
           extra_args, callbacks) -> TrainResult:
    from peft import prepare_model_for_kbit_training
    from trl import SFTConfig

    base = base or spec.base_model
    t = spec.training
    overrides = {"max_steps": max_steps, **(extra_args or {})}
    fingerprint = run_fingerprint(spec, canonical_name(base), overrides, splits)
    resume_from = _checkpoint_to_resume(run_dir, fingerprint, restart, progress and is_main_process())

    qlora = t.method == "qlora"
    torch_device = LoadOptions(device=device).torch_device()
    on_cuda = torch_device.startswith("cuda")
    # on a CPU (tests, tiny models) training stays float32 whatever the loader's default: there is
    # no bf16 autocast there, so bf16 weights would also mean bf16 activations and gradients
    options = LoadOptions(device=device, load_in_4bit=qlora, dtype="bfloat16" if on_cuda else "float32")
    model, tokenizer = load_base(base, options, progress=progress)
    check_target_modules(spec, model, canonical_name(base))
    if t.batching == "packed":
        use_packed_attention(model)  # attention within each packed example, without a block mask
    if qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)

    train_rows = sft_rows(tokenizer, spec, splits.train)
    eval_rows = sft_rows(tokenizer, spec, splits.validation)
    fit_note = check_answers_fit(tokenizer, train_rows, t.max_seq_length, str(spec.directory / "adapter.yaml"))
    if fit_note and is_main_process():
        print(f"train: {fit_note}", file=sys.stderr)
    args = SFTConfig(**{**trainer_arguments(spec, run_dir, max_steps, on_cuda, progress), **(extra_args or {})})
    trainer, throughput, compiled = sft_trainer(spec, model, tokenizer, args, train_rows, eval_rows, callbacks,
                                                on_cuda, progress)
    if trainer.is_world_process_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / FINGERPRINT_FILE, fingerprint)

    with cudnn_attention(False):  # eager steps: its CPU cost per call
        trainer.train(resume_from_checkpoint=resume_from)
    if trainer.state.global_step == 0:  # untrained weights must never replace an adapter's
        raise ValueError(f"{spec.name}: training ran no step ({len(train_rows)} training examples, "
                         f"epochs {t.epochs}); the adapter was left as it was")

    result = train_result(spec, trainer, throughput, canonical_name(base), torch_device, len(train_rows),
                          resume_from, compiled)
    if trainer.is_world_process_zero():
        write_adapter(trainer.model, spec, Path(output_dir or spec.directory), canonical_name(base),
                      trainer.state.log_history, result)
        # the run is over and its result is the adapter: a second `train` trains again, where resuming
        # a finished run had trained one step past --max-steps, or rewritten the weights and dropped
        # their evaluation
        clear_run_folder(run_dir)
    return result


def check_target_modules(spec: AdapterSpec, model, base: str) -> None:
    """Refuse ``lora.target_modules`` names that match no module of the base (a typo such as
    ``q_prj``): PEFT complains only when none matches, and trains the others without a word."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in spec.lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        import torch

        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"{spec.directory / 'adapter.yaml'}: lora.target_modules: {', '.join(map(repr, missing))} "
                         f"names no module of {base} (its linear layers: {', '.join(linear)})")


def sft_trainer(spec: AdapterSpec, model, tokenizer, args, train_rows: list[dict], eval_rows: list[dict],
                callbacks: list | None, on_cuda: bool, progress: bool):
    """TRL's ``SFTTrainer`` for the spec's LoRA on ``model``, early-stopped on ``eval_rows``, with its
    fused (and on a GPU compiled) layers and the loss-and-speed bar; returns the trainer, the
    callback that times it, and whether its layers are compiled."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    t = spec.training
    lora = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                      target_modules=list(spec.lora.target_modules), task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                         eval_dataset=Dataset.from_list(eval_rows), processing_class=tokenizer,
                         peft_config=lora,
                         callbacks=[EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience),
                                    *(callbacks or [])])
    fuse_lora_projections(trainer.model)  # fewer operations a step, same math (training/fused_lora.py)
    compiled = compiles_layers(t, on_cuda)
    if compiled:
        compile_decoder_layers(trainer.model)
        evaluate_eagerly(trainer)
        if progress and trainer.is_world_process_zero():  # the bar would otherwise sit at step 0 meanwhile
            print("compiling the decoder layers during the first step (once per process: about 20 s on "
                  "a fresh GPU host; `training.compile: false` trains without)", file=sys.stderr)
    throughput = ThroughputCallback()
    trainer.add_callback(throughput)
    if progress:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LossAndSpeedBar(throughput))
    return trainer, throughput, compiled


def train_result(spec: AdapterSpec, trainer, throughput: "ThroughputCallback", base_name: str, torch_device: str,
                 train_examples: int, resumed_from: str | None, compiled: bool) -> TrainResult:
    """What the finished run did, as recorded in ``train_result.json`` and the model card."""
    import torch

    state = trainer.state
    return TrainResult(
        adapter=spec.name, base_model=base_name, method=spec.training.method,
        device=torch.cuda.get_device_name(torch_device) if torch_device.startswith("cuda") else "cpu",
        steps=state.global_step, epochs=round(state.epoch or 0, 3),
        train_examples=train_examples, train_seconds=round(throughput.train_seconds, 2),
        train_tokens=int(state.num_input_tokens_seen),
        tokens_per_second=round(throughput.tokens_per_second(state), 1),
        best_eval_loss=state.best_metric, best_checkpoint=state.best_model_checkpoint,
        resumed_from=resumed_from, seed=spec.training.seed,
        batching="padding-free packing" if trainer.args.packing else "length-grouped batches, padded per batch",
        compiled_layers=compiled, processes=trainer.args.world_size,
        settings={"training": asdict(spec.training), "lora": asdict(spec.lora)})


def trainer_arguments(spec: AdapterSpec, run_dir: Path, max_steps: int | None, on_cuda: bool,
                      progress: bool) -> dict:
    """TRL's ``SFTConfig`` arguments for the spec's hyper-parameters: completion-only loss, evaluation
    and a checkpoint every ``eval_steps`` (the best kept, by validation loss), bf16 and fused AdamW on
    a GPU (paged 8-bit AdamW for QLoRA), fixed seeds."""
    t, steps_per_eval = spec.training, spec.training.eval_steps
    qlora = t.method == "qlora"
    return dict(
        output_dir=str(run_dir),
        num_train_epochs=t.epochs,
        max_steps=max_steps if max_steps else -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_ratio,  # a float below 1 is read as a ratio of the total steps
        lr_scheduler_type="cosine",
        max_length=t.max_seq_length,
        # QLoRA is for bases that barely fit: trade recomputation for memory. LoRA bases here fit without it.
        **activation_checkpointing(qlora),
        **batching_args(t.batching),
        completion_only_loss=True,
        eval_strategy="steps",
        eval_steps=steps_per_eval,
        save_strategy="steps",
        save_steps=steps_per_eval,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, min(10, steps_per_eval)),
        include_num_input_tokens_seen="non_padding",
        bf16=on_cuda and not qlora,
        optim="paged_adamw_8bit" if (qlora and on_cuda) else ("adamw_torch_fused" if on_cuda else "adamw_torch"),
        seed=t.seed,
        data_seed=t.seed,
        report_to=[],
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        use_cpu=not on_cuda,
        # every LoRA weight gets a gradient each step: searching the graph for unused ones (the
        # Trainer's default for a PEFT model) is an extra traversal per step, and DDP warns about it
        ddp_find_unused_parameters=False,
    )


def default_run_dir(spec: AdapterSpec) -> Path:
    """Where a run keeps its checkpoints: ``runs/<name>`` for the project's catalogue, ``.runs/<name>``
    in any other catalogue (one catalogue's run must not restart another's of the same name)."""
    return RUNS_DIR / spec.name if in_project_catalog(spec) else spec.directory.resolve().parent / ".runs" / spec.name


def clear_run_folder(run_dir: Path) -> None:
    """Delete what runs wrote into ``run_dir`` (checkpoints, fingerprint, TRL's card); anything else
    someone put there stays, and so does the folder then."""
    for pattern in (*RUN_ENTRIES, FINGERPRINT_FILE):
        for entry in run_dir.glob(pattern):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    try:
        run_dir.rmdir()
    except OSError:  # not empty: someone's files
        pass


class RunDirError(ValueError):
    """A run folder that is not this tool's: training will not delete what it holds."""


def check_run_folder(run_dir: Path) -> None:
    """Refuse a run folder that holds files but was not made by a training run (no fingerprint):
    starting afresh deletes a run folder, and must never delete someone's files."""
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / FINGERPRINT_FILE).is_file():
        raise RunDirError(f"run folder {run_dir}: holds files that no training run made (no "
                          f"{FINGERPRINT_FILE} file); give --run-dir an empty or new folder, so that "
                          "nothing in it is deleted")


def _checkpoint_to_resume(run_dir: Path, fingerprint: str, restart: bool, say: bool = False) -> str | None:
    """The checkpoint to resume from in ``run_dir``, or None to start afresh (its old checkpoints
    deleted). A folder that holds files but no ``fingerprint`` was not made by a run: refused."""
    check_run_folder(run_dir)
    if not run_dir.is_dir():
        return None
    recorded = (run_dir / FINGERPRINT_FILE).read_text() if (run_dir / FINGERPRINT_FILE).is_file() else None
    if restart or recorded != fingerprint:
        if say and recorded is not None:
            why = "--restart" if restart else "another spec, base, data or --max-steps"
            print(f"train: starting afresh in {run_dir} ({why}); its checkpoints are deleted", file=sys.stderr)
        clear_run_folder(run_dir)
        return None
    checkpoint = last_complete_checkpoint(run_dir)
    if say and checkpoint:
        print(f"train: resuming from {checkpoint} (step {_checkpoint_step(Path(checkpoint))})", file=sys.stderr)
    return checkpoint


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint whose save finished; the ones a kill cut short are deleted.

    The Trainer writes ``trainer_state.json`` last, after the weights, optimizer and RNG states, so a
    checkpoint without a readable one was being written when the run died (``get_last_checkpoint``
    would pick it by its number alone, and resuming from it fails)."""
    for checkpoint in sorted(run_dir.glob("checkpoint-*"), key=_checkpoint_step, reverse=True):
        if _checkpoint_step(checkpoint) < 0 or not checkpoint.is_dir():
            continue
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return str(checkpoint)
        except (OSError, ValueError):
            shutil.rmtree(checkpoint, ignore_errors=True)  # other DDP ranks may delete it too
    return None


def _checkpoint_step(path: Path) -> int:
    step = path.name.removeprefix("checkpoint-")
    return int(step) if step.isdigit() else -1


class ThroughputCallback(TrainerCallback):
    """Measures training time (evaluation excluded) and real tokens/s; shows them in the logs."""

    def __init__(self):
        self.train_seconds = 0.0
        self._since = None
        self._tokens_at_start = None

    def on_train_begin(self, args, state, control, **kw):
        self._since = time.perf_counter()
        self._tokens_at_start = state.num_input_tokens_seen

    def on_evaluate(self, args, state, control, **kw):
        self._pause()

    def on_prediction_step(self, args, state, control, **kw):
        self._pause()

    def on_step_begin(self, args, state, control, **kw):
        if self._since is None:
            self._since = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        if logs is not None and "loss" in logs:
            logs["tokens_per_s"] = round(self.tokens_per_second(state), 1)

    def on_train_end(self, args, state, control, **kw):
        self._pause()

    def _pause(self):
        if self._since is not None:
            self.train_seconds += time.perf_counter() - self._since
            self._since = None

    def tokens_per_second(self, state) -> float:
        running = self.train_seconds + (time.perf_counter() - self._since if self._since else 0.0)
        tokens = state.num_input_tokens_seen - (self._tokens_at_start or 0)
        return tokens / running if running > 0 else 0.0


class LossAndSpeedBar(ProgressCallback):
    """transformers' progress bar, with the latest training loss, validation loss and real tokens/s
    on the bar itself (the logged dicts are still printed above it)."""

    def __init__(self, throughput: ThroughputCallback):
        super().__init__()
        self.throughput = throughput
        self.shown: dict[str, str] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            if "loss" in logs:
                self.shown["loss"] = f"{logs['loss']:.4g}"
                self.shown["tok/s"] = f"{self.throughput.tokens_per_second(state):,.0f}"
            if "eval_loss" in logs:
                self.shown["val_loss"] = f"{logs['eval_loss']:.4g}"
            self.training_bar.set_postfix(self.shown, refresh=True)
        super().on_log(args, state, control, logs=logs, **kwargs)


# --- artifacts ---------------------------------------------------------------------------------

def write_adapter(model, spec: AdapterSpec, out: Path, base_name: str, log_history: list[dict],
                  result: TrainResult) -> None:
    """Write PEFT weights, the training log and the loss plot into ``out``.

    Files are first written to a staging folder, then moved into place together
    (``adapters.files.move_staged_files``): a run killed while saving leaves the previous adapter's
    files, or, once the staging folder is complete, the new ones (the next catalogue read finishes
    the move), never new weights with an old config.
    """
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    config_file = staging / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base_name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights = staging / "adapter_model.safetensors"
    # bf16 halves the size of the shipped weights; PEFT casts them to the base's dtype on load
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(weights)).items()},
              str(weights), metadata={"format": "pt"})
    give_default_modes(staging)
    write_training_log(staging / "training_log.csv", log_history)
    plot_loss(staging / "loss.png", log_history, spec.name)
    (staging / "train_result.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    (staging / "README.md").write_text(unevaluated_card_text(spec, asdict(result)), encoding="utf-8")
    # a decision threshold, the metrics and their plots measured the weights being replaced: removed in
    # the same change that moves the new weights in (never new weights with old numbers, and a kill
    # before it leaves the old weights with their own threshold and card); the next evaluation writes them
    move_staged_files(staging, ("adapter_model.safetensors", "training_log.csv", "loss.png", "train_result.json",
                                "README.md", "adapter_config.json"), remove=(THRESHOLD_FILE, *EVALUATION_FILES))


def write_training_log(path: Path, log_history: list[dict]) -> None:
    columns = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s",
               "num_input_tokens_seen"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in log_history:
            if "loss" in row or "eval_loss" in row:
                writer.writerow(row)


def plot_loss(path: Path, log_history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log_history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_title(f"{title}: training")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    else:  # a run shorter than one logging interval, without evaluation
        ax.text(0.5, 0.5, "no loss was logged in this run", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
