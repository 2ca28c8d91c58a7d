"""Measure an adapter against its baselines on the held-out test split.

Three variants answer the same test examples through the same runtime calls the app makes:
``base`` (the spec's prompt, adapters disabled), ``few_shot`` (the base with k training examples in
the prompt: the in-context learning baseline) and ``fine_tuned`` (the trained adapter). Metrics go
through the ``evaluate`` API with this project's own metric modules (``training/metrics/``), loaded
by path, so an offline run computes exactly what an online one does.

A two-label adapter whose spec says ``decision: validation_f1`` decides with a threshold tuned on
the validation split (never the test split), stored beside its weights for the app to use too. It
is tuned once for each set of weights (training removes the old one), so evaluating again measures
the adapter as the app runs it and changes nothing.

Every adapter's few-shot examples are the best of ``FEW_SHOT_DRAWS`` seeded draws, each scored on
validation examples (``FEW_SHOT_VALIDATION``; by ``FEW_SHOT_CRITERION``): which four SMS a 135M model
sees moves it from 0.80 accuracy to "spam" for every message, and a baseline that swings with one
draw says little about in-context learning. A classify draw is scored on the whole validation split
(a forward pass a message); generate and extract draws on its first 50 and 100 examples, since each
costs a generation. The chosen examples are stored beside the weights (``few_shot.jsonl``) for the
app's few-shot variant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adapters.environment import environment
from adapters.fields import parts_the_text_negates
from adapters.prompts import target_text
from adapters.files import write_bytes_atomic, write_lines_atomic, write_text_atomic
from adapters.metrics_file import VARIANTS
from adapters.runtime import FEW_SHOT_FILE, THRESHOLD_FILE, Runtime, decide, read_threshold_record
from adapters.spec import AdapterSpec

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
FEW_SHOT_K = {"classify": 4, "generate": 2, "extract": 3}
FEW_SHOT_DRAWS = 5  # seeded draws of few-shot examples, scored on validation: the spec's seed, then the next ones
# validation examples a draw is scored on: a generated answer or extraction costs a generation each
FEW_SHOT_VALIDATION = {"classify": None, "generate": 50, "extract": 100}
FEW_SHOT_CRITERION = {"classify": "F1 of {positive!r}", "classify_multi": "macro F1", "generate": "ROUGE-L",
                      "extract": "micro field accuracy"}


def load_metric(name: str):
    """One of the project's `evaluate` modules, loaded by path (no Hub access needed)."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / f"{name}.py"))


def few_shot_pairs(spec: AdapterSpec, train, k: int, seed: int) -> list[tuple[str, str]]:
    from .data import few_shot_examples

    return [(ex.input, target_text(spec, ex.target)) for ex in few_shot_examples(train, k, seed)]


def evaluate_adapter(runtime: Runtime, spec: AdapterSpec, splits, *, limit: int | None = None,
                     variants=VARIANTS, batch_size: int = 16, out_dir: Path | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Metrics of every variant on the same test examples; plots and predictions into ``out_dir``."""
    from tqdm.auto import tqdm

    test = list(splits.test)[:limit] if limit else list(splits.test)
    k = FEW_SHOT_K[spec.task]
    shots, selection = ((), None)
    if "few_shot" in variants:
        shots, selection = choose_few_shot(runtime, spec, splits, batch_size, progress)
    trained = spec.name in runtime.backend.adapter_names()
    results: dict[str, Any] = {}
    predictions: dict[str, list] = {}
    decision = decision_threshold(runtime, spec, splits.validation, batch_size) if "fine_tuned" in variants else None
    for variant in tqdm(variants, desc=f"evaluate {spec.name}", disable=not progress):
        if variant == "fine_tuned" and not trained:
            results[variant] = {"skipped": "no trained weights"}
            continue
        kwargs = {"base": variant != "fine_tuned", "examples": shots if variant == "few_shot" else ()}
        task = {"classify": _classify, "generate": _generate, "extract": _extract}[spec.task]
        in_batches = _with_progress(f"{variant} on {len(test)} examples", batch_size, progress)
        results[variant], predictions[variant] = task(runtime, spec, test, kwargs, in_batches)
    report = {
        "adapter": spec.name, "task": spec.task, "base_model": runtime.backend.base_name,
        "test_examples": len(test), "test_split_size": len(splits.test), "few_shot_k": k,
        "variants": results, **({"decision": decision} if decision else {}),
        **({"few_shot": selection} if selection else {}),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "evaluated_on": environment(runtime.backend.device)["device"],
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if selection:
            _write_few_shot(out_dir, shots)
        plot_results(spec, report, predictions, test, out_dir)
    return report


# --- tasks ---------------------------------------------------------------------------------------

def _classify(runtime, spec, test, kwargs, in_batches):
    out = in_batches(lambda texts, b: runtime.classify(spec.name, texts, batch_size=b, **kwargs),
                     [ex.input for ex in test])
    if len(spec.labels) > 2:
        return _classify_multi(spec, test, out), out
    positive = spec.labels[-1]  # spam: the last label is the positive class
    metric = load_metric("binary_classification")
    refs = [int(ex.target == positive) for ex in test]
    preds = [int(r.label == positive) for r in out]
    scores = [r.probs[positive] for r in out]
    result = metric.compute(predictions=preds, references=refs, scores=scores)
    result["confusion"] = _confusion(refs, preds)
    threshold = out[0].threshold if out else None
    if threshold is not None:  # also show what argmax would have given on the same scores
        argmax = [int(decide(spec.labels, r.probs, None) == positive) for r in out]  # as with no threshold
        result["threshold"] = threshold
        result["at_argmax"] = {k: v for k, v in metric.compute(predictions=argmax, references=refs,
                                                              scores=scores).items() if k != "auroc"}
    return result, out


def _classify_multi(spec, test, out) -> dict:
    """Three labels or more: accuracy, macro-averaged precision, recall and F1, F1 per label, and the
    confusion matrix (rows: the reference label, columns: the predicted one, in the spec's order)."""
    index = {label: i for i, label in enumerate(spec.labels)}
    refs, preds = [index[ex.target] for ex in test], [index[r.label] for r in out]
    result = load_metric("multiclass_classification").compute(predictions=preds, references=refs,
                                                             num_labels=len(spec.labels))
    result["f1_per_label"] = dict(zip(spec.labels, result["f1_per_label"]))
    result["confusion"] = _confusion(refs, preds, len(spec.labels))
    return result


def choose_threshold(scores: Sequence[float], refs: Sequence[int]) -> tuple[float, float]:
    """The threshold on P(positive) with the best F1 over ``scores`` and 0/1 ``refs``, and that F1.

    Cuts fall halfway (in log-odds) between neighbouring scores, so no tuning score sits on the
    edge; among equally good cuts the one nearest to 0.5 wins.
    """
    ranked = sorted(zip(scores, refs), key=lambda pair: -pair[0])
    positives = sum(refs)
    best = (-1.0, float("inf"), 0.5)  # (F1, distance from 0.5 in log-odds, threshold)
    true_pos = 0
    for k in range(1, len(ranked) + 1):  # predict the top k as positive
        true_pos += ranked[k - 1][1]
        if k < len(ranked) and ranked[k][0] == ranked[k - 1][0]:
            continue  # no threshold separates equal scores
        f1 = 2 * true_pos / (k + positives) if positives else 0.0
        lower = ranked[k][0] if k < len(ranked) else 0.0
        cut = _sigmoid((_logit(ranked[k - 1][0]) + _logit(lower)) / 2)
        candidate = (f1, abs(_logit(cut)), cut)
        if candidate[0] > best[0] or (candidate[0] == best[0] and candidate[1] < best[1]):
            best = candidate
    return best[2], best[0]


def choose_few_shot(runtime: Runtime, spec: AdapterSpec, splits, batch_size: int = 16,
                    progress: bool = False) -> tuple[list[tuple[str, str]], dict]:
    """The few-shot (input, answer) pairs, and the record of how they were chosen.

    Which k examples a small model sees moves its few-shot score a lot (spam F1 0.21-0.68 across
    five draws), so one draw would make a weak or a flattering baseline by chance. Each of
    ``FEW_SHOT_DRAWS`` seeded draws from the training split is scored on the validation split (its
    first ``FEW_SHOT_VALIDATION`` examples for tasks that generate), as the few-shot variant runs,
    and the best by ``FEW_SHOT_CRITERION`` is kept (the first draw on a tie). A split without
    validation examples takes the draw of the spec's seed.
    """
    k, seed = FEW_SHOT_K[spec.task], spec.training.seed
    seeds = [seed + i for i in range(FEW_SHOT_DRAWS)]
    validation = list(splits.validation)[:FEW_SHOT_VALIDATION[spec.task]]
    if not validation:
        return few_shot_pairs(spec, splits.train, k, seed), {"k": k, "seed": seed, "draws": 1}
    draws, candidates = [], []
    for draw_seed in seeds:
        shots = few_shot_pairs(spec, splits.train, k, draw_seed)
        in_batches = _with_progress(f"few-shot draw {draw_seed - seed + 1}/{len(seeds)} on validation",
                                    batch_size, progress)
        draws.append({"seed": draw_seed, **_few_shot_scores(runtime, spec, validation, shots, in_batches)})
        candidates.append(shots)
    best = max(range(len(draws)), key=lambda i: (draws[i]["score"], -i))
    return candidates[best], {"k": k, "seed": draws[best]["seed"], "draws": len(draws),
                              "criterion": _few_shot_criterion(spec) + " on the validation split",
                              "validation_examples": len(validation), "scores": draws}


def _few_shot_criterion(spec: AdapterSpec) -> str:
    kind = "classify_multi" if spec.task == "classify" and len(spec.labels) > 2 else spec.task
    return FEW_SHOT_CRITERION[kind].format(positive=spec.labels[-1] if spec.labels else "")


def _few_shot_scores(runtime: Runtime, spec: AdapterSpec, validation, shots, in_batches) -> dict:
    """One draw's scores on ``validation``; ``score`` is the one draws are chosen by."""
    kwargs = {"base": True, "examples": shots}
    if spec.task == "classify":
        result, _ = _classify(runtime, spec, validation, kwargs, in_batches)
        if len(spec.labels) > 2:
            return {"score": result["macro_f1"], **{m: result[m] for m in ("macro_f1", "accuracy")}}
        return {"score": result["f1"], **{m: result[m] for m in ("f1", "accuracy", "auroc")}}
    if spec.task == "generate":  # ROUGE only: BERTScore and perplexity would double the cost
        answers = in_batches(lambda qs, b: runtime.answer(spec.name, qs, batch_size=b, **kwargs),
                             [ex.input for ex in validation])
        result = load_metric("answer_overlap").compute(predictions=answers,
                                                           references=[ex.target for ex in validation])
        return {"score": result["rougeL"], "rougeL": result["rougeL"]}
    result, _ = _extract(runtime, spec, validation, kwargs, in_batches)
    return {"score": result["micro_field_accuracy"], "micro_field_accuracy": result["micro_field_accuracy"],
            "json_valid": result["json_valid"]}


def decision_threshold(runtime: Runtime, spec: AdapterSpec, validation, batch_size: int = 16) -> dict | None:
    """The record of the fine-tuned adapter's decision threshold: the one stored beside its weights,
    else one tuned now (and stored); None when the spec decides by argmax or nothing is trained."""
    if spec.decision != "validation_f1" or spec.name not in runtime.backend.adapter_names():
        return None
    return read_threshold_record(spec) or tune_threshold(runtime, spec, validation, batch_size)


def tune_threshold(runtime: Runtime, spec: AdapterSpec, validation, batch_size: int = 16) -> dict:
    """Tune the fine-tuned adapter's threshold on the validation split and store it beside its
    weights (``threshold.json``); the record. ``decision_threshold`` decides when to."""
    positive = spec.labels[-1]
    examples = list(validation)
    out = runtime.classify(spec.name, [ex.input for ex in examples], batch_size=batch_size)
    scores = [r.probs[positive] for r in out]
    refs = [int(ex.target == positive) for ex in examples]
    threshold, f1 = choose_threshold(scores, refs)
    at_half = load_metric("binary_classification").compute(
        predictions=[int(decide(spec.labels, r.probs, None) == positive) for r in out], references=refs,
        scores=scores)["f1"]
    record = {"label": positive, "threshold": round(threshold, 6), "criterion": f"F1 of {positive!r}",
              "split": "validation", "examples": len(examples), "positives": sum(refs),
              "f1": f1, "f1_at_argmax": at_half}
    write_text_atomic(spec.directory / THRESHOLD_FILE, json.dumps(record, indent=2) + "\n")
    return record


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _generate(runtime, spec, test, kwargs, in_batches):
    questions = [ex.input for ex in test]
    # references are the answers as trained: capped at data.max_target_words (cut at a sentence
    # end), since a 256-token answer cannot match a 4,000-word one; the card says so (card._references_text)
    references = [ex.target for ex in test]
    answers = in_batches(lambda qs, b: runtime.answer(spec.name, qs, batch_size=b, **kwargs), questions)
    result = load_metric("answer_overlap").compute(predictions=answers, references=references)
    bert = load_metric("bertscore_local").compute(predictions=answers, references=references,
                                                  device=runtime.backend.device)
    result["bertscore_f1"] = bert["f1"]
    result["bertscore_encoder"] = bert["encoder"]
    logprobs = in_batches(lambda pairs, b: runtime.answer_logprob(
        spec.name, [q for q, _ in pairs], [a for _, a in pairs], batch_size=max(1, b // 2), **kwargs),
        [(ex.input, ex.target) for ex in test])
    total_lp = sum(lp for lp, _ in logprobs)
    total_tokens = sum(n for _, n in logprobs)
    result["perplexity"] = math.exp(-total_lp / max(1, total_tokens))
    return result, answers


def _extract(runtime, spec, test, kwargs, in_batches):
    out = in_batches(lambda texts, b: runtime.extract(spec.name, texts, batch_size=b, **kwargs),
                     [ex.input for ex in test])
    result = load_metric("field_extraction").compute(
        predictions=[json.dumps(r.fields) for r in out],
        references=[json.dumps({f: ex.target.get(f) for f in spec.fields}) for ex in test],
        fields=list(spec.fields), valid=[r.valid for r in out])
    result["repaired_rate"] = sum(r.repaired for r in out) / max(1, len(out))
    result["negated_value_rate"] = negated_value_rate(out, [ex.input for ex in test])
    return result, out


def negated_value_rate(extractions, texts: Sequence[str]) -> float:
    """The share of extracted values (non-null, of valid outputs) that hold a finding their text says
    is absent: the app's ⊘ (``adapters.fields.parts_the_text_negates``). "no EGFR or ALK alterations"
    read as the biomarker "EGFR/ALK alterations" is the worst kind of wrong."""
    values = [(value, text) for r, text in zip(extractions, texts, strict=True) if r.valid
              for value in r.fields.values() if value is not None]
    return sum(bool(parts_the_text_negates(value, text)) for value, text in values) / max(1, len(values))


def _with_progress(desc: str, batch_size: int, progress: bool):
    """``in_batches(call, items)``: ``call(part, batch_size)`` over parts of a few whole batches, so
    the batches are the ones one call would make, with a progress bar over the examples."""
    from tqdm.auto import tqdm

    def in_batches(call, items: list) -> list:
        results: list = []
        part = batch_size * 4
        with tqdm(total=len(items), desc=desc, unit="ex", leave=False, disable=not progress) as bar:
            for start in range(0, len(items), part):
                results.extend(call(items[start:start + part], batch_size))
                bar.update(min(part, len(items) - start))
        return results

    return in_batches


def _confusion(refs: list[int], preds: list[int], n: int = 2) -> list[list[int]]:
    matrix = [[0] * n for _ in range(n)]
    for r, p in zip(refs, preds):
        matrix[r][p] += 1
    return matrix


def _write_few_shot(out_dir: Path, shots: list[tuple[str, str]]) -> None:
    write_lines_atomic(out_dir / FEW_SHOT_FILE,
                       (json.dumps({"input": q, "target": a}, ensure_ascii=False) + "\n" for q, a in shots))


# --- plots ---------------------------------------------------------------------------------------

def plot_results(spec: AdapterSpec, report: dict, predictions: dict, test, out_dir: Path) -> None:
    """The evaluation's plot of every variant evaluated, written atomically into ``out_dir``:
    confusion matrices for a classifier (``confusion.png``), metric bars for a generate adapter
    (``metrics.png``), exact match per field for an extractor (``fields.png``)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [v for v in VARIANTS if v in predictions]
    if not shown:
        return
    variants = {v: report["variants"][v] for v in shown}
    if spec.task == "classify":
        fig, name = _confusion_figure(plt, spec, variants), "confusion.png"
    elif spec.task == "generate":
        keys = ["rouge1", "rouge2", "rougeL", "bleu", "bertscore_f1"]
        fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
        _grouped_bars(ax, keys, {v: [m[k] for k in keys] for v, m in variants.items()})
        ax.set_title(f"{spec.name}: answer quality on {report['test_examples']} test questions")
        name = "metrics.png"
    else:
        keys = list(spec.fields)
        fig, ax = plt.subplots(figsize=(8, 3.4), dpi=110)
        _grouped_bars(ax, keys, {f"{v} (micro {m['micro_field_accuracy']:.2f})": [m["per_field"][k] for k in keys]
                                 for v, m in variants.items()}, rotation=20, legend_size=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{spec.name}: exact match per field on {report['test_examples']} test narratives")
        name = "fields.png"
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_bytes_atomic(out_dir / name, png.getvalue())


def _confusion_figure(plt, spec: AdapterSpec, variants: dict):
    """One confusion matrix a variant, titled with its accuracy and (macro) F1."""
    fig, axes = plt.subplots(1, len(variants), figsize=(3.3 * len(variants), 3.2), dpi=110)
    axes = [axes] if len(variants) == 1 else axes
    f1 = "f1" if len(spec.labels) == 2 else "macro_f1"
    for ax, (v, m) in zip(axes, variants.items()):
        matrix = m["confusion"]
        ax.imshow(matrix, cmap="Blues")
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(j, i, count, ha="center", va="center", fontsize=12 if len(matrix) < 4 else 8)
        ticks = range(len(spec.labels))
        ax.set_xticks(ticks, [f"pred {label}" for label in spec.labels], rotation=30 if len(matrix) > 2 else 0)
        ax.set_yticks(ticks, spec.labels)
        ax.set_title(f"{v}\nacc {m['accuracy']:.3f}  {f1.replace('_', ' ')} {m[f1]:.3f}", fontsize=9)
    return fig


def _grouped_bars(ax, keys: list[str], series: dict[str, list[float]], rotation: int = 0,
                  legend_size: int | None = None) -> None:
    """One group of bars per key, one bar in each group per series (its label in the legend)."""
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(keys))], values, width, label=label)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(keys))], keys, rotation=rotation)
    ax.legend(fontsize=legend_size)
