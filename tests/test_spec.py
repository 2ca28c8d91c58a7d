"""Adapter specs: the real catalogue loads as documented, and every malformed spec is refused with
an error naming the file and the dotted field, so a typo is found at load time, not mid-training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from adapters.catalog import CATALOG_DIR, load_catalog
from adapters.spec import AdapterSpec, SpecError, load_spec

ONCOLOGY_FIELDS = ("cancer_type", "stage", "gene_mutation", "biomarker", "treatment", "response",
                   "metastasis_site")


def real_spec(name: str) -> dict:
    """The raw YAML of one shipped adapter, as a dict to break in a test."""
    return yaml.safe_load((CATALOG_DIR / name / "adapter.yaml").read_text(encoding="utf-8"))


def write_spec(tmp_path: Path, content: dict | str, name: str = "demo") -> Path:
    path = tmp_path / name / "adapter.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False),
                    encoding="utf-8")
    return path


def refused(path: Path, field: str) -> str:
    """Load ``path`` expecting a SpecError that names the file and then ``field``; the message."""
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert re.search(rf"(^|: ){re.escape(field)}: ", message[len(str(path)):]), message
    return message


# --- the shipped catalogue -----------------------------------------------------------------------

def test_the_catalogue_holds_the_three_documented_adapters():
    specs = load_catalog()
    assert sorted(specs) == ["medquad", "oncology", "spam"]
    assert {name: s.task for name, s in specs.items()} == {
        "spam": "classify", "medquad": "generate", "oncology": "extract"}
    for name, spec in specs.items():
        assert isinstance(spec, AdapterSpec)
        assert spec.name == name == spec.directory.name
        assert "{text}" in spec.prompt.user_template
        assert spec.prompt.system.strip() and spec.title.strip()


def test_spam_labels_are_ham_and_spam():
    spec = load_catalog()["spam"]
    assert spec.labels == ("ham", "spam")
    assert spec.fields == ()


def test_oncology_extracts_the_seven_fields_in_order():
    spec = load_catalog()["oncology"]
    assert spec.fields == ONCOLOGY_FIELDS
    assert spec.labels == ()
    # the system prompt promises the model exactly the keys the parser keeps
    for field in ONCOLOGY_FIELDS:
        assert field in spec.prompt.system


def test_medquad_is_a_generate_adapter_without_labels_or_fields():
    spec = load_catalog()["medquad"]
    assert spec.labels == () and spec.fields == ()
    assert spec.generation.temperature == 0.0 and spec.generation.max_new_tokens == 256


def test_nested_sections_become_typed_values():
    spec = load_catalog()["spam"]
    assert spec.lora.r == 16 and isinstance(spec.lora.dropout, float)
    assert spec.lora.target_modules[:4] == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert isinstance(spec.training.epochs, float)  # `epochs: 2` in YAML, a float in the spec
    assert spec.data.split.validation == 0.1 and spec.data.split.test == 0.15


def test_a_spec_loads_from_its_folder_or_its_file_and_is_named_after_the_folder(tmp_path):
    path = write_spec(tmp_path, real_spec("spam"), name="my-spam")
    assert load_spec(path.parent) == load_spec(path)
    assert load_spec(path).name == "my-spam"
    assert load_spec(path).directory == path.parent


def test_untrained_adapters_have_no_weights(catalog):
    assert not any(spec.has_weights for spec in load_catalog(catalog).values())


def test_a_copy_of_an_unchanged_spec_loads_equal_apart_from_its_folder(tmp_path):
    original = load_catalog()["oncology"]
    copy = load_spec(write_spec(tmp_path, real_spec("oncology"), name="oncology"))
    assert copy.fields == original.fields and copy.prompt == original.prompt
    assert copy.lora == original.lora and copy.training == original.training


# --- malformed specs: the error names the file and the field ---------------------------------

def test_missing_required_field(tmp_path):
    raw = real_spec("spam")
    del raw["title"]
    assert "required field is missing" in refused(write_spec(tmp_path, raw), "title")


def test_missing_required_nested_field(tmp_path):
    raw = real_spec("spam")
    del raw["prompt"]["system"]
    assert "required field is missing" in refused(write_spec(tmp_path, raw), "prompt.system")


def test_wrong_type_names_the_field_and_the_value(tmp_path):
    raw = real_spec("spam")
    raw["lora"]["r"] = "sixteen"
    message = refused(write_spec(tmp_path, raw), "lora.r")
    assert "expected an integer" in message and "'sixteen'" in message


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("training", "learning_rate", "fast", "expected a number"),
    ("training", "batch_size", 16.5, "expected an integer"),
    ("lora", "r", True, "expected an integer"),  # YAML `yes` is not a rank
    ("lora", "target_modules", "q_proj", "expected a list"),
    ("prompt", "system", "   ", "expected a non-empty string"),
    ("training", "batching", "bucketed", "one of 'packed', 'length_grouped'"),
])
def test_more_wrong_types(tmp_path, section, key, value, expected):
    raw = real_spec("spam")
    raw[section][key] = value
    assert expected in refused(write_spec(tmp_path, raw), f"{section}.{key}")


@pytest.mark.parametrize(("written", "value"), [("2e-4", 2e-4), ("5.0e4", 5.0e4), ("1E-3", 1e-3), ("+3e-4", 3e-4)])
def test_a_number_with_an_exponent_but_no_dot_or_sign_is_a_number(tmp_path, written, value):
    # YAML 1.1 (PyYAML) reads 2e-4 as text; a spec reads it as YAML 1.2 and people do
    text = (CATALOG_DIR / "spam" / "adapter.yaml").read_text(encoding="utf-8")
    text, n = re.subn(r"learning_rate: [^,}]+", f"learning_rate: {written}", text)
    assert n == 1
    assert load_spec(write_spec(tmp_path, text)).training.learning_rate == value


def test_a_quoted_exponent_is_still_text(tmp_path):
    text = (CATALOG_DIR / "spam" / "adapter.yaml").read_text(encoding="utf-8")
    text = re.sub(r"learning_rate: [^,}]+", "learning_rate: '2e-4'", text)
    assert "expected a number, got '2e-4'" in refused(write_spec(tmp_path, text), "training.learning_rate")


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_training_seed_numpy_cannot_take_is_refused(tmp_path, seed):
    raw = real_spec("spam")
    raw["training"]["seed"] = seed
    assert f"must be in [0, 2**32 - 1], got {seed}" in refused(write_spec(tmp_path, raw), "training.seed")


def test_compiled_layers_are_refused_for_qlora(tmp_path):
    raw = real_spec("spam")
    raw["training"].update(method="qlora", compile=True)
    assert "method: lora" in refused(write_spec(tmp_path, raw), "training.compile")


def test_wrong_type_inside_a_list_names_the_index(tmp_path):
    raw = real_spec("spam")
    raw["labels"] = ["ham", 7]
    assert "expected a non-empty string" in refused(write_spec(tmp_path, raw), "labels[1]")


def test_a_section_that_is_not_a_mapping(tmp_path):
    raw = real_spec("spam")
    raw["lora"] = 16
    assert "expected a mapping" in refused(write_spec(tmp_path, raw), "lora")


def test_an_empty_section_says_it_is_empty(tmp_path):
    raw = real_spec("spam")
    raw["lora"] = None  # `lora: ~` or `lora:` with nothing under it
    message = refused(write_spec(tmp_path, raw), "lora")
    assert message.endswith("expected a mapping, got nothing (an empty value)")


def test_a_spec_that_is_not_utf8_is_located_by_line_and_column(tmp_path):
    text = (CATALOG_DIR / "spam" / "adapter.yaml").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    data = "".join(lines[:3]).encode() + b"# caf\xe9 \xe9\n" + "".join(lines[3:]).encode()
    path = tmp_path / "demo" / "adapter.yaml"
    path.parent.mkdir()
    path.write_bytes(data)  # Latin-1 'é' in a comment on line 4
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: line 4, column 6: not UTF-8 (byte 0xe9); save the spec as UTF-8"


def test_unknown_top_level_field_is_a_typo_not_ignored(tmp_path):
    raw = real_spec("spam")
    raw["lables"] = raw.pop("labels")
    message = refused(write_spec(tmp_path, raw), "lables")
    assert "unknown field" in message and "labels" in message  # the known names help spot the typo


def test_a_misspelt_base_model_is_named_not_tried_as_a_hub_id(tmp_path):
    """A near miss of a known base had been taken as a Hub id, and the trained adapter then reported
    as trained on another base ("adapterlab train spam"), which suggested retraining."""
    raw = real_spec("spam")
    raw["base_model"] = "smollm2-135m-instrct"
    assert "did you mean 'smollm2-135m-instruct'?" in refused(write_spec(tmp_path, raw), "base_model")
    raw["base_model"] = "HuggingFaceTB/SmolLM2-360M-Instruct"  # a Hub id: taken as written
    assert load_spec(write_spec(tmp_path, raw, name="hub")).base_model == raw["base_model"]


@pytest.mark.parametrize("content", ["", "# only a comment\n"])
def test_an_empty_spec_file_says_it_is_empty(tmp_path, content):
    path = write_spec(tmp_path, content)
    with pytest.raises(SpecError, match=re.escape(f"{path}: the file is empty")):
        load_spec(path)


def test_unknown_nested_field(tmp_path):
    raw = real_spec("spam")
    raw["training"]["learnig_rate"] = 1e-4
    message = refused(write_spec(tmp_path, raw), "training.learnig_rate")
    assert "unknown field" in message and "learning_rate" in message


def test_user_template_without_the_text_placeholder(tmp_path):
    raw = real_spec("spam")
    raw["prompt"]["user_template"] = "Message: {message}"
    assert "{text}" in refused(write_spec(tmp_path, raw), "prompt.user_template")


@pytest.mark.parametrize(("template", "placeholder"), [
    ("Message: {text} (sender: {sender})", "{sender}"),
    ('Reply {"label": ...}. Message: {text}', '{"label": ...}'),
    ("Message: {text!r}", "{text!r}"),
    ("Message: {text:>20}", "{text:>20}"),
    ("Message: {}{text}", "{}"),
])
def test_user_template_allows_no_other_placeholder(tmp_path, template, placeholder):
    # str.format(text=...) would raise KeyError (or change the text) at inference, not at load
    raw = real_spec("spam")
    raw["prompt"]["user_template"] = template
    message = refused(write_spec(tmp_path, raw), "prompt.user_template")
    assert f"placeholder {placeholder} is not allowed" in message and "{{ and }}" in message


@pytest.mark.parametrize("template", ["Message: { {text}", "Message: {text} }", "{text"])
def test_a_malformed_user_template_is_refused(tmp_path, template):
    raw = real_spec("spam")
    raw["prompt"]["user_template"] = template
    message = refused(write_spec(tmp_path, raw), "prompt.user_template")
    assert "not a valid template" in message and "{{ and }}" in message and "\n" not in message


def test_literal_braces_in_a_user_template_are_kept(tmp_path):
    raw = real_spec("spam")
    raw["prompt"]["user_template"] = 'Reply {{"label": ...}}. Message: {text}'
    template = load_spec(write_spec(tmp_path, raw)).prompt.user_template
    assert template.format(text="hi") == 'Reply {"label": ...}. Message: hi'
    raw["prompt"]["user_template"] = "Message: {{text}}"  # literal, so no placeholder at all
    assert "{text}" in refused(write_spec(tmp_path, raw, "literal"), "prompt.user_template")


@pytest.mark.parametrize("labels", [["spam"], []])
def test_classify_needs_at_least_two_labels(tmp_path, labels):
    raw = real_spec("spam")
    raw["labels"] = labels
    assert "at least two labels" in refused(write_spec(tmp_path, raw), "labels")


def test_classify_without_labels_at_all(tmp_path):
    raw = real_spec("spam")
    del raw["labels"]
    assert "at least two labels" in refused(write_spec(tmp_path, raw), "labels")


@pytest.mark.parametrize(("adapter", "key", "index", "value"), [("spam", "labels", 0, " ham"),
                                                              ("oncology", "fields", 1, "stage ")])
def test_a_label_or_field_with_a_space_around_it_is_refused(tmp_path, adapter, key, index, value):
    raw = real_spec(adapter)
    raw[key][index] = value
    message = refused(write_spec(tmp_path, raw), f"{key}[{index}]")
    assert f"{value!r} starts or ends with a space; write {value.strip()!r}" in message


def test_classify_labels_must_be_distinct(tmp_path):
    raw = real_spec("spam")
    raw["labels"] = ["ham", "spam", "ham"]
    assert "distinct" in refused(write_spec(tmp_path, raw), "labels")


def test_classify_labels_must_differ_in_more_than_case(tmp_path):
    raw = real_spec("spam")
    raw["labels"] = ["ham", "spam", "Spam"]
    assert "distinct, ignoring case" in refused(write_spec(tmp_path, raw), "labels")


def test_extract_fields_must_be_distinct(tmp_path):
    raw = real_spec("oncology")
    raw["fields"] = [*raw["fields"], raw["fields"][0]]
    assert "distinct" in refused(write_spec(tmp_path, raw), "fields")


def test_metrics_name_what_evaluation_measures(tmp_path):
    raw = real_spec("spam")
    raw["metrics"] = ["accuracy", "bogus_metric"]
    message = refused(write_spec(tmp_path, raw), "metrics")
    assert "'bogus_metric' is not measured for this adapter; choose from accuracy, precision" in message
    raw["labels"] = ["positive", "negative", "neutral"]
    raw["decision"] = "argmax"
    raw["metrics"] = ["f1"]  # a two-label measure
    assert "choose from accuracy, macro_precision, macro_recall, macro_f1" in refused(write_spec(tmp_path, raw), "metrics")
    del raw["metrics"]
    del raw["targets"]  # two-label targets, refused below
    assert load_spec(write_spec(tmp_path, raw)).headline_metrics == ("accuracy", "macro_precision", "macro_recall",
                                                                      "macro_f1")


def test_the_shipped_targets_are_in_the_specs():
    from adapters.spec import TargetSpec

    specs = load_catalog()
    assert specs["spam"].targets == (TargetSpec("accuracy", at_least=0.985), TargetSpec("f1", at_least=0.95),
                                     TargetSpec("auroc", at_least=0.99))
    assert specs["medquad"].targets == (TargetSpec("rougeL", at_least=0.25, at_least_base_plus=0.10),
                                        TargetSpec("bertscore_f1", above_base=True))
    assert specs["oncology"].targets == (TargetSpec("json_valid", at_least=1.0),
                                         TargetSpec("micro_field_accuracy", at_least=0.90))


def test_a_spec_without_targets_sets_none(tmp_path):
    raw = real_spec("spam")
    del raw["targets"]
    assert load_spec(write_spec(tmp_path, raw)).targets == ()


@pytest.mark.parametrize(("targets", "field", "said"), [
    ({"bogus": 0.5}, "targets.bogus", "not measured for this adapter; choose from accuracy, precision"),
    ({"rougeL": 0.25}, "targets.rougeL", "not measured for this adapter"),  # a generate metric on a classifier
    ({"f1": "high"}, "targets.f1", "expected a number (at least) or a mapping"),
    ({"f1": None}, "targets.f1", "expected a number (at least) or a mapping"),
    ({"f1": {"at_least": "high"}}, "targets.f1.at_least", "expected a number"),
    ({"f1": {"above": 0.9}}, "targets.f1.above", "unknown field (known: above_base, at_least, at_least_base_plus, at_most)"),
    ({"f1": {"metric": "auroc"}}, "targets.f1.metric", "unknown field"),
    ({"f1": {"above_base": "yes"}}, "targets.f1.above_base", "expected true or false"),
    ({"f1": {"above_base": False}}, "targets.f1", "give at_least, at_most, at_least_base_plus or above_base: true"),
    ({"f1": {"at_least": 0.9, "at_most": 0.8}}, "targets.f1", "at_least 0.9 is above at_most 0.8: no value can meet both"),
    ({"f1": {}}, "targets.f1", "give at_least"),
    (["f1"], "targets", "expected a mapping of metric name to target"),
    (None, "targets", "got nothing (an empty value)"),
])
def test_targets_name_measured_metrics_and_bounds(tmp_path, targets, field, said):
    raw = real_spec("spam")
    raw["targets"] = targets
    assert said in refused(write_spec(tmp_path, raw), field)


def test_labels_on_a_generate_task(tmp_path):
    raw = real_spec("medquad")
    raw["labels"] = ["yes", "no"]
    message = refused(write_spec(tmp_path, raw), "labels")
    assert "only classify adapters have labels" in message and "'generate'" in message


def test_fields_on_a_classify_task(tmp_path):
    raw = real_spec("spam")
    raw["fields"] = ["stage"]
    assert "only extract adapters have fields" in refused(write_spec(tmp_path, raw), "fields")


def test_extract_needs_fields(tmp_path):
    raw = real_spec("oncology")
    del raw["fields"]
    assert "at least one field" in refused(write_spec(tmp_path, raw), "fields")


def test_bad_yaml_syntax(tmp_path):
    path = write_spec(tmp_path, "title: Spam\nprompt: {system: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML") as caught:
        load_spec(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_a_yaml_syntax_error_is_one_line_with_its_line_and_column(tmp_path):
    text = (CATALOG_DIR / "spam" / "adapter.yaml").read_text(encoding="utf-8")
    path = write_spec(tmp_path, text + "\tmetrics: [f1]\n")
    line = len(path.read_text().splitlines())
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == (f"{path}: line {line}, column 1: not valid YAML: "
                                 "found character '\\t' that cannot start any token")
    for content in ("title: Spam\nprompt: {system: [unclosed\n", "title: Spam\x07\n"):
        with pytest.raises(SpecError, match=r"adapter.yaml: line \d+, column \d+: not valid YAML: ") as caught:
            load_spec(write_spec(tmp_path, content))
        assert "\n" not in str(caught.value) and "<unicode string>" not in str(caught.value)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    path = write_spec(tmp_path, real_spec("spam"))
    path.write_text(path.read_text() + "training: {epochs: 9}\n")  # PyYAML alone would keep this one
    lines = path.read_text().splitlines()
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: line {len(lines)}: 'training' is given twice"

    nested = write_spec(tmp_path, "title: Spam\nlora:\n  r: 8\n  alpha: 16\n  r: 4\n", name="nested")
    with pytest.raises(SpecError, match=r"adapter.yaml: line 5: 'r' is given twice$"):
        load_spec(nested)


def test_a_yaml_merge_key_is_read_as_safe_load_reads_it(tmp_path):
    # "could not determine a constructor for the tag 'tag:yaml.org,2002:merge'" had called it invalid YAML
    text = (CATALOG_DIR / "spam" / "adapter.yaml").read_text(encoding="utf-8")
    text, n = re.subn(r"^lora: \{r: 16,", "lora: {<<: {r: 4, alpha: 8}, r: 16,", text, flags=re.M)
    assert n == 1
    spec = load_spec(write_spec(tmp_path, text))
    assert (spec.lora.r, spec.lora.alpha) == (16, 32)  # the mapping's own keys win, as in yaml.safe_load


@pytest.mark.parametrize(("extra", "key"), [("1: x\nfoo: y\n", "1"), ("? [a, b]\n: c\n", "['a', 'b']"),
                                           ("generation: {2: 4}\n", "2")])
def test_a_key_that_is_not_text_is_refused_with_its_line(tmp_path, extra, key):
    text = (CATALOG_DIR / "spam" / "adapter.yaml").read_text(encoding="utf-8")
    path = write_spec(tmp_path, text + extra)
    line = len(text.splitlines()) + 1
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: line {line}: a key must be text, got {key} (quote it)"


@pytest.mark.parametrize("content", ["- a\n- list\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, content):
    path = write_spec(tmp_path, content)
    with pytest.raises(SpecError, match="expected a mapping at the top level") as caught:
        load_spec(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_a_missing_file_is_a_spec_error_naming_it(tmp_path):
    (tmp_path / "empty-folder").mkdir()
    for path in (tmp_path / "nowhere.yaml", tmp_path / "empty-folder"):
        with pytest.raises(SpecError, match="file not found") as caught:
            load_spec(path)
        expected = path / "adapter.yaml" if path.is_dir() else path
        assert str(caught.value).startswith(f"{expected}: ")


def test_a_spec_file_that_is_a_directory_is_named_as_such(tmp_path):
    spec_dir = tmp_path / "spam" / "adapter.yaml"
    spec_dir.mkdir(parents=True)
    for path in (spec_dir, spec_dir.parent):
        with pytest.raises(SpecError) as caught:
            load_spec(path)
        assert str(caught.value) == f"{spec_dir}: is a directory, not a spec file"


@pytest.mark.parametrize("top_p", [0, 1.5, -0.1])
def test_top_p_out_of_range(tmp_path, top_p):
    raw = real_spec("spam")
    raw["generation"] = {"top_p": top_p}
    assert "must be in (0, 1]" in refused(write_spec(tmp_path, raw), "generation.top_p")


@pytest.mark.parametrize(("adapter", "value", "expected"), [
    ("spam", 0, "must be in (0, 1]"), ("spam", 1.5, "must be in (0, 1]"),
    ("medquad", 0.5, "only classify adapters can oversample")])
def test_oversample_is_a_fraction_and_only_for_classify(tmp_path, adapter, value, expected):
    raw = real_spec(adapter)
    raw["data"]["oversample"] = value
    assert expected in refused(write_spec(tmp_path, raw), "data.oversample")


def test_top_p_of_exactly_one_is_allowed(tmp_path):
    raw = real_spec("spam")
    raw["generation"] = {"top_p": 1}
    assert load_spec(write_spec(tmp_path, raw)).generation.top_p == 1.0


@pytest.mark.parametrize(("section", "key", "value"), [
    ("generation", "temperature", -0.5),
    ("generation", "max_new_tokens", 0),
    ("generation", "no_repeat_ngram_size", -1),
    ("lora", "r", 0),
    ("training", "batch_size", 0),
])
def test_out_of_range_numbers(tmp_path, section, key, value):
    raw = real_spec("spam")
    raw.setdefault(section, {})[key] = value
    assert "must be >=" in refused(write_spec(tmp_path, raw), f"{section}.{key}")


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    # each once trained (or wiped the shipped adapter: 0 epochs replaced its weights with untrained
    # ones, exit status 0) or failed deep inside transformers/TRL after the model had loaded
    ("training", "epochs", 0, "must be > 0"),
    ("training", "epochs", -1, "must be > 0"),
    ("training", "learning_rate", -5.0e-4, "must be > 0"),
    ("lora", "alpha", -32, "must be > 0"),
    ("training", "gradient_accumulation", 0, "must be >= 1"),
    ("training", "eval_steps", 0, "must be >= 1"),
    ("training", "early_stopping_patience", -1, "must be >= 1"),
    ("training", "max_seq_length", 0, "must be >= 16"),
    ("training", "warmup_ratio", 7, "must be in [0, 1)"),
    ("lora", "dropout", 1.0, "must be < 1"),
    ("lora", "target_modules", [], "name at least one module"),
])
def test_training_numbers_out_of_range_are_refused_at_load(tmp_path, section, key, value, expected):
    raw = real_spec("spam")
    raw[section][key] = value
    assert expected in refused(write_spec(tmp_path, raw), f"{section}.{key}")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(tmp_path, value):
    # YAML's .nan compares false with everything, so it would pass every range check
    text = (CATALOG_DIR / "spam" / "adapter.yaml").read_text(encoding="utf-8")
    path = write_spec(tmp_path, text + f"generation: {{temperature: {value}}}\n")
    assert "expected a finite number" in refused(path, "generation.temperature")


def test_task_must_be_one_of_the_three_kinds(tmp_path):
    raw = real_spec("spam")
    raw["task"] = "summarize"
    message = refused(write_spec(tmp_path, raw), "task")
    assert all(repr(kind) in message for kind in ("classify", "generate", "extract"))
    assert "'summarize'" in message


def test_data_needs_a_source(tmp_path):
    raw = real_spec("spam")
    del raw["data"]["local_path"], raw["data"]["hub_id"]
    assert "local_path" in refused(write_spec(tmp_path, raw), "data")


def test_split_fractions_must_leave_room_for_training(tmp_path):
    raw = real_spec("spam")
    raw["data"]["split"] = {"validation": 0.5, "test": 0.5}
    refused(write_spec(tmp_path, raw), "data.split")
    raw["data"]["split"] = {"validation": 0, "test": 0.1}
    assert "training stops early on the validation split" in refused(write_spec(tmp_path, raw),
                                                                    "data.split.validation")


def test_near_duplicate_similarity_must_be_a_fraction(tmp_path):
    raw = real_spec("spam")
    raw["data"]["split"]["near_duplicates"] = 1.5
    assert "(0, 1]" in refused(write_spec(tmp_path, raw), "data.split.near_duplicates")


def test_a_bad_spec_in_the_catalogue_stops_the_whole_catalogue_naming_it(catalog):
    path = catalog / "spam" / "adapter.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("r: 16", "r: sixteen", 1), encoding="utf-8")
    with pytest.raises(SpecError, match=r"lora\.r: expected an integer") as caught:
        load_catalog(catalog)
    assert str(caught.value).startswith(f"{path}: ")


def test_two_specs_with_one_name_stop_the_catalogue_naming_both_files(catalog):
    path = catalog / "spam" / "adapter.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "name: oncology\n", encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_catalog(catalog)
    assert str(caught.value) == (f"{path}: name: 'oncology' is already the name of "
                                 f"{catalog / 'oncology' / 'adapter.yaml'}")


def test_a_tuned_threshold_needs_two_labels_and_a_known_rule(tmp_path):
    raw = real_spec("spam")
    raw["labels"] = ["ham", "spam", "phishing"]
    assert "exactly two labels" in refused(write_spec(tmp_path, raw), "decision")
    raw = real_spec("oncology")
    raw["decision"] = "validation_f1"
    assert "exactly two labels" in refused(write_spec(tmp_path, raw, "onc"), "decision")
    raw = real_spec("spam")
    raw["decision"] = "best"
    assert "argmax" in refused(write_spec(tmp_path, raw, "typo"), "decision")


@pytest.mark.parametrize(("key", "value", "said"), [
    ("directory", "/etc", "directory: not a spec field"),
    ("name", "Spam Check!", "'Spam Check!': letters, digits"),
])
def test_the_folder_is_not_a_spec_field_and_a_name_is_one_word(tmp_path, key, value, said):
    """`directory: /etc` was accepted and silently overridden; a name with spaces was suggested in
    commands (`adapterlab train Spam Check!`) that a shell cannot run."""
    raw = real_spec("spam")
    raw[key] = value
    assert said in refused(write_spec(tmp_path, raw), key)


@pytest.mark.parametrize(("adapter", "fmt", "said"), [
    ("spam", "medquad_csv", "'medquad_csv' holds generate examples; classify adapters read sms_spam_tsv"),
    ("medquad", "oncology_jsonl", "'oncology_jsonl' holds extract examples; generate adapters read medquad_csv"),
    ("oncology", "sms_spam_tsv", "'sms_spam_tsv' holds classify examples; extract adapters read oncology_jsonl"),
])
def test_the_data_format_must_hold_the_tasks_examples(tmp_path, adapter, fmt, said):
    """A classifier reading MedQuAD's CSV loaded, and failed (or trained on nonsense) only later."""
    raw = real_spec(adapter)
    raw["data"]["format"] = fmt
    raw["data"]["split"].pop("group_by", None)
    raw["data"].pop("max_target_words", None)
    assert said in refused(write_spec(tmp_path, raw), "data.format")


@pytest.mark.parametrize(("adapter", "value", "said"), [
    ("medquad", 0, "must be >= 1 word"),  # 0 meant no cap, silently (the reader tests truthiness)
    ("medquad", -5, "must be >= 1 word"),
    ("medquad", 2.5, "expected an integer"),
    ("spam", 200, "only generate adapters cap their answers (task is 'classify')"),
    ("oncology", 200, "only generate adapters cap their answers (task is 'extract')"),
])
def test_max_target_words_is_a_positive_word_count_for_generate_only(tmp_path, adapter, value, said):
    raw = real_spec(adapter)
    raw["data"]["max_target_words"] = value
    assert said in refused(write_spec(tmp_path, raw), "data.max_target_words")


def test_group_by_only_where_the_reader_keeps_groups(tmp_path):
    raw = real_spec("spam")
    raw["data"]["split"]["group_by"] = "sender"
    message = refused(write_spec(tmp_path, raw), "data.split.group_by")
    assert "'sms_spam_tsv' is not read by groups (only medquad_csv, oncology_jsonl)" in message
    raw = real_spec("oncology")
    raw["data"]["split"]["group_by"] = "patient_id"  # a key of the JSONL objects: read
    assert load_spec(write_spec(tmp_path, raw)).data.split.group_by == "patient_id"
