"""Training on a tiny random model, as the README describes it: `adapterlab train` for ten steps, then
the evaluation, the artifacts, resuming a killed run, and the atomic write of the adapter folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.catalog import load_catalog
from adapters.cli import main
from conftest import copy_spec

ROOT = Path(__file__).resolve().parent.parent

SPAM = ["WIN a free cash prize now, call {i} to claim", "URGENT you have won {i} pounds, text CLAIM now"]
HAM = ["see you at dinner {i}, bring the notes", "ok I will call you after the lecture {i}"]


def write_sms_collection(path: Path, n: int = 120) -> Path:
    """A small SMS Spam Collection file (label<TAB>text), a quarter spam, every text distinct."""
    lines = []
    for i in range(n):
        label, pool = ("spam", SPAM) if i % 4 == 0 else ("ham", HAM)
        lines.append(f"{label}\t{pool[i % 2].format(i=i)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def set_training(catalog: Path, adapter: str, **values) -> None:
    """Edit the ``training:`` line of a catalogue copy's adapter.yaml (e.g. a tiny model's learning rate)."""
    path = catalog / adapter / "adapter.yaml"
    text = path.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(^training: {{.*\b{key}: )[^,}}]+", rf"\g<1>{value}", text, flags=re.M)
        assert n == 1, f"{key} not in the training line of {path}"
    path.write_text(text)


def train_args(catalog: Path, base: Path, data: Path, runs: Path, *extra: str) -> list[str]:
    return ["train", "spam", "--catalog", str(catalog), "--base-model", str(base), "--data", str(data),
            "--device", "cpu", "--run-dir", str(runs), *extra]


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    """`adapterlab train spam` for 10 steps on the tiny model, evaluated on 8 test messages."""
    from adapters.catalog import CATALOG_DIR

    root = tmp_path_factory.mktemp("trained")
    catalog = root / "catalog"
    copy_spec(CATALOG_DIR / "spam" / "adapter.yaml", catalog / "spam")
    set_training(catalog, "spam", learning_rate="5.0e-3")
    data = write_sms_collection(root / "SMSSpamCollection")
    rc = main(train_args(catalog, tiny_base, data, root / "runs", "--max-steps", "10", "--eval-limit", "8"))
    assert rc == 0
    return catalog / "spam"


def test_ten_steps_write_a_standard_peft_adapter_with_its_log_and_plot(trained, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for name in ("adapter_config.json", "adapter_model.safetensors", "training_log.csv", "loss.png",
                 "train_result.json"):
        assert (trained / name).is_file(), name
    result = json.loads((trained / "train_result.json").read_text())
    assert result["steps"] == 10 and result["train_tokens"] > 0 and result["seed"] == 42
    assert result["batching"] == "padding-free packing"  # the spec's default
    assert result["compiled_layers"] is False  # the spec says compile: true, which a CPU run leaves eager
    log = (trained / "training_log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss") and len(log) > 1
    umask = os.umask(0o022)
    os.umask(umask)
    # readable by the other users of a shared catalogue, as any new file (safetensors writes them 0600)
    assert (trained / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), trained)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero: training moved it


def test_evaluation_reports_base_few_shot_and_fine_tuned_on_the_same_examples(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["test_examples"] == 8
    assert set(metrics["variants"]) == {"base", "few_shot", "fine_tuned"}
    spec = load_catalog(trained.parent)["spam"]
    assert metrics["training"]["settings"]["lora"]["r"] == spec.lora.r  # what the weights were trained with
    assert metrics["training"]["settings"]["training"]["learning_rate"] == spec.training.learning_rate
    for variant in metrics["variants"].values():
        assert 0.0 <= variant["accuracy"] <= 1.0 and "auroc" in variant
        assert sum(map(sum, variant["confusion"])) == 8
    assert {t["metric"] for t in metrics["targets"]} == {"accuracy", "f1", "auroc"}
    assert (trained / "confusion.png").stat().st_size > 0
    shots = [json.loads(line) for line in (trained / "few_shot.jsonl").read_text().splitlines()]
    assert len(shots) == metrics["few_shot_k"] > 0  # the in-context examples, from the training split
    chosen = metrics["few_shot"]  # the best of five seeded draws by validation F1
    assert chosen["draws"] == len(chosen["scores"]) == 5 and chosen["validation_examples"] > 0
    assert chosen["seed"] == max(chosen["scores"], key=lambda d: d["f1"])["seed"]
    data = trained.parent.parent / "SMSSpamCollection"
    assert metrics["split"]["source"] == f".../{data.parent.name}/SMSSpamCollection"  # no local folders
    assert metrics["split"]["source_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()


def test_the_model_card_has_hugging_face_front_matter_and_the_measured_table(trained, tiny_base):
    card = (trained / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: peft" in front and f"base_model: {tiny_base}" in front
    metrics = json.loads((trained / "metrics.json").read_text())
    fine = metrics["variants"]["fine_tuned"]["accuracy"]
    assert re.search(rf"\| accuracy \| [0-9.]+ \| [0-9.]+ \| {fine:.3f} \|", card)
    # a catalogue outside the project and another base than the spec's: every command the card gives
    # names them (copied as printed, they had named an unknown adapter or loaded the wrong base)
    assert f"adapterlab eval spam --catalog {trained.parent} --base-model {tiny_base} --eval-limit 8" in card
    assert f"adapterlab predict spam --catalog {trained.parent} --base-model {tiny_base} --input" in card
    # the Python snippet loads the same catalogue and base the commands name
    assert f'Runtime.local("{trained.parent.resolve()}", base="{tiny_base}", only=["spam"])' in card
    assert f'PeftModel.from_pretrained(base_model, "{trained}")' in card
    assert "Not for clinical decisions" not in card and "medical" not in front  # a spam filter: no medical tag
    assert "the best of 5 seeded draws by F1 of 'spam' on the validation split" in card
    assert f"read `{metrics['split']['source']}`, sha256 `{metrics['split']['source_sha256']}`" in card


def test_the_card_names_the_rows_skipped_with_their_lines_and_notes():
    from training.card import _rows_text

    split = {"rows": 160, "duplicates_removed": 3, "skipped": {"unknown_label": 10, "empty_text": 1},
             "skipped_lines": {"unknown_label": [201, 202], "empty_text": [7]},
             "notes": ["labels not in the spec: 'mixed'"]}
    assert _rows_text(split) == ("160 read, 3 duplicates removed; 10 skipped as unknown_label (first lines: 201, 202); "
                                 "1 skipped as empty_text (first lines: 7); labels not in the spec: 'mixed'")


def test_a_medical_adapters_card_says_not_for_clinical_decisions():
    from adapters.catalog import CATALOG_DIR

    for name in ("medquad", "oncology"):
        card = (CATALOG_DIR / name / "README.md").read_text()
        assert "**Not for clinical decisions**" in card and "medical" in card.split("---")[1]


def test_adapterlab_card_rewrites_the_card_from_metrics_after_the_spec_text_changes(trained, tmp_path, capsys):
    import shutil

    import yaml

    catalog = tmp_path / "catalog"
    shutil.copytree(trained.parent, catalog)
    spec_file = catalog / "spam" / "adapter.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    old_text, new_text = " ".join(spec["limitations"].split()), "Misjudges messages written in Welsh."
    spec_file.write_text(yaml.safe_dump({**spec, "limitations": new_text}, sort_keys=False))  # targets in order
    before = (catalog / "spam" / "README.md").read_text()
    assert old_text in before and new_text not in before

    assert main(["card", "spam", "--catalog", str(catalog), "--check"]) == 1
    assert (catalog / "spam" / "README.md").read_text() == before  # --check writes nothing
    assert main(["card", "spam", "--catalog", str(catalog)]) == 0
    assert main(["card", "spam", "--catalog", str(catalog), "--check"]) == 0
    after = (catalog / "spam" / "README.md").read_text()
    assert f"confidence.\n{new_text}\n" in after and old_text not in after
    # the rest is the measured card, unchanged but for the catalogue's folder, which moved
    assert after.replace(new_text, old_text).replace(str(catalog), str(trained.parent)) == before

    (catalog / "spam" / "metrics.json").unlink()
    capsys.readouterr()
    assert main(["card", "spam", "--catalog", str(catalog)]) == 2
    err = capsys.readouterr().err
    assert "metrics.json: not found" in err and "adapterlab eval spam" in err


class RecordingBackend:
    """Just enough of a backend to see the decoding settings evaluation asks for."""

    context_length = 4096

    def __init__(self):
        self.asked = []

    def render(self, messages):
        return "\n".join(m["content"] for m in messages)

    def literal(self, text):
        return text

    def count_tokens(self, text):
        return len(text.split())

    def over_budget(self, texts, budget):
        return [self.count_tokens(t) > budget for t in texts]

    def truncate(self, text, max_tokens, keep_end=0):
        return " ".join(text.split()[:max_tokens])

    def adapter_names(self):
        return ()

    def complete(self, adapter, prompts, params, batch_size=8):
        self.asked.append(params)
        return ["{}" for _ in prompts]


def test_the_card_shows_the_settings_the_weights_were_trained_with_and_a_spec_changed_since():
    """The card's training table came from the spec as it is now: after an edit and `adapterlab
    card`, it showed settings the weights were never trained with."""
    from training.card import card_text

    spec = load_catalog()["spam"]
    metrics = json.loads((spec.directory / "metrics.json").read_text())
    as_trained = {"training": {**dataclasses.asdict(spec.training), "learning_rate": 1e-3},
                  "lora": {**dataclasses.asdict(spec.lora), "target_modules": list(spec.lora.target_modules)}}
    metrics["training"] = {**metrics["training"], "settings": as_trained}
    card = card_text(spec, metrics, spec.directory)
    assert "| optimisation | lr 0.001, cosine" in card
    assert "⚠️ `adapter.yaml` has changed since these weights were trained (training.learning_rate)" in card
    metrics["training"]["settings"]["training"]["learning_rate"] = spec.training.learning_rate
    same = card_text(spec, metrics, spec.directory)
    assert "has changed since" not in same and f"| optimisation | lr {spec.training.learning_rate}, cosine" in same


def test_the_card_says_a_resumed_runs_time_is_the_resumed_part_only():
    """An audit's killed and resumed 40-step run read "2.47 s" in its card: the last process's time."""
    from training.card import card_text

    spec = load_catalog()["spam"]
    metrics = json.loads((spec.directory / "metrics.json").read_text())
    metrics["training"] = {**metrics["training"], "resumed_from": "runs/spam/checkpoint-30"}
    assert "the time of the run resumed from checkpoint-30 only)" in card_text(spec, metrics, spec.directory)
    metrics["training"]["resumed_from"] = None
    assert "resumed from" not in card_text(spec, metrics, spec.directory)


def test_the_card_says_evaluation_decodes_greedily_whatever_the_specs_temperature():
    """The card said evaluation sampled at the spec's temperature; Runtime.answer/extract are greedy."""
    from adapters.runtime import Runtime
    from adapters.spec import GenerationSpec
    from training.card import _decoding_text

    catalog = load_catalog()
    sampled = GenerationSpec(temperature=0.7, top_p=0.9, max_new_tokens=64)
    medquad = dataclasses.replace(catalog["medquad"], generation=sampled)
    oncology = dataclasses.replace(catalog["oncology"], generation=sampled)
    backend = RecordingBackend()
    runtime = Runtime(backend, {"medquad": medquad, "oncology": oncology})
    runtime.answer("medquad", ["What is gout?"], base=True)
    runtime.extract("oncology", ["Stage II melanoma."], base=True)
    assert [p.temperature for p in backend.asked] == [0.0, 0.0]  # what evaluation runs

    assert _decoding_text(medquad) == ("\n\nDecoding in evaluation: greedy, at most 64 new tokens. The app's "
                                       "default: sampled at temperature 0.7, top-p 0.9, with the same limits.")
    assert _decoding_text(oncology) == ("\n\nDecoding in evaluation and the app: greedy, at most 64 new tokens "
                                        "(extraction does not sample).")
    assert _decoding_text(catalog["medquad"]) == (  # the shipped card's line, greedy everywhere
        "\n\nDecoding in evaluation (and the app's default): greedy, at most 256 new tokens, never repeating "
        "a sequence of 6 tokens.")


def test_the_cards_one_go_command_evaluates_the_examples_the_card_reports():
    """MedQuAD's card reports 200 of 1,476 test pairs and said `adapterlab train medquad` alone
    reproduces it, which evaluates all 1,476."""
    from training.card import card_text

    spec = load_catalog()["medquad"]
    metrics = json.loads((spec.directory / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["test_examples"] < metrics["test_split_size"]
    card = card_text(spec, metrics, spec.directory)
    limit = f"--eval-limit {metrics['test_examples']}"
    assert f"adapterlab eval medquad {limit}\n" in card
    assert f"`adapterlab train medquad {limit}` alone trains and evaluates in one go" in card
    whole = card_text(spec, {**metrics, "test_examples": metrics["test_split_size"]}, spec.directory)
    assert "`adapterlab train medquad` alone trains and evaluates in one go" in whole and "--eval-limit" not in whole


@pytest.mark.parametrize("adapter", ["spam", "medquad", "oncology"])
def test_the_shipped_model_cards_are_generated_from_their_spec_and_metrics(adapter):
    from adapters.catalog import get_spec
    from training.card import card_text

    spec = get_spec(load_catalog(), adapter)
    metrics = json.loads((spec.directory / "metrics.json").read_text(encoding="utf-8"))
    assert (spec.directory / "README.md").read_text(encoding="utf-8") == card_text(spec, metrics, spec.directory), (
        f"adapters/{adapter}/README.md is stale: run `adapterlab card {adapter}` and commit it")


def test_the_trained_adapter_changes_what_the_runtime_predicts(trained, tiny_base):
    from adapters import Runtime

    runtime = Runtime.local(trained.parent, base=str(tiny_base), progress=False)
    texts = [SPAM[0].format(i=1000), HAM[0].format(i=1001)]
    tuned = runtime.classify("spam", texts)
    base = runtime.classify("spam", texts, base=True)
    assert [r.label for r in tuned] == ["spam", "ham"]
    assert tuned[0].probs["spam"] > base[0].probs["spam"]


def test_length_grouped_batching_is_selected_by_the_spec(catalog, tiny_base, tmp_path):
    spec_file = catalog / "spam" / "adapter.yaml"
    spec_file.write_text(spec_file.read_text().replace("training: {", "training: {batching: length_grouped, ", 1))
    data = write_sms_collection(tmp_path / "SMSSpamCollection")

    rc = main(train_args(catalog, tiny_base, data, tmp_path / "runs", "--max-steps", "3", "--no-eval"))

    assert rc == 0
    result = json.loads((catalog / "spam" / "train_result.json").read_text())
    assert result["steps"] == 3 and result["batching"] == "length-grouped batches, padded per batch"


def test_the_progress_bar_shows_loss_validation_loss_and_tokens_per_second(catalog, tiny_base, tmp_path, capsys):
    set_training(catalog, "spam", learning_rate="5.0e-3", eval_steps="2")
    data = write_sms_collection(tmp_path / "SMSSpamCollection")
    assert main(train_args(catalog, tiny_base, data, tmp_path / "runs", "--max-steps", "4", "--no-eval")) == 0
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    final = [line for line in bar if re.search(r"\b4/4\b", line)][-1]
    assert re.search(r"loss=\d[\d.e+-]*, tok/s=[\d,]+, val_loss=\d", final), final


def test_two_data_parallel_processes_train_one_adapter_and_evaluate_it_once(catalog, tiny_base, tmp_path):
    """`torchrun --nproc_per_node 2` (what `accelerate launch` starts on several GPUs), here on the CPU
    with gloo: each step trains on a batch per process, and only rank 0 writes and evaluates."""
    set_training(catalog, "spam", learning_rate="5.0e-3")
    data = write_sms_collection(tmp_path / "SMSSpamCollection")
    args = train_args(catalog, tiny_base, data, tmp_path / "runs-ddp", "--max-steps", "4", "--eval-limit", "4")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "training.cli"]
    proc = subprocess.run([*launch, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          # no GPU in sight: on a GPU machine accelerate's barrier would name one per rank
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert output.count("data: ") == 1 and output.count("wrote ") == 1  # one report, one evaluation
    assert "find_unused_parameters=True" not in output  # no extra graph traversal per step
    assert "destroy_process_group" not in output  # every process left the group
    parallel = json.loads((catalog / "spam" / "train_result.json").read_text())
    assert parallel["processes"] == 2 and parallel["steps"] == 4
    assert "2 × cpu" in (catalog / "spam" / "README.md").read_text()

    assert main(train_args(catalog, tiny_base, data, tmp_path / "runs-one", "--max-steps", "4", "--no-eval")) == 0
    single = json.loads((catalog / "spam" / "train_result.json").read_text())
    assert single["processes"] == 1
    assert parallel["train_tokens"] > 1.5 * single["train_tokens"]  # two batches a step, not one


def test_a_run_that_trained_no_step_leaves_the_adapter_as_it_was(trained, tiny_base, tmp_path, monkeypatch, capsys):
    """0 epochs once replaced a trained adapter with untrained weights, and said so with status 0.
    The spec now refuses that (tests/test_spec.py); whatever else makes a run end with no step must
    not replace the weights either."""
    import shutil

    import trl

    catalog = tmp_path / "catalog"
    shutil.copytree(trained.parent, catalog)
    before = {p.name: p.read_bytes() for p in (catalog / "spam").iterdir() if p.is_file()}
    monkeypatch.setattr(trl.SFTTrainer, "train", lambda self, **kw: None)
    data = trained.parent.parent / "SMSSpamCollection"
    assert main(train_args(catalog, tiny_base, data, tmp_path / "runs", "--no-eval")) == 2
    assert "spam: training ran no step" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (catalog / "spam").iterdir() if p.is_file()} == before


def test_a_killed_run_resumes_from_its_last_checkpoint(catalog, tiny_base, tmp_path, capsys):
    set_training(catalog, "spam", learning_rate="5.0e-3", eval_steps="2", early_stopping_patience="100")
    data = write_sms_collection(tmp_path / "SMSSpamCollection")
    runs = tmp_path / "runs"
    args = train_args(catalog, tiny_base, data, runs, "--max-steps", "30", "--no-eval")
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not list(runs.glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (catalog / "spam" / "adapter_model.safetensors").exists()  # killed before the end

    capsys.readouterr()
    assert main(args) == 0
    result = json.loads((catalog / "spam" / "train_result.json").read_text())
    assert result["resumed_from"] and Path(result["resumed_from"]).parent == runs
    resumed_at = int(result["resumed_from"].rsplit("-", 1)[1])
    assert f"train: resuming from {result['resumed_from']} (step {resumed_at})" in capsys.readouterr().err
    assert 2 <= resumed_at < 30 and result["steps"] == 30
    logged = [int(row.split(",")[0]) for row in (catalog / "spam" / "training_log.csv").read_text().splitlines()[1:]]
    assert min(logged) <= 2 and max(logged) == 30  # the log before the kill was kept


def test_a_second_run_of_a_run_folder_in_use_is_refused_and_deletes_nothing(catalog, tiny_base, tmp_path, capsys):
    """An audit started a second `train spam` while the first ran: it took the first's live
    checkpoints for another run's and deleted them, and the two runs' weights overwrote each other."""
    from filelock import FileLock

    data = write_sms_collection(tmp_path / "SMSSpamCollection")
    runs = tmp_path / "runs"
    (runs / "checkpoint-4").mkdir(parents=True)
    (runs / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (runs / "fingerprint").write_text("the first run's")
    with FileLock(str(runs) + ".lock"):  # as the first run holds it
        assert main(train_args(catalog, tiny_base, data, runs, "--max-steps", "2", "--no-eval")) == 2
    assert f"another `adapterlab train` is using {runs}" in capsys.readouterr().err
    assert (runs / "checkpoint-4" / "trainer_state.json").is_file()
    assert not (catalog / "spam" / "adapter_model.safetensors").exists()
    assert main(train_args(catalog, tiny_base, data, runs, "--max-steps", "2", "--no-eval")) == 0  # once it ended


def test_checkpoints_of_another_configuration_are_not_resumed(tmp_path):
    from training.train import _checkpoint_to_resume

    run = tmp_path / "runs" / "spam"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (run / "fingerprint").write_text("old-config")
    assert _checkpoint_to_resume(run, "old-config", restart=False).endswith("checkpoint-4")
    assert _checkpoint_to_resume(run, "new-config", restart=False) is None
    assert not run.exists()


@pytest.mark.parametrize("restart", [False, True])
def test_a_run_folder_holding_other_files_is_refused_not_deleted(catalog, tiny_base, tmp_path, capsys, restart):
    folder = tmp_path / "precious"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("important")
    data = write_sms_collection(tmp_path / "SMSSpamCollection")
    args = train_args(catalog, tiny_base, data, folder, "--max-steps", "2", "--no-eval", *(["--restart"] * restart))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"run folder {folder}: holds files that no training run made" in err
    assert "data:" not in err  # refused before the data was read
    assert (folder / "notes.txt").read_text() == "important" and (folder / "sub").is_dir()


def test_starting_afresh_deletes_what_runs_wrote_and_nothing_else(tmp_path):
    from training.train import FINGERPRINT_FILE, _checkpoint_to_resume

    run = tmp_path / "run"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (run / FINGERPRINT_FILE).write_text("old-config")
    (run / "notes.txt").write_text("mine")  # put there after the run made the folder
    (run / "my-plots").mkdir()
    assert _checkpoint_to_resume(run, "new-config", restart=False) is None
    assert sorted(p.name for p in run.iterdir()) == ["my-plots", "notes.txt"]


def test_a_finished_run_leaves_no_checkpoints_and_a_second_train_trains_again(catalog, tiny_base, tmp_path, capsys):
    data = write_sms_collection(tmp_path / "SMSSpamCollection")
    args = train_args(catalog, tiny_base, data, tmp_path / "runs", "--max-steps", "2", "--no-eval")
    assert main(args) == 0
    assert not (tmp_path / "runs").exists()  # its result is the adapter
    capsys.readouterr()
    assert main(args) == 0  # resuming a finished run had trained a step past --max-steps
    result = json.loads((catalog / "spam" / "train_result.json").read_text())
    assert result["steps"] == 2 and result["resumed_from"] is None
    assert "resuming" not in capsys.readouterr().err


def test_each_catalogue_keeps_its_own_runs(tmp_path):
    from adapters.catalog import CATALOG_DIR
    from training.train import RUNS_DIR, default_run_dir

    assert default_run_dir(load_catalog(CATALOG_DIR)["spam"]) == RUNS_DIR / "spam"
    copy_spec(CATALOG_DIR / "spam" / "adapter.yaml", tmp_path / "mine" / "spam")
    assert default_run_dir(load_catalog(tmp_path / "mine")["spam"]) == (tmp_path / "mine").resolve() / ".runs" / "spam"


def test_another_data_file_does_not_resume_the_checkpoints_of_the_first(catalog, tmp_path):
    from training.data import load_splits
    from training.train import run_fingerprint

    spec = load_catalog(catalog)["spam"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = load_splits(spec, path=write_sms_collection(tmp_path / "a" / "SMSSpamCollection"))
    second = load_splits(spec, path=write_sms_collection(tmp_path / "b" / "SMSSpamCollection", n=60))
    assert run_fingerprint(spec, "base", {}, first) == run_fingerprint(spec, "base", {}, first)
    assert run_fingerprint(spec, "base", {}, first) != run_fingerprint(spec, "base", {}, second)


def test_editing_what_training_never_reads_keeps_the_checkpoints_of_a_killed_run(catalog):
    from training.train import run_fingerprint

    spec_file = catalog / "spam" / "adapter.yaml"
    original = spec_file.read_text()
    before = run_fingerprint(load_catalog(catalog)["spam"], "base", {"max_steps": 30})
    for old, new in (("title: Spam check", "title: Spam filter"), ("A high probability", "A high score"),
                     ("targets: {accuracy: 0.985,", "targets: {accuracy: 0.99,"), ("max_input_tokens: 256", "")):
        assert old in original
        spec_file.write_text(original.replace(old, new))
        assert run_fingerprint(load_catalog(catalog)["spam"], "base", {"max_steps": 30}) == before, old
    for old, new in (("r: 16", "r: 8"), ("Message: {text}", "SMS: {text}"), ("labels: [ham, spam]", "labels: [spam, ham]")):
        assert old in original
        spec_file.write_text(original.replace(old, new))
        assert run_fingerprint(load_catalog(catalog)["spam"], "base", {"max_steps": 30}) != before, old


def test_training_data_of_one_label_is_refused_before_the_model_loads(catalog, tiny_base, tmp_path, capsys):
    data = tmp_path / "SMSSpamCollection"
    data.write_text("".join(f"ham\tsee you at dinner {i}\n" for i in range(60)))
    assert main(train_args(catalog, tiny_base, data, tmp_path / "runs", "--max-steps", "2", "--no-eval")) == 2
    err = capsys.readouterr().err
    assert "the training split holds only 'ham' of 'ham', 'spam'" in err and "no training example of 'spam'" in err


def test_a_max_seq_length_that_leaves_no_answer_token_is_refused(catalog, tiny_base, tmp_path, capsys):
    set_training(catalog, "spam", max_seq_length="16")  # the spam prompt alone is longer
    data = write_sms_collection(tmp_path / "SMSSpamCollection")
    assert main(train_args(catalog, tiny_base, data, tmp_path / "runs", "--max-steps", "2", "--no-eval")) == 2
    err = capsys.readouterr().err
    assert "training.max_seq_length is 16 tokens, and every training prompt is that long or longer" in err
    assert not (catalog / "spam" / "adapter_model.safetensors").exists()


def test_a_target_module_the_base_lacks_is_refused_with_the_spec_and_the_names_it_has(catalog, tiny_base, tmp_path,
                                                                                     capsys):
    """PEFT refuses target_modules only when none matches: a typo beside valid names trained without it."""
    spec = catalog / "spam" / "adapter.yaml"
    spec.write_text(spec.read_text().replace("target_modules: [q_proj,", "target_modules: [q_prj,"))
    data = write_sms_collection(tmp_path / "SMSSpamCollection")
    assert main(train_args(catalog, tiny_base, data, tmp_path / "runs", "--max-steps", "2", "--no-eval")) == 2
    err = capsys.readouterr().err
    assert f"{spec}: lora.target_modules: 'q_prj' names no module of" in err and "q_proj" in err
    assert not (catalog / "spam" / "adapter_model.safetensors").exists()


def test_answers_cut_by_max_seq_length_are_counted(tiny_base):
    from transformers import AutoTokenizer

    from training.train import check_answers_fit

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    rows = [{"prompt": "short prompt ", "completion": "ok"},
            {"prompt": "a prompt ", "completion": "an answer " * 40},
            {"prompt": "a very long prompt " * 40, "completion": "ok"}]
    assert check_answers_fit(tokenizer, rows[:1], 64, "spec") is None
    note = check_answers_fit(tokenizer, rows, 64, "spec")
    assert note == ("1 of 3 training examples have a prompt of 64 tokens or more and train nothing; "
                    "1 of 3 have their answer cut at 64 tokens (training.max_seq_length)")


def test_a_checkpoint_cut_short_by_a_kill_is_not_resumed(tmp_path):
    from training.train import _checkpoint_to_resume

    run = tmp_path / "runs" / "spam"
    for step, state in [(4, '{"global_step": 4}'), (6, None), (8, '{"global_st')]:
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"weights")
        if state is not None:
            (run / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (run / "fingerprint").write_text("config")
    assert _checkpoint_to_resume(run, "config", restart=False) == str(run / "checkpoint-4")
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4"]


def test_a_save_killed_half_way_leaves_the_previous_adapter_loadable(trained, tiny_base, tmp_path, monkeypatch):
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import training.train as train_module

    out = tmp_path / "spam"
    shutil.copytree(trained, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out, is_trainable=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(1.0)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(train_module, "plot_loss", killed)  # after the weights went to the staging folder
    spec = load_catalog(trained.parent)["spam"]
    result = train_module.TrainResult(**json.loads((trained / "train_result.json").read_text()))
    with pytest.raises(KeyboardInterrupt):
        train_module.write_adapter(model, spec, out, str(tiny_base), [], result)

    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out)


def test_a_save_killed_just_before_its_files_move_in_leaves_the_old_adapter_whole(trained, tiny_base, tmp_path,
                                                                                 monkeypatch):
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import adapters.files as files
    import training.train as train_module

    catalog = tmp_path / "catalog"
    shutil.copytree(trained.parent, catalog)
    out = catalog / "spam"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"threshold.json", "metrics.json", "README.md"} <= set(before)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out, is_trainable=True)
    real_write = files.write_text_atomic

    def killed_at_the_marker(path, text):
        if Path(path).name == files.STAGED_MARKER:
            raise KeyboardInterrupt("killed before the staging folder was marked complete")
        return real_write(path, text)

    monkeypatch.setattr(files, "write_text_atomic", killed_at_the_marker)
    spec = load_catalog(catalog)["spam"]
    result = train_module.TrainResult(**json.loads((trained / "train_result.json").read_text()))
    with pytest.raises(KeyboardInterrupt):
        train_module.write_adapter(model, spec, out, str(tiny_base), [], dataclasses.replace(result, steps=999))
    monkeypatch.undo()

    load_catalog(catalog)  # discards the staging folder, never completed
    assert not list(out.glob(".staging-*"))
    # the old weights keep their decision threshold, metrics and card: nothing of the new run landed
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_kill_between_weights_and_config_is_finished_by_the_next_catalogue_read(trained, tiny_base, tmp_path,
                                                                                   monkeypatch):
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import adapters.files as files
    import training.train as train_module

    catalog = tmp_path / "catalog"
    shutil.copytree(trained.parent, catalog)
    out = catalog / "spam"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out, is_trainable=True)
    real_replace, moved = os.replace, []

    def killed_after_the_weights(src, dst):
        staged = ".staging-" in str(src) and ".staging-" not in str(dst)  # a file moving out of it
        if staged and moved:
            raise KeyboardInterrupt("killed between the weights and their config")
        real_replace(src, dst)
        moved.extend([Path(dst).name] if staged else [])

    monkeypatch.setattr(files.os, "replace", killed_after_the_weights)
    spec = load_catalog(catalog)["spam"]
    result = train_module.TrainResult(**json.loads((trained / "train_result.json").read_text()))
    new_result = json.dumps(dataclasses.asdict(dataclasses.replace(result, steps=999)), indent=2) + "\n"
    with pytest.raises(KeyboardInterrupt):
        train_module.write_adapter(model, spec, out, str(tiny_base), [], dataclasses.replace(result, steps=999))
    monkeypatch.undo()
    assert moved == ["adapter_model.safetensors"] and list(out.glob(".staging-*"))  # new weights, old rest

    load_catalog(catalog)  # what every command does first
    assert not list(out.glob(".staging-*"))
    assert (out / "train_result.json").read_text() == new_result  # the rest of the new files moved in
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out)


def test_a_staging_folder_never_completed_is_discarded(tmp_path):
    from adapters.files import finish_staged_writes

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".staging-{dead.pid}").mkdir()
    (tmp_path / f".staging-{dead.pid}" / "adapter_model.safetensors").write_bytes(b"half")
    (tmp_path / ".staging-1").mkdir()  # pid 1 runs: a save in progress is left alone
    finish_staged_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging-1"]


def test_the_spam_threshold_is_tuned_on_validation_and_used_by_the_runtime(trained, tiny_base):
    from adapters import Runtime

    metrics = json.loads((trained / "metrics.json").read_text())
    stored = json.loads((trained / "threshold.json").read_text())
    assert stored["split"] == "validation" and stored["label"] == "spam" and 0 < stored["threshold"] < 1
    assert metrics["decision"] == stored
    fine = metrics["variants"]["fine_tuned"]
    assert fine["threshold"] == stored["threshold"] and "f1" in fine["at_argmax"]
    assert "threshold.json" in (trained / "README.md").read_text()

    runtime = Runtime.local(trained.parent, base=str(tiny_base), progress=False)
    text = [SPAM[0].format(i=2000)]
    p_spam = runtime.classify("spam", text)[0].probs["spam"]
    for threshold, label in ((min(0.999999, p_spam + 1e-4), "ham"), (max(1e-6, p_spam - 1e-4), "spam")):
        (trained / "threshold.json").write_text(json.dumps({**stored, "threshold": threshold}))
        tuned = runtime.classify("spam", text)[0]
        assert (tuned.label, tuned.threshold) == (label, threshold)
        assert runtime.classify("spam", text, base=True)[0].threshold is None  # the base takes the argmax
    for broken, problem in (({**stored, "threshold": "high"}, "needs a numeric 'threshold'"),
                            ({**stored, "threshold": 1.5}, "must be between 0 and 1")):
        (trained / "threshold.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=rf"threshold\.json: .*{problem}"):
            runtime.classify("spam", text)
    (trained / "threshold.json").write_text(json.dumps(stored))


def test_new_weights_drop_the_threshold_metrics_and_card_numbers_of_the_old_ones(trained, tiny_base, tmp_path):
    """`train --no-eval` (or an evaluation that never finished) must not leave the replaced weights'
    metrics.json, plots and card beside new weights, where the app's page and `results` read them."""
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import training.train as train_module

    out = tmp_path / "spam"
    shutil.copytree(trained, out)
    assert all((out / name).is_file() for name in ("threshold.json", "metrics.json", "confusion.png"))
    assert "| accuracy |" in (out / "README.md").read_text()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), out)
    result = train_module.TrainResult(**json.loads((trained / "train_result.json").read_text()))
    train_module.write_adapter(model, load_catalog(trained.parent)["spam"], out, str(tiny_base), [], result)
    assert (out / "adapter_model.safetensors").is_file()
    assert not any((out / name).exists() for name in ("threshold.json", "metrics.json", "confusion.png"))
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: peft" in card
    assert "**Not evaluated yet.**" in card and f"({result.steps} steps" in card and "| accuracy |" not in card


def test_eval_measures_without_losing_what_the_catalogue_holds(trained, tiny_base, tmp_path, capsys):
    """`adapterlab eval` on an adapter that has metrics: a smaller evaluation does not replace them
    unless told, and the stored threshold is used as the app uses it, never re-tuned."""
    import shutil

    catalog = tmp_path / "catalog"
    shutil.copytree(trained.parent, catalog)
    folder = catalog / "spam"
    data = trained.parent.parent / "SMSSpamCollection"
    command = ["eval", "spam", "--catalog", str(catalog), "--base-model", str(tiny_base), "--data", str(data),
               "--device", "cpu"]
    kept = {name: (folder / name).read_text() for name in ("metrics.json", "README.md", "threshold.json")}
    capsys.readouterr()

    assert main([*command, "--eval-limit", "4"]) == 2  # 8 test examples are recorded
    err = capsys.readouterr().err
    assert "metrics.json holds base, few_shot, fine_tuned on 8 test examples" in err
    assert "(base, few_shot, fine_tuned on 4)" in err and "--output DIR" in err and "--replace" in err
    assert main([*command, "--eval-limit", "8", "--variants", "fine_tuned"]) == 2
    assert main([*command, "--variants", "fine-tuned"]) == 2
    assert "--variants: 'fine-tuned'; choose from base, few_shot, fine_tuned" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*command, "--eval-limit", "0"])
    assert {name: (folder / name).read_text() for name in kept} == kept

    a_file = tmp_path / "a-file.jsonl"
    a_file.write_text("{}\n")
    capsys.readouterr()
    for output, said in ((a_file, "is a file; give a folder"), (a_file / "sub", f"is under {a_file}, a file")):
        assert main([*command, "--eval-limit", "4", "--variants", "fine_tuned", "--output", str(output)]) == 2
        assert f"--output {output}: {said}" in capsys.readouterr().err  # said before the evaluation ran
    assert main(["train", "spam", "--catalog", str(catalog), "--base-model", str(tiny_base), "--data", str(data),
                 "--device", "cpu", "--run-dir", str(a_file)]) == 2
    assert f"--run-dir {a_file}: is a file" in capsys.readouterr().err

    quick = tmp_path / "quick"
    assert main([*command, "--eval-limit", "4", "--variants", "fine_tuned", "--output", str(quick)]) == 0
    assert json.loads((quick / "metrics.json").read_text())["test_examples"] == 4
    assert (quick / "README.md").is_file() and (quick / "confusion.png").is_file()
    assert {name: (folder / name).read_text() for name in kept} == kept

    stored = {**json.loads(kept["threshold.json"]), "threshold": 0.4242}
    (folder / "threshold.json").write_text(json.dumps(stored))
    assert main([*command, "--eval-limit", "8"]) == 0  # as much as recorded: it replaces the metrics
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["decision"]["threshold"] == metrics["variants"]["fine_tuned"]["threshold"] == 0.4242
    assert json.loads((folder / "threshold.json").read_text()) == stored

    capsys.readouterr()
    (folder / "train_result.json").write_text("{broken")  # it had given a JSON error that named no file
    assert main([*command, "--eval-limit", "4", "--variants", "fine_tuned", "--output", str(tmp_path / "q2")]) == 2
    assert f"{folder / 'train_result.json'}: not a training record this tool wrote" in capsys.readouterr().err
    for weights in folder.glob("adapter_model.*"):
        weights.unlink()  # only the fine-tuned variant of an untrained adapter: it had written an empty card
    assert main([*command, "--variants", "fine_tuned", "--output", str(tmp_path / "q3")]) == 2
    assert "has no trained weights" in capsys.readouterr().err and not (tmp_path / "q3").exists()


def test_eval_on_a_held_out_file_writes_its_own_metrics_and_card(trained, tiny_base, tmp_path, capsys):
    """`adapterlab eval spam --test-data FILE --output DIR`: the shipped adapter measured on someone's
    held-out file, its texts that training saw left out, the catalogue's own metrics untouched."""
    import shutil

    catalog = tmp_path / "catalog"
    shutil.copytree(trained.parent, catalog)
    data = trained.parent.parent / "SMSSpamCollection"
    kept = {name: (catalog / "spam" / name).read_text() for name in ("metrics.json", "README.md")}
    from training.data import load_splits

    splits = load_splits(load_catalog(catalog)["spam"], data)
    seen = [f"{ex.target}\t{ex.input}" for ex in (*splits.train, *splits.validation)]
    held_out = tmp_path / "held-out.tsv"
    held_out.write_text(f"{seen[0]}\nham\tare we still on for lunch\nspam\tclaim your free ringtone now\n")
    command = ["eval", "spam", "--catalog", str(catalog), "--base-model", str(tiny_base), "--data", str(data),
               "--device", "cpu", "--test-data", str(held_out)]
    capsys.readouterr()
    assert main(command) == 2  # no --output: the catalogue's metrics would be replaced by another test set's
    assert "--test-data: give --output DIR" in capsys.readouterr().err
    out = tmp_path / "held-out-eval"
    assert main([*command, "--output", str(out)]) == 0
    err = capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    test_data = metrics["split"]["test_data"]
    assert test_data["in_training_or_validation"] == {"same_text": 1, "near_duplicates": 0}
    assert metrics["test_examples"] == 2 == test_data["examples"]
    assert f"test data: {held_out}: 3 rows, 2 evaluated (0 duplicates, 1 also in the training" in err
    card = (out / "README.md").read_text()
    assert "Test file `.../" in card and f"--test-data .../{held_out.parent.name}/held-out.tsv" in card
    assert {name: (catalog / "spam" / name).read_text() for name in kept} == kept
    everything_seen = tmp_path / "seen.tsv"
    everything_seen.write_text("\n".join(seen) + "\n")
    assert main([*command[:-1], str(everything_seen), "--output", str(tmp_path / "none")]) == 2
    assert "no example left to evaluate" in capsys.readouterr().err


def test_the_loss_plot_of_a_run_that_logged_no_loss_says_so_without_a_warning(tmp_path):
    import warnings

    from training.train import plot_loss

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned "No artists with labels found" here
        plot_loss(tmp_path / "loss.png", [], "spam")
        plot_loss(tmp_path / "logged.png", [{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.5}], "spam")
    assert (tmp_path / "loss.png").stat().st_size > 0 and (tmp_path / "logged.png").stat().st_size > 0


@pytest.mark.parametrize("command", ["train", "eval"])
def test_data_too_small_for_a_split_is_named_before_the_model_loads(catalog, tiny_base, tmp_path, capsys,
                                                                    monkeypatch, command):
    import training.train
    from adapters.runtime import Runtime

    monkeypatch.setattr(training.train, "load_base", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    data = write_sms_collection(tmp_path / "SMSSpamCollection", n=3)
    argv = train_args(catalog, tiny_base, data, tmp_path / "runs")
    if command == "eval":
        argv = ["eval", *argv[1:argv.index("--run-dir")]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"adapterlab: error: {data}: 3 usable examples split into train 3, validation 0, test 0" in err
    assert ("early stopping needs validation examples; evaluation needs test examples" if command == "train"
            else "evaluation needs test examples") in err
    assert "Traceback" not in err


def test_the_data_line_names_the_lines_it_skipped(catalog, tiny_base, tmp_path, capsys, monkeypatch):
    from adapters.runtime import Runtime

    monkeypatch.setattr(Runtime, "local", lambda *a, **k: pytest.fail("the model was loaded"))
    data = write_sms_collection(tmp_path / "SMSSpamCollection", n=3)
    data.write_text(data.read_text() + "a line without a tab\n", encoding="utf-8")
    argv = train_args(catalog, tiny_base, data, tmp_path / "runs")
    assert main(["eval", *argv[1:argv.index("--run-dir")]]) == 2  # too small: stops before the model
    err = capsys.readouterr().err
    assert "skipped 1 malformed_row (first lines: 4), labels {" in err  # a classifier's labels per split
    fields = load_catalog(catalog)["oncology"].fields
    onc = tmp_path / "onc.jsonl"
    onc.write_text("".join(json.dumps({"input": f"melanoma case {i}", "output": dict.fromkeys(fields)}) + "\n"
                           for i in range(3)))
    assert main(["eval", "oncology", "--catalog", str(catalog), "--data", str(onc)]) == 2  # too small too
    data_line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("data: "))
    assert "labels" not in data_line  # an extraction has none ("labels None")
