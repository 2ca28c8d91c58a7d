"""The model card (``adapters/<name>/README.md``, Hugging Face model-card format) and
``metrics.json``, written from the measured results and the adapter's spec (its description, prompt
and ``limitations``): nothing is typed into a card by hand. ``adapterlab card`` rewrites one after its
spec's text changes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from adapters.base_models import KNOWN_BASES, canonical_name
from adapters.catalog import catalog_option, shown_path
from adapters.files import write_text_atomic
from adapters.metrics_file import check_targets, measured_variants, shown_value, variant_title
from adapters.spec import AdapterSpec, LoraSpec, TrainingSpec


def write_metrics(spec: AdapterSpec, report: dict, split_report: dict | None, train_result: dict | None,
                  out_dir: Path) -> dict:
    metrics = {**report, "split": split_report, "training": train_result,
               "targets": check_targets(spec, report["variants"]),
               "headline": {k: report["variants"].get("fine_tuned", {}).get(k)
                            for k in spec.headline_metrics}}
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _hardware(training: dict) -> str:
    """The training device, with the process count of a data-parallel run (``2 × NVIDIA H100``)."""
    processes = training.get("processes") or 1
    return f"{processes} × {training.get('device', '—')}" if processes > 1 else str(training.get("device", "—"))


def _read_from(split: dict) -> str:
    """Where this run read its data, and the file's hash when it was a local file."""
    if not split.get("source"):
        return ""
    digest = f", sha256 `{split['source_sha256']}`" if split.get("source_sha256") else ""
    return f"; this run read `{split['source']}`{digest}"


def _few_shot_text(metrics: dict) -> str:
    """How the few-shot examples were chosen, when among several draws (empty otherwise)."""
    chosen = metrics.get("few_shot") or {}
    scores = chosen.get("scores") or []
    if len(scores) < 2:
        return ""
    ranked = sorted(d.get("score", d.get("f1")) for d in scores)  # "f1" in metrics of spam-only draws
    return (f" (the best of {len(scores)} seeded draws by {chosen['criterion']}: {ranked[-1]:.3f} on its "
            f"{chosen['validation_examples']} examples, where the draws ranged {ranked[0]:.3f}–{ranked[-1]:.3f})")


def _decision_text(metrics: dict) -> str:
    """How the fine-tuned adapter decides, when its threshold was tuned (empty otherwise)."""
    d = metrics.get("decision")
    if not d:
        return ""
    at_argmax = metrics["variants"].get("fine_tuned", {}).get("at_argmax", {})
    return (f"The fine-tuned adapter says {d['label']!r} when P({d['label']}) ≥ {d['threshold']:.3f}: the threshold "
            f"with the best {d['criterion']} on the validation split ({d['examples']} examples, {d['positives']} "
            f"{d['label']}; F1 {d['f1']:.3f} there against {d['f1_at_argmax']:.3f} at 0.5), stored in "
            f"`threshold.json`; base and few-shot take the most probable label. With 0.5 instead, the test "
            f"split gives accuracy {shown_value(at_argmax.get('accuracy'))}, F1 {shown_value(at_argmax.get('f1'))}.\n\n")


def _evaluated_on(metrics: dict) -> str:
    return f"\nEvaluated on {metrics['evaluated_on']}." if metrics.get("evaluated_on") else ""


def _near_duplicates_text(split: dict) -> str:
    near = split.get("near_duplicates")
    if not near:
        return ""
    return (f"; near duplicates (Jaccard ≥ {near['jaccard']} of {near['shingle']}-character pieces, numbers "
            f"masked: {near['linked_pairs']} pairs) kept in one split")


def _rows_text(split: dict) -> str:
    """What reading the data kept and skipped, by reason with the first lines, and its notes."""
    skipped = split.get("skipped") or {}
    lines = split.get("skipped_lines") or {}
    parts = [f"{split.get('rows', '—')} read, {split.get('duplicates_removed', 0)} duplicates removed"]
    parts += [f"{n} skipped as {reason}" + (f" (first lines: {', '.join(map(str, lines.get(reason, [])))})"
                                            if lines.get(reason) else "") for reason, n in skipped.items()]
    return "; ".join(parts + list(split.get("notes") or []))


def _details_text(split: dict) -> str:
    shown = {k: v for k, v in split.items() if k not in ("train", "validation", "test", "source", "source_sha256",
                                                         "rows", "skipped", "skipped_lines", "notes",
                                                         "duplicates_removed", "test_data")}
    text = json.dumps(shown, default=str)
    return text if len(text) <= 600 else text[:600] + " …"  # metrics.json holds it all


def _compile_note(training: dict) -> str:
    notes = ["includes compiling the decoder layers"] if training.get("compiled_layers") else []
    if training.get("resumed_from"):  # an audit's 40-step run read "2.47 s": the last 10 steps' time
        notes.append(f"the time of the run resumed from {str(training['resumed_from']).rsplit('/', 1)[-1]} only")
    return f" ({'; '.join(notes)})" if notes else ""


def _references_text(spec: AdapterSpec) -> str:
    """For a generate adapter whose answers were capped in training: the references are capped too."""
    if spec.task != "generate" or spec.data.max_target_words is None:
        return ""
    return (f"\nThe reference answers are the answers as trained: cut at a sentence end within "
            f"{spec.data.max_target_words} words (`data.max_target_words`), since an answer of at most "
            f"{spec.generation.max_new_tokens} tokens cannot match a reference of thousands of words.")


def _extract_text(spec: AdapterSpec) -> str:
    if spec.task != "extract":
        return ""
    return ("\n*micro_field_accuracy* is exact match after the normalisation documented in "
            "`adapters/field_match.py` (case, whitespace, separators, null; the measure of the target); "
            "*micro_field_token_f1* is the lenient word-overlap F1 of the same values, for reading the errors; "
            "*negated_value_rate* is the share of extracted values that hold a finding the text says is absent "
            "(\"no EGFR or ALK alterations\" read as \"EGFR/ALK alterations\"; the app marks them ⊘, "
            "`adapters.fields.parts_the_text_negates`).")


# what an evaluation writes about the weights it measured (besides the card): new weights make them
# describe an adapter that is gone
PLOT_FILES = ("confusion.png", "metrics.png", "fields.png")  # evaluation's, one of them for each task
EVALUATION_FILES = ("metrics.json", *PLOT_FILES)


def _base_id(spec: AdapterSpec, recorded: str | None = None) -> str:
    base = KNOWN_BASES.get(recorded or spec.base_model)
    return base.hub_id if base else (recorded or spec.base_model)


def _front_matter(spec: AdapterSpec, base_id: str) -> list[str]:
    return [
        "---",
        f"base_model: {base_id}",
        "library_name: peft",
        "pipeline_tag: text-generation",
        "license: apache-2.0",
        f"tags: [{', '.join(dict.fromkeys(['lora', 'peft', 'adapterlab', spec.task, *spec.tags]))}]",
    ] + ([f"datasets: [{spec.data.hub_id}]"] if spec.data.hub_id else []) + ["---", ""]


def _base_option(spec: AdapterSpec, trained_on: str | None) -> str:
    """``--base-model X`` when the weights were trained on another base than the spec names."""
    if trained_on is None or canonical_name(trained_on) == canonical_name(spec.base_model):
        return ""
    return f" --base-model {trained_on}"


def _steps(steps) -> str:
    return f"{steps} step{'' if steps == 1 else 's'}" if steps is not None else "— steps"


def _use_text(spec: AdapterSpec, base_name: str) -> str:
    catalog, other_base = catalog_option(spec), _base_option(spec, base_name)
    options = catalog + other_base
    arguments = ([f'"{spec.directory.resolve().parent}"'] if catalog else []) + (
        [f'base="{base_name}"'] if other_base else []) + [f'only=["{spec.name}"]']
    return f"""```bash
adapterlab predict {spec.name}{options} --input in.jsonl --output out.jsonl
```

```python
from adapters import Runtime                  # the runtime the app and evaluation use
rt = Runtime.local({", ".join(arguments)})

from adapters.base_models import load_base    # or plain PEFT, on the base these weights were trained on
from peft import PeftModel
base_model, tokenizer = load_base("{base_name}")
model = PeftModel.from_pretrained(base_model, "{shown_path(spec.directory)}")
```"""


def _intended_use(spec: AdapterSpec, base_id: str) -> str:
    medical = ("\n**Not for clinical decisions**, diagnosis or treatment; not medical advice."
               if "medical" in spec.tags else "")
    return f"""A teaching and demonstration adapter for {base_id}. It can be wrong with high confidence.{medical}
{spec.limitations}
"""


def unevaluated_card_text(spec: AdapterSpec, train_result: dict) -> str:
    """The card of weights no evaluation has measured yet (``train --no-eval``, or an evaluation
    that did not finish): what was trained, and no numbers that belong to other weights."""
    body = f"""# {spec.title} — LoRA adapter for {_base_id(spec, train_result.get('base_model'))}

{spec.description}

**Not evaluated yet.** These weights were trained ({_steps(train_result.get('steps'))} on
{train_result.get('device', '—')}, best validation loss {shown_value(train_result.get('best_eval_loss'))}) and not
measured since: `adapterlab eval {spec.name}{catalog_option(spec)}{_base_option(spec, train_result.get('base_model'))}` measures them on the held-out test split and writes this
card with base, few-shot and fine-tuned results.

## Use

{_use_text(spec, train_result.get('base_model') or spec.base_model)}

## Intended use and limitations

{_intended_use(spec, _base_id(spec, train_result.get('base_model')))}"""
    return "\n".join(_front_matter(spec, _base_id(spec, train_result.get("base_model")))) + body


def write_card(spec: AdapterSpec, metrics: dict, out_dir: Path) -> None:
    """Write ``README.md`` for the adapter into ``out_dir`` (atomically)."""
    write_text_atomic(out_dir / "README.md", card_text(spec, metrics, out_dir))


def _decoding_text(spec: AdapterSpec) -> str:
    """How answers are decoded, in evaluation and in the app (empty for a classifier, which scores labels).
    Evaluation is always greedy (``Runtime.answer`` and ``Runtime.extract``), so that its numbers do not
    depend on a draw; the spec's temperature is the app's default for a generate adapter."""
    if spec.task == "classify":
        return ""
    g = spec.generation
    ban = f", never repeating a sequence of {g.no_repeat_ngram_size} tokens" if g.no_repeat_ngram_size else ""
    limits = f"at most {g.max_new_tokens} new tokens{ban}"
    if g.temperature <= 0:
        return f"\n\nDecoding in evaluation (and the app's default): greedy, {limits}."
    if spec.task == "extract":  # extraction never samples, in the app either
        return f"\n\nDecoding in evaluation and the app: greedy, {limits} (extraction does not sample)."
    return (f"\n\nDecoding in evaluation: greedy, {limits}. The app's default: sampled at temperature "
            f"{g.temperature}, top-p {g.top_p}, with the same limits.")


def card_text(spec: AdapterSpec, metrics: dict, out_dir: Path) -> str:
    """The model card of the adapter from its spec and measured metrics; it shows the plots that
    ``out_dir`` holds."""
    base_id = _base_id(spec, metrics.get("base_model"))
    body = f"""# {spec.title} — LoRA adapter for {base_id}

{spec.description}

Trained and evaluated with [adapterlab](../../README.md) from `{shown_path(spec.directory)}/adapter.yaml`; the
prompt below is the one used in training, evaluation and the app.

## Results

{_results_section(spec, metrics, out_dir)}

## Data

{_data_section(spec, metrics.get("split") or {})}

## Training

{_training_section(spec, metrics.get("training") or {})}

## Prompt

System: {spec.prompt.system}

User template: `{spec.prompt.user_template}`{_decoding_text(spec)}

## Use

{_use_text(spec, metrics.get("base_model") or spec.base_model)}

## Reproduce

{_reproduce_section(spec, metrics)}

## Intended use and limitations

{_intended_use(spec, base_id)}"""
    return "\n".join(_front_matter(spec, base_id)) + body


def _results_section(spec: AdapterSpec, metrics: dict, out_dir: Path) -> str:
    """What was evaluated on which examples, the metric tables, the targets and the plots."""
    variants = metrics["variants"]
    encoder = variants.get("fine_tuned", variants.get("base", {})).get("bertscore_encoder")
    plots = [p for p in (*PLOT_FILES, "loss.png") if (out_dir / p).is_file()]
    targets = "\n".join(f"- {'✅' if t['met'] else '❌'} {t['metric']} {t['target']}: measured {shown_value(t['value'])}"
                        for t in check_targets(spec, variants))
    return f"""{_test_set_text(metrics)}; the same examples for every column.
*base* is the base model with this prompt, *few-shot* adds {metrics.get('few_shot_k')} training examples to the prompt{_few_shot_text(metrics)},
*fine-tuned* is this adapter.{f' BERTScore encoder: `{encoder}`.' if encoder else ''}{_references_text(spec)}{_extract_text(spec)}{_evaluated_on(metrics)}

{_metric_tables(spec, metrics)}

{_decision_text(metrics)}Targets:
{targets or '- none set'}

{' '.join(f'![{p}]({p})' for p in plots)}"""


def _metric_tables(spec: AdapterSpec, metrics: dict) -> str:
    """The headline metrics of every measured variant, and for an extractor the exact match per field."""
    variants = metrics["variants"]
    shown = measured_variants(metrics)
    if not shown:
        return "No variant was measured: `metrics.json` holds none."
    names = {v: variant_title(v, metrics) for v in shown}
    rows = "\n".join(f"| {k} | " + " | ".join(shown_value(variants[v].get(k)) for v in shown) + " |"
                     for k in spec.headline_metrics)
    table = f"| metric | {' | '.join(names[v] for v in shown)} |\n|---|{'---|' * len(shown)}\n{rows}"
    if spec.task == "extract" and shown:
        table += "\n\n| field | " + " | ".join(names[v] for v in shown) + " |\n|---|" + "---|" * len(shown) + "\n"
        table += "\n".join(f"| {f} | " + " | ".join(shown_value(variants[v]["per_field"][f]) for v in shown) + " |"
                           for f in spec.fields)
    return table


def _test_set_text(metrics: dict) -> str:
    """Which examples the results are of: the split's test part, or a test file given to ``eval --test-data``."""
    shown, total = metrics.get("test_examples"), metrics.get("test_split_size")
    first = "" if shown == total else f" (the first {shown} of {total}, in the file's order)"
    test_data = (metrics.get("split") or {}).get("test_data")
    if test_data:
        return (f"Test file `{test_data['source']}` (sha256 `{test_data['sha256']}`), {shown} examples{first}: "
                "its usable examples that are not in the training or validation split, instead of the split's test part")
    first = first.replace("the file's order", "the split's seeded order")
    return f"Held-out test split, {shown} examples{first}"


def _test_data_text(split: dict) -> str:
    """The data section's line on a test file that replaced the test split; "" when none did."""
    t = split.get("test_data")
    if not t:
        return ""
    overlap = t.get("in_training_or_validation") or {}
    skipped = ", ".join(f"{n} {reason}" for reason, n in (t.get("skipped") or {}).items()) or "none"
    return (f"\n- Test file: `{t['source']}`: {t.get('rows')} rows read, {t.get('duplicates_removed', 0)} duplicates "
            f"removed, {overlap.get('same_text', 0)} with a text in the training or validation split and "
            f"{overlap.get('near_duplicates', 0)} near duplicates of one left out, skipped: {skipped}; "
            f"{t.get('examples')} examples evaluated")


def _data_section(spec: AdapterSpec, split: dict) -> str:
    """Where the examples came from and how they were split (``split``: metrics.json's record)."""
    data_source = spec.data.hub_id or spec.data.local_path
    return f"""- Source: `{data_source}`{'' if data_source == spec.data.local_path else f" (local copy `{spec.data.local_path}` when present)"}{_read_from(split)}
- Split: seed {split.get('seed', spec.data.split.seed)}; train {split.get('train', '—')}, validation {split.get('validation', '—')}, test {split.get('test', '—')} examples; duplicates removed before splitting{', grouped by `' + spec.data.split.group_by + '`' if spec.data.split.group_by else ''}{_near_duplicates_text(split)}
- Rows: {_rows_text(split)}{_test_data_text(split)}
- Details: `{_details_text(split)}`"""


def trained_settings(spec: AdapterSpec, recorded: dict | None) -> tuple[TrainingSpec, LoraSpec, list[str]]:
    """The training and LoRA settings the weights were trained with (the run's record; the spec's
    where the record has none), and the spec's settings that differ from them now."""
    recorded = recorded or {}
    as_trained = []
    for section, current in (("training", spec.training), ("lora", spec.lora)):
        known = {f.name for f in dataclasses.fields(current)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in (recorded.get(section) or {}).items()
                  if k in known}
        as_trained.append(dataclasses.replace(current, **values))
    t, lora = as_trained
    changed = [f"{section}.{f.name}" for section, now, then in (("training", spec.training, t), ("lora", spec.lora, lora))
               for f in dataclasses.fields(now) if getattr(now, f.name) != getattr(then, f.name)]
    return t, lora, changed


def _training_section(spec: AdapterSpec, training: dict) -> str:
    """The settings the weights were trained with and the recorded run (``training``: metrics.json's
    record); a spec edited since says so, since the card is rewritten from it (``adapterlab card``)."""
    t, lora, changed = trained_settings(spec, training.get("settings"))
    note = (f"\n\n⚠️ `adapter.yaml` has changed since these weights were trained ({', '.join(changed)}): the "
            "table shows the settings they were trained with; train again to match the spec."
            if changed else "")
    return f"""| setting | value |
|---|---|
| method | {t.method} (LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, modules {', '.join(lora.target_modules)}) |
| optimisation | lr {t.learning_rate}, cosine, warm-up {t.warmup_ratio}, batch {t.batch_size} × accumulation {t.gradient_accumulation}, up to {t.epochs} epochs, early stopping patience {t.early_stopping_patience} |
| sequences | completion-only loss, {training.get('batching', 'padding-free packing')}, max length {t.max_seq_length} |
| hardware | {_hardware(training)} |
| run | {training.get('steps', '—')} steps, {training.get('epochs', '—')} epochs, {_seconds(training.get('train_seconds'))} s{_compile_note(training)}, {shown_value(training.get('tokens_per_second'))} tokens/s (real tokens) |
| best validation loss | {shown_value(training.get('best_eval_loss'))} |
| seed | {t.seed} |{note}"""


def _reproduce_section(spec: AdapterSpec, metrics: dict) -> str:
    """The commands that retrain and re-evaluate this adapter as it was."""
    options = f"{catalog_option(spec)}{_base_option(spec, metrics.get('base_model'))}"
    limit = '' if metrics.get('test_examples') == metrics.get('test_split_size') else f" --eval-limit {metrics.get('test_examples')}"
    test_data = (metrics.get("split") or {}).get("test_data")
    # `train` evaluates the test split as `eval` does, with the same --eval-limit (never a --test-data file)
    in_one_go = (f"`adapterlab train {spec.name}{options}{limit}` alone trains and evaluates in one go"
                 if not test_data else
                 f"`adapterlab train {spec.name}{options}` alone trains, then evaluates on the test split, not that file")
    if test_data:
        limit += f" --test-data {test_data['source']} --output DIR"
    trained_on = (metrics.get("training") or {}).get("device", "—")
    return f"""```bash
adapterlab train {spec.name}{options} --no-eval    # trained on: {trained_on}
adapterlab eval {spec.name}{options}{limit}
```

{in_one_go}; either way the configuration is
`adapter.yaml` as committed, with the data split recorded above."""
