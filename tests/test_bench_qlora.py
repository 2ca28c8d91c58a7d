"""`adapterlab bench qlora` on CPU with the tiny shape: a random checkpoint is built, trained with
QLoRA (4-bit NF4 base) through ``train_adapter``, and the JSON says what was measured.
No timing assertions."""

from __future__ import annotations

import json

from adapters.cli import main
from test_training import write_sms_collection


def test_bench_qlora_trains_a_random_4bit_model_and_reports_it(tiny_base, catalog, tmp_path):
    data = write_sms_collection(tmp_path / "SMSSpamCollection")
    out = tmp_path / "qlora.json"

    rc = main(["bench", "qlora", "--shape", "tiny", "--seq-len", "256", "--steps", "3", "--device", "cpu",
               "--tokenizer", str(tiny_base), "--catalog", str(catalog), "--data", str(data),
               "--output", str(out), "--quiet"])

    assert rc == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "train-qlora" and result["shape"] == "tiny" and result["device_kind"] == "cpu"
    assert result["random_weights"] is True and "do not depend on weight values" in result["note"]
    assert result["steps"] == 3 and result["sequence_length"] == 256
    assert 0 < result["real_tokens"] <= 3 * 256  # three rows of at most seq-len tokens
    assert result["tokens_per_s"] > 0 and result["parameters"] > 0
    assert result["peak_gpu_memory_bytes"] is None and result["meets_memory_target"] is None
    assert "bench qlora --shape tiny --seq-len 256 --steps 3" in result["command"]
    assert sorted(p.name for p in (catalog / "spam").iterdir()) == ["adapter.yaml"]  # catalogue untouched


def test_bench_qlora_rejects_an_unknown_shape(catalog, capsys):
    rc = main(["bench", "qlora", "--shape", "llama-70b", "--catalog", str(catalog)])

    assert rc != 0
    assert "--shape 'llama-70b': use one of llama-3.1-8b, tiny" in capsys.readouterr().err
