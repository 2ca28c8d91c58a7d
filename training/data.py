"""The data layer: an adapter spec becomes deterministic train/validation/test lists of ``Example``.

Where the data come from (first that exists): the ``path`` argument (a file, or a datasets folder),
``$ADAPTERLAB_DATA_DIR`` (a datasets folder laid out like ``../shared/datasets``), the spec's
``data.local_path`` (relative to the project root, the folder holding ``adapters/``, then to the
spec's own folder), and last the Hugging Face Hub (``data.hub_id`` through
``datasets.load_dataset``); ``data_candidates`` lists the files tried. The report says which.

Formats: the SMS Spam Collection (``label<TAB>text`` per line, an optional header line), MedQuAD CSV
(header with at least ``Question,Answer``; ``qtype,focus,source,document_id`` optional) and the
oncology JSONL (``input`` and ``output`` a line, ``instruction`` optional; ``output`` holds the spec's fields, each a string or
null). Structural problems (a missing header column, a file that is not UTF-8, broken CSV quoting)
raise ``DataError`` naming the file and line. A bad row (blank, unknown label, empty text, invalid
JSON, a missing field...) is skipped and counted by reason; ``LoadReport.skipped`` has the counts and
``skipped_lines`` the first line numbers of each reason. A file that is not UTF-8 is an error rather
than a skip: skipping its undecodable lines would silently drop mostly spam (``£`` signs).

Splitting (``load_splits``):

1. de-duplicate: inputs equal after ``normalise_text`` (casefold, collapsed whitespace) are one
   example and the first is kept (for ``generate``, the question *and* the answer must be equal:
   MedQuAD has the same question answered by several sources);
2. group: examples that share ``Example.group`` (the spec's ``split.group_by`` value, e.g. MedQuAD's
   ``focus``; by default the normalised input) or a normalised input are one unit, and so are near
   duplicates when the spec's ``split.near_duplicates`` is set (``near_duplicate_pairs``); a unit is
   never cut, so neither a duplicate nor a topic straddles two splits;
3. assign units: within each stratum (the label for ``classify``, so every split keeps the class
   share; one stratum otherwise) units are ordered by a SHA-256 of ``seed`` and the unit's key and cut
   at the spec's validation/test fractions. The same data and seed give the same split on any
   machine and Python version; another seed gives another split;
4. for ``generate`` with ``data.max_target_words``: the training target is cut to that many words
   (at a sentence end when one is in the second half); ``reference`` keeps the full answer, which
   de-duplication compares.

Nothing here prints: everything worth recording is in ``Splits.report`` (a dataclass; the CLI
prints it and ``metrics.json``/the model card record it).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapters.base_models import sha256_of
from adapters.hub import offline_if_unreachable
from adapters.spec import AdapterSpec
from adapters.strict_json import RepeatedKey, loads_strict

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the folder holding adapters/
DATA_DIR_ENV = "ADAPTERLAB_DATA_DIR"
SPLIT_NAMES = ("train", "validation", "test")
SMS_HEADER_NAMES = frozenset({"label", "labels", "class", "category", "type", "v1"})
HUB_SMS_LABELS = ("ham", "spam")  # ucirvine/sms_spam: label 0 = ham, 1 = spam
MAX_LINES_KEPT = 10  # line numbers kept per skip reason in a report


class DataError(ValueError):
    """The data cannot be read as the spec says; the message names the file and the line."""


class DataNotFoundError(DataError):
    """Neither a local file nor the Hub could provide the data; the message says what was tried."""


@dataclass(frozen=True)
class Example:
    """One example. ``target`` is the label (classify), the answer (generate; capped for training
    when the spec says so) or a dict of the spec's fields (extract). ``reference`` is the full,
    uncapped answer of a generate example (``None`` otherwise). ``group`` is the key that keeps
    examples together in one split. ``line`` is the 1-based line (or Hub row) it was read from."""

    input: str
    target: Any
    group: str
    reference: str | None = None
    line: int = 0
    meta: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass
class LoadReport:
    """What reading a source did: rows seen (header excluded), rows kept, and skips by reason."""

    source: str
    format: str
    rows: int = 0
    loaded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)
    header: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class SplitReport:
    """Everything about how the splits were made; ``dataclasses.asdict`` it for metrics.json.
    (Fields in order of interest: the model card shows the first few hundred characters.)"""

    seed: int
    source: str
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    duplicates_removed: int = 0
    examples: int = 0
    groups: int = 0
    train: int = 0
    validation: int = 0
    test: int = 0
    label_counts: dict[str, dict[str, int]] | None = None
    oversampling: dict[str, Any] | None = None
    max_target_words: int | None = None
    targets_capped: int = 0
    fractions: dict[str, float] = field(default_factory=dict)
    group_by: str | None = None
    stratified: bool = False
    conflicting_duplicates: int = 0
    near_duplicates: dict | None = None  # the similarity that linked near duplicates, and how many pairs
    format: str = ""
    adapter: str = ""
    task: str = ""
    notes: list[str] = field(default_factory=list)
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)
    source_sha256: str | None = None  # of a local file: shows two runs read the same data
    test_data: dict[str, Any] | None = None  # a test file that replaced the test split (``with_test_file``)

    def as_record(self) -> dict[str, Any]:
        """This report as metrics.json and the model card keep it: sources without this
        machine's folders (see ``portable_source``), since those files are committed and shared."""
        record = {**dataclasses.asdict(self), "source": portable_source(self.source)}
        if self.test_data is not None:
            record["test_data"] = {**self.test_data, "source": portable_source(self.test_data["source"])}
        return record


@dataclass
class Splits:
    """The three splits, each in its seeded order, and the report of how they were made."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    report: SplitReport

    def items(self) -> list[tuple[str, list[Example]]]:
        return [(name, getattr(self, name)) for name in SPLIT_NAMES]


# --- text helpers -----------------------------------------------------------------------------

def normalise_text(text: str) -> str:
    """The comparison form of a text: casefolded, whitespace runs collapsed to one space."""
    return " ".join(text.casefold().split())


_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")


def cap_words(text: str, max_words: int) -> str:
    """``text`` cut to at most ``max_words`` words: at the last sentence end when that keeps at least
    half of them, else at the word limit. Shorter texts come back unchanged (layout kept)."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    words = _WORD.finditer(text)
    end = None
    for count, match in enumerate(words, 1):
        if count == max_words:
            end = match.end()
            break
    if end is None or not _WORD.search(text, end):
        return text
    head = text[:end]
    sentence_ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if sentence_ends and len(_WORD.findall(head[:sentence_ends[-1]])) * 2 >= max_words:
        head = head[:sentence_ends[-1]]
    return head.strip()


# --- reading files ----------------------------------------------------------------------------

class _Collector:
    """Examples and skips while reading one source."""

    def __init__(self, source: str, fmt: str):
        self.report = LoadReport(source=source, format=fmt)
        self.examples: list[Example] = []
        self._skipped: Counter[str] = Counter()
        self._lines: dict[str, list[int]] = defaultdict(list)
        self.unknown_labels: dict[str, None] = {}  # the first few labels not in the spec, in order
        self.ungrouped = 0  # examples kept without a value of split.group_by (each is its own group)

    def row(self) -> None:
        self.report.rows += 1

    def skip(self, reason: str, line: int) -> None:
        self._skipped[reason] += 1
        if len(self._lines[reason]) < MAX_LINES_KEPT:
            self._lines[reason].append(line)

    def add(self, example: Example) -> None:
        self.examples.append(example)

    def finish(self, where: str) -> tuple[list[Example], LoadReport]:
        report = self.report
        report.loaded = len(self.examples)
        report.skipped = dict(sorted(self._skipped.items()))
        report.skipped_lines = {k: self._lines[k] for k in report.skipped}
        if self.unknown_labels:
            report.notes.append("labels not in the spec: " + ", ".join(map(repr, self.unknown_labels)))
        if not self.examples:
            detail = f" (skipped: {report.skipped}; first lines: {report.skipped_lines})" if report.skipped else ""
            detail += "".join(f"; {note}" for note in report.notes)
            raise DataError(f"{where}: no usable rows in {report.rows} data rows{detail}; "
                            f"is this really {report.format} data?")
        return self.examples, report


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 (a byte-order mark is dropped); anything else is a DataError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's and Notepad's "Unicode"
        raise DataError(f"{path}: line 1: UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8; "
                        "convert the file to UTF-8, e.g. `iconv -f utf-16 -t utf-8`")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column "
                        f"{column}); convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None


def _lines(text: str) -> Iterable[tuple[int, str]]:
    # split on "\n" only: str.splitlines would also split on \u2028, \x0b... inside a message; a file
    # of classic Mac line ends (\r alone, as old Excel for Mac saves text) has no "\n" at all, and was
    # read as one row holding every line
    lines = text.split("\n" if "\n" in text or "\r" not in text.rstrip("\r") else "\r")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        yield number, line.removesuffix("\r")


def _sms_record(out: _Collector, line: int, label: Any, text: Any, labels: Mapping[str, str]) -> None:
    """``labels`` maps each casefolded label to the spec's spelling, which the example gets."""
    read = str(label).strip() if label is not None else ""
    if read.casefold() not in labels:
        out.skip("unknown_label", line)
        if read and len(out.unknown_labels) < MAX_LINES_KEPT:
            out.unknown_labels.setdefault(read, None)
        return
    label = labels[read.casefold()]
    text = "" if text is None else str(text).strip()
    if not text:
        out.skip("empty_text", line)
        return
    out.add(Example(input=text, target=label, group=normalise_text(text), line=line))


def read_sms_spam(path: str | Path, labels: Sequence[str] = ("ham", "spam")) -> tuple[list[Example], LoadReport]:
    """SMS Spam Collection: ``label<TAB>text`` per line; a first line like ``Label<TAB>SMS`` is a header."""
    path = Path(path)
    labels = {label.casefold(): label for label in labels}
    out = _Collector(str(path), "sms_spam_tsv")
    for number, line in _lines(_read_text(path)):
        label, tab, text = line.partition("\t")
        if number == 1 and tab and label.strip().casefold() in SMS_HEADER_NAMES - set(labels):
            out.report.header = True
            continue
        out.row()
        if not line.strip():
            out.skip("empty_row", number)
        elif not tab:
            out.skip("malformed_row", number)
        else:
            _sms_record(out, number, label, text, labels)
    return out.finish(str(path))


def _medquad_record(out: _Collector, line: int, row: Mapping[str, Any], group_by: str | None,
                    extra: Sequence[str]) -> None:
    def get(name: str) -> str:
        value = row.get(name)
        return "" if value is None else str(value).strip()

    question, answer = get("question"), get("answer")
    if not question:
        out.skip("empty_question", line)
        return
    if not answer:
        out.skip("empty_answer", line)
        return
    group = normalise_text(get(group_by.casefold())) if group_by else ""
    if not group:  # no group column, or a blank value in this row: the question is its own group
        group = normalise_text(question)
    meta = {name: get(name) for name in extra if get(name)}
    out.add(Example(input=question, target=answer, group=group, reference=answer, line=line, meta=meta))


MEDQUAD_EXTRA = ("qtype", "focus", "source", "document_id")


def read_medquad_csv(path: str | Path, group_by: str | None = "focus") -> tuple[list[Example], LoadReport]:
    """MedQuAD CSV with a header holding at least ``Question`` and ``Answer`` (any case, any order).

    ``group_by`` names the column that groups examples (``focus``); without that column, or where
    a row leaves it blank, an example's group is its normalised question (noted in the report).
    """
    path = Path(path)
    out = _Collector(str(path), "medquad_csv")
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: line 1: empty file; expected a CSV header with Question and Answer") from None
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: CSV error: {exc}") from None
    names = [h.strip().casefold() for h in header]
    for required in ("Question", "Answer"):
        if required.casefold() not in names:
            raise DataError(f"{path}: line 1: missing column '{required}' in the header "
                            f"(found: {', '.join(header) or 'nothing'})")
    read = {"question", "answer", *MEDQUAD_EXTRA, *([group_by.casefold()] if group_by else [])}
    twice = next((h.strip() for i, h in enumerate(header) if names[i] in read and names.index(names[i]) < i), None)
    if twice is not None:  # a row would silently keep the last of the two columns
        raise DataError(f"{path}: line 1: column '{twice}' is given twice in the header; rename or remove one")
    out.report.header = True
    if group_by and group_by.casefold() not in names:
        out.report.notes.append(f"no '{group_by}' column: grouped by the normalised question")
    blank_groups = 0
    previous = reader.line_num
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}: line {previous + 1}: CSV error: {exc} (a quote not closed?)") from None
        line, previous = previous + 1, reader.line_num
        out.row()
        if not any(f.strip() for f in fields):
            out.skip("empty_row", line)
            continue
        if len(fields) != len(names):
            out.skip("malformed_row", line)
            continue
        row = dict(zip(names, fields))
        if group_by and group_by.casefold() in row and not row[group_by.casefold()].strip():
            blank_groups += 1
        _medquad_record(out, line, row, group_by, MEDQUAD_EXTRA)
    if blank_groups:
        out.report.notes.append(f"{blank_groups} rows with a blank '{group_by}': each grouped by its question")
    return out.finish(str(path))


def _oncology_record(out: _Collector, line: int, obj: Any, fields: Sequence[str], group_by: str | None) -> None:
    if not isinstance(obj, dict):
        out.skip("not_an_object", line)
        return
    text, output = obj.get("input"), obj.get("output")
    if "input" not in obj or "output" not in obj:
        out.skip("missing_key", line)
        return
    if isinstance(output, str):  # a Hub dataset may store the object as JSON text
        try:
            output = json.loads(output)
        except ValueError:
            out.skip("bad_output", line)
            return
    if not isinstance(output, dict):
        out.skip("bad_output", line)
        return
    if not isinstance(text, str) or not text.strip():
        out.skip("empty_input", line)
        return
    if any(f not in output for f in fields):
        out.skip("missing_field", line)
        return
    if any(output[f] is not None and not isinstance(output[f], str) for f in fields):
        out.skip("bad_field_value", line)
        return
    text = text.strip()
    group = normalise_text(str(obj.get(group_by) or "")) if group_by else ""
    meta = {"instruction": obj["instruction"]} if isinstance(obj.get("instruction"), str) else {}
    out.ungrouped += bool(group_by) and not group
    out.add(Example(input=text, target={f: output[f] for f in fields}, group=group or normalise_text(text),
                    line=line, meta=meta))


def read_oncology_jsonl(path: str | Path, fields: Sequence[str],
                        group_by: str | None = None) -> tuple[list[Example], LoadReport]:
    """One JSON object a line with ``input`` and ``output`` (an object with every one of ``fields``,
    each a string or null; extra keys are ignored)."""
    path = Path(path)
    out = _Collector(str(path), "oncology_jsonl")
    for number, line in _lines(_read_text(path)):
        out.row()
        if not line.strip():
            out.skip("empty_row", number)
            continue
        try:
            obj = loads_strict(line)
        except RepeatedKey:  # which of two values is meant cannot be known (json.loads keeps the last)
            out.skip("repeated_key", number)
            continue
        except ValueError:
            out.skip("invalid_json", number)
            continue
        _oncology_record(out, number, obj, fields, group_by)
    _note_ungrouped(out, group_by)
    return out.finish(str(path))


def _note_ungrouped(out: _Collector, group_by: str | None) -> None:
    """Say, as the MedQuAD reader does, when ``group_by`` (a key of the JSON lines) was not there to
    group by: a misspelt key had silently grouped every example by its own text."""
    if not group_by or not out.examples:
        return
    missing = out.ungrouped
    if missing == len(out.examples):
        out.report.notes.append(f"no '{group_by}' key: grouped by the normalised input")
    elif missing:
        out.report.notes.append(f"{missing} rows without a '{group_by}': each grouped by its input")


def _sms_hub_rows(spec: AdapterSpec, ds, out: _Collector, column: Callable[..., str | None]) -> None:
    """``ucirvine/sms_spam``: columns ``sms`` and ``label`` (0 = ham, 1 = spam)."""
    text_col, label_col = column("sms", "text", "message"), column("label")
    feature = ds.features.get(label_col)
    names = list(getattr(feature, "names", None) or HUB_SMS_LABELS)
    labels = {label.casefold(): label for label in (spec.labels or HUB_SMS_LABELS)}
    for number, row in enumerate(ds, 1):
        out.row()
        label = row[label_col]
        if isinstance(label, int) and not isinstance(label, bool):
            label = names[label] if 0 <= label < len(names) else None
        _sms_record(out, number, label, row[text_col], labels)


def _medquad_hub_rows(spec: AdapterSpec, ds, out: _Collector, column: Callable[..., str | None]) -> None:
    """``keivalya/MedQuad-MedicalQnADataset``: ``qtype``, ``Question``, ``Answer`` (no ``focus``: each
    question is its own group)."""
    q_col, a_col = column("Question"), column("Answer")
    group_by = spec.data.split.group_by
    g_col = column(group_by, required=False) if group_by else None
    if group_by and g_col is None:
        out.report.notes.append(f"no '{group_by}' column: grouped by the normalised question")
    extra = {name: column(name, required=False) for name in MEDQUAD_EXTRA}
    for number, row in enumerate(ds, 1):
        out.row()
        record = {"question": row[q_col], "answer": row[a_col]}
        record.update({name: row[col] for name, col in extra.items() if col})
        if g_col:
            record[group_by.casefold()] = row[g_col]
        _medquad_record(out, number, record, group_by if g_col else None, MEDQUAD_EXTRA)


def _oncology_hub_rows(spec: AdapterSpec, ds, out: _Collector, column: Callable[..., str | None]) -> None:
    """Columns ``input`` and ``output`` (an object, or the object as JSON text)."""
    column("input"), column("output")
    for number, row in enumerate(ds, 1):
        out.row()
        _oncology_record(out, number, dict(row), spec.fields, spec.data.split.group_by)
    _note_ungrouped(out, spec.data.split.group_by)


@dataclass(frozen=True)
class DataFormat:
    """How one ``data.format`` (``adapters.spec.FORMAT_TASKS`` says which task's examples it holds) is read."""

    default_file: str  # where its file lies inside a datasets folder (when a spec has no local_path)
    read_file: Callable[[AdapterSpec, Path], tuple[list[Example], LoadReport]]
    read_hub_rows: Callable[[AdapterSpec, Any, _Collector, Callable[..., str | None]], None]


FORMATS = {
    "sms_spam_tsv": DataFormat("sms_spam/SMSSpamCollection",
                               lambda spec, path: read_sms_spam(path, spec.labels or ("ham", "spam")), _sms_hub_rows),
    "medquad_csv": DataFormat("medquad/medquad.csv",
                              lambda spec, path: read_medquad_csv(path, spec.data.split.group_by), _medquad_hub_rows),
    "oncology_jsonl": DataFormat("oncology/train.jsonl",
                                 lambda spec, path: read_oncology_jsonl(path, spec.fields, spec.data.split.group_by),
                                 _oncology_hub_rows),
}


def read_file(spec: AdapterSpec, path: str | Path) -> tuple[list[Example], LoadReport]:
    """Read ``path`` in the spec's ``data.format``."""
    return FORMATS[spec.data.format].read_file(spec, Path(path))


def read_hub(spec: AdapterSpec, hub_id: str | None = None) -> tuple[list[Example], LoadReport]:
    """The spec's Hub data set (all of its ``train`` split), converted like the local formats (each
    format's ``read_hub_rows`` says which columns it reads). Rows are numbered from 1 in the report."""
    import datasets

    hub_id = hub_id or spec.data.hub_id
    if not hub_id:
        raise DataError(f"adapter {spec.name!r}: the spec has no data.hub_id")
    with offline_if_unreachable() as unreachable:
        try:
            ds = datasets.load_dataset(hub_id, split="train")
        except Exception as exc:
            if unreachable:  # offline mode's own message ("offline mode is enabled") would mislead
                raise ConnectionError(f"the Hub is not reachable ({unreachable}) and the Hugging Face "
                                      "cache does not hold it") from exc
            raise
    where = f"hub dataset {hub_id}"
    out = _Collector(f"hf://datasets/{hub_id}", spec.data.format)
    columns = {c.casefold(): c for c in ds.column_names}

    def column(*names: str, required: bool = True) -> str | None:
        for name in names:
            if name.casefold() in columns:
                return columns[name.casefold()]
        if required:
            raise DataError(f"{where}: missing column '{names[0]}' (found: {', '.join(ds.column_names)})")
        return None

    FORMATS[spec.data.format].read_hub_rows(spec, ds, out, column)
    return out.finish(where)


# --- finding the data -------------------------------------------------------------------------

def portable_source(source: str) -> str:
    """``source`` (a Hub address or a local file) as another machine can read it: a Hub address as
    is; a file in ``$ADAPTERLAB_DATA_DIR`` under that variable's name; one inside the project or in
    the ``shared`` folder beside it relative to the project (``../shared/datasets/...``, as specs
    write it); any other file as its folder and name only (``.../oncology/train.jsonl``), since the
    rest is this machine's."""
    if "://" in source:
        return source
    path = Path(source)
    data_dir = os.environ.get(DATA_DIR_ENV)
    data_dir = Path(data_dir).expanduser().resolve() if data_dir else None
    if data_dir is not None and path.is_relative_to(data_dir):
        return f"${DATA_DIR_ENV}/{path.relative_to(data_dir).as_posix()}"
    if path.is_relative_to(PROJECT_ROOT) or path.is_relative_to(PROJECT_ROOT.parent / "shared"):
        return os.path.relpath(path, PROJECT_ROOT).replace(os.sep, "/")
    return "/".join(["...", *path.parts[-2:]])


def _tails(spec: AdapterSpec) -> list[Path]:
    """Where the spec's file may lie inside a datasets folder: ``<name>/<file>``, then ``<file>``,
    from its ``local_path``; the format's usual file only for a spec without one (another adapter
    of the same format must never read the shipped one's data by accident)."""
    if spec.data.local_path:
        parts = [p for p in Path(spec.data.local_path).parts if p not in ("..", ".", "/")]
        return list(dict.fromkeys([Path(*parts[-2:]), Path(parts[-1])])) if parts else []
    default = Path(FORMATS[spec.data.format].default_file)
    return list(dict.fromkeys([default, Path(default.name)])) if default.name else []


def data_candidates(spec: AdapterSpec, path: str | Path | None = None, *, data_dir: str | Path | None = None,
                    root: str | Path | None = None) -> list[Path]:
    """The local files tried, in order: ``path`` (a file, or a folder searched like a datasets
    folder), then ``data_dir`` (default ``$ADAPTERLAB_DATA_DIR``), then ``root / data.local_path``
    (``root`` defaults to the project root, the folder holding ``adapters/``), then a relative
    ``data.local_path`` from the spec's own folder (a catalogue kept elsewhere, with its data)."""
    if path is not None:
        path = Path(path).expanduser()
        return [path / tail for tail in _tails(spec)] if path.is_dir() else [path]
    candidates = []
    named = "data_dir" if data_dir is not None else f"${DATA_DIR_ENV}"
    data_dir = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if data_dir:
        if not Path(data_dir).expanduser().is_dir():  # a typo would silently read the spec's default data
            what = "a file, not a folder" if Path(data_dir).expanduser().exists() else "no such folder"
            raise DataNotFoundError(f"{named} {str(data_dir)!r}: {what}; it names a datasets folder laid out like "
                                    f"../shared/datasets (pass a single file with --data FILE)")
        candidates += [Path(data_dir).expanduser() / tail for tail in _tails(spec)]
    if spec.data.local_path:
        candidates.append(Path(root or PROJECT_ROOT) / spec.data.local_path)
        if not Path(spec.data.local_path).is_absolute():
            candidates.append(spec.directory / spec.data.local_path)
    return list(dict.fromkeys(candidates))


def load_examples(spec: AdapterSpec, path: str | Path | None = None, *, data_dir: str | Path | None = None,
                  root: str | Path | None = None, hub: bool = True) -> tuple[list[Example], LoadReport]:
    """Every example of the spec's data, read from the first local file that exists, else the Hub.

    An explicit ``path`` that does not exist is an error (no silent fall-back to other data).
    """
    candidates = data_candidates(spec, path, data_dir=data_dir, root=root)
    for candidate in candidates:
        if candidate.is_file():
            return read_file(spec, candidate.resolve())
    tried = "; ".join(os.path.abspath(c) for c in candidates) or "no local path"
    env = os.environ.get(DATA_DIR_ENV)
    tails = _tails(spec)
    hint = (f"pass the file with --data PATH (in Python: load_splits(spec, path=...)), or set {DATA_DIR_ENV} to a "
            f"datasets folder holding {tails[0].as_posix() if tails else 'the file'}"
            + (f" (it is set to {env!r})" if env else ""))
    if path is not None:
        raise DataNotFoundError(f"adapter {spec.name!r}: data file not found: {tried}; {hint}")
    if hub and spec.data.hub_id:
        try:
            examples, report = read_hub(spec)
            if spec.data.local_path:  # a misspelt local_path reads the whole Hub set, held-out rows included
                report.notes.append(f"no local file at data.local_path (looked for: {tried}): read from the Hub")
            return examples, report
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - offline, no `datasets`, unknown id: all mean "not reachable"
            hub_problem = f"the Hub data set {spec.data.hub_id!r} could not be loaded ({type(exc).__name__}: {exc})"
    elif spec.data.hub_id:
        hub_problem = f"the Hub data set {spec.data.hub_id!r} was not tried (hub=False)"
    else:
        hub_problem = "the spec has no data.hub_id"
    raise DataNotFoundError(f"adapter {spec.name!r} ({spec.data.format}): no local data file (looked for: "
                            f"{tried}) and {hub_problem}; {hint}")


# --- de-duplication, grouping, splitting ------------------------------------------------------

def dedup_key(example: Example, task: str) -> str:
    """What makes two examples the same: the normalised input; for ``generate`` also the answer."""
    key = normalise_text(example.input)
    if task == "generate":
        key += "\x00" + normalise_text(example.reference if example.reference is not None else str(example.target))
    return key


def deduplicate(examples: Sequence[Example], task: str) -> tuple[list[Example], int, int]:
    """Keep the first of each ``dedup_key``; returns (kept, removed, removed ones whose target differed)."""
    first: dict[str, Example] = {}
    removed = conflicts = 0
    for example in examples:
        key = dedup_key(example, task)
        if key in first:
            removed += 1
            conflicts += first[key].target != example.target
        else:
            first[key] = example
    return list(first.values()), removed, conflicts


SHINGLE = 5  # characters in the pieces near duplicates are compared by


def shingle_text(text: str) -> str:
    """What near duplicates are compared on: the normalised text with every number as "0"."""
    return re.sub(r"\d+", "0", normalise_text(text))


def near_duplicate_pairs(texts: Sequence[str], threshold: float, chunk: int = 256) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of texts whose sets of 5-character pieces (``shingle_text``) have a
    Jaccard similarity of at least ``threshold``. Exact, all pairs: a sparse product in chunks of
    rows, about a second for the 4,447 SMS messages."""
    from sklearn.feature_extraction.text import CountVectorizer

    if len(texts) < 2:
        return []
    vectorizer = CountVectorizer(analyzer="char", ngram_range=(SHINGLE, SHINGLE), binary=True, lowercase=False,
                                 preprocessor=shingle_text, dtype=np.int32)
    pieces = vectorizer.fit_transform(texts).tocsr()
    sizes = np.asarray(pieces.sum(axis=1)).ravel()
    pairs = []
    for start in range(0, len(texts), chunk):
        shared = (pieces[start:start + chunk] @ pieces.T).toarray()
        union = sizes[start:start + chunk, None] + sizes[None, :] - shared
        similar = shared >= threshold * np.maximum(union, 1)
        for row, col in zip(*np.nonzero(similar)):
            if start + row < col:
                pairs.append((int(start + row), int(col)))
    return pairs


def _units(examples: Sequence[Example], links: Sequence[tuple[int, int]] = ()) -> list[list[int]]:
    """Indices of examples that must stay together: linked by a shared group or normalised input,
    or by ``links`` (pairs of indices, e.g. near duplicates)."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for example in examples:
        a, b = find("g\x00" + example.group), find("i\x00" + normalise_text(example.input))
        if a != b:
            parent[a] = b
    for i, j in links:
        a, b = find("g\x00" + examples[i].group), find("g\x00" + examples[j].group)
        if a != b:
            parent[a] = b
    members: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        members[find("g\x00" + example.group)].append(index)
    return list(members.values())


def _digest(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()


def split_examples(examples: Sequence[Example], *, validation: float, test: float, seed: int,
                   stratify: bool = False, links: Sequence[tuple[int, int]] = ()
                   ) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, validation, test): whole units (see ``_units``; ``links`` are pairs of indices kept
    together too) cut at the fractions, per stratum.

    With ``stratify`` a unit's stratum is its (majority) target, so each split keeps the label
    shares. Within a stratum, units are ordered by SHA-256 of the seed and the unit's smallest group
    key, and a unit goes to the split its middle falls in (test first, then validation, then train):
    the sizes match the fractions to within a unit. Each split comes back in a seeded order.
    """
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise ValueError(f"validation ({validation}) and test ({test}) must be fractions that leave room for training")
    strata: dict[str, list[list[int]]] = defaultdict(list)
    for unit in _units(examples, links):
        label = (Counter(str(examples[i].target) for i in unit).most_common(1)[0][0]) if stratify else ""
        strata[label].append(unit)
    chosen: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for label in sorted(strata):
        units = sorted(strata[label], key=lambda u: _digest(seed, min(examples[i].group for i in u)))
        size = sum(len(u) for u in units)
        n_test = round(size * test)
        n_validation = round(size * validation)
        position = 0
        for unit in units:
            middle = position + len(unit) / 2
            name = "test" if middle < n_test else "validation" if middle < n_test + n_validation else "train"
            chosen[name].extend(unit)
            position += len(unit)
    result = []
    for name in SPLIT_NAMES:
        order = sorted(chosen[name], key=lambda i: _digest(seed, name, examples[i].group, examples[i].input, i))
        result.append([examples[i] for i in order])
    return result[0], result[1], result[2]


# --- class balance ----------------------------------------------------------------------------

def label_counts(splits: Splits | Mapping[str, Sequence[Example]]) -> dict[str, dict[str, int]]:
    """``{split: {label: count}}`` (labels sorted), for a ``Splits`` or a mapping of name to examples."""
    return {name: dict(sorted(Counter(str(ex.target) for ex in examples).items())) for name, examples in splits.items()}


def oversample_minority(examples: Sequence[Example], *, seed: int, ratio: float = 1.0) -> list[Example]:
    """The examples plus repeats of each smaller class until it has ``ratio`` x the largest class.

    For the TRAIN split only (validation and test must keep the natural class shares), and off
    by default in ``load_splits``. Why off: the spam adapter is read through its label-token
    probabilities, and training at the natural prior (~12% spam) keeps them calibrated to the
    messages it will see; AUROC does not depend on the prior; the ~400 training spams are plenty
    for LoRA, whereas balancing would show each of them about seven times per epoch (memorisation
    risk). Turn it on (``data.oversample`` in adapter.yaml) when spam recall matters more than
    false alarms, and the choice is recorded in ``SplitReport.oversampling`` and the model card.

    Each minority example is repeated as evenly as possible (never one example many times), and
    the result is shuffled with ``seed``.
    """
    if ratio <= 0:
        raise ValueError(f"ratio must be > 0, got {ratio}")
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[str(example.target)].append(example)
    if not by_label:
        return []
    largest = max(len(v) for v in by_label.values())
    result = list(examples)
    for label in sorted(by_label):
        members = by_label[label]
        missing = math.ceil(largest * ratio) - len(members)
        if missing <= 0:
            continue
        rounds, rest = divmod(missing, len(members))
        result += members * rounds + rng.sample(members, rest)
    rng.shuffle(result)
    return result


def few_shot_examples(train: Sequence[Example], k: int, seed: int, *,
                      balanced: bool | None = None) -> list[Example]:
    """``k`` examples drawn from ``train`` with ``seed`` (all of them when there are fewer).

    ``balanced`` (default: when every target is a string and there are at most ``k`` distinct
    targets, i.e. a classify split) takes the same number of each label, the remainder going to
    labels in a seeded order, interleaved label by label.
    """
    if k <= 0 or not train:
        return []
    rng = random.Random(seed)
    if balanced is None:
        targets = {ex.target for ex in train if isinstance(ex.target, str)}
        balanced = len(targets) <= k and all(isinstance(ex.target, str) for ex in train)
    if not balanced:
        return rng.sample(list(train), min(k, len(train)))
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in train:
        by_label[str(example.target)].append(example)
    labels = sorted(by_label)
    rng.shuffle(labels)
    pools = {label: rng.sample(by_label[label], len(by_label[label])) for label in labels}
    picked: list[Example] = []
    while len(picked) < k and any(pools.values()):
        for label in labels:
            if pools[label] and len(picked) < k:
                picked.append(pools[label].pop())
    return picked


# --- the whole thing --------------------------------------------------------------------------

def capped_targets(spec: AdapterSpec, examples: list[Example]) -> tuple[list[Example], int]:
    """``examples`` with a generate spec's answers capped at ``data.max_target_words`` (what is
    trained on and scored against), and how many were cut."""
    if spec.task != "generate" or spec.data.max_target_words is None:
        return examples, 0
    capped = [dataclasses.replace(ex, target=cap_words(ex.target, spec.data.max_target_words)) for ex in examples]
    return capped, sum(c.target != ex.target for c, ex in zip(capped, examples))


def load_splits(spec: AdapterSpec, path: str | Path | None = None, *, data_dir: str | Path | None = None,
                root: str | Path | None = None, hub: bool = True, seed: int | None = None,
                oversample: bool | float | None = None) -> Splits:
    """Deterministic train/validation/test splits of the spec's data (see the module docstring).

    ``seed`` overrides ``data.split.seed``; ``oversample`` (classify only, train split only; True
    means ``ratio=1.0``, a float is the ratio) repeats minority-class examples, see
    ``oversample_minority`` for why it is off by default. ``None`` takes ``data.oversample`` from the spec.
    """
    if oversample is None:
        oversample = spec.data.oversample or False
    examples, loaded = load_examples(spec, path, data_dir=data_dir, root=root, hub=hub)
    split = spec.data.split
    seed = split.seed if seed is None else seed
    kept, removed, conflicts = deduplicate(examples, spec.task)
    notes = list(loaded.notes)
    kept, capped = capped_targets(spec, kept)
    stratify = spec.task == "classify"
    links = near_duplicate_pairs([ex.input for ex in kept], split.near_duplicates) if split.near_duplicates else []
    train, validation, test = split_examples(kept, validation=split.validation, test=split.test, seed=seed,
                                             stratify=stratify, links=links)
    oversampling = None
    if oversample:
        if spec.task != "classify":
            raise ValueError(f"oversampling is for classify adapters; {spec.name!r} is {spec.task!r}")
        ratio = 1.0 if oversample is True else float(oversample)
        before_examples, before = train, len(train)
        train = oversample_minority(train, seed=seed, ratio=ratio)
        oversampling = {"split": "train", "ratio": ratio, "examples_before": before,
                        "examples_added": len(train) - before,
                        "label_counts_before": label_counts({"train": before_examples})["train"]}
    report = SplitReport(
        seed=seed, source=loaded.source, format=loaded.format, adapter=spec.name, task=spec.task,
        fractions={"validation": split.validation, "test": split.test}, group_by=split.group_by,
        stratified=stratify, rows=loaded.rows, skipped=loaded.skipped, duplicates_removed=removed,
        conflicting_duplicates=conflicts, examples=len(kept), groups=len(_units(kept, links)),
        near_duplicates=({"jaccard": split.near_duplicates, "shingle": SHINGLE, "linked_pairs": len(links)}
                         if split.near_duplicates else None),
        train=len(train), validation=len(validation), test=len(test),
        oversampling=oversampling, max_target_words=spec.data.max_target_words if spec.task == "generate" else None,
        targets_capped=capped, skipped_lines=loaded.skipped_lines, notes=notes,
        source_sha256=sha256_of(Path(loaded.source), progress=False) if Path(loaded.source).is_file() else None)
    splits = Splits(train=train, validation=validation, test=test, report=report)
    if stratify:
        report.label_counts = label_counts(splits)
        missing = [label for label in spec.labels if not report.label_counts["train"].get(label)]
        if missing:
            report.notes.append("no training example of " + ", ".join(map(repr, missing)))
    return splits


def with_test_file(spec: AdapterSpec, splits: Splits, path: str | Path) -> Splits:
    """``splits`` with its test split replaced by the usable examples of ``path``, a file in the
    spec's format (another portion of the data set, held out by someone else): de-duplicated, and
    without any whose text is also in the training or validation split (exactly after
    normalisation, or, when the spec links near duplicates, as a near duplicate). The few-shot
    examples and the decision threshold still come from ``splits``' own training and validation
    splits, so the measurement is of the shipped adapter on data it has not seen."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder; --test-data takes a file" if path.is_dir() else "test data file not found"
        raise DataNotFoundError(f"adapter {spec.name!r}: {what}: {path.resolve()}")
    examples, loaded = read_file(spec, path.resolve())
    kept, removed, _ = deduplicate(examples, spec.task)
    seen = [ex.input for ex in (*splits.train, *splits.validation)]
    known = {normalise_text(text) for text in seen}
    fresh = [ex for ex in kept if normalise_text(ex.input) not in known]
    exact = len(kept) - len(fresh)
    threshold = spec.data.split.near_duplicates
    near: set[int] = set()
    if threshold and fresh:
        pairs = near_duplicate_pairs([*seen, *(ex.input for ex in fresh)], threshold)
        near = {j - len(seen) for i, j in pairs if i < len(seen) <= j}  # i < j in every pair
    test, capped = capped_targets(spec, [ex for i, ex in enumerate(fresh) if i not in near])
    record = {"source": loaded.source, "sha256": sha256_of(Path(loaded.source), progress=False), "rows": loaded.rows,
              "skipped": loaded.skipped, "skipped_lines": loaded.skipped_lines, "duplicates_removed": removed,
              "in_training_or_validation": {"same_text": exact, "near_duplicates": len(near)},
              "examples": len(test), "targets_capped": capped, "notes": list(loaded.notes)}
    report = dataclasses.replace(splits.report, test=len(test), test_data=record)
    result = Splits(train=splits.train, validation=splits.validation, test=test, report=report)
    if report.label_counts is not None:
        report.label_counts = label_counts(result)
    return result
