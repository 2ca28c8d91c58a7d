"""``adapterlab train``, ``eval`` and ``card``: the training package's commands.

Registered through the ``adapterlab.commands`` entry point, so the CLI in ``adapters`` offers them
without importing this package. Heavy imports happen only when a command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adapters.catalog import CATALOG_DIR, get_spec, load_catalog
from adapters.cli import UsageError, check_output_folder, check_trained_base, positive_int
from adapters.metrics_file import VARIANTS, measured_variants, read_metrics_file
from adapters.runtime import AdapterNotTrainedError, eval_command, read_threshold_record
from adapters.spec import SPEC_FILE


def register(sub, bench_sub) -> None:
    train = sub.add_parser("train", help="train an adapter from its spec, then evaluate it")
    _common(train)
    train.add_argument("--max-steps", type=positive_int, default=None, help="stop after N optimizer steps")
    train.add_argument("--restart", action="store_true", help="discard checkpoints instead of resuming")
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    train.add_argument("--run-dir", default=None,
                       help="checkpoints of the run in progress (default: runs/<adapter>); a killed run resumes from here")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate base, few-shot and fine-tuned on the test split")
    _common(ev)
    ev.add_argument("--variants", default="base,few_shot,fine_tuned", help="comma-separated, of base, few_shot, fine_tuned")
    ev.add_argument("--output", default=None, metavar="DIR",
                    help="write metrics.json, the card and plots here (default: the adapter's folder); "
                         "a decision threshold is part of the weights, so one tuned now is stored beside them")
    ev.add_argument("--replace", action="store_true",
                    help="let a smaller evaluation (fewer examples or variants) replace the adapter's metrics.json")
    ev.add_argument("--test-data", default=None, metavar="FILE",
                    help="evaluate on every usable example of FILE (in the spec's data format) instead of the "
                         "test split; examples also in the training or validation split are left out (needs --output)")
    ev.set_defaults(func=cmd_eval)

    card = sub.add_parser("card", help="rewrite an adapter's model card from its metrics.json and spec "
                                       "(after editing the spec's text; nothing is re-measured)")
    card.add_argument("adapter", help="adapter name (see `adapterlab adapters`)")
    card.add_argument("--catalog", default=str(CATALOG_DIR), help="adapter catalogue folder")
    card.add_argument("--check", action="store_true", help="exit 1 if the card is stale; write nothing")
    card.set_defaults(func=cmd_card)


def _common(p) -> None:
    p.add_argument("adapter", help="adapter name (see `adapterlab adapters`)")
    p.add_argument("--base-model", default=None, help="base model name, Hub id or folder (default: the spec's)")
    p.add_argument("--data", default=None,
                   help="data file, or a folder laid out like ../shared/datasets (default: $ADAPTERLAB_DATA_DIR, "
                        "then the spec's local_path, else the Hub)")
    p.add_argument("--device", default="auto", help="auto (env ADAPTERLAB_DEVICE, else CUDA when there is a GPU), "
                                                  "cpu, cuda, cuda:1 ...")
    p.add_argument("--eval-limit", type=positive_int, default=None, help="evaluate on the first N test examples")
    p.add_argument("--batch-size", type=positive_int, default=None, help="evaluation batch size (default: 64 on a GPU, 8 on the CPU)")
    p.add_argument("--catalog", default=str(CATALOG_DIR), help="adapter catalogue folder")


def _check_device(args) -> None:
    """Refuse a ``--device`` that is not here before the data is read (the model loader checks it again)."""
    from adapters.base_models import LoadOptions

    LoadOptions(device=args.device).torch_device()


def _splits(spec, args, needs: dict[str, str]):
    """The spec's data split; ``needs`` maps each split that must not be empty to what needs it."""
    from .data import load_splits
    from .train import is_main_process

    splits = load_splits(spec, path=args.data)
    r = splits.report
    if is_main_process():  # each process of a DDP run reads the data; one says so
        skipped = ", ".join(f"{n} {reason} (first lines: {', '.join(map(str, r.skipped_lines.get(reason, [])))})"
                            for reason, n in r.skipped.items()) or "none"
        print(f"data: {r.source}: train {r.train}, validation {r.validation}, test {r.test} (seed {r.seed}, "
              f"{r.duplicates_removed} duplicates removed, skipped {skipped}"
              + (f", labels {r.label_counts}" if r.label_counts is not None else "") + ")"
              + "".join(f"; {note}" for note in r.notes), file=sys.stderr)
    empty = [f"{what} needs {split} examples" for split, what in needs.items() if not getattr(r, split)]
    if empty:
        raise UsageError(f"{r.source}: {r.examples} usable examples split into train {r.train}, validation "
                         f"{r.validation}, test {r.test}; {'; '.join(empty)}: give more data (--data FILE)")
    return splits


def cmd_train(args) -> int:
    from dataclasses import asdict

    from .train import check_run_folder, default_run_dir, end_process_group, is_main_process, train_adapter

    spec = get_spec(load_catalog(args.catalog), args.adapter)
    _check_device(args)
    if args.run_dir:
        check_output_folder(Path(args.run_dir), "--run-dir")
    check_run_folder(Path(args.run_dir or default_run_dir(spec)))
    check_output_folder(spec.directory, "the adapter's folder")  # written at the end: fail now, not then
    needs = {"train": "training", "validation": "early stopping"} | ({} if args.no_eval else {"test": "evaluation"})
    splits = _splits(spec, args, needs)
    trained_labels = [label for label, n in (splits.report.label_counts or {}).get("train", {}).items() if n]
    if spec.task == "classify" and len(trained_labels) < 2:
        raise UsageError(f"{splits.report.source}: the training split holds only "
                         f"{', '.join(map(repr, trained_labels)) or 'no label'} of {', '.join(map(repr, spec.labels))}; "
                         "a classifier needs examples of at least two labels")
    result = train_adapter(spec, splits, base=args.base_model, max_steps=args.max_steps,
                           device=args.device, restart=args.restart,
                           run_dir=args.run_dir)
    main_process = is_main_process()
    end_process_group()  # the evaluation below runs in one process
    if not main_process:  # DDP: rank 0 wrote the adapter and evaluates it once
        return 0
    print(json.dumps(asdict(result), indent=2))
    if not args.no_eval:
        _evaluate(spec.name, args, splits, asdict(result))
    return 0


def cmd_eval(args) -> int:
    from .evaluate import FEW_SHOT_DRAWS

    spec = get_spec(load_catalog(args.catalog), args.adapter)
    _check_device(args)
    variants = tuple(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise UsageError(f"--variants: {', '.join(map(repr, unknown)) or 'none given'}; choose from {', '.join(VARIANTS)}")
    out_dir = Path(args.output) if args.output else spec.directory
    if args.test_data and out_dir.resolve() == spec.directory.resolve():
        raise UsageError("--test-data: give --output DIR for its results; the adapter's folder keeps the "
                         "metrics of its own test split, which its card and the app show")
    if out_dir.resolve() != spec.directory.resolve() and (out_dir / SPEC_FILE).is_file():
        raise UsageError(f"--output {out_dir}: is another adapter's folder (it holds an {SPEC_FILE}); its "
                         f"metrics.json and model card would be replaced by {spec.name}'s: give another folder")
    check_output_folder(out_dir, "--output")
    if "fine_tuned" in variants:
        if variants == ("fine_tuned",) and not spec.has_weights:  # nothing would be measured
            raise AdapterNotTrainedError.of(spec)
        check_trained_base(spec, args.base_model)
    needs = {"test": "evaluation"}
    if "fine_tuned" in variants and spec.decision == "validation_f1" and read_threshold_record(spec) is None:
        needs["validation"] = "tuning the decision threshold"
    if "few_shot" in variants and FEW_SHOT_DRAWS > 1:
        needs["validation"] = "choosing the few-shot examples"
    splits = _splits(spec, args, {k: v for k, v in needs.items() if not (k == "test" and args.test_data)})
    if args.test_data:
        splits = _test_file_splits(spec, splits, args.test_data)
    if out_dir.resolve() == spec.directory.resolve() and not args.replace:
        examples = min(args.eval_limit or len(splits.test), len(splits.test))
        loss = measurements_lost(spec.directory / "metrics.json", variants, examples)
        if loss:
            raise UsageError(f"{loss}; write it elsewhere with --output DIR, or pass --replace")
    train_result = read_train_result(spec.directory / "train_result.json")
    _evaluate(spec.name, args, splits, train_result, variants=variants, out_dir=out_dir)
    return 0


def read_train_result(path: Path) -> dict | None:
    """The training run's record beside the weights (None when there is none), or an error naming
    the file when it cannot be read."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a training record this tool wrote ({exc}); train the adapter again "
                         "or remove the file") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record


def measurements_lost(metrics_file: Path, variants: tuple[str, ...], examples: int) -> str | None:
    """What writing an evaluation of ``variants`` on ``examples`` test examples over ``metrics_file``
    would lose (variants it holds that this one lacks, or more test examples); None when nothing."""
    if not metrics_file.exists():
        return None
    try:
        recorded = read_metrics_file(metrics_file)
        recorded_examples = int(recorded["test_examples"])
    except (ValueError, KeyError, TypeError):
        return None  # not one this tool wrote: nothing measured to keep
    held = measured_variants(recorded)
    if recorded_examples <= examples and set(held) <= set(variants):
        return None
    return (f"{metrics_file} holds {', '.join(held)} on {recorded_examples} test examples; this evaluation "
            f"({', '.join(variants)} on {examples}) would replace it")


def cmd_card(args) -> int:
    from adapters.files import refresh_generated

    from .card import card_text

    spec = get_spec(load_catalog(args.catalog), args.adapter)
    metrics_file = spec.directory / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file}: not found; the card is written from the measured "
                                f"results: run `{eval_command(spec)}` first")
    metrics = read_metrics_file(metrics_file, spec)
    return refresh_generated(spec.directory / "README.md", card_text(spec, metrics, spec.directory),
                             "model card", f"adapterlab card {spec.name}", args.check)


def _test_file_splits(spec, splits, path: str):
    """``splits`` with the test file's examples as the test split (``data.with_test_file``); says
    what was read and left out, and refuses a file with nothing left to evaluate."""
    from .data import with_test_file

    splits = with_test_file(spec, splits, path)
    t = splits.report.test_data
    overlap = t["in_training_or_validation"]
    print(f"test data: {t['source']}: {t['rows']} rows, {t['examples']} evaluated ({t['duplicates_removed']} "
          f"duplicates, {overlap['same_text']} also in the training or validation split, {overlap['near_duplicates']} "
          f"near duplicates of those left out; skipped {t['skipped'] or 'none'})", file=sys.stderr)
    if not splits.test:
        raise UsageError(f"--test-data {path}: no example left to evaluate ({t['rows']} rows read; see above)")
    return splits


def _evaluate(name: str, args, splits, train_result, variants=None, out_dir: Path | None = None) -> None:
    from adapters.base_models import LoadOptions
    from adapters.runtime import Runtime

    from .card import write_card, write_metrics
    from .evaluate import evaluate_adapter

    runtime = Runtime.local(args.catalog, base=args.base_model, options=LoadOptions(device=args.device),
                            only=[name])
    spec = runtime.spec(name)
    out_dir = out_dir or spec.directory
    batch = args.batch_size or (64 if LoadOptions(device=args.device).torch_device().startswith("cuda") else 8)
    report = evaluate_adapter(runtime, spec, splits, limit=args.eval_limit, variants=variants or VARIANTS,
                              batch_size=batch, out_dir=out_dir)
    metrics = write_metrics(spec, report, splits.report.as_record(), train_result, out_dir)
    write_card(spec, metrics, out_dir)
    print(json.dumps({"variants": metrics["variants"], "targets": metrics["targets"]}, indent=2, default=str))
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'README.md'}", file=sys.stderr)
    if out_dir.resolve().parent == CATALOG_DIR.resolve():  # the project's own, shipped adapters
        print("the project's README results table and chainlit.md now lag behind: run `adapterlab results` "
              "and `python -m chat_app.welcome`", file=sys.stderr)


if __name__ == "__main__":  # `accelerate launch -m training.cli train spam` for several GPUs
    import training.cli  # the module object the entry point names, not this __main__ copy
    from adapters.cli import main

    sys.exit(main(sys.argv[1:], registrars=[training.cli.register]))
