"""The ``adapterlab`` command line, run in-process on a copy of the catalogue and the tiny base.

Predictions keep every input key and add the task's answer; every expected failure ends with one
``adapterlab: error: ...`` message and exit status 2, never a traceback, and a failed run writes
no output file (nor touches one that was there).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from adapters import AdapterNotTrainedError
from adapters.cli import main

ONCOLOGY_FIELDS = ["cancer_type", "stage", "gene_mutation", "biomarker", "treatment", "response",
                   "metastasis_site"]


def write_lines(path: Path, lines: list) -> Path:
    """A JSONL input file: dicts are dumped, str and bytes lines are written as they are."""
    data = b"".join((line if isinstance(line, bytes) else
                     (line if isinstance(line, str) else json.dumps(line)).encode("utf-8")) + b"\n"
                    for line in lines)
    path.write_bytes(data)
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def limit_generation(catalog: Path, name: str, max_new_tokens: int) -> None:
    """Lower an adapter's max_new_tokens in the catalogue copy so a random model stops soon."""
    spec_file = catalog / name / "adapter.yaml"
    text = spec_file.read_text(encoding="utf-8")
    for old in ("max_new_tokens: 256", "max_new_tokens: 192"):
        text = text.replace(old, f"max_new_tokens: {max_new_tokens}")
    assert f"max_new_tokens: {max_new_tokens}" in text
    spec_file.write_text(text, encoding="utf-8")


@pytest.fixture()
def cli(tiny_base, catalog, capsys):
    """Run ``adapterlab ARGS`` against the catalogue copy; (exit status, stdout, stderr)."""

    def run(*args: str, base_model: bool = True) -> tuple[int, str, str]:
        argv = [str(a) for a in args]
        if argv[0] in ("predict", "adapters"):
            argv += ["--catalog", str(catalog)]
        if argv[0] == "predict" and base_model:
            argv += ["--base-model", str(tiny_base), "--device", "cpu"]
        status = main(argv)
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return status, out, err

    return run


def assert_refused(result: tuple[int, str, str], *needles: str) -> str:
    status, _, err = result
    assert status == 2, err
    assert "adapterlab: error: " in err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_refusal_is_one_line_and_adapterlab_traceback_shows_where_it_came_from(cli, catalog, tmp_path,
                                                                                 monkeypatch):
    """A plain ValueError or OSError prints as one line, the way inputs are refused; that hid where a
    bug's came from, so ADAPTERLAB_TRACEBACK=1 raises it instead."""
    texts, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    texts.write_text('{"text": "hello"}\n')
    assert_refused(cli("predict", "spam", "--input", texts, "--output", out), "has no trained weights")
    monkeypatch.setenv("ADAPTERLAB_TRACEBACK", "1")
    with pytest.raises(AdapterNotTrainedError, match="has no trained weights"):
        main(["predict", "spam", "--input", str(texts), "--output", str(out), "--catalog", str(catalog)])


# --- predictions -------------------------------------------------------------------------------

def test_predict_names_every_folder_its_output_path_makes(tmp_path):
    """``--output out/../x/p.jsonl`` made ``out`` and ``x`` and named only ``out``."""
    from adapters.cli import _folders_made_note, _missing_folders

    made = _missing_folders(tmp_path / "out" / ".." / "x" / "p.jsonl")
    assert made == [tmp_path / "out", tmp_path / "x"]
    (tmp_path / "x").mkdir()
    assert _missing_folders(tmp_path / "x" / "p.jsonl") == []
    assert _folders_made_note(made) == f" (made the folders {tmp_path / 'out'} and {tmp_path / 'x'})"
    assert _folders_made_note(made[:1]) == f" (made the folder {tmp_path / 'out'})"


def test_predict_spam_with_the_base_labels_every_line_and_keeps_its_keys(cli, tmp_path):
    rows = [{"id": 1, "text": "win a free prize call now"},
            {"id": "b", "text": "meet for dinner tonight", "source": "phone"},
            {"id": 3, "text": "lecture notes from today"}]
    inp, out = write_lines(tmp_path / "in.jsonl", rows), tmp_path / "out" / "pred.jsonl"
    status, _, err = cli("predict", "spam", "--base", "--input", inp, "--output", out, "--batch-size", 2)
    assert status == 0, err
    assert f"wrote 3 lines to {out} (made the folder {out.parent})" in err  # it did not exist
    got = read_lines(out)
    assert len(got) == 3
    for row, pred in zip(rows, got):
        assert {k: pred[k] for k in row} == row  # the input's keys and values, in input order
        assert pred["label"] in ("ham", "spam")
        assert set(pred["probs"]) == {"ham", "spam"}
        assert sum(pred["probs"].values()) == pytest.approx(1.0, abs=1e-6)
        assert pred["label"] == max(pred["probs"], key=pred["probs"].get)
        assert pred["truncated"] is False
    assert not [p for p in out.parent.iterdir() if p.name != "pred.jsonl"]  # no temporary left behind


def test_batch_size_does_not_change_predictions(cli, tmp_path):
    rows = [{"text": t} for t in ("win cash now", "hello", "free prize", "dinner at eight", "call me")]
    inp = write_lines(tmp_path / "in.jsonl", rows)
    cli("predict", "spam", "--base", "--input", inp, "--output", tmp_path / "a.jsonl", "--batch-size", 1)
    cli("predict", "spam", "--base", "--input", inp, "--output", tmp_path / "b.jsonl", "--batch-size", 4)
    one, four = read_lines(tmp_path / "a.jsonl"), read_lines(tmp_path / "b.jsonl")
    assert [r["label"] for r in one] == [r["label"] for r in four]
    assert [r["probs"]["spam"] for r in one] == pytest.approx([r["probs"]["spam"] for r in four], abs=1e-4)


def test_blank_lines_in_the_input_are_skipped(cli, tmp_path):
    inp = write_lines(tmp_path / "in.jsonl", ["", {"text": "hello"}, "   ", {"text": "win"}, ""])
    status, _, err = cli("predict", "spam", "--base", "--input", inp, "--output", tmp_path / "o.jsonl")
    assert status == 0, err
    assert [r["text"] for r in read_lines(tmp_path / "o.jsonl")] == ["hello", "win"]


def test_predict_oncology_with_the_base_writes_exactly_the_fields(cli, catalog, tmp_path):
    limit_generation(catalog, "oncology", 12)
    rows = [{"id": 7, "text": "Metastatic melanoma, stage IV, BRAF V600E, on nivolumab."},
            {"id": 8, "text": "Lung adenocarcinoma with liver metastases."}]
    inp, out = write_lines(tmp_path / "in.jsonl", rows), tmp_path / "onc.jsonl"
    status, _, err = cli("predict", "oncology", "--base", "--input", inp, "--output", out)
    assert status == 0, err
    got = read_lines(out)
    assert [p["id"] for p in got] == [7, 8]
    for pred in got:
        assert list(pred["fields"]) == ONCOLOGY_FIELDS
        assert all(v is None or isinstance(v, str) for v in pred["fields"].values())
        assert isinstance(pred["valid"], bool) and isinstance(pred["repaired"], bool)
        assert pred["cut_at"] in (None, 12)  # 12 new tokens at most: an object left open there says so
        if not pred["valid"]:  # a random model writes garbage: flagged, nothing invented
            assert all(v is None for v in pred["fields"].values())


def test_predict_medquad_with_the_base_writes_an_answer(cli, catalog, tmp_path):
    limit_generation(catalog, "medquad", 8)
    rows = [{"text": "What are the symptoms of diabetes?", "q": 1}, {"text": "What is a stage?", "q": 2}]
    inp, out = write_lines(tmp_path / "in.jsonl", rows), tmp_path / "med.jsonl"
    status, _, err = cli("predict", "medquad", "--base", "--input", inp, "--output", out)
    assert status == 0, err
    got = read_lines(out)
    assert [(p["text"], p["q"]) for p in got] == [(r["text"], r["q"]) for r in rows]
    for pred in got:
        assert isinstance(pred["answer"], str) and pred["answer"].strip()
        assert pred["truncated"] is False
        assert pred["finish_reason"] == "length"  # a random model runs to the 8-token limit


def test_predict_decodes_a_batch_of_questions_together_with_the_answers_of_one_at_a_time(
        cli, catalog, tmp_path, monkeypatch):
    """--batch-size was ignored for a generate adapter: each question waited for the one before."""
    from adapters.backends import LocalBackend

    limit_generation(catalog, "medquad", 24)
    rows = [{"text": q} for q in ("What is glaucoma?", "What causes asthma and how is it treated?", "Is flu contagious?")]
    inp = write_lines(tmp_path / "in.jsonl", rows)
    stream, open_streams, most = LocalBackend.stream, [0], [0]

    def counted(self, *args, **kwargs):
        open_streams[0] += 1
        most[0] = max(most[0], open_streams[0])
        try:
            yield from stream(self, *args, **kwargs)
        finally:
            open_streams[0] -= 1

    monkeypatch.setattr(LocalBackend, "stream", counted)
    answers = {}
    for size in (1, 3):
        most[0] = 0
        out = tmp_path / f"out-{size}.jsonl"
        status, _, err = cli("predict", "medquad", "--base", "--batch-size", size, "--input", inp, "--output", out)
        assert status == 0, err
        answers[size] = [(p["answer"], p["finish_reason"]) for p in read_lines(out)]
        assert most[0] == size
    assert answers[1] == answers[3]


def test_output_is_utf8_text_not_ascii_escapes(cli, tmp_path):
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "réunion à 18h — ça marche?"}])
    out = tmp_path / "o.jsonl"
    assert cli("predict", "spam", "--base", "--input", inp, "--output", out)[0] == 0
    assert "réunion à 18h — ça marche?" in out.read_text(encoding="utf-8")


# --- refusals ----------------------------------------------------------------------------------

def test_an_untrained_adapter_without_base_says_how_to_train_it(cli, catalog, tmp_path):
    inp, out = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}]), tmp_path / "o.jsonl"
    assert_refused(cli("predict", "spam", "--input", inp, "--output", out),
                   f"adapterlab train spam --catalog {catalog}", "--base")  # in the catalogue it was asked for
    assert not out.exists()


def test_an_unknown_adapter_lists_the_known_ones(cli, tmp_path):
    inp, out = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}]), tmp_path / "o.jsonl"
    assert_refused(cli("predict", "spma", "--base", "--input", inp, "--output", out),
                   "'spma'", "medquad, oncology, spam")
    assert not out.exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_a_utf16_input_is_named_as_such_not_as_bad_lines(cli, tmp_path, encoding):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(("\ufeff" if encoding == "utf-16-be" else "").encode(encoding)
                    + '{"text": "hello"}\n{"text": "bye"}\n'.encode(encoding))
    out = tmp_path / "o.jsonl"
    assert_refused(cli("predict", "spam", "--base", "--input", inp, "--output", out),
                   f"{inp}: UTF-16 text", "iconv -f utf-16 -t utf-8")
    assert not out.exists()


@pytest.mark.parametrize(("bad_line", "problem"), [
    ('{"text": "unterminated', "not valid JSON"),
    ("not json at all", "not valid JSON"),
    (b'{"text": "caf\xe9"}', "not valid UTF-8 (byte 0xe9 at column 14)"),
    ('{"body": "no text key"}', 'expected an object with a string field "text"'),
    ('{"text": 42}', 'expected an object with a string field "text"'),
    ('["text", "in a list"]', 'expected an object with a string field "text"'),
    ('{"text": "hi \\ud800 there"}', "holds an unpaired surrogate"),  # valid JSON, but not text
    ('{"text": "hi", "id": "\\udc00"}', "holds an unpaired surrogate"),  # could not be written back out
    ('{"text": "a", "text": "b"}', 'key "text" appears twice'),
    ('{"text": "hi", "score": NaN}', "NaN is not JSON"),
    ('{"text": "hi", "label": "ham"}', 'has "label", which predict writes its answer under; rename it'),
    ('{"text": ""}', '"text" is empty'),
    ('{"text": "  \\n\\t "}', '"text" is empty'),
])
def test_a_bad_input_line_is_named_and_nothing_is_written(cli, tmp_path, bad_line, problem):
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "fine"}, {"text": "also fine"}, bad_line,
                                              {"text": "fine again"}])
    out = tmp_path / "out" / "o.jsonl"
    assert_refused(cli("predict", "spam", "--base", "--input", inp, "--output", out),
                   f"{inp}:3: {problem}", "nothing was run")
    assert not out.exists() and not out.parent.exists()


def test_every_bad_line_is_reported_at_once(cli, tmp_path):
    inp = write_lines(tmp_path / "in.jsonl", ["{oops", {"text": "ok"}, {"text": ""}, b"\xff\xfe"])
    err = assert_refused(cli("predict", "spam", "--base", "--input", inp, "--output", tmp_path / "o.jsonl"),
                         "3 bad line(s)", f"{inp}:1:", f"{inp}:3:", f"{inp}:4:")
    assert f"{inp}:2:" not in err


def test_a_failed_run_leaves_an_existing_output_untouched(cli, tmp_path):
    tmp_path = tmp_path / "run"  # a folder of its own, to see that nothing else appears in it
    tmp_path.mkdir()
    out = tmp_path / "o.jsonl"
    out.write_text('{"previous": "results"}\n', encoding="utf-8")
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "fine"}, '{"text": '])
    assert_refused(cli("predict", "spam", "--base", "--input", inp, "--output", out), f"{inp}:2:")
    assert out.read_text(encoding="utf-8") == '{"previous": "results"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "o.jsonl"]


def test_a_failure_during_prediction_leaves_no_partial_output(cli, catalog, tmp_path, monkeypatch):
    from adapters.runtime import InputError, Runtime

    calls = []

    def classify_then_fail(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise InputError("the model went away")
        return original(self, *args, **kwargs)

    original = Runtime.classify
    monkeypatch.setattr(Runtime, "classify", classify_then_fail)
    tmp_path = tmp_path / "run"  # a folder of its own, to see that no temporary file is left
    tmp_path.mkdir()
    out = tmp_path / "o.jsonl"
    out.write_text("old\n", encoding="utf-8")
    inp = write_lines(tmp_path / "in.jsonl", [{"text": f"message {i}"} for i in range(4)])
    assert_refused(cli("predict", "spam", "--base", "--input", inp, "--output", out, "--batch-size", 2),
                   "the model went away")
    assert len(calls) == 2  # the first batch was written to the temporary file, then it failed
    assert out.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "o.jsonl"]


def test_a_sigterm_during_prediction_keeps_the_old_output_and_leaves_no_temporary(cli, tmp_path, monkeypatch):
    import os
    import signal

    from adapters.runtime import Runtime

    original, calls = Runtime.classify, []

    def classify_then_terminated(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or `timeout` would send it
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Runtime, "classify", classify_then_terminated)
    tmp_path = tmp_path / "run"
    tmp_path.mkdir()
    out = tmp_path / "o.jsonl"
    out.write_text("old\n", encoding="utf-8")
    inp = write_lines(tmp_path / "in.jsonl", [{"text": f"message {i}"} for i in range(4)])
    status, _, err = cli("predict", "spam", "--base", "--input", inp, "--output", out, "--batch-size", 2)
    assert status == 143 and "adapterlab: terminated" in err
    assert out.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "o.jsonl"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # pytest's own handling is given back


def test_standard_input_and_output_with_a_dash_and_a_byte_order_mark(cli, tmp_path, monkeypatch, capsys):
    import io
    import sys

    data = b"\xef\xbb\xbf" + b'{"text": "hello there"}\n{"text": "win a prize", "id": 7}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    status, out, err = cli("predict", "spam", "--base", "--input", "-", "--output", "-")
    assert status == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["hello there", "win a prize"] and rows[1]["id"] == 7
    assert all(r["label"] in ("ham", "spam") for r in rows)
    assert "wrote 2 lines to standard output" in err and not (tmp_path / "-").exists()


@pytest.mark.parametrize("data, problem", [(b'{"text": "hello"}\nnot json\n', "standard input:2: not valid JSON"),
                                           (b"\n", "standard input: no input lines")])
def test_bad_standard_input_is_named_as_such_not_as_a_dash(cli, monkeypatch, data, problem):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    err = assert_refused(cli("predict", "spam", "--base", "--input", "-", "--output", "-"), problem)
    assert "-:" not in err


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(cli, tmp_path, monkeypatch, where):
    from adapters.runtime import Runtime

    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}])
    (tmp_path / "afile").write_text("x")
    out, problem = {"folder": (tmp_path, "is a folder; give a file name"),
                    "under a file": (tmp_path / "afile" / "o.jsonl", f"{tmp_path / 'afile'} is a file, not a folder")}[where]
    assert_refused(cli("predict", "spam", "--base", "--input", inp, "--output", out), f"--output {out}: {problem}")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_in_a_folder_that_takes_no_files_is_refused_before_any_work(cli, tmp_path, monkeypatch):
    from adapters.runtime import Runtime

    # /proc's permission bits say root may write there; only making a file there tells
    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}])
    assert_refused(cli("predict", "spam", "--base", "--input", inp, "--output", "/proc/adapterlab.jsonl"),
                   "--output /proc/adapterlab.jsonl: cannot write in /proc (it takes no new files)")


def test_an_output_that_is_the_input_is_refused_before_any_work(cli, tmp_path, monkeypatch):
    from adapters.runtime import Runtime

    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}])
    (tmp_path / "link.jsonl").symlink_to(inp)
    for out in (inp, tmp_path / "link.jsonl"):
        assert_refused(cli("predict", "spam", "--base", "--input", inp, "--output", out),
                       f"--output {out}: is the --input file")
    assert json.loads(inp.read_text()) == {"text": "hello"}


def test_an_adapter_trained_on_another_base_is_refused_before_loading_naming_the_fitting_one(catalog, tmp_path,
                                                                                           monkeypatch, capsys):
    from adapters.runtime import Runtime

    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    (catalog / "spam" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/tiny"}))
    (catalog / "spam" / "adapter_model.safetensors").write_bytes(b"")
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}])
    assert main(["predict", "spam", "--catalog", str(catalog), "--input", str(inp), "--output", "-"]) == 2
    assert "was trained on base model '/models/tiny', not 'smollm2-135m-instruct'; add --base-model /models/tiny" \
        in capsys.readouterr().err
    assert main(["eval", "spam", "--catalog", str(catalog), "--variants", "fine_tuned"]) == 2
    assert "add --base-model /models/tiny" in capsys.readouterr().err


def test_eval_refuses_to_write_into_another_adapters_folder(catalog, monkeypatch, capsys):
    from adapters.runtime import Runtime

    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    before = {p.name: p.read_bytes() for p in (catalog / "oncology").iterdir()}
    assert main(["eval", "spam", "--catalog", str(catalog), "--variants", "base",
                 "--output", str(catalog / "oncology")]) == 2
    err = capsys.readouterr().err
    assert f"--output {catalog / 'oncology'}: is another adapter's folder" in err and "data:" not in err
    assert {p.name: p.read_bytes() for p in (catalog / "oncology").iterdir()} == before


def test_card_without_metrics_names_the_eval_command_of_its_own_catalogue(catalog, capsys):
    assert main(["card", "spam", "--catalog", str(catalog)]) == 2
    assert f"run `adapterlab eval spam --catalog {catalog}` first" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["adapter.yaml", "README.md"])
def test_an_output_that_is_a_file_of_an_adapter_is_refused(cli, catalog, tmp_path, name):
    (catalog / "spam" / "README.md").write_text("the model card")
    before = (catalog / "spam" / name).read_bytes()
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}])
    assert_refused(cli("predict", "spam", "--base", "--input", inp, "--output", catalog / "spam" / name),
                   f"is a file of adapter 'spam' ({catalog / 'spam'})")
    assert (catalog / "spam" / name).read_bytes() == before


def test_a_base_folder_is_one_base_however_its_path_is_written(tiny_base, tmp_path, monkeypatch):
    """Trained with --base-model tiny (relative), the adapter had recorded "tiny": the same folder given
    as ./tiny or by its absolute path was refused as another base, and from another folder "tiny" was none."""
    from adapters.backends import other_base
    from adapters.base_models import canonical_name

    monkeypatch.chdir(tiny_base.parent)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": canonical_name(tiny_base.name)}))
    for spelling in (tiny_base.name, f"./{tiny_base.name}", str(tiny_base), f"{tiny_base}/"):
        assert other_base(adapter, spelling) is None, spelling
    monkeypatch.chdir(tmp_path)
    assert other_base(adapter, str(tiny_base)) is None
    assert canonical_name("smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_an_input_that_is_a_folder_is_named(cli, tmp_path):
    assert_refused(cli("predict", "spam", "--base", "--input", tmp_path, "--output", tmp_path / "o.jsonl"),
                   f"{tmp_path}: is a folder; --input takes a JSONL file")


@pytest.mark.parametrize(("device", "problem"), [("bogus", "use auto, cpu, cuda or cuda:N"),
                                                 ("cuda:7", "no such CUDA GPU here")])
def test_a_device_that_is_not_there_is_one_line_before_loading(catalog, tmp_path, capsys, monkeypatch,
                                                              device, problem):
    import torch

    from adapters.runtime import Runtime

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}])
    status = main(["predict", "spam", "--base", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"),
                   "--device", device, "--catalog", str(catalog)])
    err = capsys.readouterr().err
    assert status == 2 and f"adapterlab: error: device {device!r}: {problem}" in err and "Traceback" not in err


def test_predict_loads_the_base_its_spec_names_when_others_name_another(cli, catalog, tiny_base, tmp_path):
    for name, base in (("spam", str(tiny_base)), ("oncology", "llama-3.2-1b-instruct")):
        spec_file = catalog / name / "adapter.yaml"
        text = spec_file.read_text(encoding="utf-8")
        spec_file.write_text(text.replace("base_model: smollm2-135m-instruct", f"base_model: {base}"),
                             encoding="utf-8")
        assert f"base_model: {base}" in spec_file.read_text(encoding="utf-8")
    inp, out = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}]), tmp_path / "o.jsonl"
    status, _, err = cli("predict", "spam", "--base", "--input", inp, "--output", out, "--device", "cpu",
                         base_model=False)
    assert status == 0, err
    assert read_lines(out)[0]["label"] in ("ham", "spam")


def test_an_input_without_any_line_is_refused(cli, tmp_path):
    inp = write_lines(tmp_path / "in.jsonl", ["", "  "])
    out = tmp_path / "o.jsonl"
    assert_refused(cli("predict", "spam", "--base", "--input", inp, "--output", out), "no input lines")
    assert not out.exists()


def test_a_missing_input_file(cli, tmp_path):
    out = tmp_path / "o.jsonl"
    assert_refused(cli("predict", "spam", "--base", "--input", tmp_path / "nope.jsonl", "--output", out),
                   f"{tmp_path / 'nope.jsonl'}: no such file")
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_batch_size_must_be_a_positive_integer(cli, tmp_path, capsys, value):
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}])
    with pytest.raises(SystemExit) as caught:
        cli("predict", "spam", "--base", "--input", inp, "--output", tmp_path / "o.jsonl",
            "--batch-size", value)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_broken_spec_in_the_catalogue_is_one_line_naming_file_and_field(cli, catalog, tmp_path):
    spec_file = catalog / "spam" / "adapter.yaml"
    spec_file.write_text(spec_file.read_text(encoding="utf-8").replace("r: 16", "r: sixteen", 1),
                         encoding="utf-8")
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}])
    assert_refused(cli("predict", "medquad", "--base", "--input", inp, "--output", tmp_path / "o.jsonl"),
                   f"{spec_file}: lora.r: expected an integer")
    # the listing shows every adapter, the broken one with its reason, and says so by its status
    status, out, _ = cli("adapters")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert status == 1 and sorted(lines) == ["medquad", "oncology", "spam"]
    assert f"not loaded: {spec_file}: lora.r: expected an integer" in lines["spam"]
    assert "not trained" in lines["medquad"]


def test_an_empty_catalogue_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["adapters", "--catalog", str(tmp_path / "empty")]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no adapters (each is a folder holding an adapter.yaml)" in err


def test_a_4bit_base_is_told_that_the_tuned_threshold_was_not_tuned_for_it(catalog, tiny_base, tmp_path,
                                                                            monkeypatch, capsys):
    from adapters.runtime import Runtime

    spam = catalog / "spam"
    (spam / "adapter_config.json").write_text("{}")  # weights as far as the catalogue can tell
    (spam / "adapter_model.safetensors").write_bytes(b"")
    (spam / "threshold.json").write_text(json.dumps({"label": "spam", "threshold": 0.346}))

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before loading the model")

    monkeypatch.setattr(Runtime, "local", stop)
    inp = write_lines(tmp_path / "in.jsonl", [{"text": "hello"}])
    for extra, told in ((["--load-in-4bit"], True), ([], False)):
        with pytest.raises(RuntimeError, match="stopped before loading"):
            main(["predict", "spam", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"),
                  "--catalog", str(catalog), "--base-model", str(tiny_base), "--device", "cpu", *extra])
        err = capsys.readouterr().err
        assert ("P(spam) >= 0.346) was tuned with an unquantized base" in err) is told


# --- listing -----------------------------------------------------------------------------------

def test_adapters_lists_the_catalogue_as_not_trained(cli, catalog):
    status, out, _ = cli("adapters")
    assert status == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["medquad", "oncology", "spam"]
    for line, task in zip(lines, ("generate", "extract", "classify")):
        name = line.split()[0]
        assert line.split()[1] == task
        assert line.endswith(f"not trained (adapterlab train {name} --catalog {catalog})")


def test_adapters_shows_a_trained_adapter_as_trained(cli, catalog):
    (catalog / "spam" / "adapter_config.json").write_text("{}")
    (catalog / "spam" / "adapter_model.safetensors").write_bytes(b"")
    lines = {line.split()[0]: line for line in cli("adapters")[1].splitlines()}
    assert lines["spam"].endswith("— trained")
    assert "not trained" in lines["medquad"] and "not trained" in lines["oncology"]


def test_adapters_lists_every_adapter_when_one_has_a_broken_config(cli, catalog):
    (catalog / "medquad" / "adapter_config.json").write_text('{"r": ')  # cut short, e.g. by a copy
    (catalog / "medquad" / "adapter_model.safetensors").write_bytes(b"")
    status, out, _ = cli("adapters")
    assert status == 1
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert sorted(lines) == ["medquad", "oncology", "spam"]
    assert f"weights not loadable: {catalog / 'medquad' / 'adapter_config.json'}: not valid JSON" in lines["medquad"]
    assert "not trained" in lines["oncology"] and "not trained" in lines["spam"]


def python_in_a_fresh_interpreter(script: str):
    """stdout and stderr of ``python -c script`` (warnings and logging as a user's process sets them)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout, run.stderr


@pytest.mark.parametrize("argv", [["--help"], ["adapters"], ["bench", "train", "--help"]])
def test_commands_that_run_no_model_do_not_import_torch(argv):
    """Listing, help and usage errors answer at once: the CLI (training's commands included, through
    their entry point) imports torch, transformers and peft only inside a command that needs them."""
    out, _ = python_in_a_fresh_interpreter(
        "import sys, contextlib, io\n"
        "from adapters.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules))")
    assert out.split("\n")[-2] == "[]"


def test_commands_do_not_print_bitsandbytes_hub_kernel_warning():
    """bitsandbytes warns at import on AVX512-BF16 CPUs that it could not fetch an optional kernel from
    the Hub; every command and app start imports it, so adapterlab keeps that logger to errors."""
    out, err = python_in_a_fresh_interpreter(
        "import adapters, logging, bitsandbytes; "
        "print(logging.getLogger('bitsandbytes.backends.cpu.ops').getEffectiveLevel())")
    assert out.split()[-1] == str(40)  # logging.ERROR
    assert "kernels-community" not in err


def test_peft_wrapping_a_model_prints_no_transformers_rename_warning(tiny_base):
    """PEFT reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps a model (each
    predict, app start and training), and transformers warns; adapterlab hides that message only."""
    wrap = ("from peft import LoraConfig, get_peft_model; from transformers import AutoModelForCausalLM; "
            f"get_peft_model(AutoModelForCausalLM.from_pretrained({str(tiny_base)!r}), "
            "LoraConfig(r=2, target_modules=['q_proj'])); import warnings; "
            "warnings.warn('`is_gradient_checkpointing` is deprecated', UserWarning)")

    _, without = python_in_a_fresh_interpreter(wrap)
    if "FutureWarning: `is_gradient_checkpointing` is deprecated" not in without:
        pytest.skip("this transformers/PEFT pair does not warn about is_gradient_checkpointing")
    _, with_adapterlab = python_in_a_fresh_interpreter("import adapters.base_models; " + wrap)
    assert "FutureWarning: `is_gradient_checkpointing` is deprecated" not in with_adapterlab
    assert "UserWarning: `is_gradient_checkpointing` is deprecated" in with_adapterlab  # only that category


def test_written_files_get_normal_permissions_and_keep_those_of_the_file_they_replace(tmp_path):
    """Atomic writes go through a private temporary file (mkstemp: 0600); the result must not be."""
    import os

    from adapters.files import write_text_atomic

    old_umask = os.umask(0o022)
    try:
        new = write_text_atomic(tmp_path / "new.json", "{}\n")
        kept = tmp_path / "shared.csv"
        kept.write_text("old\n")
        kept.chmod(0o664)
        write_text_atomic(kept, "new\n")
    finally:
        os.umask(old_umask)
    assert new.stat().st_mode & 0o777 == 0o644
    assert kept.stat().st_mode & 0o777 == 0o664 and kept.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "shared.csv"]  # no temporary left


def test_an_output_that_is_a_link_a_device_or_a_pipe_is_written_through_not_replaced(tmp_path):
    """`--output /dev/null` or a link to the real file was renamed over: the device or the link
    became a plain file (as root, /dev/null itself)."""
    import os
    import threading

    from adapters.files import write_text_atomic

    target = tmp_path / "target.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target.name)
    write_text_atomic(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_text()))
    reader.start()
    write_text_atomic(pipe, "through the pipe\n")
    reader.join(10)
    assert got == ["through the pipe\n"] and not pipe.is_file()

    # (not tried on /dev/null itself: a regression would replace the machine's with a file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "pipe", "target.jsonl"]


@pytest.mark.parametrize("module", ["adapters.cli", "training.cli"])
def test_usage_errors_of_registered_commands_are_one_line_under_python_m(module, catalog):
    """`python -m adapters.cli eval ...` printed a traceback: training raised the UsageError of the
    imported adapters.cli, which the __main__ copy's own class did not catch."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", module, "eval", "spam", "--variants", "bogus",
                          "--catalog", str(catalog)], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "adapterlab: error: --variants: 'bogus'" in run.stderr


@pytest.mark.parametrize("module, command", [("chat_app.cli", "serve"), ("training.cli", "train")])
def test_python_m_of_a_package_cli_runs_its_own_commands(module, command):
    """`python -m chat_app.cli serve` failed with "conflicting subparser: serve": its __main__ copy's
    register is another function than the entry point's, so the command was added twice."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", module, command, "--help"], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0 and f"usage: adapterlab {command}" in run.stdout, run.stderr[-2000:]


def test_a_count_that_is_not_a_number_says_so(capsys):
    from adapters.cli import main

    with pytest.raises(SystemExit):
        main(["predict", "spam", "--batch-size", "x", "--input", "-", "--output", "-"])
    assert "--batch-size: expected a whole number >= 1, got 'x'" in capsys.readouterr().err


def test_a_binary_write_that_fails_half_way_keeps_the_old_file(tmp_path):
    """An evaluation's plot is written as the other files are: a run killed while saving leaves the
    previous PNG whole."""
    import pytest

    from adapters.files import _write_atomic, write_bytes_atomic

    plot = write_bytes_atomic(tmp_path / "fields.png", b"\x89PNG old")

    def killed(f):
        f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _write_atomic(plot, "wb", killed)
    assert plot.read_bytes() == b"\x89PNG old"
    assert [p.name for p in tmp_path.iterdir()] == ["fields.png"]  # no temporary left


@pytest.mark.parametrize("command", ["train", "eval"])
def test_train_and_eval_refuse_a_device_that_is_not_there_before_reading_the_data(catalog, tmp_path, capsys,
                                                                                  monkeypatch, command):
    import torch

    import training.data

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    monkeypatch.setattr(training.data, "load_splits", lambda *a, **k: pytest.fail("the data was read"))
    assert main([command, "spam", "--catalog", str(catalog), "--device", "cuda:7",
                 "--run-dir" if command == "train" else "--output", str(tmp_path / "out")]) == 2
    assert "adapterlab: error: device 'cuda:7': no such CUDA GPU here" in capsys.readouterr().err


def test_every_command_help_says_what_the_command_does(capsys):
    """``adapterlab COMMAND --help`` starts with the summary the command list gives, for the commands
    other packages register too (they had only their options)."""
    from adapters.cli import build_parser

    parser = build_parser()
    commands = [[name] for name in parser._subparsers._group_actions[0].choices]
    commands += [["bench", name] for name in ("serve", "train", "qlora", "table")]
    for argv in commands:
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--help"])
        usage, _, rest = capsys.readouterr().out.partition("\n\n")
        assert not rest.startswith(("positional arguments", "options")), f"{' '.join(argv)} --help: no description"
