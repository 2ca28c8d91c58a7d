"""What an adapter is: the typed, validated form of ``adapters/<name>/adapter.yaml``.

One spec drives training, evaluation and serving, so the prompt a model is trained on is
the prompt it is evaluated and served with. Specs are validated once, here, at load time;
every error names the file and the field (``adapters/spam/adapter.yaml: lora.r: expected
an integer, got 'sixteen'``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

SPEC_FILE = "adapter.yaml"


class SpecError(ValueError):
    """An adapter spec is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class PromptSpec:
    """The system message and the user turn; ``{text}`` marks where the input goes."""

    system: str
    user_template: str = "{text}"


@dataclass(frozen=True)
class GenerationSpec:
    """Decoding defaults; ``temperature: 0`` means greedy decoding. ``no_repeat_ngram_size: n`` (0:
    off) never repeats a sequence of n tokens, prompt included (``generate``'s option of that name):
    greedy decoding of a small model otherwise tends to loop on a sentence until the token limit."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    no_repeat_ngram_size: int = 0


@dataclass(frozen=True)
class SplitSpec:
    """How the data set is cut into train/validation/test; ``group_by`` keeps groups whole."""

    seed: int = 42
    validation: float = 0.1
    test: float = 0.1
    group_by: str | None = None
    # inputs this similar (Jaccard of their 5-character pieces, digits masked) are one unit, kept in
    # one split: templated spam that differs only in its phone number or prize is one message
    near_duplicates: float | None = None


# What each data.format holds: the task its examples are for (training/data.py reads them so), and
# the formats whose readers keep the examples that share split.group_by's value in one split.
FORMAT_TASKS = {"sms_spam_tsv": "classify", "medquad_csv": "generate", "oncology_jsonl": "extract"}
GROUPED_FORMATS = ("medquad_csv", "oncology_jsonl")


@dataclass(frozen=True)
class DataSpec:
    """Where the examples come from: a local file (a relative path is read from the project root, then
    from the spec's own folder; see ``training.data.data_candidates``) or the Hub."""

    format: Literal[tuple(FORMAT_TASKS)]  # one of FORMAT_TASKS' names; training.data.FORMATS reads each
    local_path: str | None = None
    hub_id: str | None = None
    split: SplitSpec = field(default_factory=SplitSpec)
    max_target_words: int | None = None
    # classify only: repeat minority-label training examples up to this fraction of the majority
    # label's count (validation and test are never touched); null keeps the natural balance
    oversample: float | None = None


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyper-parameters, passed to ``peft.LoraConfig``."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainingSpec:
    """Optimisation hyper-parameters; ``method: qlora`` loads the base in 4-bit NF4."""

    method: Literal["lora", "qlora"] = "lora"
    # packed: TRL's padding-free best-fit packing (several examples per row; the shipped adapters
    # were trained so); length_grouped: one example per row, rows of similar length batched
    # together. See training.train.batching_args for what each costs.
    batching: Literal["packed", "length_grouped"] = "packed"
    epochs: float = 1.0
    learning_rate: float = 2e-4
    batch_size: int = 16
    gradient_accumulation: int = 1
    max_seq_length: int = 512
    warmup_ratio: float = 0.03
    eval_steps: int = 100
    early_stopping_patience: int = 3
    seed: int = 42
    # on a GPU, torch.compile each decoder layer (compiled once, for any token count): ~1.3-1.5x
    # faster steps after compiling once per process (~19 s on a fresh H200 host, ~4 s with
    # inductor's cache warm), repaid after roughly 250 steps on a fresh host (README); LoRA only;
    # a CPU run stays eager (training.train.compiles_layers)
    compile: bool = False


@dataclass(frozen=True)
class TargetSpec:
    """What the fine-tuned adapter must reach on one metric (``targets: {metric: ...}``); every bound
    given must hold. ``metric: 0.95`` is short for ``metric: {at_least: 0.95}``."""

    metric: str
    at_least: float | None = None  # value >= at_least
    at_most: float | None = None  # value <= at_most (perplexity, repaired_rate: lower is better)
    at_least_base_plus: float | None = None  # value >= the base model's value + this
    above_base: bool = False  # value > the base model's value


# What evaluation measures for each kind of adapter; a spec's ``metrics`` picks, in order, which of
# them its model card, metrics.json's headline and the README's results table show.
TASK_METRICS = {
    "classify": ("accuracy", "precision", "recall", "f1", "auroc"),  # of the last label, as positive
    "classify_multi": ("accuracy", "macro_precision", "macro_recall", "macro_f1"),  # three labels or more
    "generate": ("rouge1", "rouge2", "rougeL", "bleu", "bertscore_f1", "perplexity", "length_ratio"),
    "extract": ("json_valid", "micro_field_accuracy", "micro_field_token_f1", "exact_match_all_fields",
                "repaired_rate", "negated_value_rate"),
}


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter: what it does, how it is prompted, trained and measured."""

    name: str
    title: str
    description: str
    task: Literal["classify", "generate", "extract"]
    base_model: str
    prompt: PromptSpec
    data: DataSpec
    labels: tuple[str, ...] = ()
    # how a two-label adapter turns P(last label) into a label: "argmax", or "validation_f1": the
    # threshold that maximises the last label's F1 on the validation split, tuned after training
    # and stored beside the weights (threshold.json); the base model always uses argmax
    decision: Literal["argmax", "validation_f1"] = "argmax"
    fields: tuple[str, ...] = ()
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    metrics: tuple[str, ...] = ()
    # what "good enough" means: the model card, the results table and the app say whether each was met
    targets: tuple[TargetSpec, ...] = ()
    max_input_tokens: int = 1024
    # what a user should know about this adapter beyond the shared disclaimer: its data, known
    # failure modes, a missed target's cause; printed in the model card's limitations section
    limitations: str = ""
    # extra model-card tags; "medical" also puts "not for clinical decisions" in the card
    tags: tuple[str, ...] = ()
    directory: Path = Path(".")

    @property
    def measured(self) -> tuple[str, ...]:
        """The metrics evaluation computes for this adapter (``TASK_METRICS``)."""
        multi = self.task == "classify" and len(self.labels) > 2
        return TASK_METRICS["classify_multi" if multi else self.task]

    @property
    def headline_metrics(self) -> tuple[str, ...]:
        """The spec's ``metrics``, or all that evaluation computes when it names none."""
        return self.metrics or self.measured

    @property
    def has_weights(self) -> bool:
        """True once training has written PEFT weights next to the spec."""
        return (self.directory / "adapter_config.json").is_file() and any(
            (self.directory / f).is_file()
            for f in ("adapter_model.safetensors", "adapter_model.bin")
        )


class _BadKey(yaml.YAMLError):
    """A mapping key that is given twice or is not text; the message starts with its line."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping: PyYAML would keep the last
    one silently, so a second ``training:`` line pasted below the first would win unnoticed. Every
    key must also be text (``1:`` or ``? [a, b]`` would otherwise crash the schema check)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`, merged by the constructor
                continue
            key = self.construct_object(key_node, deep=True)  # deep: a list key is filled now
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise _BadKey(f"line {line}: a key must be text, got {key!r} (quote it)")
            if key in seen:
                raise _BadKey(f"line {line}: {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1, which PyYAML reads, takes 5e-4 and 1.0e5 for text (an exponent needs a dot before it and a
# sign): `learning_rate: 2e-4`, as Hugging Face's documentation writes it, was refused as "expected a
# number, got '2e-4'". Such an exponent is read as a number here, as YAML 1.2 reads it.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _yaml_error(exc: yaml.YAMLError, text: str) -> str:
    """A YAML syntax error as one line: ``line 7, column 1: not valid YAML: <problem>``."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character; it has a position only
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        return (f"line {line}, column {column}: not valid YAML: "
                f"unacceptable character #x{exc.character:04x}: {exc.reason}")
    if not isinstance(exc, yaml.MarkedYAMLError):
        return "not valid YAML: " + " ".join(str(exc).split())
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    message = exc.problem or exc.context or "syntax error"
    if exc.problem and exc.context and exc.context_mark and mark and exc.context_mark.line != mark.line:
        # e.g. "expected ',' or ']'" at the end of the file, for a '[' opened on an earlier line
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return f"{where}not valid YAML: {message}"


def _where_undecodable(data: bytes, exc: UnicodeDecodeError) -> str:
    """Line and column of the first byte that is not UTF-8, as an editor counts them."""
    before = data[:exc.start]
    line = before.count(b"\n") + 1
    column = len(before[before.rfind(b"\n") + 1:].decode("utf-8", errors="replace")) + 1
    return (f"line {line}, column {column}: not UTF-8 (byte 0x{data[exc.start]:02x}); "
            "save the spec as UTF-8")


def load_spec(path: str | Path) -> AdapterSpec:
    """Read and validate one ``adapter.yaml`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir() and path.name != SPEC_FILE:
        path = path / SPEC_FILE
    if path.is_dir():
        raise SpecError(f"{path}: is a directory, not a spec file")
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except _BadKey as exc:
        raise SpecError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: {_yaml_error(exc, text)}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: {_where_undecodable(path.read_bytes(), exc)}") from None
    if raw is None:
        raise SpecError(f"{path}: the file is empty (a spec needs at least task, base_model, prompt and data)")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    if "directory" in raw:
        raise SpecError(f"{path}: directory: not a spec field (an adapter's folder is where its spec is)")
    raw = {"name": path.parent.name, **raw, "directory": path.parent}
    targets = _targets(raw.pop("targets", {}), str(path))
    spec = dataclasses.replace(_build(AdapterSpec, raw, str(path), ""), targets=targets)
    _check_semantics(spec, str(path))
    return spec


def _targets(raw: Any, where: str) -> tuple[TargetSpec, ...]:
    """The ``targets:`` mapping (metric name -> a number or a mapping of bounds), in its order."""
    if not isinstance(raw, dict):
        got = "nothing (an empty value)" if raw is None else repr(raw)
        raise SpecError(f"{where}: targets: expected a mapping of metric name to target, got {got}")
    targets = []
    for metric, bounds in raw.items():
        if isinstance(bounds, (int, float)) and not isinstance(bounds, bool):
            bounds = {"at_least": bounds}
        elif isinstance(bounds, dict) and "metric" in bounds:
            raise SpecError(f"{where}: targets.{metric}.metric: unknown field (the key above names the metric)")
        elif not isinstance(bounds, dict):
            raise SpecError(f"{where}: targets.{metric}: expected a number (at least) or a mapping of "
                            f"at_least, at_least_base_plus, above_base, got {bounds!r}")
        targets.append(_build(TargetSpec, {**bounds, "metric": metric}, where, f"targets.{metric}."))
    return tuple(targets)


def _misspelt_base(name: str) -> str | None:
    """The known base model ``name`` is a near miss of ("smollm2-135m-instrct"), or None. Such a
    name would be tried as a Hub id, and the adapter then reported as trained on another base."""
    import difflib

    from .base_models import KNOWN_BASES

    if name in KNOWN_BASES or "/" in name or Path(name).exists():
        return None
    close = difflib.get_close_matches(name.casefold(), list(KNOWN_BASES), n=1, cutoff=0.85)
    return close[0] if close else None


def _check_semantics(spec: AdapterSpec, where: str) -> None:
    def fail(field_name: str, message: str) -> None:
        raise SpecError(f"{where}: {field_name}: {message}")

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", spec.name):
        fail("name", f"{spec.name!r}: letters, digits, '_', '.' and '-' only (it is typed in commands "
                     "such as `adapterlab train <name>`)")
    _check_template(spec.prompt.user_template, lambda message: fail("prompt.user_template", message))
    misspelt = _misspelt_base(spec.base_model)
    if misspelt:
        fail("base_model", f"{spec.base_model!r} is not a known base model; did you mean {misspelt!r}? (a Hub id "
                           "or a model folder is taken as it is written)")
    for name, values in (("labels", spec.labels), ("fields", spec.fields)):
        for i, value in enumerate(values):
            if value != value.strip():  # data files are matched stripped: ' ham' would match no row
                fail(f"{name}[{i}]", f"{value!r} starts or ends with a space; write {value.strip()!r}")
    if spec.task == "classify" and len(spec.labels) < 2:
        fail("labels", "a classify adapter needs at least two labels")
    if spec.task == "classify" and len({label.casefold() for label in spec.labels}) != len(spec.labels):
        fail("labels", "labels must be distinct, ignoring case (data files are read that way)")
    if spec.task == "extract" and len(set(spec.fields)) != len(spec.fields):
        fail("fields", "fields must be distinct")
    if spec.decision != "argmax" and (spec.task != "classify" or len(spec.labels) != 2):
        fail("decision", "a tuned threshold needs a classify adapter with exactly two labels")
    if spec.task == "extract" and not spec.fields:
        fail("fields", "an extract adapter needs at least one field")
    if spec.task != "classify" and spec.labels:
        fail("labels", f"only classify adapters have labels (task is {spec.task!r})")
    if spec.task != "extract" and spec.fields:
        fail("fields", f"only extract adapters have fields (task is {spec.task!r})")
    unknown = [m for m in spec.metrics if m not in spec.measured]
    if unknown:
        fail("metrics", f"{unknown[0]!r} is not measured for this adapter; choose from {', '.join(spec.measured)}")
    for target in spec.targets:
        if target.metric not in spec.measured:
            fail(f"targets.{target.metric}", f"not measured for this adapter; choose from {', '.join(spec.measured)}")
        if (target.at_least is None and target.at_most is None and target.at_least_base_plus is None
                and not target.above_base):
            fail(f"targets.{target.metric}", "give at_least, at_most, at_least_base_plus or above_base: true")
        if target.at_least is not None and target.at_most is not None and target.at_least > target.at_most:
            fail(f"targets.{target.metric}", f"at_least {target.at_least} is above at_most {target.at_most}: "
                 "no value can meet both")
    if not spec.data.local_path and not spec.data.hub_id:
        fail("data", "give local_path, hub_id or both")
    for name, value in (("generation.temperature", spec.generation.temperature),
                        ("generation.no_repeat_ngram_size", spec.generation.no_repeat_ngram_size),
                        ("lora.dropout", spec.lora.dropout)):
        if value < 0:
            fail(name, f"must be >= 0, got {value}")
    if not 0 < spec.generation.top_p <= 1:
        fail("generation.top_p", f"must be in (0, 1], got {spec.generation.top_p}")
    t = spec.training
    for name, value in (("generation.max_new_tokens", spec.generation.max_new_tokens),
                        ("lora.r", spec.lora.r), ("max_input_tokens", spec.max_input_tokens),
                        ("training.batch_size", t.batch_size),
                        ("training.gradient_accumulation", t.gradient_accumulation),
                        ("training.eval_steps", t.eval_steps),
                        ("training.early_stopping_patience", t.early_stopping_patience)):
        if value < 1:
            fail(name, f"must be >= 1, got {value}")
    # a run of no steps would still replace the adapter's weights (with untrained ones)
    for name, value in (("training.epochs", t.epochs), ("training.learning_rate", t.learning_rate),
                        ("lora.alpha", spec.lora.alpha)):
        if not value > 0:
            fail(name, f"must be > 0, got {value}")
    if not 0 <= t.seed < 2**32:  # numpy's seed range: refused by the Trainer only once the model had loaded
        fail("training.seed", f"must be in [0, 2**32 - 1], got {t.seed}")
    if t.max_seq_length < 16:
        fail("training.max_seq_length", f"must be >= 16 tokens, got {t.max_seq_length}")
    if not 0 <= t.warmup_ratio < 1:
        fail("training.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
    if not spec.lora.dropout < 1:
        fail("lora.dropout", f"must be < 1, got {spec.lora.dropout}")
    if not spec.lora.target_modules:
        fail("lora.target_modules", "name at least one module (e.g. q_proj)")
    if spec.data.oversample is not None:
        if spec.task != "classify":
            fail("data.oversample", f"only classify adapters can oversample (task is {spec.task!r})")
        if not 0 < spec.data.oversample <= 1:
            fail("data.oversample", f"must be in (0, 1], got {spec.data.oversample}")
    if spec.training.compile and spec.training.method != "lora":
        fail("training.compile", "compiled layers are for method: lora (a 4-bit base does not compile)")
    data = spec.data
    if FORMAT_TASKS[data.format] != spec.task:
        fitting = [f for f, task in FORMAT_TASKS.items() if task == spec.task]
        fail("data.format", f"{data.format!r} holds {FORMAT_TASKS[data.format]} examples; {spec.task} adapters "
                            f"read {', '.join(fitting)}")
    if data.max_target_words is not None:
        if spec.task != "generate":
            fail("data.max_target_words", f"only generate adapters cap their answers (task is {spec.task!r})")
        if data.max_target_words < 1:
            fail("data.max_target_words", f"must be >= 1 word (leave it out for no cap), got {data.max_target_words}")
    if data.split.group_by is not None and data.format not in GROUPED_FORMATS:
        fail("data.split.group_by", f"{data.format!r} is not read by groups (only {', '.join(GROUPED_FORMATS)}); "
                                    "leave it out")
    split = spec.data.split
    if split.validation == 0:  # refused after the data were read, by training and few-shot draws alike
        fail("data.split.validation", "must be above 0: training stops early on the validation split, and "
                                      "evaluation chooses its few-shot examples there")
    if not (0 <= split.validation < 1 and 0 < split.test < 1 and split.validation + split.test < 1):
        fail("data.split", "validation and test must be fractions that leave room for training")
    if split.near_duplicates is not None and not 0 < split.near_duplicates <= 1:
        fail("data.split.near_duplicates", f"a similarity in (0, 1], got {split.near_duplicates}")


def _check_template(template: str, fail: typing.Callable[[str], typing.NoReturn]) -> None:
    """``template.format(text=...)`` must work: ``{text}`` and no other placeholder, well formed."""
    braces = "write literal braces as {{ and }}"
    try:
        fields = [(name, conversion, spec) for _, name, spec, conversion
                  in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # a lone '{' or '}'
        fail(f"not a valid template: {exc}; {braces}")
    for name, conversion, spec in fields:
        if name != "text" or conversion or spec:
            placeholder = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            fail(f"placeholder {{{placeholder}}} is not allowed, only {{text}}; {braces}")
    if not fields:
        fail("must contain the placeholder {text}")


# --- a small typed loader: dataclass fields and their annotations are the schema ------------

IMPLIED_FIELDS = ("directory", "metric")  # set from where the value is (the folder, the targets key)


def _build(cls: type, raw: Any, where: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        got = "nothing (an empty value)" if raw is None else f"{type(raw).__name__} {raw!r}"
        raise SpecError(f"{where}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {got}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise SpecError(f"{where}: {prefix}{unknown[0]}: unknown field "
                        f"(known: {', '.join(sorted(k for k in known if k not in IMPLIED_FIELDS))})")
    values = {}
    for name, f in known.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{where}: {prefix}{name}: required field is missing")
            continue
        values[name] = _coerce(hints[name], raw[name], where, f"{prefix}{name}")
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str, name: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail(expected: str) -> typing.NoReturn:
        raise SpecError(f"{where}: {name}: expected {expected}, got {value!r}")

    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, name + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, where, name)
    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            fail("a list")
        return tuple(_coerce(args[0], v, where, f"{name}[{i}]") for i, v in enumerate(value))
    if hint is Path:
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        if not math.isfinite(value):  # YAML's .nan and .inf would slip past every range check
            fail("a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value.strip():
            fail("a non-empty string")
        return value
    raise TypeError(f"unsupported annotation {hint!r} for {name}")  # a bug in this module
