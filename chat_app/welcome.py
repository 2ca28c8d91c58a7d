"""``chainlit.md``, the app's readme page, rendered from the adapter specs and each adapter's
``metrics.json`` (written by training's evaluation) at start-up: no number in it is typed by hand.

The app serves the page it renders from memory, so it always describes the catalogue and base being
served, and serving another catalogue never rewrites the project's tracked ``chainlit.md`` (which
``python -m chat_app.welcome`` refreshes for the shipped catalogue, and a test keeps current)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from adapters.catalog import shown_path
from adapters.files import write_text_atomic
from adapters.metrics_file import adapter_metrics, check_targets, measured_variants, shown_value, variant_title
from adapters.runtime import eval_command, train_command
from adapters.spec import AdapterSpec
from chat_app.handlers import is_medical, profiles_for

log = logging.getLogger("adapterlab.chat_app")

GENERATED_NOTE = ("*This page is generated when the app starts, from each adapter's `adapter.yaml` and "
                  "`metrics.json` (chat_app/welcome.py), so it describes the adapters served; edits to "
                  "chainlit.md are not shown.*")


def read_metrics(spec: AdapterSpec) -> dict | None:
    """The adapter's metrics.json, or None when it has none or it is broken: the page then says the
    adapter is not evaluated, and the log says why (the app starts either way)."""
    try:
        return adapter_metrics(spec)
    except ValueError as exc:
        log.warning("%s; the app's page shows no metrics for %s", exc, spec.name)
        return None


def metrics_section(spec: AdapterSpec, metrics: dict | None) -> str:
    """Headline metrics as a table (fine-tuned vs base and few-shot), or the "not trained yet" line."""
    written = f"writing `{shown_path(spec.directory / 'metrics.json')}`; this page shows them at the next start."
    if not metrics and spec.has_weights:  # new weights: training again would throw them away
        return f"Metrics: weights present, not evaluated yet — `{eval_command(spec)}` evaluates them, {written}"
    if not metrics:
        return f"Metrics: **not trained yet** — `{train_command(spec)}` trains and evaluates it, {written}"
    headline = metrics.get("headline") or {}
    variants = metrics["variants"]
    keys = list(headline) or sorted({k for v in variants.values() for k, x in v.items()
                                     if isinstance(x, (int, float)) and not isinstance(x, bool)})
    shown = measured_variants(metrics)
    if not keys or not shown:
        return "Metrics: `metrics.json` holds no headline metrics."
    lines = [f"| metric | {' | '.join(variant_title(v, metrics) for v in shown)} |", "|---|" + "---|" * len(shown)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(shown_value(variants[v].get(key)) for v in shown) + " |")
    where = f"held-out test split, {metrics.get('test_examples', '?')} examples"
    when = metrics.get("evaluated_at")
    intro = f"Headline metrics ({where}{', evaluated ' + str(when) if when else ''}):"
    met = "".join(f"\n- {'✅' if t['met'] else '❌'} {t['metric']} {t['target']}: measured {shown_value(t['value'])}"
                  for t in check_targets(spec, variants))
    return intro + "\n\n" + "\n".join(lines) + (f"\n\nTargets:{met}" if met else "")


PROFILE_LINES = {  # the hand-made profiles' lines; another catalogue's adapters are described by their specs
    "Chat": "the plain base model.",
    "Spam check": "an SMS → spam/ham with a probability for each; attach a `.txt`/`.csv`/`.jsonl` for a batch.",
    "Medical Q&A": "streamed answers, multi-turn.",
    "Oncology extraction": "7 fields as a table and JSON; attach a `.txt`/`.csv`/`.jsonl` for a batch.",
    "Compare": "base vs few-shot vs fine-tuned on the same input.",
}
MEDICAL_WARNING = ("> ⚠️ **Nothing here is for clinical decisions.** This is a teaching and demonstration app on a "
                   "135M-parameter model: it is often wrong, sometimes confidently. Medical answers are not medical "
                   "advice; the oncology adapter is trained on synthetic data.")
WARNING = ("> ⚠️ **A teaching and demonstration app.** Small models are often wrong, sometimes confidently: "
           "check what they say.")


def render_chainlit_md(specs: Mapping[str, AdapterSpec], base_model: str) -> str:
    """The page's markdown. A paragraph is one line: Chainlit's readme dialog shows every line break."""
    sections = []
    for name, spec in specs.items():
        card = shown_path(spec.directory / "README.md")
        sections.append(f"### {spec.title} (`{name}`, {spec.task})\n\n{spec.description}\n\n"
                        f"{metrics_section(spec, read_metrics(spec))}\n\n"
                        f"Limitations: {spec.limitations or f'see the model card in {card}.'}\n")
    profiles = "\n".join(f"- **{p.name}** — {PROFILE_LINES.get(p.name) or specs[p.adapter].description}"
                         for p in profiles_for(specs))
    warning = MEDICAL_WARNING if any(is_medical(spec) for spec in specs.values()) else WARNING
    return f"""# adapterlab

{warning}

One base model (`{base_model}`) with LoRA adapters, side by side. Pick a **chat profile** at the top:

{profiles}

The ⚙️ settings (next to the message box) set temperature, top-p, the number of new tokens, a system prompt override, and can show the exact rendered prompt with its token count.

## Adapters

{chr(10).join(sections)}

## Privacy

Conversations are stored in this server's chat history database (and feedback with them). Message text is not written to the server logs.

{GENERATED_NOTE}
"""


def write_chainlit_md(root: str | Path, specs: Mapping[str, AdapterSpec], base_model: str) -> Path:
    """Write ``chainlit.md`` into the app root if its content changed (atomically)."""
    path = Path(root) / "chainlit.md"
    text = render_chainlit_md(specs, base_model)
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except OSError:
        pass
    return write_text_atomic(path, text)


def serve(text: str) -> bool:
    """Make Chainlit's readme endpoint answer ``text`` in every language, instead of reading
    chainlit.md from the app root; False if this Chainlit version reads it some other way."""
    try:
        import chainlit.server as server
    except ImportError:  # pragma: no cover - chainlit is a dependency
        return False
    if not callable(getattr(server, "get_markdown_str", None)):
        return False

    def get_markdown_str(root: str, language: str) -> str:
        return text

    server.get_markdown_str = get_markdown_str
    return True


if __name__ == "__main__":  # python -m chat_app.welcome: refresh chainlit.md after an evaluation
    from adapters.base_models import DEFAULT_BASE
    from adapters.catalog import CATALOG_DIR, load_catalog

    print(write_chainlit_md(CATALOG_DIR.parent, load_catalog(CATALOG_DIR), DEFAULT_BASE))
