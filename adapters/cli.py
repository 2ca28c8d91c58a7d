"""The ``adapterlab`` command line: base models, the adapter catalogue, predictions and the results table.

This module defines ``models``, ``adapters``, ``predict`` and ``results``; ``train``, ``eval`` and ``card``
(``training``), ``serve`` (``chat_app``) and ``bench`` (``benchmarks``) are added by those packages
through the ``adapterlab.commands`` entry point, so ``adapters`` imports none of them.

Every expected failure (bad input, unknown adapter, untrained adapter, wrong base) ends with a
one-line ``adapterlab: error: ...`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import codecs
import errno
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .backends import BaseMismatchError, other_base
from .base_models import (DEFAULT_BASE, KNOWN_BASES, BaseModelError, LoadOptions, canonical_name, materialize,
                          materialized_path)
from .catalog import CATALOG_DIR, get_spec, load_catalog, scan_catalog
from .files import write_lines_atomic
from .runtime import AdapterNotTrainedError, InputError, Runtime, read_threshold_record, train_command
from .spec import SPEC_FILE, SpecError
from .strict_json import NotStrictJSON, loads_strict

# Printed as one line. Plain ValueError and OSError are here because much of the code (and the
# libraries under it) says what is wrong with an input or a file in one; ADAPTERLAB_TRACEBACK=1
# prints the traceback instead, for the one that turns out to be a bug.
EXPECTED_ERRORS = (SpecError, InputError, AdapterNotTrainedError, BaseMismatchError,
                   BaseModelError, ValueError, OSError)
TRACEBACK_VARIABLE = "ADAPTERLAB_TRACEBACK"

DESCRIPTION = """\
Train LoRA adapters for one small base model, measure them, and run them from the command line or
the chat app. The adapters are the folders of adapters/ (each with its adapter.yaml)."""
EXAMPLES = """\
examples:
  adapterlab adapters              which adapters there are, and which are trained
  adapterlab predict spam --input in.jsonl --output -
                                   one {"text": ...} a line in; the answers to standard output
  adapterlab eval spam --eval-limit 50 --output /tmp/quick
                                   a quick measurement, written outside the adapter's folder
  adapterlab serve                 the chat app on http://127.0.0.1:8000

Each command's --help lists its options. A refused command prints one "adapterlab: error: ..." line
and exits with status 2 (ADAPTERLAB_TRACEBACK=1 prints the traceback instead)."""


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line."""


class Terminated(BaseException):
    """SIGTERM (``kill``, ``timeout``, a scheduler), raised so that files being written are cleaned
    up on the way out as on Ctrl-C; Python's default would end the process on the spot."""


def main(argv: list[str] | None = None, registrars=()) -> int:
    parser = build_parser(registrars)
    args = parser.parse_args(argv)
    previous = _raise_on_sigterm()
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("adapterlab: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("adapterlab: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # `... --output - | head`: the reader has what it wanted; say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 1
    except (UsageError, *EXPECTED_ERRORS) as exc:
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        print(f"adapterlab: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm():
    """Turn SIGTERM into ``Terminated``; the handler it replaces (None where none can be set)."""
    def terminate(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (an embedding program's worker): leave signals alone
        return None


def build_parser(registrars=()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adapterlab", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list base models; prepare the embedded default")
    models.add_argument("--prepare", metavar="NAME", default=DEFAULT_BASE,
                        help=f"embedded base to convert if needed (default: {DEFAULT_BASE})")
    models.set_defaults(func=cmd_models)

    adapters = sub.add_parser("adapters", help="list the adapter catalogue")
    adapters.add_argument("--catalog", default=str(CATALOG_DIR), help="adapter catalogue folder")
    adapters.set_defaults(func=cmd_adapters)

    predict = sub.add_parser("predict", help="run an adapter over a JSONL file of {\"text\": ...}")
    predict.add_argument("adapter", help="adapter name (see `adapterlab adapters`)")
    predict.add_argument("--input", required=True, type=Path,
                         help="JSONL, one {\"text\": ...} a line (- reads standard input)")
    predict.add_argument("--output", required=True, type=Path,
                         help="JSONL written atomically (- writes standard output)")
    predict.add_argument("--base", action="store_true",
                         help="same prompt with adapters disabled (the base model)")
    predict.add_argument("--batch-size", type=positive_int, default=16,
                         help="texts per model call; a generate adapter's answers decode together as rows "
                              "(default: 16)")
    predict.add_argument("--base-model", default=None,
                         help="base model name, Hub id or folder (default: the spec's)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    predict.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    predict.add_argument("--load-in-4bit", action="store_true", help="NF4 4-bit base (bitsandbytes)")
    predict.add_argument("--catalog", default=str(CATALOG_DIR), help="adapter catalogue folder")
    predict.set_defaults(func=cmd_predict)

    from .results_table import add_parser as add_results

    add_results(sub)

    bench = sub.add_parser("bench", help="benchmarks (JSON results in benchmarks/results/)")
    bench_sub = bench.add_subparsers(required=True, metavar="BENCHMARK")  # filled by the benchmarks package
    add_plugin_commands(sub, bench_sub, registrars)
    _describe_commands(sub)
    _describe_commands(bench_sub)
    return parser


def _describe_commands(subparsers) -> None:
    """Give each command's own ``--help`` the one-line summary the command list shows, where the
    command sets no description of its own (``adapterlab serve --help`` said nothing of what it does)."""
    summaries = {action.dest: action.help for action in subparsers._choices_actions}
    for name, command in subparsers.choices.items():
        if command.description is None and summaries.get(name):
            command.description = summaries[name][:1].upper() + summaries[name][1:] + "."


def add_plugin_commands(sub, bench_sub, registrars=()) -> None:
    """Commands other packages register (``training`` adds train, eval and card, ``chat_app`` serve,
    ``benchmarks`` the ``bench`` commands) without adapters importing them.

    A package lists ``register(subparsers, bench_subparsers)`` under the entry-point group
    ``adapterlab.commands`` in pyproject.toml.
    """
    from importlib.metadata import entry_points

    found = [entry.load() for entry in entry_points(group="adapterlab.commands")]
    for register in dict.fromkeys([*found, *registrars]):  # each once, in order
        register(sub, bench_sub)


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1."""
    return _whole_number(value, 1)


def non_negative_int(value: str) -> int:
    """argparse type: an integer of at least 0."""
    return _whole_number(value, 0)


def _whole_number(value: str, least: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {value!r}") from None
    if number < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return number


# --- commands --------------------------------------------------------------------------------

def cmd_models(args) -> int:
    info = KNOWN_BASES.get(args.prepare)
    if info is None or not info.gguf_package:
        embedded = [n for n, i in KNOWN_BASES.items() if i.gguf_package]
        raise UsageError(f"--prepare {args.prepare!r}: not an embedded base (embedded: {', '.join(embedded)})")
    materialize(info)
    for name, base in KNOWN_BASES.items():
        path = materialized_path(name)
        where = str(path) if path else ("not prepared" if base.gguf_package else f"Hub: {base.hub_id}")
        default = " (default)" if name == DEFAULT_BASE else ""
        print(f"{name}{default}\n  {base.description}\n  {where}")
    return 0


def cmd_adapters(args) -> int:
    """Every adapter of the catalogue, and every spec or adapter config it cannot load with the reason
    (status 1 then)."""
    found = scan_catalog(args.catalog)
    if not found:
        print(f"{args.catalog}: no adapters (each is a folder holding an {SPEC_FILE})", file=sys.stderr)
    unreadable = False
    for spec_file, spec in found:
        if isinstance(spec, SpecError):
            print(f"{spec_file.parent.name:10} {'-':9} not loaded: {spec}")
            continue
        state = "trained" if spec.has_weights else f"not trained ({train_command(spec)})"
        try:
            trained_on = other_base(spec.directory, spec.base_model) if spec.has_weights else None
        except (ValueError, OSError) as exc:  # one adapter's broken config must not hide the others
            unreadable = True
            print(f"{spec.name:10} {spec.task:9} {spec.title} — weights not loadable: {exc} ({train_command(spec)})")
            continue
        if trained_on is not None:
            state = f"trained on {canonical_name(trained_on)}, not its spec's base {spec.base_model} ({train_command(spec)})"
        print(f"{spec.name:10} {spec.task:9} {spec.title} — {state}")
    return 1 if unreadable or any(isinstance(spec, SpecError) for _, spec in found) else 0


PREDICTION_KEYS = {"classify": ("label", "probs", "truncated"),
                   "extract": ("fields", "valid", "repaired", "truncated", "cut_at"),
                   "generate": ("answer", "finish_reason", "truncated")}  # what predict adds to each line, by task
STANDARD_STREAM = Path("-")


def cmd_predict(args) -> int:
    specs = load_catalog(args.catalog)
    spec = get_spec(specs, args.adapter)
    if not args.base and not spec.has_weights:
        raise AdapterNotTrainedError.of(spec)
    if not args.base:
        check_trained_base(spec, args.base_model)
    rows = read_jsonl_texts(args.input, reserved=PREDICTION_KEYS[spec.task])
    check_output_path(args.output)
    if STANDARD_STREAM not in (args.input, args.output) and _same_file(args.input, args.output):
        raise UsageError(f"--output {args.output}: is the --input file; write the predictions to another file "
                         "(they would replace the texts)")
    owner = _adapter_owning(specs, args.output)
    if owner is not None:
        raise UsageError(f"--output {args.output}: is a file of adapter {owner.name!r} ({owner.directory}); write "
                         "the predictions to another file (they would replace it)")
    options = LoadOptions(dtype=args.dtype, device=args.device, load_in_4bit=args.load_in_4bit)
    options.torch_device(), options.torch_dtype()  # a bad --device or --dtype is named before loading
    if args.load_in_4bit and not args.base and (record := read_threshold_record(spec)) is not None:
        label = record.get("label", spec.labels[-1])
        print(f"note: {spec.name}'s decision threshold (P({label}) >= {record['threshold']:.3f}) was tuned with an "
              f"unquantized base; a 4-bit base moves the probabilities, so labels near it can flip "
              f"(the probs of each line show how near)", file=sys.stderr)
    runtime = Runtime.local(args.catalog, base=args.base_model or spec.base_model, options=options,
                            only=[] if args.base else [spec.name])
    predictions = _predictions(runtime, spec.name, spec.task, rows, args)
    made = [] if args.output == STANDARD_STREAM else _missing_folders(args.output)
    if args.output == STANDARD_STREAM:
        for row in predictions:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        write_jsonl_atomic(args.output, predictions)
    where = "standard output" if args.output == STANDARD_STREAM else args.output
    print(f"wrote {len(rows)} line{'s' if len(rows) != 1 else ''} to {where}{_folders_made_note(made)}",
          file=sys.stderr)
    return 0


def _predictions(runtime: Runtime, name: str, task: str, rows: list[dict], args) -> Iterator[dict]:
    from tqdm.auto import tqdm

    with tqdm(total=len(rows), desc=f"{name}{' (base)' if args.base else ''}", unit="line") as bar:
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start:start + args.batch_size]
            texts = [r["text"] for r in batch]
            if task == "classify":
                for row, r in zip(batch, runtime.classify(name, texts, base=args.base,
                                                          batch_size=args.batch_size)):
                    yield {**row, "label": r.label, "probs": r.probs, "truncated": r.truncated}
            elif task == "extract":
                for row, r in zip(batch, runtime.extract(name, texts, base=args.base,
                                                         batch_size=args.batch_size)):
                    yield {**row, "fields": r.fields, "valid": r.valid, "repaired": r.repaired,
                           "truncated": r.truncated, "cut_at": r.cut_at}  # cut_at: the output ended at that limit
            else:
                for row, answer in zip(batch, _answers(runtime, name, texts, args.base)):
                    yield {**row, **answer}
            bar.update(len(batch))


def _answers(runtime: Runtime, name: str, texts: list[str], base: bool) -> list[dict]:
    """Each text's answer as a chat's first turn, with its finish reason: the streams are opened
    together, so the backend decodes them as rows of one batch, as it does a server's users."""
    generations = [runtime.generate(name, [{"role": "user", "content": text}], base=base) for text in texts]
    streams = [iter(g) for g in generations]
    try:
        for stream in streams:  # each asks for the model; those after the first join its batch
            next(stream, None)
        for stream in streams:
            for _ in stream:
                pass
    finally:  # Ctrl-C: every generation stops
        for stream in streams:
            stream.close()
    return [{"answer": g.text, "finish_reason": g.finish_reason, "truncated": g.truncated} for g in generations]


# --- files -----------------------------------------------------------------------------------

def read_jsonl_texts(path: Path, reserved: tuple[str, ...] = ()) -> list[dict]:
    """Every line of a JSONL file (``-``: standard input) as an object with a non-empty string
    ``text`` and none of the ``reserved`` keys (those the predictions will be written under).

    All problems are collected first, each naming its line, so nothing runs on a half-bad file.
    Strict JSON: a key given twice, or NaN / Infinity, is a problem, not a guess.
    """
    data = _input_bytes(Path(path))
    if data.startswith(codecs.BOM_UTF8):  # files saved by Excel or Notepad start with one
        data = data[len(codecs.BOM_UTF8):]
    name = "standard input" if Path(path) == STANDARD_STREAM else path  # not "-:3"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # each line would be "not UTF-8"
        raise UsageError(f"{name}: UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8; "
                         "convert it, e.g. `iconv -f utf-16 -t utf-8`")
    rows, problems = [], []
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{name}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            column = len(raw[:exc.start].decode("utf-8", errors="replace")) + 1
            problems.append(f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column})")
            continue
        if not line.strip():
            continue  # blank lines separate nothing in JSONL; skipping them loses nothing
        try:
            obj = loads_strict(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})")
            continue
        except NotStrictJSON as exc:
            problems.append(f"{where}: {exc}")
            continue
        clashes = [key for key in reserved if isinstance(obj, dict) and key in obj]
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            problems.append(f"{where}: expected an object with a string field \"text\"")
        elif clashes:
            problems.append(f"{where}: has {', '.join(map(json.dumps, clashes))}, which predict writes "
                            f"its answer under; rename it (e.g. \"gold_{clashes[0]}\") to keep it")
        elif not obj["text"].strip():
            problems.append(f"{where}: \"text\" is empty")
        elif not _encodable(obj):
            # a \ud800-style escape is valid JSON but no text: the tokenizer and the output reject it
            problems.append(f"{where}: holds an unpaired surrogate escape (\\ud800-\\udfff), not text")
        else:
            rows.append(obj)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UsageError(f"{len(problems)} bad line(s) in the input, nothing was run:\n  {shown}{more}")
    if not rows:
        raise UsageError(f"{name}: no input lines")
    return rows


def _input_bytes(path: Path) -> bytes:
    if path == STANDARD_STREAM:
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder; --input takes a JSONL file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from None


def check_trained_base(spec, base_model: str | None) -> None:
    """Refuse, before loading anything, to run an adapter on another base than it was trained on,
    naming the --base-model that fits (it failed only after the model had loaded)."""
    base = base_model or spec.base_model
    trained_on = other_base(spec.directory, base) if spec.has_weights else None
    if trained_on is not None:
        raise BaseMismatchError(f"adapter {spec.name!r} was trained on base model {trained_on!r}, not "
                                f"{canonical_name(base)!r}; add --base-model {trained_on} (or --base for the "
                                "base model alone)")


def _adapter_owning(specs: dict, output: Path):
    """The adapter whose folder holds ``output`` as an existing file (its spec, weights, card...), or None."""
    if output == STANDARD_STREAM or not output.is_file():
        return None
    folder = output.resolve().parent
    return next((spec for spec in specs.values() if spec.directory.resolve() == folder), None)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # the output does not exist yet
        return False


def _missing_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet (writing it makes them), outermost first, as
    they will be once made: ``out/../x/p.jsonl`` makes ``out`` and ``x``."""
    missing: list[Path] = []
    for folder in reversed(Path(path).absolute().parents):
        made = Path(os.path.normpath(folder))
        if not made.exists() and made not in missing:
            missing.append(made)
    return missing


def _folders_made_note(folders: Sequence[Path]) -> str:
    """" (made the folder out)", " (made the folders out and x)", or "" for none."""
    if not folders:
        return ""
    names = [str(f) for f in folders]
    return (f" (made the folder {names[0]})" if len(names) == 1
            else f" (made the folders {', '.join(names[:-1])} and {names[-1]})")


def check_output_path(path: Path) -> None:
    """Refuse, before any work, an ``--output`` that cannot be written: a folder, a path under a
    file, or a place this user cannot write to. ``-`` (standard output) is always fine."""
    if path == STANDARD_STREAM:
        return
    if path.is_dir():
        raise UsageError(f"--output {path}: is a folder; give a file name")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise UsageError(f"--output {path}: {existing} is a file, not a folder")
    if path.exists() and not path.is_file():  # a device or a pipe: written to as it is
        if not os.access(path, os.W_OK):
            raise UsageError(f"--output {path}: cannot be written (permission denied)")
        return
    _check_writable("--output", path, existing)


def check_output_folder(path: Path, option: str) -> None:
    """Refuse, before any work, a folder option (``--output DIR``, ``--run-dir``) that cannot be
    made or written: a file at the path or above it, or a folder this user cannot write to."""
    existing = _nearest_existing(path)
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, a file"
        raise UsageError(f"{option} {path}: {where}; give a folder")
    _check_writable(option, path, existing)


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (what a write there would create under)."""
    return next(p for p in [path, *path.parents] if p.exists() or p == p.parent)


def _check_writable(option: str, path: Path, folder: Path) -> None:
    """Make and remove a file in ``folder``, as the atomic write will: permission bits do not tell
    (root may write anywhere by them, yet not in /proc or on a read-only mount)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".adapterlab-probe.", dir=folder)
    except OSError as exc:
        reasons = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                   errno.ENOENT: "it takes no new files"}  # /proc, /sys
        raise UsageError(f"{option} {path}: cannot write in {folder} "
                         f"({reasons.get(exc.errno, exc.strerror)})") from None
    os.close(fd)
    os.unlink(probe)


def _encodable(obj: dict) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def write_jsonl_atomic(path: Path, rows) -> None:
    """Write rows (computed as they are written) to ``path`` atomically, one JSON object a line."""
    write_lines_atomic(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


if __name__ == "__main__":  # python -m adapters.cli
    # the module that training imports UsageError from, not this __main__ copy (whose own
    # UsageError class would not catch the one training raises)
    from adapters.cli import main as package_main

    sys.exit(package_main())
