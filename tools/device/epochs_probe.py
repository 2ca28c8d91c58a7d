"""Does training oncology past its validation-loss optimum raise exact-match field accuracy?
(GPU probe, not part of the package.)

The shipped oncology adapter early-stops on validation *loss* (best near epoch 5). Exact match is a
different measure: a model that keeps fitting the references' wording may match more of them even
as its loss on held-out wording rises. This trains the spec for ``--epochs`` with every checkpoint
kept (early stopping effectively off), then evaluates chosen checkpoints' micro field accuracy on the
**validation** split (for choosing) and the test split (for reporting), fine-tuned variant only,
through the same ``evaluate_adapter`` the CLI uses.

Usage on the GPU machine (after ``source tools/device/setup.sh``), in two calls if need be:
``python3 tools/device/epochs_probe.py train --epochs 14`` (resumes after a kill), then
``python3 tools/device/epochs_probe.py eval --every 2 --output $OUT/epochs.json``; then, anywhere,
``python tools/device/epochs_probe.py plot epochs.json --output epochs.png``.

Measured 2026-11-29 on an H200 (12 epochs, 1,572 steps, 336 s; ``results/oncology-epochs-h200.json``):
validation loss lowest at epoch 4.9 (0.124), 0.157 at epoch 12; test micro field accuracy 0.777,
0.782, 0.784, 0.783, 0.784, 0.784 at epochs 2.1, 4.3, 6.4, 8.6, 10.7, 12 (validation 0.778–0.801).
Longer training does not raise exact match: the shipped early-stopped adapter (0.790) is as good.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.backends import LocalBackend  # noqa: E402
from adapters.base_models import LoadOptions  # noqa: E402
from adapters.catalog import get_spec, load_catalog  # noqa: E402
from adapters.runtime import Runtime  # noqa: E402
from training.data import load_splits  # noqa: E402
from training.evaluate import evaluate_adapter  # noqa: E402
from training.train import train_adapter  # noqa: E402

WORK = Path("/tmp/epochs_probe")  # checkpoints stay on the device: a call returns at most 64 MiB


def long_spec(name: str, epochs: float):
    spec = get_spec(load_catalog(), name)
    training = dataclasses.replace(spec.training, epochs=epochs, early_stopping_patience=10_000)
    return dataclasses.replace(spec, training=training)


def cmd_train(args) -> None:
    spec = long_spec(args.adapter, args.epochs)
    splits = load_splits(spec)
    work = Path(args.work)
    result = train_adapter(spec, splits, base=args.base, output_dir=work / "final", run_dir=work / "run",
                           max_steps=args.max_steps, extra_args={"save_total_limit": None})
    print(json.dumps(dataclasses.asdict(result), default=str))


def checkpoints(run_dir: Path, every_epochs: float) -> list[tuple[float, Path]]:
    """(epoch, folder) of the kept checkpoints, about ``every_epochs`` apart, plus the last one."""
    found = []
    for folder in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        state = json.loads((folder / "trainer_state.json").read_text())
        found.append((state["epoch"], folder))
    chosen, next_epoch = [], every_epochs
    for epoch, folder in found:
        if epoch >= next_epoch - 1e-6:
            chosen.append((epoch, folder))
            next_epoch = epoch + every_epochs
    if found and found[-1] not in chosen:
        chosen.append(found[-1])
    return chosen


def cmd_eval(args) -> None:
    spec = get_spec(load_catalog(), args.adapter)
    splits = load_splits(spec)
    chosen = checkpoints(Path(args.work) / "run", args.every)
    names = {f"step{folder.name.split('-')[1]}": folder for epoch, folder in chosen}
    epochs = {f"step{folder.name.split('-')[1]}": epoch for epoch, folder in chosen}
    backend = LocalBackend.load(args.base or spec.base_model, names, LoadOptions(device="auto"), progress=False)
    specs = {name: dataclasses.replace(spec, name=name) for name in names}
    runtime = Runtime(backend, specs)
    state = json.loads((chosen[-1][1] / "trainer_state.json").read_text())
    eval_losses = {round(h["epoch"], 2): h["eval_loss"] for h in state["log_history"] if "eval_loss" in h}
    rows = []
    for name, folder in names.items():
        row = {"checkpoint": folder.name, "epoch": round(epochs[name], 3)}
        for split in ("validation", "test"):
            started = time.perf_counter()
            held_out = dataclasses.replace(splits, test=getattr(splits, split)[:args.limit])
            report = evaluate_adapter(runtime, specs[name], held_out, variants=("fine_tuned",),
                                      batch_size=args.batch_size, progress=False)
            fine = report["variants"]["fine_tuned"]
            row[split] = {"micro_field_accuracy": round(fine["micro_field_accuracy"], 4),
                          "micro_field_token_f1": round(fine["micro_field_token_f1"], 4),
                          "json_valid": fine["json_valid"],
                          "per_field": {f: round(v, 3) for f, v in fine["per_field"].items()},
                          "seconds": round(time.perf_counter() - started, 1)}
        row["eval_loss"] = min(eval_losses.items(), key=lambda kv: abs(kv[0] - row["epoch"]))[1]
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.output).write_text(json.dumps({"adapter": args.adapter, "best_by_loss": state.get(
        "best_model_checkpoint"), "rows": rows}, indent=1))


def cmd_plot(args) -> None:
    """Micro field accuracy (validation, test) and validation loss against epochs, from ``eval``'s JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(args.results).read_text())
    rows = results["rows"]
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=110)
    for split, style in (("validation", "s--"), ("test", "o-")):
        ax.plot(epochs, [r[split]["micro_field_accuracy"] for r in rows], style, label=f"{split} micro field accuracy")
    ax.axhline(0.90, color="tab:red", linewidth=1, label="target 0.90")
    ax.set_xlabel("epoch")
    ax.set_ylabel("exact match (micro, 7 fields)")
    ax.set_ylim(0.70, 0.95)
    ax.grid(alpha=0.3)
    loss = ax.twinx()
    loss.plot(epochs, [r["eval_loss"] for r in rows], "^:", color="tab:gray", label="validation loss")
    loss.set_ylabel("validation loss")
    handles = ax.get_legend_handles_labels()[0] + loss.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title(f"{results['adapter']}: training longer, same exact match")
    fig.tight_layout()
    fig.savefig(args.output)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("--epochs", type=float, default=14)
    train.add_argument("--max-steps", type=int, default=None)
    ev = sub.add_parser("eval")
    ev.add_argument("--every", type=float, default=2.0, help="epochs between evaluated checkpoints")
    ev.add_argument("--batch-size", type=int, default=160)
    ev.add_argument("--output", default="epochs.json")
    ev.add_argument("--limit", type=int, default=None, help="first N examples of each split")
    plot = sub.add_parser("plot")
    plot.add_argument("results", help="the JSON `eval` wrote")
    plot.add_argument("--output", default="epochs.png")
    for p in (train, ev):
        p.add_argument("--adapter", default="oncology")
        p.add_argument("--base", default=None, help="base model (default: the spec's)")
        p.add_argument("--work", default=str(WORK))
    args = parser.parse_args(argv)
    {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot}[args.command](args)


if __name__ == "__main__":
    main()
