"""Reading a file a user attached into the texts a batch runs on: a .txt (one text a line, or
``label<TAB>text`` lines), a .csv or .tsv (a text column) or a .jsonl (a text key), in UTF-8, UTF-16
or Windows-1252, with the file's other columns kept for the results file and notes on how it was
read. Plain functions, no Chainlit and no model, so all of it is unit-tested without a browser.

Every problem with a file raises ``InputProblem`` with a message that says what to do; ``handlers``
turns the batch's results into what the app says.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePath

from adapters.strict_json import loads_strict
from chat_app.problems import InputProblem

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
HEADER_WORDS = 3  # a column name with more words is taken for a text, not a name
NOT_TEXT_WORDS = {"id", "no", "number", "num", "date", "time", "label", "type", "count", "length", "category"}
TEXT_COLUMNS = ("text", "message", "sms", "input", "narrative", "note", "report", "question", "content", "body")
UPLOAD_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")
WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
UPLOAD_HELP = ("upload a `.txt` file (one text a line), a `.csv` or `.tsv` file with a `text` column or a `.jsonl` file "
               'with a `text` key (`{"text": "…"}` a line).')


@dataclass
class Upload:
    texts: list[str]
    source: str  # "lines" (.txt), or the CSV column or JSONL key that held the texts
    total: int  # non-empty rows in the file
    notes: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # each text's line (.txt, .jsonl) or row (.csv, the header is row 1)
    columns: list[str] = field(default_factory=list)  # a file's other columns or keys, kept in the results file
    values: list[list[str]] = field(default_factory=list)  # each text's values of those columns
    row_name: str = "line"  # "row" for a CSV
    delimiter: str = ","  # a CSV's, which its results file keeps (a semicolon for a spreadsheet that wrote one)
    field_word: str = "column"  # what the file calls a field: "key" in a JSONL file

    def __post_init__(self):
        self.rows = self.rows or list(range(1, len(self.texts) + 1))
        self.values = self.values or [[] for _ in self.texts]

    @property
    def source_name(self) -> str:
        """Where the texts came from, for a summary: "lines", "column `text`" or "key `input`"."""
        if self.source == "lines":
            return "lines"
        return f"{self.field_word} `{safe_name(self.source)}`"

    def first(self, n: int, note: str) -> "Upload":
        """The first ``n`` texts, as a batch stopped after them reports them, with ``note``."""
        return replace(self, texts=self.texts[:n], rows=self.rows[:n], values=self.values[:n],
                       notes=[*self.notes, note])


def read_upload(name: str, data: bytes, limit: int) -> Upload:
    """The texts of an uploaded .txt (one a line), .csv (a text column) or .jsonl (a text key), at
    most ``limit`` of them.

    Every problem raises ``InputProblem`` with a message that says what to do.
    """
    suffix = PurePath(name or "").suffix.lower()
    if suffix in WORKBOOK_SUFFIXES:
        raise InputProblem(f"📎 `{safe_name(name)}` is a spreadsheet workbook, which the app cannot read. Save "
                           "the sheet as CSV (in Excel: File → Save As → CSV UTF-8) and upload that file.")
    if suffix not in UPLOAD_SUFFIXES:
        raise InputProblem(f"📎 `{safe_name(name)}` cannot be read: {UPLOAD_HELP}")
    check_upload_size(name, len(data))
    content, notes = _decoded(name, suffix, data)
    labelled = _labelled_lines(content) if suffix in (".txt", ".tsv") else None
    if isinstance(labelled, Upload):
        upload = labelled
    elif suffix == ".txt":
        numbered = [(number, line.strip()) for number, line in enumerate(content.splitlines(), start=1)
                    if line.strip()]
        upload = Upload([text for _, text in numbered], "lines", len(numbered),
                        rows=[number for number, _ in numbered], notes=[labelled] if labelled else [])
    elif suffix == ".jsonl":
        upload = _jsonl_upload(name, content)
    else:
        upload = _csv_upload(name, content)
    upload.notes[:0] = notes
    if not upload.texts:
        raise InputProblem(f"📎 `{safe_name(name)}` holds no text to process.")
    if upload.total > limit:
        upload.texts, upload.rows, upload.values = upload.texts[:limit], upload.rows[:limit], upload.values[:limit]
        upload.notes.append(f"The file has {upload.total:,} texts; only the first {limit:,} were processed "
                            f"(the limit for one upload on this server, up to {upload.row_name} "
                            f"{upload.rows[-1]:,}). Split the file to process the rest.")
    return upload


LABEL_WORD = re.compile(r"[A-Za-z][\w-]{0,19}")  # a label before a tab: one short word ("ham", "spam")
LABEL_HEADERS = {"label", "labels", "class", "category", "target", "type", "v1"}  # a first line naming the column


def _labelled_lines(content: str) -> Upload | str | None:
    """The texts of a file of ``label<TAB>text`` lines (the SMS Spam Collection's own layout, a
    first line such as ``Label<TAB>SMS`` naming them or not), the labels kept as its `label` column
    (a line may have none: "<TAB>text"). Read as lines, each label had been classified with its
    text, and swayed it ("ham<TAB>URGENT! ..." came out ham). None when it is not such a file; a
    note saying why when each line has one tab but what comes before the tabs does not read as
    labels (then each whole line is a text)."""
    numbered = [(number, line.strip("\r\n")) for number, line in enumerate(content.splitlines(), start=1)
                if line.strip()]
    if not numbered or any(line.count("\t") != 1 for _, line in numbered):  # more fields: a CSV's
        return None
    pairs = [(number, *(part.strip() for part in line.split("\t"))) for number, line in numbered]
    header = pairs[0] if pairs[0][1].lower() in LABEL_HEADERS else None  # "Label<TAB>SMS": not a message
    pairs = pairs[1:] if header else pairs
    not_labels = [(number, label) for number, label, _ in pairs if label and not LABEL_WORD.fullmatch(label)]
    labels = {label.casefold() for _, label, _ in pairs if label}  # "ham", "HAM": one label
    if not_labels or not labels or len(labels) > max(2, len(pairs) // 2):  # labels repeat; ids do not
        why = (f"line {not_labels[0][0]} has `{safe_name(shortened(not_labels[0][1], 40))}` before its tab, not "
               "a one-word label" if not_labels else f"{len(labels)} different words come before the tabs in "
               f"{len(pairs)} lines, which labels would repeat")
        return (f"Each line has one tab, as in `label<TAB>text` (the SMS Spam Collection's layout), but {why}: "
                "each whole line was processed as one text.")
    kept = [(number, label, text) for number, label, text in pairs if text]
    named = f"; line {header[0]} names them" if header else ""
    return Upload([text for _, _, text in kept], "lines", len(kept), rows=[number for number, _, _ in kept],
                  columns=["label"], values=[[label] for _, label, _ in kept],
                  notes=[f"Each line is `label<TAB>text` (the SMS Spam Collection's layout{named}): the text "
                         "after the tab was processed, and the label kept as the file's `label` column."])


def check_upload_size(name: str, size: int) -> None:
    """Refuse a file over ``MAX_UPLOAD_BYTES`` (before it is read, where its size is known)."""
    if size > MAX_UPLOAD_BYTES:
        raise InputProblem(f"📎 `{safe_name(name)}` is {size / 2**20:.1f} MB; the limit is "
                           f"{MAX_UPLOAD_BYTES / 2**20:.0f} MB. Split it into smaller files.")


def _decoded(name: str, suffix: str, data: bytes) -> tuple[str, list[str]]:
    """The file's text and a note on its encoding when it is not UTF-8.

    Excel on Windows saves "CSV" and "Unicode text" in Windows-1252 and UTF-16, so a clinician's
    export is read in those rather than refused; UTF-16 is told by its byte-order mark, and any other
    byte Windows-1252 cannot read (or a NUL byte without the mark) is refused.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), ["The file is UTF-16 text (as Excel saves \"Unicode text\") and was read "
                                           "as such."]
        except UnicodeDecodeError:
            raise InputProblem(f"📎 `{safe_name(name)}` starts as UTF-16 text but is not. Save it as UTF-8 "
                               "and upload it again.") from None
    if b"\x00" in data[:65536]:
        raise InputProblem(f"📎 `{safe_name(name)}` looks like a binary file, not text. Upload a UTF-8 "
                           f"`{suffix}` file.")
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        where = f"byte 0x{data[exc.start]:02x} on line {line:,}"
    try:
        content = data.decode("cp1252")
    except UnicodeDecodeError:
        raise InputProblem(f"📎 `{safe_name(name)}` is not UTF-8 text ({where}). Save it as UTF-8 and upload "
                           "it again.") from None
    return content, [f"The file is not UTF-8 ({where}), so it was read as Windows-1252, the encoding Excel "
                     "on Windows saves. If accented letters or symbols look wrong below, save it as UTF-8 "
                     "and upload it again."]


def _jsonl_upload(name: str, content: str) -> Upload:
    """The texts of a JSONL file's text key (the first of ``TEXT_COLUMNS`` any line has), with the
    other keys kept as columns (a value that is not a string as its JSON). A line that is not a
    strict JSON object refuses the file, naming it; an object without the text is skipped and named
    in a note, as a CSV row without one is."""
    objects, bad = [], []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = loads_strict(line)
        except ValueError as exc:
            bad.append((number, getattr(exc, "msg", None) or str(exc)))
            continue
        if not isinstance(obj, dict):
            bad.append((number, f"a JSON {type(obj).__name__}, not an object"))
            continue
        objects.append((number, obj))
    if bad:
        first, why = bad[0]
        numbers = [n for n, _ in bad]
        raise InputProblem(f"📎 `{safe_name(name)}`: {_rows_named(numbers, 'line')} "
                           f"{'is not a JSON object' if len(numbers) == 1 else 'are not JSON objects'} "
                           f"({why if len(numbers) == 1 else f'line {first}: {why}'}). A `.jsonl` file holds one "
                           "object a line, "
                           'such as `{"text": "…"}`.')
    keys = list(dict.fromkeys(key for _, obj in objects for key in obj))
    key = _jsonl_text_key(keys, [obj for _, obj in objects])
    if key is None:
        found = ", ".join(f"`{safe_name(k)}`" for k in keys[:12]) or "none"
        raise InputProblem(f"📎 `{safe_name(name)}` has no text key (keys found: {found}). Name the key "
                           f"with the texts `text` (or one of: {', '.join(TEXT_COLUMNS[1:])}).")
    others = [k for k in keys if k != key]
    upload = Upload([], key, 0, columns=others, field_word="key")
    empty = []
    for number, obj in objects:
        text = obj.get(key)
        if not isinstance(text, str) or not text.strip():
            empty.append(number)
            continue
        upload.texts.append(text.strip())
        upload.rows.append(number)
        upload.values.append([_jsonl_value(obj.get(k)) for k in others])
    upload.total = len(upload.texts)
    if empty:
        upload.notes.append(f"{rows_were(empty, 'line', ('has', 'have'))} no text (a non-empty string) under "
                            f"`{safe_name(key)}` and {'was' if len(empty) == 1 else 'were'} skipped.")
    return upload


def _jsonl_text_key(keys: list[str], objects: Sequence[dict]) -> str | None:
    """Of the keys that could name the texts (``_text_column``'s), the one that holds the most: lines
    may differ in their keys, and a file of `note`s with one empty `text` line had been read by `text`
    alone ("holds no text to process")."""
    candidates, left = [], list(keys)
    while (column := _text_column(left)) is not None:
        candidates.append(left.pop(column))
    if not candidates:
        return None
    def texts_under(key: str) -> int:
        return sum(isinstance(obj.get(key), str) and bool(obj[key].strip()) for obj in objects)
    return max(candidates, key=texts_under)  # the first of the most, in _text_column's order


def _jsonl_value(value) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


CSV_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}  # spreadsheets' choices


def _rows_text(numbers: Sequence[int]) -> str:
    return ", ".join(f"{n:,}" for n in numbers[:8]) + (" …" if len(numbers) > 8 else "")


def _csv_upload(name: str, content: str) -> Upload:
    """The texts of a CSV's text column with their row numbers and other columns, and notes on how
    rows were read.

    The delimiter is the one whose header names a text column (a comma when none does). A row with
    more fields than the header holds an unquoted delimiter in its text: when the text column is
    the last one, the rest of the row is its text (said in a note); otherwise the file is refused,
    naming the rows, since which field is the text cannot be told. Rows with no text are skipped and
    named in a note.
    """
    delimiter = next((d for d in CSV_DELIMITERS if _text_column(_first_row(content, d)) is not None), ",")
    try:
        rows = list(csv.reader(io.StringIO(content, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise InputProblem(f"📎 `{safe_name(name)}` is not a valid CSV file ({exc}).") from None
    if not rows:
        raise InputProblem(f"📎 `{safe_name(name)}` is empty.")
    if unclosed := _unclosed_quote(content, delimiter):
        raise InputProblem(f"📎 `{safe_name(name)}`: row {unclosed[0]:,} (line {unclosed[1]:,}) opens a double "
                           "quote that is never closed, so every line after it would be read into one text. "
                           "Close the quote, or remove it, and upload the file again.")
    column = _text_column(rows[0])
    if column is None and all(len(row) <= 1 for row in rows):  # one column, and no header naming it
        numbered = [(number, row[0].strip()) for number, row in enumerate(rows, start=1) if row and row[0].strip()]
        return Upload([t for _, t in numbered], "lines", len(numbered), rows=[n for n, _ in numbered], row_name="row",
                      notes=[f"Row 1 (`{safe_name(shortened(rows[0][0] if rows[0] else '', 40))}`) names no text column, "
                             "so the file was read as one text a row, row 1 included."])
    if column is None:
        found = ", ".join(f"`{safe_name(shortened(h, 40))}`" for h in rows[0][:12]) or "none"
        raise InputProblem(f"📎 `{safe_name(name)}` has no text column (its first row: {found}). Name the "
                           f"column with the texts `text` (or one of: {', '.join(TEXT_COLUMNS[1:])}) in a "
                           "first row; a file of one text a line with no such row can be uploaded as a `.txt`.")
    header, width, last = rows[0], len(rows[0]), column == len(rows[0]) - 1
    sign = CSV_DELIMITERS.get(delimiter, repr(delimiter))
    long_rows = [number for number, row in enumerate(rows[1:], start=2) if len(row) > width]
    if long_rows and not last:
        raise InputProblem(f"📎 `{safe_name(name)}`: {_rows_named(long_rows, 'row')} "
                           f"{'has' if len(long_rows) == 1 else 'have'} more fields than "
                           f"the header ({width}): a text holds an unquoted {sign}. Put such texts in double "
                           "quotes (spreadsheet programs do when they save as CSV).")
    others = [i for i in range(width) if i != column]
    upload = Upload([], header[column].strip(), 0, columns=[header[i].strip() for i in others], row_name="row",
                    delimiter=delimiter)
    empty = []
    for number, row in enumerate(rows[1:], start=2):
        text = (delimiter.join(row[column:]) if last else row[column] if len(row) > column else "").strip()
        if not text:
            if any(value.strip() for value in row):  # a row with other values but no text
                empty.append(number)
            continue
        upload.texts.append(text)
        upload.rows.append(number)
        upload.values.append([row[i] if i < len(row) else "" for i in others])
    upload.total = len(upload.texts)
    if long_rows:
        one = len(long_rows) == 1
        upload.notes.append(f"{rows_were(long_rows, verb=('has', 'have'))} more fields than the header: "
                            f"{'its text holds' if one else 'their texts hold'} an unquoted {sign}, so the rest of "
                            f"{'the' if one else 'each'} row was read as its text.")
    if empty:
        upload.notes.append(f"{rows_were(empty, verb=('has', 'have'))} no text in column `{safe_name(upload.source)}` "
                            f"and {'was' if len(empty) == 1 else 'were'} skipped.")
    return upload


def _unclosed_quote(content: str, delimiter: str) -> tuple[int, int] | None:
    """The row and line where a field opens a double quote that nothing closes, or None: Python's
    ``csv`` reads such a field to the end of the file (only its strict mode says so, and that mode
    refuses quoting that the lenient reading accepts, so it only looks for this)."""
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, strict=True)
    row = line = 0
    try:
        for _ in reader:
            row, line = row + 1, reader.line_num
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            return row + 1, line + 1
    return None


def _first_row(content: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(content, newline=""), delimiter=delimiter), [])
    except csv.Error:
        return []


def _text_column(header: list[str]) -> int | None:
    """The index of the text column a header names, or None: the first of ``TEXT_COLUMNS`` (in that
    order) that is a column's name, else a word of a short name ("Clinical Notes"; not "note_id" or
    "sms label", which name something else, nor a first text such as "Text me when you get home",
    which names nothing: read as a header, that text was lost)."""
    names = [h.strip().lower() for h in header]
    exact = next((names.index(c) for c in TEXT_COLUMNS if c in names), None)
    if exact is not None:
        return exact
    named = [_name_words(name) for name in names]
    return next((i for c in TEXT_COLUMNS for i, words in enumerate(named) if c in words), None)


def _name_words(name: str) -> set[str]:
    """The words of a short column name, singular and as written; none for a long one (a text) or
    one with a word of an identifier or a label."""
    found = re.findall(r"[a-z]+", name)
    words = {w for word in found for w in (word, word.removesuffix("s"))}
    return words if len(found) <= HEADER_WORDS and not words & NOT_TEXT_WORDS else set()


def safe_name(name: str) -> str:
    """A file or column name as it can stand between backticks on one line of markdown."""
    return re.sub(r"[`\r\n|]", "_", str(name))[:120]


def _rows_named(numbers: Sequence[int], row_name: str) -> str:
    """"row 4", "lines 2, 7": numbers in a file with what they number."""
    return f"{row_name}{'' if len(numbers) == 1 else 's'} {_rows_text(numbers)}"


def rows_were(numbers: Sequence[int], row_name: str = "row", verb: tuple[str, str] = ("was", "were")) -> str:
    """"Row 4 was", "Lines 2, 7 were": the start of a sentence about some rows of a file."""
    named = _rows_named(numbers, row_name)
    return f"{named[0].upper()}{named[1:]} {verb[0] if len(numbers) == 1 else verb[1]}"


def shortened(text: str, width: int = 80) -> str:
    """``text`` on one line, cut to ``width`` characters with "…"."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
