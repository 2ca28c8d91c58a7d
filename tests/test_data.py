"""The data layer: readers for the three public formats (and the Hub), skip counting and errors that
name file and line, de-duplication, grouped and stratified seeded splits, target capping, class
balance and few-shot picking. Small files are written to tmp_path; the last tests run on the real
shared data sets when ``../shared/datasets`` exists."""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from adapters.catalog import CATALOG_DIR
from adapters.spec import FORMAT_TASKS, AdapterSpec, DataSpec, PromptSpec, SplitSpec, load_spec
from training.data import (DATA_DIR_ENV, DataError, DataNotFoundError, Example, cap_words, data_candidates,
                           deduplicate, few_shot_examples, label_counts, load_examples, load_splits,
                           near_duplicate_pairs, normalise_text, oversample_minority, portable_source,
                           read_medquad_csv, read_oncology_jsonl, read_sms_spam, split_examples,
                           with_test_file)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"
FIELDS = ("cancer_type", "stage", "gene_mutation", "biomarker", "treatment", "response", "metastasis_site")
FORMAT_OF_TASK = {task: data_format for data_format, task in FORMAT_TASKS.items()}


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def make_spec(task: str, *, local_path: str | None = "data/file", hub_id: str | None = None, seed: int = 42,
              validation: float = 0.1, test: float = 0.2, group_by: str | None = None,
              max_target_words: int | None = None) -> AdapterSpec:
    extra = {"classify": {"labels": ("ham", "spam")}, "extract": {"fields": FIELDS}}.get(task, {})
    return AdapterSpec(
        name=f"t-{task}", title="test", description="test", task=task, base_model="smollm2-135m-instruct",
        prompt=PromptSpec(system="test"),
        data=DataSpec(format=FORMAT_OF_TASK[task], local_path=local_path, hub_id=hub_id,
                      split=SplitSpec(seed=seed, validation=validation, test=test, group_by=group_by),
                      max_target_words=max_target_words),
        directory=ROOT / "adapters" / f"t-{task}", **extra)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else lambda t: path.write_text(t, encoding="utf-8"))(text)
    return path


def sms_corpus(n: int = 600, spam_share: float = 0.12, seed: int = 0) -> tuple[str, int]:
    """An SMS file with a header and ~5% repeats that differ only in case and spacing."""
    rng = random.Random(seed)
    lines, repeats = ["Label\tSMS"], 0
    for i in range(n):
        label = "spam" if rng.random() < spam_share else "ham"
        text = f"{'WIN cash prize now' if label == 'spam' else 'see you at dinner'} number {i}"
        lines.append(f"{label}\t{text}")
        if rng.random() < 0.05:
            lines.append(f"{label}\t  {text.upper()}  ")
            repeats += 1
    return "\n".join(lines) + "\n", repeats


def medquad_csv(rows: list[tuple[str, str, str]]) -> str:
    out = ["qtype,Question,Answer,focus,source,document_id"]
    for i, (question, answer, focus) in enumerate(rows):
        out.append(f'information,{question},"{answer}",{focus},GARD,{i:07d}')
    return "\n".join(out) + "\n"


def oncology_line(text: str, **output) -> str:
    full = {f: None for f in FIELDS} | output
    return json.dumps({"instruction": "Extract all cancer-related entities from the text.", "input": text,
                       "output": full})


def labelled(**counts: int) -> list[Example]:
    return [Example(f"{label} {i}", label, f"{label} {i}") for label, n in counts.items() for i in range(n)]


# --- readers: formats and malformed input -------------------------------------------------------

def test_sms_reader_skips_the_header_and_counts_bad_rows_by_reason(tmp_path):
    path = write(tmp_path / "SMSSpamCollection", "Label\tSMS\nham\tHello there\r\nspam\tWIN £100 now\n\n"
                 "HAM\tcase of the label does not matter\nmaybe\tunknown label\nspam\t   \nno tab here\n"
                 "ham\ttext with\ta tab\n")
    examples, report = read_sms_spam(path)
    assert report.header is True
    assert [(e.input, e.target) for e in examples] == [
        ("Hello there", "ham"), ("WIN £100 now", "spam"), ("case of the label does not matter", "ham"),
        ("text with\ta tab", "ham")]
    assert report.rows == 8 and report.loaded == 4
    assert report.skipped == {"empty_row": 1, "empty_text": 1, "malformed_row": 1, "unknown_label": 1}
    assert report.skipped_lines == {"empty_row": [4], "unknown_label": [6], "empty_text": [7], "malformed_row": [8]}
    assert examples[0].line == 2 and examples[0].group == "hello there"
    assert report.notes == ["labels not in the spec: 'maybe'"]


def test_labels_take_the_specs_spelling_whatever_the_files(tmp_path):
    path = write(tmp_path / "moods.tsv", "positive\tgreat day\nNEGATIVE\tawful day\nNeutral\ta day\n")
    examples, _ = read_sms_spam(path, labels=("Positive", "Negative", "Neutral"))
    # the spelling the runtime scores and evaluation compares: "neutral" would never equal "Neutral"
    assert [e.target for e in examples] == ["Positive", "Negative", "Neutral"]


def test_labels_missing_from_training_are_named(tmp_path):
    import dataclasses

    spec = dataclasses.replace(make_spec("classify"), labels=("ham", "spam", "unsure"))
    path = write(tmp_path / "sms.tsv", "".join(f"{'spam' if i % 3 == 0 else 'ham'}\tmessage {i}\n" for i in range(60)))
    assert "no training example of 'unsure'" in load_splits(spec, path).report.notes


def test_sms_file_without_header(tmp_path):
    examples, report = read_sms_spam(write(tmp_path / "sms", "ham\tfirst\nspam\tsecond\n"))
    assert report.header is False and [e.input for e in examples] == ["first", "second"]


def test_a_file_with_classic_mac_line_ends_is_read_line_by_line(tmp_path):
    examples, report = read_sms_spam(write(tmp_path / "mac.tsv", "ham\tfirst\rspam\tsecond\r\rham\tthird\r"))
    assert [(e.input, e.target, e.line) for e in examples] == [("first", "ham", 1), ("second", "spam", 2),
                                                               ("third", "ham", 4)]
    assert report.skipped == {"empty_row": 1}
    examples, _ = read_sms_spam(write(tmp_path / "unix.tsv", "ham\ta\rb\nspam\tc\n"))  # a \r inside a line stays
    assert [e.input for e in examples] == ["a\rb", "c"]


def test_a_file_that_is_not_utf8_is_an_error_naming_file_and_line(tmp_path):
    path = write(tmp_path / "latin1.tsv", "ham\tfine\nspam\tWin £5\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.tsv: line 2: not valid UTF-8"):
        read_sms_spam(path)


def test_a_utf16_file_is_named_as_utf16_with_a_conversion_that_fits(tmp_path):
    path = write(tmp_path / "unicode.tsv", "ham\tfine\nspam\tWin £5\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"unicode\.tsv: line 1: UTF-16 text .* `iconv -f utf-16 -t utf-8`"):
        read_sms_spam(path)


def test_a_file_with_no_usable_row_is_an_error(tmp_path):
    path = write(tmp_path / "wrong.tsv", "qtype,Question,Answer\ninformation,What?,That.\n")
    with pytest.raises(DataError, match=r"wrong\.tsv: no usable rows.*malformed_row"):
        read_sms_spam(path)


def test_medquad_reader_handles_multiline_quoted_answers_and_skips_bad_rows(tmp_path):
    text = ('qtype,Question,Answer,focus,source,document_id\n'
            'information,What is (are) Gout ?,"Gout is arthritis.\n - It hurts, a lot.\nSee a doctor.",Gout,GARD,1\n'
            'symptoms,What are the symptoms of Gout ?,"Pain, ""sudden"" swelling.",gout,GARD,1\n'
            '\n'
            'information,,"An answer without a question",X,GARD,2\n'
            'information,Empty answer?,,X,GARD,3\n'
            'information,Too few fields?,"yes"\n'
            'causes,What causes ?,"Unknown.",,CDC,4\n')
    examples, report = read_medquad_csv(write(tmp_path / "medquad.csv", text))
    assert [e.input for e in examples] == ["What is (are) Gout ?", "What are the symptoms of Gout ?", "What causes ?"]
    assert examples[0].target == "Gout is arthritis.\n - It hurts, a lot.\nSee a doctor."
    assert examples[1].target == 'Pain, "sudden" swelling.' and examples[1].reference == examples[1].target
    assert examples[0].group == examples[1].group == "gout"  # focus, normalised
    assert examples[2].group == "what causes ?"  # blank focus: the question is its own group
    assert [e.line for e in examples] == [2, 5, 10]
    assert examples[0].meta == {"qtype": "information", "focus": "Gout", "source": "GARD", "document_id": "1"}
    assert report.rows == 7
    assert report.skipped == {"empty_answer": 1, "empty_question": 1, "empty_row": 1, "malformed_row": 1}
    assert report.skipped_lines == {"empty_answer": [8], "empty_question": [7], "empty_row": [6], "malformed_row": [9]}
    assert any("blank 'focus'" in note for note in report.notes)


def test_medquad_missing_header_column_is_an_error_naming_file_and_line(tmp_path):
    path = write(tmp_path / "qa.csv", "qtype,Question,Response\ninformation,What?,That.\n")
    with pytest.raises(DataError, match=r"qa\.csv: line 1: missing column 'Answer'"):
        read_medquad_csv(path)


@pytest.mark.parametrize("header", ["Question,Answer,Answer", "Question,Answer,answer ", "Question,Answer,focus,Focus"])
def test_medquad_column_given_twice_is_an_error_not_a_guess(tmp_path, header):
    extra = "," * header.count(",")
    path = tmp_path / "qa.csv"
    path.write_text(header + "\n" + "".join(f"Q{i}?,A{i}{extra[2:]}\n" for i in range(5)), encoding="utf-8")
    with pytest.raises(DataError, match=r"qa\.csv: line 1: column '(answer|Answer|Focus)' is given twice"):
        read_medquad_csv(path)


def test_medquad_unused_column_given_twice_is_read(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("Question,Answer,notes,notes\nQ?,A,x,y\n", encoding="utf-8")
    examples, _ = read_medquad_csv(path)
    assert [(ex.input, ex.target) for ex in examples] == [("Q?", "A")]


def test_medquad_unclosed_quote_is_an_error_naming_the_line_where_the_row_starts(tmp_path):
    path = write(tmp_path / "broken.csv", 'Question,Answer\nOne?,"fine"\nTwo?,"never closed\nmore\n')
    with pytest.raises(DataError, match=r"broken\.csv: line 3: CSV error"):
        read_medquad_csv(path)


def test_medquad_without_focus_column_groups_by_the_normalised_question(tmp_path):
    path = write(tmp_path / "qa.csv", "Answer,Question\nThat.,What  IS it?\n")
    (example,), report = read_medquad_csv(path)
    assert example.input == "What  IS it?" and example.group == "what is it?"
    assert any("no 'focus' column" in note for note in report.notes)


def test_oncology_group_by_key_that_no_line_has_is_noted_not_silent(tmp_path):
    output = {f: None for f in FIELDS}
    lines = [json.dumps({"input": f"note {i}", "output": output, "patient": f"p{i // 2}"}) for i in range(6)]
    path = write(tmp_path / "onc.jsonl", "\n".join(lines) + "\n")
    assert read_oncology_jsonl(path, FIELDS, group_by="patient")[1].notes == []
    assert read_oncology_jsonl(path, FIELDS, group_by="patient_id")[1].notes == [
        "no 'patient_id' key: grouped by the normalised input"]
    lines[0] = json.dumps({"input": "note 0", "output": output})
    path = write(tmp_path / "onc.jsonl", "\n".join(lines) + "\n")
    assert read_oncology_jsonl(path, FIELDS, group_by="patient")[1].notes == [
        "1 rows without a 'patient': each grouped by its input"]


def test_oncology_reader_counts_every_kind_of_bad_line(tmp_path):
    good = oncology_line("Melanoma stage IV.", cancer_type="melanoma", stage="IV")
    no_field = json.dumps({"input": "Lung cancer.", "output": {"cancer_type": "lung"}})
    lines = [good, "{not json", "", "[1, 2]", json.dumps({"input": "x"}),
             json.dumps({"input": "x", "output": "not an object"}), no_field,
             oncology_line("Stage 2.", stage=2), oncology_line("   "),
             json.dumps({"input": "Extra keys are fine.", "output": {f: None for f in FIELDS} | {"grade": "3"}}),
             good.replace('"input": ', '"input": "which one?", "input": ', 1)]  # a key given twice
    examples, report = read_oncology_jsonl(write(tmp_path / "onc.jsonl", "\n".join(lines) + "\n"), FIELDS)
    assert [e.input for e in examples] == ["Melanoma stage IV.", "Extra keys are fine."]
    assert examples[0].target == {f: None for f in FIELDS} | {"cancer_type": "melanoma", "stage": "IV"}
    assert list(examples[1].target) == list(FIELDS)
    assert report.rows == 11
    assert report.skipped_lines == {"bad_field_value": [8], "bad_output": [6], "empty_input": [9], "empty_row": [3],
                                    "invalid_json": [2], "missing_field": [7], "missing_key": [5], "not_an_object": [4],
                                    "repeated_key": [11]}
    assert sum(report.skipped.values()) == 9


# --- where the data come from ---------------------------------------------------------------------

def test_local_path_is_relative_to_the_project_root_and_the_source_is_recorded(tmp_path):
    write(tmp_path / "data" / "sms", "ham\thello\nspam\twin\n")
    examples, report = load_examples(make_spec("classify", local_path="data/sms"), root=tmp_path, hub=False)
    assert len(examples) == 2 and report.source == str((tmp_path / "data" / "sms").resolve())


def test_env_var_and_path_argument_override_the_spec(tmp_path, monkeypatch):
    spec = make_spec("classify", local_path="../shared/datasets/sms_spam/SMSSpamCollection")
    write(tmp_path / "root" / "../shared/datasets/sms_spam/SMSSpamCollection", "ham\tfrom the spec\n")
    write(tmp_path / "elsewhere" / "sms_spam" / "SMSSpamCollection", "ham\tfrom the env\n")
    override = write(tmp_path / "mine.tsv", "ham\tfrom the argument\n")
    root = tmp_path / "root"
    assert load_examples(spec, root=root, hub=False)[0][0].input == "from the spec"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    assert load_examples(spec, root=root, hub=False)[0][0].input == "from the env"
    assert load_examples(spec, override, root=root, hub=False)[0][0].input == "from the argument"
    assert load_examples(spec, tmp_path / "elsewhere", root=root, hub=False)[0][0].input == "from the env"
    assert data_candidates(spec, root=root)[0] == tmp_path / "elsewhere" / "sms_spam" / "SMSSpamCollection"


@pytest.mark.parametrize(("where", "said"), [("missing", "no such folder"), ("file.tsv", "a file, not a folder")])
def test_a_data_dir_variable_that_names_no_folder_is_an_error_not_a_fall_back(tmp_path, monkeypatch, where, said):
    spec = make_spec("classify", local_path="../shared/datasets/sms_spam/SMSSpamCollection")
    write(tmp_path / "root" / "../shared/datasets/sms_spam/SMSSpamCollection", "ham\tfrom the spec\n")
    write(tmp_path / "file.tsv", "ham\tfrom a file\n")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / where))
    with pytest.raises(DataNotFoundError, match=rf"\${DATA_DIR_ENV} '{re.escape(str(tmp_path / where))}': {said}"):
        load_examples(spec, root=tmp_path / "root", hub=False)


def test_another_adapter_of_a_format_never_reads_the_shipped_adapters_data(tmp_path, monkeypatch):
    mine = write(tmp_path / "mine" / "mysms.tsv", "ham\tmy own data\n")
    write(tmp_path / "datasets" / "sms_spam" / "SMSSpamCollection", "ham\tthe shipped data set\n")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "datasets"))
    spec = make_spec("classify", local_path=str(mine))  # the format of the shipped spam adapter
    assert load_examples(spec, hub=False)[0][0].input == "my own data"
    mine.unlink()
    with pytest.raises(DataNotFoundError) as caught:
        load_examples(spec, hub=False)
    assert "SMSSpamCollection" not in str(caught.value)  # neither read nor suggested
    assert f"set {DATA_DIR_ENV} to a datasets folder holding mine/mysms.tsv" in str(caught.value)


def test_a_relative_local_path_is_also_read_beside_the_spec(tmp_path):
    import dataclasses

    write(tmp_path / "elsewhere" / "mood" / "data" / "mood.tsv", "ham\tfrom beside the spec\n")
    spec = dataclasses.replace(make_spec("classify", local_path="data/mood.tsv"),
                               directory=tmp_path / "elsewhere" / "mood")
    assert load_examples(spec, root=tmp_path / "project", hub=False)[0][0].input == "from beside the spec"


def test_the_recorded_source_names_no_folder_of_this_machine(tmp_path, monkeypatch):
    """metrics.json and the card are committed: they keep where the data lie as any machine can read it."""
    import hashlib

    from training.data import PROJECT_ROOT

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "datasets"))
    assert portable_source(str(tmp_path / "datasets" / "oncology" / "train.jsonl")) == \
        f"${DATA_DIR_ENV}/oncology/train.jsonl"
    shared = PROJECT_ROOT.parent / "shared" / "datasets" / "sms_spam" / "SMSSpamCollection"
    assert portable_source(str(shared)) == "../shared/datasets/sms_spam/SMSSpamCollection"
    assert portable_source(str(PROJECT_ROOT / "data" / "sms.tsv")) == "data/sms.tsv"
    assert portable_source("/home/someone/private/sms/SMSSpamCollection") == ".../sms/SMSSpamCollection"
    beside = PROJECT_ROOT.parent / "elsewhere" / "sms" / "SMSSpamCollection"  # a sibling folder is not shared
    assert portable_source(str(beside)) == ".../sms/SMSSpamCollection"
    assert portable_source("hf://datasets/ucirvine/sms_spam") == "hf://datasets/ucirvine/sms_spam"

    monkeypatch.delenv(DATA_DIR_ENV)
    path = write(tmp_path / "mine" / "sms.tsv", "ham\thello\nspam\twin now\nham\tsee you\n")
    record = load_splits(make_spec("classify"), path).report.as_record()
    assert record["source"] == ".../mine/sms.tsv" and str(tmp_path) not in json.dumps(record)
    assert record["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_missing_explicit_path_is_an_error_not_a_fallback(tmp_path):
    spec = make_spec("classify", hub_id="ucirvine/sms_spam")
    with pytest.raises(DataNotFoundError, match=r"data file not found: .*nope\.tsv"):
        load_examples(spec, tmp_path / "nope.tsv", root=tmp_path)


def test_every_data_format_a_spec_accepts_has_a_file_a_reader_and_a_hub_reader():
    """A format is named once for specs (``FORMAT_TASKS``) and read once (``FORMATS``): a spec that
    accepted a format no reader knew failed only when training read its data."""
    from training.data import FORMATS

    assert set(FORMATS) == set(FORMAT_TASKS)
    assert all(f.default_file and callable(f.read_file) and callable(f.read_hub_rows) for f in FORMATS.values())


def test_no_local_file_and_no_hub_says_what_was_looked_for_and_how_to_provide_it(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    spec = make_spec("classify", local_path="../shared/datasets/sms_spam/SMSSpamCollection", hub_id="ucirvine/sms_spam")
    with pytest.raises(DataNotFoundError) as info:
        load_splits(spec, root=tmp_path / "root")
    message = str(info.value)
    assert str(tmp_path / "shared" / "datasets" / "sms_spam" / "SMSSpamCollection") in message
    assert "ucirvine/sms_spam" in message and "ConnectionError" in message
    assert "--data" in message and DATA_DIR_ENV in message


def test_hub_sms_spam_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        features = datasets.Features({"sms": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=["ham", "spam"])})
        return datasets.Dataset.from_dict(
            {"sms": [f"message {i}\n" for i in range(40)] + ["", "message 0"],
             "label": [int(i % 8 == 0) for i in range(40)] + [0, 0]}, features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_splits(make_spec("classify", local_path="absent/file", hub_id="ucirvine/sms_spam"), root=tmp_path)
    assert calls == [("ucirvine/sms_spam", "train")]
    report = splits.report
    assert report.source == "hf://datasets/ucirvine/sms_spam"
    (note,) = report.notes  # the data: line says the local file was missing, not only the Hub address
    assert note.startswith(f"no local file at data.local_path (looked for: {tmp_path / 'absent' / 'file'}")
    assert note.endswith("): read from the Hub")
    assert report.rows == 42 and report.skipped == {"empty_text": 1} and report.duplicates_removed == 1
    everything = splits.train + splits.validation + splits.test
    assert len(everything) == 40 and {e.input for e in everything} == {f"message {i}" for i in range(40)}
    assert sum(e.target == "spam" for e in everything) == 5
    assert all(e.target == ("spam" if int(e.input.split()[1]) % 8 == 0 else "ham") for e in everything)


def test_hub_medquad_without_focus_groups_by_question(tmp_path, monkeypatch):
    import datasets

    rows = {"qtype": ["information"] * 4, "Question": ["What is A?", "what is  a?", "What is B?", "What is C?"],
            "Answer": ["A is a letter. It is first.", "Another answer about A.", "B.", None]}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None, **kw: datasets.Dataset.from_dict(rows))
    spec = make_spec("generate", local_path=None, hub_id="keivalya/MedQuad-MedicalQnADataset", group_by="focus",
                     validation=0.0, test=0.5, max_target_words=3)
    splits = load_splits(spec, root=tmp_path)
    assert splits.report.skipped == {"empty_answer": 1}
    assert any("no 'focus' column" in note for note in splits.report.notes)
    everything = splits.train + splits.validation + splits.test
    a_split = {name for name, exs in splits.items() for e in exs if e.group == "what is a?"}
    assert len(a_split) == 1  # the two phrasings of one question share a group and a split
    first = next(e for e in everything if e.input == "What is A?")
    assert first.target == "A is a" and first.reference == "A is a letter. It is first."
    assert splits.report.targets_capped == 2


def test_hub_data_with_no_hub_says_the_hub_is_not_reachable(no_hub, tmp_path):
    spec = make_spec("classify", local_path="absent/file", hub_id="example-org/not-in-the-cache")
    with pytest.raises(DataNotFoundError) as caught:
        load_examples(spec, root=tmp_path)
    assert f"the Hub is not reachable (127.0.0.1:{no_hub}: " in str(caught.value)


# --- de-duplication, groups, seeds, strata --------------------------------------------------------

@pytest.fixture()
def sms_file(tmp_path):
    text, repeats = sms_corpus()
    return write(tmp_path / "sms_spam" / "SMSSpamCollection", text), repeats


def test_duplicates_are_removed_first_and_never_straddle_splits(sms_file):
    path, repeats = sms_file
    splits = load_splits(make_spec("classify"), path)
    assert repeats > 10 and splits.report.duplicates_removed == repeats
    seen = {}
    for name, examples in splits.items():
        for example in examples:
            assert seen.setdefault(normalise_text(example.input), name) == name
    assert splits.report.examples == len(seen) == splits.report.train + splits.report.validation + splits.report.test


def test_dedup_keeps_the_first_and_counts_conflicting_labels():
    examples = [Example("Hello  World", "ham", "g1"), Example("hello world", "spam", "g2"),
                Example("other", "ham", "g3")]
    kept, removed, conflicts = deduplicate(examples, "classify")
    assert kept == [examples[0], examples[2]] and removed == 1 and conflicts == 1


def test_groups_never_straddle_splits_and_fractions_are_kept(tmp_path):
    rng = random.Random(1)
    rows = []
    for topic in range(120):
        for q in range(rng.randint(1, 6)):
            rows.append((f"Question {q} about topic {topic}?", f"Answer {q} for {topic}.", f"Topic {topic}"))
    rng.shuffle(rows)
    path = write(tmp_path / "medquad.csv", medquad_csv(rows))
    splits = load_splits(make_spec("generate", group_by="focus", validation=0.1, test=0.2), path)
    where = {}
    for name, examples in splits.items():
        for example in examples:
            assert where.setdefault(example.group, name) == name
    assert len(where) == 120 and splits.report.groups == 120
    total = len(rows)
    assert abs(len(splits.test) - 0.2 * total) <= 6 and abs(len(splits.validation) - 0.1 * total) <= 6


def test_a_question_shared_by_two_groups_pulls_them_into_one_split():
    examples = [Example("Same question?", "answer 1", "topic a"), Example("same  question?", "answer 2", "topic b"),
                Example("Other?", "x", "topic b")] + [Example(f"q{i}", "a", f"t{i}") for i in range(30)]
    for seed in range(20):
        parts = split_examples(examples, validation=0.2, test=0.3, seed=seed)
        (home,) = [i for i, part in enumerate(parts) if examples[0] in part]
        assert examples[1] in parts[home] and examples[2] in parts[home]


def test_same_seed_same_split_other_seed_other_split(sms_file):
    path, _ = sms_file
    first, again = load_splits(make_spec("classify"), path), load_splits(make_spec("classify", seed=42), path)
    other = load_splits(make_spec("classify"), path, seed=7)
    assert first.test == again.test and first.train == again.train and first.validation == again.validation
    assert first.report.seed == 42 and other.report.seed == 7
    assert {e.input for e in first.test} != {e.input for e in other.test}
    assert len(first.test) == len(other.test)


def test_split_does_not_depend_on_file_order():
    examples = [Example(f"text {i}", "spam" if i % 9 == 0 else "ham", f"text {i}") for i in range(200)]
    shuffled = random.Random(3).sample(examples, len(examples))
    a = split_examples(examples, validation=0.1, test=0.2, seed=5, stratify=True)
    b = split_examples(shuffled, validation=0.1, test=0.2, seed=5, stratify=True)
    assert [set(e.input for e in part) for part in a] == [set(e.input for e in part) for part in b]


def test_stratification_keeps_the_spam_share_in_every_split(tmp_path):
    text, _ = sms_corpus(n=2000, seed=4)
    splits = load_splits(make_spec("classify", validation=0.1, test=0.15), write(tmp_path / "sms", text))
    counts = splits.report.label_counts
    assert counts == label_counts(splits)
    overall = sum(c["spam"] for c in counts.values()) / sum(sum(c.values()) for c in counts.values())
    for name, c in counts.items():
        assert abs(c["spam"] / sum(c.values()) - overall) < 0.02, (name, c)


# --- targets, balance, few-shot -----------------------------------------------------------------

def test_cap_words_cuts_at_a_sentence_end_when_possible():
    text = "One two three. Four five six seven. Eight nine ten eleven twelve."
    assert cap_words(text, 9) == "One two three. Four five six seven."
    assert cap_words(text, 4) == "One two three."
    assert cap_words("No sentence end in these many words at all", 4) == "No sentence end in"
    assert cap_words(text, 12) == text and cap_words("  short  ", 5) == "  short  "


def test_generate_targets_are_capped_and_the_full_answer_is_the_reference(tmp_path):
    long_answer = " ".join(f"Sentence number {i} is here." for i in range(60))  # 300 words
    path = write(tmp_path / "m.csv", medquad_csv([("Long?", long_answer, "A"), ("Short?", "Short answer.", "B")]))
    splits = load_splits(make_spec("generate", group_by="focus", max_target_words=200), path)
    (long_ex,) = [e for _, exs in splits.items() for e in exs if e.input == "Long?"]
    assert long_ex.reference == long_answer and long_ex.target.endswith("is here.")
    assert 190 <= len(long_ex.target.split()) <= 200
    assert splits.report.targets_capped == 1 and splits.report.max_target_words == 200


def test_oversampling_is_off_by_default_and_touches_only_train(sms_file):
    path, _ = sms_file
    plain = load_splits(make_spec("classify"), path)
    assert plain.report.oversampling is None
    balanced = load_splits(make_spec("classify"), path, oversample=True)
    assert balanced.validation == plain.validation and balanced.test == plain.test
    counts = label_counts({"train": balanced.train})["train"]
    assert counts["spam"] == counts["ham"] == label_counts(plain)["train"]["ham"]
    assert set(balanced.train) == set(plain.train)
    assert balanced.report.oversampling["examples_added"] == len(balanced.train) - len(plain.train)
    assert balanced.report.label_counts["train"] == counts


def test_the_spec_can_ask_for_oversampling(sms_file):
    import dataclasses

    path, _ = sms_file
    spec = make_spec("classify")
    spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, oversample=0.5))
    splits = load_splits(spec, path)
    counts = label_counts({"train": splits.train})["train"]
    assert splits.report.oversampling["ratio"] == 0.5
    assert counts["spam"] == -(-counts["ham"] // 2)  # ceil(ham * 0.5)


def test_oversample_minority_repeats_evenly():
    examples = labelled(ham=10, spam=3)
    out = oversample_minority(examples, seed=0, ratio=0.5)
    spam = [e for e in out if e.target == "spam"]
    assert len(spam) == 5 and max(spam.count(e) for e in spam) == 2 and len(out) == 15


def test_few_shot_examples_are_balanced_and_seeded():
    train = labelled(ham=50, spam=5)
    shots = few_shot_examples(train, 4, seed=3)
    assert sorted(e.target for e in shots) == ["ham", "ham", "spam", "spam"]
    assert shots[0].target != shots[1].target  # interleaved
    assert shots == few_shot_examples(train, 4, seed=3) and shots != few_shot_examples(train, 4, seed=4)
    answers = [Example(f"q{i}", f"answer {i}", f"q{i}") for i in range(20)]
    assert len(few_shot_examples(answers, 2, seed=0)) == 2
    assert len(few_shot_examples(answers[:1], 3, seed=0)) == 1 and few_shot_examples(answers, 0, seed=0) == []


def test_the_report_serialises_for_metrics_json(sms_file):
    path, _ = sms_file
    report = asdict(load_splits(make_spec("classify"), path).report)
    json.dumps(report)
    assert {"seed", "source", "train", "validation", "test", "skipped", "duplicates_removed"} <= set(report)


# --- the real shared data sets ----------------------------------------------------------------

shared = pytest.mark.skipif(not SHARED.exists(), reason=f"shared datasets not found at {SHARED}")


@pytest.fixture(scope="module")
def real_splits():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_splits(load_spec(CATALOG_DIR / name), SHARED, hub=False)
        return cache[name]
    return get


def test_near_duplicates_are_linked_by_their_pieces_with_numbers_masked():
    texts = ["URGENT! Your mobile 07700 900123 won a £2000 prize. Call 09061790121 now",
             "URGENT! Your mobile 07781 482378 won a £5000 prize. Call 09066364311 now",  # other numbers
             "urgent!  your MOBILE 07781 482378 won a £5000 prize, call 09066364311 now",  # and case, spacing
             "Are we still meeting for lunch today? I can bring the notes"]
    assert near_duplicate_pairs(texts, 1.0) == [(0, 1)]  # the same but for the numbers
    assert near_duplicate_pairs(texts, 0.7) == [(0, 1), (0, 2), (1, 2)]  # a comma for a full stop
    assert near_duplicate_pairs(texts, 0.2) == [(0, 1), (0, 2), (1, 2)]  # the lunch note is nowhere near
    assert near_duplicate_pairs(texts[:1], 0.5) == []


def test_near_duplicates_set_in_the_spec_never_straddle_splits():
    campaigns = ["WINNER! You won a {n} prize, call 0906{n} to claim", "Your {n} mobile statement shows unclaimed "
                 "points, call 0871{n} now", "FREE entry to win {n} cash, text WIN to 8{n}"]
    examples = [Example(c.format(n=100 + i * 37), "spam", f"s{k}-{i}") for k, c in enumerate(campaigns) for i in range(8)]
    examples += [Example(f"see you at dinner {word}, bring the {thing}", "ham", f"h{word}{thing}")
                 for word in ("soon", "later", "tonight", "then") for thing in ("notes", "keys", "wine", "book", "map")]
    links = near_duplicate_pairs([e.input for e in examples], 0.5)
    plain = split_examples(examples, validation=0.2, test=0.3, seed=3, stratify=True)
    linked = split_examples(examples, validation=0.2, test=0.3, seed=3, stratify=True, links=links)

    def splits_of(parts, campaign):
        return {i for i, part in enumerate(parts) for e in part if e.group.startswith(f"s{campaign}-")}

    assert any(len(splits_of(plain, k)) > 1 for k in range(3))  # by exact text alone, a campaign is spread
    assert all(len(splits_of(linked, k)) == 1 for k in range(3))  # linked, each stays in one split


def test_a_test_file_replaces_the_test_split_without_the_texts_training_has_seen(tmp_path):
    """``eval --test-data``: a held-out file is measured on its own examples, never on one whose text
    (or, where the spec links them, a near duplicate of it) is in the training or validation split."""
    import dataclasses

    spec = make_spec("classify")
    spec = dataclasses.replace(spec, data=dataclasses.replace(
        spec.data, split=dataclasses.replace(spec.data.split, near_duplicates=0.5)))
    rng = random.Random(1)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(400)]
    lines = [f"{'spam' if i % 4 == 0 else 'ham'}\t{' '.join(rng.sample(words, 8))}" for i in range(60)]
    splits = load_splits(spec, write(tmp_path / "SMSSpamCollection", "\n".join(lines) + "\n"))
    trained = splits.train[0]
    seen = splits.validation[0].input
    held_out = write(tmp_path / "held-out.tsv", "\n".join([
        f"{trained.target}\t  {trained.input.upper()} ",  # a training text, in other case and spacing
        f"ham\t{seen} please",  # a validation text with a word added: a near duplicate
        "ham\tAre we still meeting for lunch today? I can bring the notes",
        "spam\tFREE entry to a weekly draw, text WIN to 80086 to claim your prize",
        "ham\tAre we still meeting for lunch today? I can bring the notes",  # a repeat within the file
        "maybe\tan unknown label",
    ]) + "\n")
    result = with_test_file(spec, splits, held_out)
    assert [ex.input for ex in result.test] == ["Are we still meeting for lunch today? I can bring the notes",
                                                "FREE entry to a weekly draw, text WIN to 80086 to claim your prize"]
    assert result.train == splits.train and result.validation == splits.validation
    t = result.report.test_data
    assert t["rows"] == 6 and t["duplicates_removed"] == 1 and t["examples"] == 2
    assert t["in_training_or_validation"] == {"same_text": 1, "near_duplicates": 1}
    assert sum(t["skipped"].values()) == 1  # the unknown label, counted as the training data's would be
    assert result.report.test == 2 and result.report.label_counts["test"] == {"ham": 1, "spam": 1}
    assert splits.report.test_data is None and len(splits.test) > 2  # the splits given are left as they were
    with pytest.raises(DataNotFoundError, match="test data file not found: .*missing.tsv"):
        with_test_file(spec, splits, tmp_path / "missing.tsv")
    with pytest.raises(DataNotFoundError, match=f"is a folder; --test-data takes a file: {re.escape(str(tmp_path))}$"):
        with_test_file(spec, splits, tmp_path)  # it was "test data file not found" for a folder that is there


def _no_overlap(splits, key):
    seen = {}
    for name, examples in splits.items():
        for example in examples:
            assert seen.setdefault(key(example), name) == name, key(example)


@shared
def test_real_sms_spam(real_splits):
    splits = real_splits("spam")
    r = splits.report
    assert 4400 <= r.rows <= 4460 and r.skipped == {}
    assert 4100 <= r.examples <= 4140 and r.duplicates_removed >= 315
    assert r.train + r.validation + r.test == r.examples
    _no_overlap(splits, lambda e: normalise_text(e.input))
    for counts in r.label_counts.values():
        assert 0.09 <= counts["spam"] / sum(counts.values()) <= 0.15


@shared
def test_real_medquad(real_splits):
    splits = real_splits("medquad")
    r = splits.report
    assert r.rows == 14808 and r.skipped == {}
    _no_overlap(splits, lambda e: e.group)
    _no_overlap(splits, lambda e: normalise_text(e.meta.get("focus", "")) or normalise_text(e.input))
    _no_overlap(splits, lambda e: normalise_text(e.input))
    assert all(len(e.target.split()) <= 200 for _, exs in splits.items() for e in exs)
    assert abs(r.test / r.examples - 0.1) < 0.01 and abs(r.validation / r.examples - 0.05) < 0.01


@shared
def test_real_oncology(real_splits):
    splits = real_splits("oncology")
    r = splits.report
    assert r.rows == 4500 and r.examples == 4500 and r.skipped == {}
    _no_overlap(splits, lambda e: normalise_text(e.input))
    example = splits.test[0]
    assert set(example.target) == set(FIELDS)
