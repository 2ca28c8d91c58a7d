"""What the app says, as plain functions: profiles and starters, input checks and the markdown of every
answer (an uploaded file is read into texts in ``uploads``). No Chainlit and no model here, so all of it
is unit-tested without a browser.

``app.py`` calls the runtime (through ``chains``) and sends what these functions return.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from adapters.field_match import field_hits, micro_field_accuracy, per_field_accuracy
from adapters.fields import parts_not_in_text, parts_the_text_negates, support_in_text
from adapters.catalog import shown_path
from adapters.runtime import CHAT_DEFAULTS, FEW_SHOT_FILE, eval_command, read_few_shot, train_command
from adapters.spec import AdapterSpec
from adapters.strict_json import loads_strict
from chat_app.page_text import shown as directives_kept
from chat_app.problems import InputProblem
from chat_app.uploads import Upload, rows_were, safe_name, shortened

NOT_MEDICAL_ADVICE = ("⚕️ **Not medical advice.** Answers come from a 135M-parameter demo model that can "
                      "be wrong or invent facts. Ask a health professional about your own situation.")
NOT_CLINICAL_COMPARE = ("🧪 **Not for clinical decisions.** Three answers from a 135M-parameter model, side by "
                        "side: compare them, do not rely on them.")
NOT_CLINICAL = ("🧪 **Not for clinical decisions.** A demo on synthetic narratives: check every field "
                "against the source text.")
# a walkthrough asked for a metformin dose ("usually 100 to 200 mg daily") and whether lisinopril is safe
# in pregnancy ("Yes, levalopril is generally safe"; it is contraindicated), and got the general notice only
# (not "how many": "How many people are affected by …?" is one of MedQuAD's own question types)
DOSE_OR_PREGNANCY = re.compile(r"\b(dos(e|es|age|ing)|how much|mg|milligrams?|mcg|overdose|pregnan\w*|"
                               r"breast ?feed\w*|nursing|trimester)\b", re.IGNORECASE)
DOSE_OR_PREGNANCY_NOTICE = ("⚠️ **Doses, and safety in pregnancy or breastfeeding, are where this model is most "
                            "dangerous:** it states them confidently and wrongly (asked whether lisinopril is safe in "
                            "pregnancy, it said yes; it is not). Take them from a pharmacist or doctor, never from here.")
MAX_MESSAGE_CHARS = 200_000  # beyond this a message is cut before tokenizing (the model reads far less)
TYPED_TEXT_WITH_FILES = ("ℹ️ With a file attached, the file is what is processed; the text you typed was "
                         "not. Send it on its own to run it.")

PREVIEW_ROWS = 20  # rows of a batch shown in the chat message; the CSV holds all of them
FILES_KEY = "files"  # a user message's metadata key naming the files sent with it


# --- profiles ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Starter:
    label: str
    message: str
    command: str | None = None


@dataclass(frozen=True)
class Profile:
    name: str  # what the profile picker shows
    task: str  # chat | classify | generate | extract | compare
    adapter: str | None
    description: str
    starters: tuple[Starter, ...] = ()
    default: bool = False


ONCOLOGY_EXAMPLE = ("58-year-old woman with stage IIIA lung adenocarcinoma. NGS showed an EGFR exon 19 "
                    "deletion; PD-L1 TPS 5%. She was started on osimertinib and CT after three months "
                    "showed a partial response, with a new lesion in the right femur consistent with bone "
                    "metastasis.")
ONCOLOGY_EXAMPLE_2 = ("Follow-up note: 66-year-old man with metastatic colorectal adenocarcinoma, KRAS G12D "
                      "mutated, microsatellite stable, CEA 48 ng/mL. Liver metastases. Receiving FOLFOX plus "
                      "bevacizumab; restaging CT shows stable disease.")
SPAM_EXAMPLE = "URGENT! You have won a £1,000 cash prize. Call 09061234567 now to claim. T&Cs apply."
HAM_EXAMPLE = "Hey, are we still on for dinner at 7? I can pick you up on the way."

COMPARE_ADAPTERS = ("spam", "medquad", "oncology")
DEFAULT_COMPARE = COMPARE_ADAPTERS[0]
# Compare's command buttons: the lucide icon Chainlit draws for each, and the emoji like it that text
# naming the buttons shows beside the name, since a phone shows the icons alone
COMMAND_ICONS = {"spam": ("shield-alert", "🛡️"), "medquad": ("stethoscope", "🩺"), "oncology": ("microscope", "🔬")}
COMMAND_BUTTONS = ", ".join(f"{COMMAND_ICONS[name][1]} {name}" for name in COMPARE_ADAPTERS)

PROFILES: tuple[Profile, ...] = (
    Profile("Chat", "chat", None,
            "Talk to the plain base model, no adapter (the status panel names it). Settings change the "
            "sampling and the system prompt.",
            # a starter the base model answers: asked what a LoRA adapter is, it described LoRa radio
            (Starter("Explain fine-tuning", "Explain in two sentences what fine-tuning a language model means."),
             Starter("Reminder text", "Write a short, friendly SMS reminding a patient of a dentist "
                                      "appointment on Monday at 9am."),
             Starter("Capital cities", "What is the capital of France, and of Japan?")),
            default=True),
    Profile("Spam check", "classify", "spam",
            "Classify an SMS as spam or ham with a probability for each label. Attach a .txt (one "
            "message a line), .csv (with a `text` column) or .jsonl (a `text` key) to classify a batch.",
            (Starter("Prize scam", SPAM_EXAMPLE),
             Starter("Dinner plans", HAM_EXAMPLE),
             Starter("Weekly draw", "FREE entry into our weekly draw! Text WIN to 80086 to receive your "
                                    "prize. 18+ only."))),
    Profile("Medical Q&A", "generate", "medquad",
            "Consumer health questions answered in the style of NIH patient pages (MedQuAD). "
            "Not medical advice.",
            (Starter("Glaucoma symptoms", "What are the symptoms of glaucoma?"),
             Starter("Type 2 diabetes", "How is type 2 diabetes treated?"),
             Starter("High blood pressure", "What causes high blood pressure?"))),
    Profile("Oncology extraction", "extract", "oncology",
            "Extract cancer type, stage, mutation, biomarker, treatment, response and metastasis site "
            "from a clinical narrative as JSON. Synthetic demo: not for clinical decisions.",
            (Starter("Lung adenocarcinoma", ONCOLOGY_EXAMPLE),
             Starter("Colorectal follow-up", ONCOLOGY_EXAMPLE_2))),
    Profile("Compare", "compare", None,
            "The same input through the base model, the few-shot prompt and the fine-tuned adapter, "
            "side by side with latency and token counts. Pick the adapter with the buttons under the "
            f"message box ({COMMAND_BUTTONS}); it stays picked for the next messages.",
            (Starter("Spam: three ways", SPAM_EXAMPLE, "spam"),
             Starter("Medical: three ways", "What is glaucoma?", "medquad"),
             Starter("Oncology: three ways", ONCOLOGY_EXAMPLE, "oncology"))),
)


def profiles_for(specs: Mapping[str, AdapterSpec]) -> tuple[Profile, ...]:
    """The profiles the app offers for a catalogue: Chat; the hand-made profile of each shipped
    adapter it holds; one made from the spec (title, task, description) for each other adapter;
    and Compare when it holds the three adapters Compare's buttons pick from."""
    made = {p.adapter for p in PROFILES if p.adapter}
    offered = [p for p in PROFILES if p.task != "compare" and (p.adapter is None or p.adapter in specs)]
    taken = {p.name for p in PROFILES}
    for name, spec in sorted(specs.items()):
        if name not in made:
            title = spec.title if spec.title not in taken else f"{spec.title} ({name})"
            taken.add(title)
            batch = (" Attach a .txt (one text a line), .csv (a `text` column) or .jsonl (a `text` key) for a batch."
                     if spec.task in ("classify", "extract") else "")
            offered.append(Profile(title, spec.task, name, spec.description + batch, _starters_of(spec)))
    if all(name in specs for name in COMPARE_ADAPTERS):
        offered += [p for p in PROFILES if p.task == "compare"]
    return tuple(offered)


def _starters_of(spec: AdapterSpec) -> tuple[Starter, ...]:
    """Up to three inputs of the adapter's few-shot examples (evaluation stores them), as starters."""
    try:
        examples = read_few_shot(spec)
    except (OSError, ValueError, KeyError, TypeError):  # a file edited by hand: no starters, not a broken app
        return ()
    return tuple(Starter(" ".join(text.split()[:4]) + ("…" if len(text.split()) > 4 else ""), text)
                 for text, _ in examples[:3])


def profile_named(name: str | None, profiles: Sequence[Profile] = PROFILES) -> Profile:
    """The profile called ``name``; the default one for None or an unknown name."""
    for p in profiles:
        if p.name == name:
            return p
    return next(p for p in profiles if p.default)


def is_medical(spec: AdapterSpec | None) -> bool:
    """Whether answers carry the medical notices (the spec's ``tags`` say ``medical``)."""
    return spec is not None and "medical" in spec.tags


# --- adapter state -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    base: bool
    label: str  # shown with every answer
    problem: str | None = None  # set when it cannot run: the message to show instead


def not_trained_message(spec: AdapterSpec) -> str:
    return (f"🚧 **The `{spec.name}` adapter is not trained yet** (no weights in "
            f"`{shown_path(spec.directory)}/`). Train it with `{train_command(spec)}`, then restart the "
            f"app. Meanwhile, switch on *Use the base model* in the settings to try the {spec.name} "
            "prompt on the base model.")


def choose_variant(spec: AdapterSpec, trained: bool, use_base: bool) -> Variant:
    """Fine-tuned when trained and wanted; the base model with the adapter's prompt otherwise."""
    if use_base:
        why = "" if trained else " — adapter not trained yet"
        return Variant(True, f"base model + {spec.name} prompt{why}")
    if not trained:
        return Variant(False, "fine-tuned", not_trained_message(spec))
    return Variant(False, f"fine-tuned `{spec.name}` adapter")


def adapter_status_line(spec: AdapterSpec, trained: bool) -> str:
    if trained:
        return f"✅ `{spec.name}` adapter: trained and loaded."
    return (f"🚧 `{spec.name}` adapter: **not trained yet** — answers come from the base model with the "
            f"`{spec.name}` prompt until it is (`{train_command(spec)}`).")


def loading_message(elapsed: float) -> str:
    return (f"⏳ Loading the base model and adapters… ({elapsed:.0f} s so far; the first start converts "
            "the embedded model, about 30 s). You can type already: your message is answered as soon "
            "as the model is ready.")


WAIT_NOTICE_S = 2.0  # an answer with no text after this long says why, when the model is busy


def waiting_message(streams: int) -> str:
    """What an answer shows while it waits for the model, which other people's requests hold."""
    others = f" ({streams} answers waiting, yours included)" if streams > 1 else ""
    return f"⏳ The model is busy with other requests{others}; your answer starts as soon as it is free."


def ready_message(seconds: float | None, adapters: Sequence[str]) -> str:
    loaded = ", ".join(f"`{a}`" for a in adapters) or "none trained yet"
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    return f"✅ Model ready{took}. Adapters loaded: {loaded}."


def load_failed_message(error: str) -> str:
    return (f"❌ **The model could not be loaded**: {error}\n\nCheck the set-up (`./dev start` prepares "
            "the embedded model) and restart the app.")


# --- input checks --------------------------------------------------------------------------------

EMPTY_MESSAGE = ("✏️ The message is empty. Type some text, or attach a .txt (one message a line), "
                 ".csv (with a `text` column) or .jsonl (a `text` key) file.")


def text_to_send(text: str | None) -> tuple[str, list[str]]:
    """The message as the model gets it (cut to MAX_MESSAGE_CHARS) and notes for the user; refuses
    empty text."""
    text = text or ""
    if not text.strip():
        raise InputProblem(EMPTY_MESSAGE)
    notes = []
    if len(text) > MAX_MESSAGE_CHARS:
        notes.append(f"Your message has {len(text):,} characters; only the first {MAX_MESSAGE_CHARS:,} "
                     "were read.")
        text = text[:MAX_MESSAGE_CHARS]
    return text, notes


def one_message_note(text: str) -> str:
    """A note for a classified text of several lines: it was scored as one message, which a paste of
    three SMS, one a line, gave no hint of (a .txt upload scores each line)."""
    lines = sum(1 for line in text.splitlines() if line.strip())
    if lines < 2:
        return ""
    return (f"ℹ️ Your text has {lines} lines and was classified as one message. To classify each line on "
            "its own, attach them as a `.txt` file (one message a line).")


def truncation_note(spec: AdapterSpec | None, text: str) -> str:
    limit = f"{spec.max_input_tokens} tokens" if spec else "the model's context"
    return (f"✂️ Your text ({len(text):,} characters) is longer than this adapter reads ({limit}); "
            "only its start and its end were read, the middle left out.")


CHAT_DELETED = ("🗑 This chat was deleted, so nothing more of it is kept, and it is not answered. "
                "Start a new chat (the pencil at the top left).")
CHAT_GONE = ("🗑 The chat at this address no longer exists: it was deleted, or the address is wrong. "
             "This is a new chat: type a message to start it.")


# --- uploads -------------------------------------------------------------------------------------

def files_not_read(typed: bool) -> str:
    """What a profile without batch uploads says of files sent to it: the typed text is answered."""
    then = "your message is answered below." if typed else "type your message instead."
    return ("📎 Batch uploads work in the **Spam check** and **Oncology extraction** profiles; here the "
            f"file was not read, and {then}")


def attached_files_text(names: Sequence[str]) -> str:
    """What a message of files sent without text says in its bubble: the files' names (as plain text:
    the bubble is not markdown, .chainlit/config.toml's ``user_message_markdown``)."""
    return "📎 " + ", ".join(safe_name(name) for name in names)


# --- markdown helpers ----------------------------------------------------------------------------

NO_LINK = "\u2060"  # WORD JOINER: invisible, and no letter, digit or punctuation that a link pattern reads


def cell(value) -> str:
    """A value as one markdown table cell: escaped, on one line; None as *null*."""
    if value is None:
        return "*null*"
    text = str(value).replace("\r", " ").replace("\n", " ").strip()
    text = re.sub(r"([\\`*_|<>\[\]#~])", r"\\\1", text)
    # a bare address stays text: the page's markdown made "http://…", "www.…" and "a@b.c" links that open
    # in a new tab (a spam upload's phishing link, one click from the label that calls it spam; its
    # shortened text "…" went into the link's address too). A backslash escape does not stop it (the
    # page links the parsed text again): an invisible word joiner breaks each pattern
    text = re.sub(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", NO_LINK, text)
    return directives_kept(text) or "*empty*"  # "EGFR:negative" showed as "EGFR" (page_text.shown)


def with_fences_closed(text: str) -> str:
    """``text`` with a code block it left open (an answer cut at its token limit, or stopped) closed,
    so what follows it (the answer's footer) is not shown as code."""
    open_fence = None
    for line in text.splitlines():
        found = re.match(r" {0,3}(`{3,}|~{3,})", line)
        if not found:
            continue
        fence = found.group(1)
        if open_fence is None:
            open_fence = fence
        elif fence[0] == open_fence[0] and len(fence) >= len(open_fence) and not line.strip()[len(fence):]:
            open_fence = None
    return text if open_fence is None else f"{text.rstrip()}\n{open_fence}"


def code_block(text: str, language: str = "") -> str:
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{fence}{language}\n{text}\n{fence}"


def percent(p: float) -> str:
    """``p`` as a percentage to one decimal; never "0.0%" or "100.0%" for a probability that is
    neither (a reader takes 0.0% for impossible)."""
    if 0 < p < 0.0005:
        return "<0.1%"
    if 0.9995 <= p < 1:
        return ">99.9%"
    return f"{100 * p:.1f}%"


def bar(p: float, width: int = 20) -> str:
    filled = 0 if not math.isfinite(p) else round(max(0.0, min(1.0, p)) * width)
    return "█" * filled + "░" * (width - filled)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- answers -------------------------------------------------------------------------------------

def run_facts(seconds: float, prompt_tokens: int, output_tokens: int | None = None) -> str:
    """How long a classification or extraction took and the tokens it read (and wrote), as the
    footer of a streamed answer says them: "total 0.21 s · 52 prompt tokens, 74 generated"."""
    return f"{_total_text(seconds)} · {_tokens_text(prompt_tokens, output_tokens)}"


def _total_text(seconds: float) -> str:
    # under 10 s with the first token's precision: "first 0.54 s · total 0.5 s" read odd
    return f"total {seconds:.2f} s" if seconds < 10 else f"total {seconds:.1f} s"


def _tokens_text(prompt_tokens: int, output_tokens: int | None) -> str:
    return f"{prompt_tokens} prompt tokens" + (f", {output_tokens} generated" if output_tokens is not None else "")


def classification_markdown(result: dict, labels: Sequence[str], variant: str, facts: str = "") -> str:
    """``facts``: ``run_facts`` of the call, put after the variant's name."""
    probs = result["probs"]
    label = result["label"]
    rows = [[f"**{cell(name)}**" if name == label else cell(name), percent(probs[name]), f"`{bar(probs[name])}`"]
            for name in labels]
    threshold = result.get("threshold")
    lines = [f"### {cell(label).upper()} · {decision_text(probs, labels, threshold)}",
             table(["label", "probability", ""], rows),
             f"*{variant}{' · ' + facts if facts else ''}*"]
    if threshold is not None:  # the adapter's threshold tuned on validation data, not 50%
        lines.insert(2, f"Decided with this adapter's tuned threshold: **{cell(labels[-1])}** when "
                        f"p({cell(labels[-1])}) ≥ {percent(threshold)}.")
    return "\n\n".join(lines)


def decision_text(probs: dict[str, float], labels: Sequence[str], threshold: float | None) -> str:
    """What decided the label: its own probability (the most probable label), or, with a tuned
    threshold, the positive label's probability against it. A bare "27.5%" beside SPAM would read
    as the confidence in spam."""
    if threshold is None:
        return percent(max(probs.values()))
    positive = labels[-1]
    side = "≥" if probs[positive] >= threshold else "<"
    return f"p({cell(positive)}) {percent(probs[positive])} {side} threshold {percent(threshold)}"


# where to look, not whether to trust: on the oncology test split the fine-tuned adapter's values with
# every word in the text matched the reference 81% of the time, some words 46%, no word 83% (README)
SUPPORT = {"all": "✓ every word", "some": "◐ some words", "none": "○ no word: inferred (or invented)", None: ""}


# "hello" came back as a melanoma on surgery: every value can be invented when the text holds none
NOTHING_BACKED = ("⚠️ **No value has a word in your text.** The model filled the fields anyway: they are "
                  "most likely invented. Is this the kind of text the adapter was made for?")


def extraction_markdown(result: dict, fields: Sequence[str], variant: str, text: str, facts: str = "") -> str:
    """The fields as a table, with how far each value's words occur in ``text`` (the input; the part
    the model read, when it was cut), then as JSON; the model's raw output when it needed repair.
    ``facts``: ``run_facts`` of the call, put after the variant's name."""
    text = text_read(text, result)  # a word past the cut did not back the value
    rows = [[f"`{name}`", cell(result["fields"].get(name)), _support_note(result["fields"].get(name), text)]
            for name in fields]
    # the warning first: under "✅ Valid JSON" it read as a detail of an answer already passed
    parts = [*_unbacked_warning([v for v in result["fields"].values() if v is not None], text),
             *_negated_warning(result["fields"], text),
             extraction_flag(result),
             table(["field", "value", "in your text"], rows),
             "JSON (copy with the button on the block):",
             code_block(json.dumps(result["fields"], ensure_ascii=False, indent=2), "json")]
    if not result["valid"] or result["repaired"]:
        parts.append("The model's output as it came:")
        parts.append(code_block(result["raw"] or "(empty)", "text"))
    parts.append(f"*{variant}{' · ' + facts if facts else ''}*")
    return "\n\n".join(parts)


def _unbacked_warning(values: Sequence[str], text: str) -> list[str]:
    """A warning when every value, or most of them (two or more), have no word in ``text``: a chest
    pain note came back as a stage IV lung adenocarcinoma, with one value (the troponin) in the text,
    which had kept the warning of "no value" away."""
    unbacked = sum(support_in_text(v, text) == "none" for v in values)
    if values and unbacked == len(values):
        return [NOTHING_BACKED]
    if unbacked >= 2 and unbacked * 2 > len(values):
        return [f"⚠️ **{unbacked} of {len(values)} values have no word in your text** (○): they are most likely "
                "invented. Is this the kind of text the adapter was made for?"]
    return []


def _negated_warning(fields: Mapping[str, str | None], text: str) -> list[str]:
    """A warning naming the fields whose value the text says is absent (``parts_the_text_negates``):
    "no EGFR or ALK alterations" read as the biomarker "EGFR/ALK alterations", marked ✓ every word."""
    negated = [f"`{name}`" for name, value in fields.items() if parts_the_text_negates(value, text)]
    if not negated:
        return []
    one = len(negated) == 1
    return [f"⚠️ **{' and '.join(negated)} {'holds a finding' if one else 'hold findings'} your text says "
            f"{'is' if one else 'are'} absent** ({NEGATED_MARK} in the table): the model may have copied what "
            f"the text rules out. Check {'it' if one else 'them'} against the quoted words."]


def _support_note(value: str | None, text: str) -> str:
    negated = parts_the_text_negates(value, text)
    if negated and negated[0][0] == (value or "").strip():  # the whole value: a ✓ beside it would read as "backed"
        return f"{NEGATED_MARK} every word, but the text says “{cell(shortened(negated[0][1], 80))}”"
    note = SUPPORT[support_in_text(value, text)]
    missing = parts_not_in_text(value, text)
    said = "; ".join(f"{cell(part)}: the text says “{cell(shortened(phrase, 80))}”" for part, phrase in negated)
    return (note + (f" (no word in the text: {cell(', '.join(missing))})" if missing else "")
            + (f" · {NEGATED_MARK} {said}" if said else ""))


def _not_in_text(fields: Sequence[str], values: Mapping, text: str) -> str:
    """The CSV's ``not_in_text``: fields with no word in the text, and list items with none."""
    notes = []
    for f in fields:
        if support_in_text(values.get(f), text) == "none":
            notes.append(f)
        elif missing := parts_not_in_text(values.get(f), text):
            notes.append(f"{f}: {', '.join(missing)}")
    return "; ".join(notes)


def _negated_in_text(fields: Sequence[str], values: Mapping, text: str) -> str:
    """The CSV's ``negated_in_text``: fields whose value (or item of it) the text says is absent, with
    the text's words that say so: "biomarker: EGFR/ALK alterations (no EGFR or ALK alterations)"."""
    return "; ".join(f"{f}: {part} ({phrase})" for f in fields
                     for part, phrase in parts_the_text_negates(values.get(f), text))


def extraction_flag(result: dict) -> str:
    if result.get("cut_at"):
        return (f"⌛ **Cut at the {result['cut_at']}-token limit** (⚙️ max new tokens): the model had not "
                "finished, so fields after the cut are null because they were never written, not because "
                "the text lacks them. Raise the limit and send again.")
    if not result["valid"]:
        # the one reason parse_fields gives (adapters/fields.py) is this sentence's first half
        return ("❌ **Invalid output**: the model did not produce a JSON object, so every field is null "
                "(nothing is invented).")
    if result["repaired"]:
        return ("⚠️ **Repaired output**: the model's JSON needed repair (cut from surrounding text, closed, "
                "or keys added/dropped/converted). Check the fields against the text.")
    return ("✅ Valid JSON, no repair needed. That is the format, not the facts: check each value "
            "against your text (the last column).")


def generated_tokens(count_tokens: Callable[[str], int], answer: str, cut_at: int | None,
                     limit: int | None = None) -> int:
    """How many tokens an answer took: the limit when it was cut there, else its text counted again,
    never more than ``limit`` (text counted again can differ from the tokens drawn: 33 against a
    32-token limit after sampling, an extraction's 81 against 80)."""
    if cut_at is not None:
        return cut_at
    count = count_tokens(answer) if answer else 0
    return min(count, limit) if limit else count


def medical_risk_notice(question: str) -> str | None:
    """A stronger notice under a medical answer to a question about a dose or about pregnancy."""
    return DOSE_OR_PREGNANCY_NOTICE if DOSE_OR_PREGNANCY.search(question) else None


def generation_footer(variant: str, seconds: float | None, first: float | None, prompt_tokens: int,
                      output_tokens: int | None, truncated: bool, medical: bool,
                      cut_at: int | None = None, stopped: str | None = None,
                      message_cut_to: int | None = None, turns_dropped: int = 0,
                      sampling: tuple[float, float] | None = None) -> str:
    """The line under an answer; ``cut_at``: the max-new-tokens limit the answer was cut at;
    ``stopped``: why it was stopped ("stopped by you"); ``message_cut_to`` / ``turns_dropped``: what of the input was
    cut to fit (``truncated`` alone: something was); ``sampling``: the (temperature, top-p) it ran with."""
    bits = [variant]
    if sampling is not None:  # an answer at temperature 1.2 reads as word salad: say why
        temperature, top_p = sampling
        bits.append("greedy" if temperature == 0 else f"temperature {temperature:g}, top-p {top_p:g}")
    if first is not None:
        bits.append(f"first token {first:.2f} s")
    if seconds is not None:
        bits.append(_total_text(seconds))
    bits.append(_tokens_text(prompt_tokens, output_tokens))
    if message_cut_to is not None:
        bits.append(f"only {message_cut_to:,} tokens of your message were read, its start and its end "
                    "(the middle was left out)")
    if turns_dropped:
        bits.append(f"the {turns_dropped} oldest message{'s' if turns_dropped > 1 else ''} left out to fit the context")
    if truncated and message_cut_to is None and not turns_dropped:
        bits.append("earlier turns or the message were cut to fit the context")
    if cut_at is not None:
        bits.append(f"cut at the {cut_at}-token limit (⚙️ max new tokens)")
    if stopped:
        bits.append(stopped)
    footer = "*" + " · ".join(bits) + "*"
    if medical:
        footer += "\n\n" + NOT_MEDICAL_ADVICE
    return footer


# --- batches -------------------------------------------------------------------------------------

def batch_rows(task: str, texts: Sequence[str], results: Sequence[dict], labels: Sequence[str] = (),
               fields: Sequence[str] = ()) -> tuple[list[str], list[list]]:
    """Header and rows of a batch result (plain values: for the CSV and the table)."""
    if task == "classify":
        header = ["text", "label", *[f"p_{label}" for label in labels], "truncated"]
        rows = [[t, r["label"], *[round(r["probs"][label], 6) for label in labels], r["truncated"]]
                for t, r in zip(texts, results, strict=True)]
    else:
        header = ["text", *fields, "valid", "repaired", "truncated", "cut_at_tokens", "not_in_text", "negated_in_text"]
        rows = [[t, *[r["fields"].get(f) for f in fields], r["valid"], r["repaired"], r["truncated"], r.get("cut_at"),
                 _not_in_text(fields, r["fields"], text_read(t, r)), _negated_in_text(fields, r["fields"], text_read(t, r))]
                for t, r in zip(texts, results, strict=True)]
    return header, rows


def results_file_name(file_name: str, adapter: str, names_sent_together: Sequence[str] = ()) -> str:
    """The download name of an upload's results: ``notes-oncology-results.csv`` for ``notes.jsonl``,
    with the file's extension kept when another file sent with it has the same stem (``notes.jsonl``
    and ``notes.csv`` had both given ``notes-oncology-results.csv``)."""
    path = PurePath(file_name)
    stem = path.stem or "upload"
    if sum(PurePath(other).stem == path.stem for other in names_sent_together) > 1 and path.suffix:
        stem = f"{stem}-{path.suffix.lstrip('.')}"
    return f"{stem}-{adapter}-results.csv"


def results_csv(header: Sequence[str], rows: Sequence[Sequence], upload: Upload | None = None) -> bytes:
    """CSV bytes (UTF-8 with BOM so spreadsheet programs read it right); None becomes empty. With the
    ``upload``, each row starts with its line or row number in the file and the file's other
    columns (an id, a patient number), so results join back to the records they came from, and the
    fields are separated as the uploaded CSV's were (a spreadsheet set to semicolons opens it)."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=upload.delimiter if upload is not None else ",")
    lead = [upload.row_name, *upload.columns] if upload is not None else []
    # a file's own column named like a result ("label": gold labels) or like the row number ("row")
    # is kept as file_label, so that the CSV never has two columns of one name
    taken = {name.lower() for name in [*header, *lead[:1]]}
    writer.writerow([*(f"file_{c}" if i and c.lower() in taken else c for i, c in enumerate(lead)), *header])
    for i, row in enumerate(rows):
        source = [upload.rows[i], *upload.values[i]] if upload is not None else []
        writer.writerow([*source, *("" if v is None else v for v in row)])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


# chat history keeps message text, not files (chat_app/persistence.py): said before it is too late
RESULTS_FILE_NOTE = ("⬇️ Download the CSV while this chat is open: a chat reopened from the history keeps "
                     "this message, not the file.")


def _row_number(n: int, row: Sequence, header: Sequence[str]) -> str:
    """A batch row's number in the file, marked ✂️ when its text was cut to what the adapter reads."""
    return f"{n:,} ✂️" if row[header.index("truncated")] else f"{n:,}"


def batch_start_message(name: str, upload: Upload) -> str:
    """What a batch says while it starts: how many texts, and when the file holds more, that only
    the first ones are done (said at the end only, a 300-row file looked processed whole)."""
    count = len(upload.texts)
    if upload.total > count:
        return (f"⏳ Processing the first {count:,} of the {upload.total:,} texts in `{safe_name(name)}` (the "
                "limit for one upload on this server)…")
    return f"⏳ Processing {count:,} text{'' if count == 1 else 's'} from `{safe_name(name)}`…"


def batch_progress_message(name: str, upload: Upload, done: int) -> str:
    of_file = f" (the first {len(upload.texts):,} of {upload.total:,})" if upload.total > len(upload.texts) else ""
    return f"⏳ Processed {done:,} of {len(upload.texts):,} texts{of_file} from `{safe_name(name)}`…"


def text_read(text: str, result: dict) -> str:
    """The part of ``text`` an extraction read: all of it, unless it was cut to fit."""
    return result.get("text_read") or text


def batch_markdown(task: str, name: str, upload: Upload, header: Sequence[str], rows: Sequence[Sequence],
                   variant: str, seconds: float, texts_read: Sequence[str] | None = None,
                   agreement: Agreement | None = None) -> str:
    """The batch's message: how the file was read, counts, the agreement with the file's references
    when it has some, a table of its first rows, then notes on the answers. ``texts_read``: each text
    as the model read it (cut to fit), for the marks of values with no word in it; else the texts."""
    shown = rows[:PREVIEW_ROWS]
    summary = f"### {len(rows):,} text{'' if len(rows) == 1 else 's'} from `{safe_name(name)}` ({upload.source_name})"
    parts = [summary, *(f"ℹ️ {note}" for note in upload.notes)]  # how the file was read, before what came of it
    if task == "classify":
        labels = [h[2:] for h in header if h.startswith("p_")]
        counts = {label: sum(1 for r in rows if r[1] == label) for label in labels}
        parts.append(" · ".join(f"**{cell(k)}**: {v:,}" for k, v in counts.items()))
        if agreement is not None:
            parts.append(agreement_markdown(agreement, labels))
        md_rows = [[_row_number(n, r, header), cell(shortened(r[0])), f"**{cell(r[1])}**",
                    *[percent(p) for p in r[2:2 + len(labels)]]] for n, r in zip(upload.rows, shown)]
        # "answer", not "label": a file's own `label` column is the reference beside it
        parts.append(table([upload.row_name, "text", "answer", *[f"p({cell(l)})" for l in labels],
                            *_reference_header(agreement)], _with_reference_cells(md_rows, agreement)))
    else:
        is_valid, is_repaired, is_cut = header.index("valid"), header.index("repaired"), header.index("cut_at_tokens")
        fields = header[1:is_valid]
        valid = sum(1 for r in rows if r[is_valid])
        repaired = sum(1 for r in rows if r[is_repaired])
        cut = [r[is_cut] for r in rows if r[is_cut]]
        parts.append(f"valid JSON: **{valid}/{len(rows)}** · repaired: **{repaired}**"
                     + (f" · ⌛ cut at the {cut[0]}-token limit: **{len(cut)}** (⚙️ max new tokens; their later "
                        "fields were never written)" if cut else ""))
        if agreement is not None:
            parts.append(agreement_markdown(agreement))
        read = texts_read or [r[0] for r in rows]
        md_rows = [[_row_number(n, r, header), cell(shortened(r[0], 60)),
                    *[_compared_value(v, False, read[i]) for v in r[1:is_valid]],
                    "⌛ cut" if r[is_cut] else ("⚠️ repaired" if r[is_repaired] else ("valid" if r[is_valid]
                                                                                     else "❌ invalid"))]
                   for i, (n, r) in enumerate(zip(upload.rows, shown))]
        # "JSON", not a green check: a well-formed answer can still hold invented values
        parts.append(table([upload.row_name, "text", *fields, "JSON", *_reference_header(agreement)],
                           _with_reference_cells(md_rows, agreement)))
        parts.append(f"{COMPARE_SUPPORT['none']} no word of the value is in the text (inferred, or invented; "
                     f"the CSV's `not_in_text` lists those fields); {COMPARE_SUPPORT['some']} only some words are.")
        if any(r[header.index("negated_in_text")] for r in shown):  # the rows the table marks
            parts.append(f"{NEGATED_LEGEND} The CSV's `negated_in_text` quotes the words that say so.")
    if len(rows) > PREVIEW_ROWS:
        parts.append(f"First {PREVIEW_ROWS} rows shown; the CSV below holds all {len(rows):,}.")
    parts.append(RESULTS_FILE_NOTE)
    truncated = sum(1 for r in rows if r[header.index("truncated")])
    if truncated:
        parts.append(f"✂️ {truncated} text(s) were longer than the adapter reads; only their start and end were read "
                     "(their rows are marked ✂️).")
    parts.append(f"*{variant} · {seconds:.1f} s ({len(rows) / max(seconds, 1e-9):.1f} texts/s)*")
    return "\n\n".join(parts)


# --- references in an upload ----------------------------------------------------------------------

REFERENCE_COLUMNS = {"classify": "label", "extract": "output"}  # the file's column or key with the answers


@dataclass
class Agreement:
    """How a batch's answers agree with the reference answers its file carries (a spam CSV's
    ``label`` column; the oncology data set's ``output`` key), over the rows whose reference is usable."""

    task: str
    source: str  # where the references are: "`label` column", "`output` key"
    row_name: str = "row"  # the upload's: "line" for a .jsonl
    per_row: list = field(default_factory=list)  # classify: True/False; extract: the share of fields that match; None: not compared
    differing: list[list[str]] = field(default_factory=list)  # extract: each row's fields that differ from its reference
    references: list[str] = field(default_factory=list)  # classify: each row's reference as the file gives it
    compared: int = 0  # rows with a usable reference
    agreed: int = 0  # classify: rows whose answer is their reference; extract: field values that match
    score: float = 0.0  # classify: accuracy; extract: micro field accuracy, as the evaluation measures it
    counts: dict = field(default_factory=dict)  # classify: (reference, answer) -> rows; extract: field -> accuracy
    missing: list[int] = field(default_factory=list)  # row numbers with an empty reference
    unusable: list[tuple[int, str]] = field(default_factory=list)  # row number, what its reference is instead


def reference_agreement(task: str, upload: Upload, results: Sequence[dict], labels: Sequence[str] = (),
                        fields: Sequence[str] = ()) -> Agreement | None:
    """The batch's agreement with the references in the upload's ``REFERENCE_COLUMNS`` column or
    key, or None when the file has no such column (or the task takes none)."""
    wanted = REFERENCE_COLUMNS.get(task)
    index = next((i for i, c in enumerate(upload.columns) if wanted and c.strip().lower() == wanted), None)
    if index is None:
        return None
    source = f"`{safe_name(upload.columns[index])}` {upload.field_word}"
    references = [values[index] if index < len(values) else "" for values in upload.values]
    agreement = Agreement(task, source, upload.row_name)
    if task == "classify":
        return _label_agreement(agreement, upload.rows, references, results, labels)
    return _field_agreement(agreement, upload.rows, references, results, fields)


def _label_agreement(agreement: Agreement, rows: Sequence[int], references: Sequence[str], results: Sequence[dict],
                     labels: Sequence[str]) -> Agreement:
    """``agreement`` filled: accuracy and counts of the answers against reference labels among
    ``labels`` (any case)."""
    known = {label.lower(): label for label in labels}
    agreement.references = [reference.strip() for reference in references]
    for row, reference, result in zip(rows, references, results, strict=True):
        label = known.get(reference.strip().lower())
        if label is None:
            agreement.per_row.append(None)
            if reference.strip():
                agreement.unusable.append((row, reference.strip()))
            else:
                agreement.missing.append(row)
            continue
        agreement.per_row.append(result["label"] == label)
        agreement.counts[(label, result["label"])] = agreement.counts.get((label, result["label"]), 0) + 1
    agreement.compared = sum(1 for a in agreement.per_row if a is not None)
    agreement.agreed = sum(1 for a in agreement.per_row if a)
    agreement.score = agreement.agreed / agreement.compared if agreement.compared else 0.0
    return agreement


def _field_agreement(agreement: Agreement, rows: Sequence[int], references: Sequence[str], results: Sequence[dict],
                     fields: Sequence[str]) -> Agreement:
    """``agreement`` filled: micro field accuracy of the extracted fields against reference objects
    with every field, compared as the evaluation compares them (``adapters.field_match``)."""
    hits = []
    for row, reference, result in zip(rows, references, results, strict=True):
        expected, problem = reference_fields(reference, fields)
        if expected is None:
            agreement.per_row.append(None)
            agreement.differing.append([])
            if problem:
                agreement.unusable.append((row, problem))
            else:
                agreement.missing.append(row)
            continue
        row_hits = field_hits(result["fields"], expected, fields, valid=result["valid"])
        hits.append(row_hits)
        agreement.per_row.append(round(sum(row_hits.values()) / len(fields), 6) if fields else 0.0)
        agreement.differing.append([f for f in fields if not row_hits[f]])
    agreement.compared = len(hits)
    agreement.agreed = sum(sum(row.values()) for row in hits)
    agreement.score = micro_field_accuracy(hits, fields)
    agreement.counts = per_field_accuracy(hits, fields)
    return agreement


def reference_fields(value: str, fields: Sequence[str]) -> tuple[dict | None, str | None]:
    """A reference's fields from its JSON text, or None with what it is instead (None too for an
    empty one): usable is an object with every field, each a string or null, as training reads."""
    if not value.strip():
        return None, None
    try:
        obj = loads_strict(value)
    except ValueError:
        return None, "not JSON"
    if not isinstance(obj, dict):
        return None, f"a JSON {_json_kind(obj)}, not an object"
    missing = [f for f in fields if f not in obj]
    if missing:
        return None, (f"an object without {', '.join(f'`{safe_name(f)}`' for f in missing[:3])}"
                      + (" …" if len(missing) > 3 else ""))
    wrong = [f for f in fields if obj[f] is not None and not isinstance(obj[f], str)]
    if wrong:
        return None, f"an object whose `{safe_name(wrong[0])}` is a {_json_kind(obj[wrong[0]])}, not a string or null"
    return {f: obj[f] for f in fields}, None


def _json_kind(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
            float: "number"}.get(type(value), type(value).__name__)


def _reference_header(agreement: Agreement | None) -> list[str]:
    """The preview table's column of agreement with the file's references (none without them)."""
    return [] if agreement is None else ["reference" if agreement.task == "classify" else "vs reference"]


def _with_reference_cells(md_rows: list[list[str]], agreement: Agreement | None) -> list[list[str]]:
    """The preview rows with each one's agreement with its reference: the reference label with ✓ or
    ✗, or the fields that differ; "—" where the row was not compared. The CSV has the same columns;
    the chat had shown the answers only, so which rows disagreed was not to be seen there."""
    if agreement is None:
        return md_rows
    cells = []
    for i, agrees in enumerate(agreement.per_row[:len(md_rows)]):
        if agrees is None:
            cells.append("—")
        elif agreement.task == "classify":
            cells.append(f"{cell(agreement.references[i])} {'✓' if agrees else '✗'}")
        else:
            differing = agreement.differing[i]
            cells.append("✓ every field" if not differing else "✗ " + cell(", ".join(differing)))
    return [[*row, c] for row, c in zip(md_rows, cells)]


def with_agreement(header: Sequence[str], rows: Sequence[Sequence], agreement: Agreement | None
                   ) -> tuple[list[str], list[list]]:
    """The batch's header and rows with each row's agreement with its reference appended (blank
    where it had none): classify ``agrees_with_reference``; extract ``field_agreement`` (the share
    of fields that match) and ``fields_differing``."""
    if agreement is None:
        return list(header), [list(r) for r in rows]
    if agreement.task == "classify":
        return [*header, "agrees_with_reference"], [[*r, a] for r, a in zip(rows, agreement.per_row, strict=True)]
    return ([*header, "field_agreement", "fields_differing"],
            [[*r, a, "; ".join(d) if a is not None else None]
             for r, a, d in zip(rows, agreement.per_row, agreement.differing, strict=True)])


def agreement_markdown(agreement: Agreement, labels: Sequence[str] = ()) -> str:
    """What the batch's message says of its agreement with the file's references: the score with
    its counts, then the rows not compared and why."""
    usable = (f"a label among {', '.join(labels)}" if agreement.task == "classify"
              else "a JSON object with every field")
    if not agreement.compared:
        parts = [f"🎯 The file's {agreement.source} holds no usable reference ({usable}), so nothing was compared."]
    elif agreement.task == "classify":
        parts = [f"🎯 **Accuracy against the file's {agreement.source}: {agreement.score:.1%}** "
                 f"({agreement.agreed:,} of {agreement.compared:,} rows agree; the CSV's `agrees_with_reference` "
                 "says which)",
                 table(["reference ↓ · answer →", *[cell(label) for label in labels]],
                       [[f"**{cell(ref)}**", *[f"{agreement.counts.get((ref, answer), 0):,}" for answer in labels]]
                        for ref in labels])]
    else:
        parts = [f"🎯 **Micro field accuracy against the file's {agreement.source}: {agreement.score:.1%}** "
                 f"({agreement.agreed:,} of {agreement.compared * len(agreement.counts):,} values in "
                 f"{agreement.compared:,} rows match, compared as the evaluation compares them: case, spaces, "
                 "separators and wordings of null aside; the CSV's `field_agreement` and `fields_differing` say "
                 "which)",
                 table(["field", "matches the reference"],
                       [[cell(f), f"{round(v * agreement.compared):,} of {agreement.compared:,} ({v:.0%})"]
                        for f, v in agreement.counts.items()])]
    if agreement.unusable:
        if agreement.task == "classify":
            values = list(dict.fromkeys(v for _, v in agreement.unusable))
            what = (f"a label that is not one of {', '.join(labels)} ("
                    + ", ".join(f"`{safe_name(shortened(v, 30))}`" for v in values[:5]) + (" …" if len(values) > 5 else "")
                    + ")")
        else:
            firsts = {}  # each problem with the first row that has it
            for number, problem in agreement.unusable:
                firsts.setdefault(problem, number)
            what = (f"a reference that is not {usable} ("
                    + "; ".join(f"{agreement.row_name} {n:,}: {p}" for p, n in list(firsts.items())[:3])
                    + (" …" if len(firsts) > 3 else "") + ")")
        numbers = [n for n, _ in agreement.unusable]
        parts.append(f"⚠️ {rows_were(numbers, agreement.row_name)} not compared: "
                     f"{'its' if len(numbers) == 1 else 'their'} {agreement.source} holds {what}.")
    if agreement.missing:
        parts.append(f"ℹ️ {rows_were(agreement.missing, agreement.row_name)} not compared: "
                     f"{'its' if len(agreement.missing) == 1 else 'their'} {agreement.source} is empty.")
    return "\n\n".join(parts)
# --- compare -------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One column of a comparison."""

    name: str  # base | few-shot (k=…) | fine-tuned
    result: dict | str | None = None
    seconds: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    unavailable: str | None = None  # why this column has no result
    cut_at: int | None = None  # the max-new-tokens limit a generated answer was cut at
    stopped: str | None = None  # why it was stopped ("stopped by you"): ``result`` is the answer so far
    truncated: bool = False  # the text was cut to fit this column's prompt (its start and its end read)


def compare_progress(adapter: str, variant: str, number: int, total: int) -> str:
    return f"⏳ Comparing on `{adapter}`: running **{variant}** ({number} of {total})…"


def few_shot_unavailable(spec: AdapterSpec) -> str:
    return (f"no few-shot examples yet (evaluation writes `{shown_path(spec.directory / FEW_SHOT_FILE)}`: "
            f"`{eval_command(spec)}`)")


def compare_markdown(spec: AdapterSpec, text: str, outcomes: Sequence[Outcome], chosen_by: str | None = None) -> str:
    """One table, a column per variant; for extraction, fields whose values differ are marked.
    ``chosen_by`` says where the adapter came from when no command was picked with this message."""
    header = ["", *[f"**{o.name}**" for o in outcomes]]
    rows: list[list[str]] = []
    ran = [o for o in outcomes if o.unavailable is None]

    def per(fn) -> list[str]:
        return [fn(o) if o.unavailable is None else "—" for o in outcomes]

    if spec.task == "classify":
        rows.append(["label", *per(lambda o: f"**{cell(o.result['label'])}**")])
        rows.append(["decided by", *per(lambda o: "the most probable label" if o.result.get("threshold") is None
                                        else decision_text(o.result["probs"], spec.labels, o.result["threshold"]))])
        for label in spec.labels:
            rows.append([f"p({cell(label)})", *per(lambda o, l=label: f"{percent(o.result['probs'][l])} `{bar(o.result['probs'][l], 10)}`")])
    elif spec.task == "extract":
        for name in spec.fields:
            values = {json.dumps(o.result["fields"].get(name)) for o in ran}
            differs = len(values) > 1
            rows.append([f"`{name}`" + (" ≠" if differs else ""),  # marked by the part each column read
                         *per(lambda o, n=name, d=differs: _compared_value(o.result["fields"].get(n), d,
                                                                           text_read(text, o.result)))])
        rows.append(["output", *per(lambda o: f"⌛ cut at the {o.result['cut_at']}-token limit"
                                    if o.result.get("cut_at") else ("❌ invalid" if not o.result["valid"]
                                    else ("⚠️ repaired" if o.result["repaired"] else "valid")))])
    else:
        rows.append(["answer", *per(lambda o: cell(o.result) if o.result and o.result.strip() else "*(empty)*")])
    rows.append(["latency", *per(lambda o: f"{o.seconds:.2f} s" if o.seconds is not None else "—")])
    rows.append(["tokens", *per(lambda o: _tokens(o))])
    rows.append(["status", *[(f"⏹ {o.stopped} (the answer so far)" if o.stopped else "ran")
                             if o.unavailable is None else f"{'⏹' if o.stopped else '⚠️'} {_one_line(o.unavailable)}"
                             for o in outcomes]])
    intro = f"### Compare · `{spec.name}` ({spec.task})"
    parts = [intro, table(header, rows)]
    if chosen_by:
        # it had said "`spam`: the settings panel (…)", and a medical question typed with no button
        # picked got a spam table with nothing that said why
        parts.insert(1, f"*No adapter was picked with this message, so this compares `{spec.name}`, {chosen_by}. "
                        f"To compare another, pick it with the buttons under the message box: {COMMAND_BUTTONS}.*")
    if any(o.truncated for o in ran):  # the rendered prompt showed the `[…]`, and nothing else said so
        parts.append(truncation_note(spec, text))
    if spec.task == "extract" and any("≠" in r[0] for r in rows):
        parts.append("≠ marks fields where the variants disagree (shown in bold).")
    if spec.task == "extract" and any(COMPARE_SUPPORT["none"] in c or COMPARE_SUPPORT["some"] in c
                                      for r in rows for c in r[1:]):
        parts.append(f"{COMPARE_SUPPORT['none']} no word of the value is in your text (inferred, or invented); "
                     f"{COMPARE_SUPPORT['some']} only some words are.")
    if spec.task == "extract" and any(c.endswith(NEGATED_MARK) for r in rows for c in r[1:]):
        parts.append(NEGATED_LEGEND)
    parts.append(_columns_legend(outcomes))
    if spec.task == "extract":  # a column of nulls read as "found nothing" where the model never wrote JSON
        parts += [f"**{o.name}**'s output as it came ({_why_not_read(o.result)}):\n\n"
                  + code_block(shortened(o.result["raw"] or "(empty)", COMPARE_RAW_CHARS), "text")
                  for o in ran if o.result.get("cut_at") or not o.result["valid"]]
    return "\n\n".join(parts)


COMPARE_RAW_CHARS = 600  # of an unread output shown under the table


def _columns_legend(outcomes: Sequence[Outcome]) -> str:
    """What each column is: students asked what "few-shot" meant beside "base"."""
    said = {"base": "**base**: the base model alone, with the adapter's prompt",
            "fine-tuned": "**fine-tuned**: the base model with the trained adapter, the same prompt"}
    parts = [said.get(o.name) or (f"**{o.name}**: the base model, with worked examples from the adapter's "
                                  "training data before your text (in-context learning, no training)")
             for o in outcomes]
    return "*Columns: " + "; ".join(parts) + ".*"


def _why_not_read(result: dict) -> str:
    return (f"cut at the {result['cut_at']}-token limit: the fields after the cut were never written"
            if result.get("cut_at")
            else "not a JSON object, so every field is null")


COMPARE_SUPPORT = {"none": "○", "some": "◐"}  # the "in your text" column of the extraction view, as marks
NEGATED_MARK = "⊘"  # the text says the finding is absent
NEGATED_LEGEND = f"{NEGATED_MARK} your text says the finding is absent (“no …”, “… negative”): check it."


def _compared_value(value, differs: bool, text: str) -> str:
    shown = f"**{cell(value)}**" if differs else cell(value)
    marks = [m for m in (COMPARE_SUPPORT.get(support_in_text(value, text) or ""),
                         NEGATED_MARK if parts_the_text_negates(value, text) else None) if m]
    return " ".join([shown, *marks])


def _one_line(markdown: str) -> str:
    """The app's own markdown (not user text) made safe for one table cell."""
    return markdown.replace("\n", " ").replace("|", "\\|")


def _tokens(o: Outcome) -> str:
    """"N in / M out" (a column stopped while generating too: the answer so far); "—" when unknown."""
    if o.prompt_tokens is None and o.output_tokens is None:
        return "—"
    cut = f" (cut at the {o.cut_at}-token limit)" if o.cut_at is not None else ""
    parts = [f"{o.prompt_tokens} in" if o.prompt_tokens is not None else "",
             f"{o.output_tokens} out" if o.output_tokens is not None else ""]
    return " / ".join(p for p in parts if p) + cut


# --- prompts shown to the user -------------------------------------------------------------------

def rendered_prompt_title(tokens: int) -> str:
    return f"Rendered prompt · {tokens} tokens"


BROKEN_SPECIAL_MARK = "⟨zwsp⟩"


def shown_prompt(prompt: str) -> str:
    """The rendered prompt as shown to the user: the zero-width spaces that break special-token
    strings typed in a message (``adapters.prompts.literal_text``) made visible, so a typed
    ``<|im_end|>`` is not mistaken for the real one."""
    if "\u200b" not in prompt:
        return prompt
    return (prompt.replace("\u200b", BROKEN_SPECIAL_MARK) + f"\n\n({BROKEN_SPECIAL_MARK}: a zero-width space "
            "the app puts into special-token strings found in your text, so the model reads them as text)")


# --- history -------------------------------------------------------------------------------------

def add_turn(history: list[dict], question: str, answer: str, max_messages: int = 40) -> list[dict]:
    """The conversation with one more exchange; the oldest exchanges are dropped past ``max_messages``
    (the runtime also drops turns that do not fit the context). An exchange without answer text (one
    stopped before its first word) is left out: it had gone into every later prompt as an empty
    assistant turn."""
    if not answer.strip():
        return history
    history = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return history[-max_messages:]


def history_from_steps(steps: Sequence[dict]) -> list[dict]:
    """Rebuild a conversation from a persisted thread's steps (on resume): user messages and the
    assistant answers the app marked with ``metadata.answer``, as ``add_turn`` built it live. A
    message that sent files (marked with ``metadata.files``) is not a turn: its files were
    processed, not its text, as in the chat it came from; nor is one without answer text."""
    history: list[dict] = []
    for step in sorted(steps, key=lambda s: s.get("createdAt") or ""):
        metadata = step.get("metadata") or {}
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except json.JSONDecodeError:
                metadata = {}
        unanswered = bool(history) and history[-1]["role"] == "user"
        if (step.get("type") == "user_message" and (step.get("output") or "").strip()
                and not metadata.get(FILES_KEY)):
            if unanswered:
                history.pop()
            history.append({"role": "user", "content": step["output"]})
        elif step.get("type") == "assistant_message" and isinstance(metadata.get("answer"), str) and unanswered:
            if metadata["answer"].strip():
                history.append({"role": "assistant", "content": metadata["answer"]})
            else:
                history.pop()
    if history and history[-1]["role"] == "user":
        history.pop()
    return history


# --- settings ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One widget of the settings panel (app.py turns it into a Chainlit input widget)."""

    kind: str  # slider | switch | text | select
    id: str
    label: str
    initial: object
    description: str = ""
    min: float = 0
    max: float = 1
    step: float = 1
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    system: str | None = None  # None: the adapter's own system prompt
    show_prompt: bool = False
    use_base: bool = False
    compare_adapter: str = DEFAULT_COMPARE


def settings_for(profile: Profile, spec: AdapterSpec | None, trained: bool) -> list[Setting]:
    """The settings panel of a profile, with the adapter's own defaults as initial values."""
    items: list[Setting] = []
    if profile.task in ("chat", "generate"):
        gen = spec.generation if spec else None
        items += [
            Setting("slider", "temperature", "Temperature", (gen or CHAT_DEFAULTS).temperature,
                    "0 is greedy (deterministic); higher samples more freely.", 0, 1.5, 0.05),
            Setting("slider", "top_p", "Top-p", (gen or CHAT_DEFAULTS).top_p,
                    "Sample only from the most likely tokens covering this much probability.", 0.05, 1, 0.05),
        ]
    if profile.task in ("chat", "generate", "extract", "compare"):
        default = (spec.generation if spec else CHAT_DEFAULTS).max_new_tokens
        items.append(Setting("slider", "max_new_tokens", "Max new tokens", default,
                             "Longest answer, in tokens (extraction and compare use it too).", 16, 1024, 16))
    if profile.task == "compare":
        items.append(Setting("select", "compare_adapter", "Adapter to compare", DEFAULT_COMPARE,
                             f"Used until a button under the message box ({COMMAND_BUTTONS}) is picked.",
                             values=COMPARE_ADAPTERS))
    if profile.task in ("classify", "generate", "extract"):
        items.append(Setting("switch", "use_base", "Use the base model (adapter off)", not trained,
                             "Runs the adapter's prompt on the base model, as the CLI's --base does."
                             + ("" if trained else " On because the adapter is not trained yet.")))
    items += [
        Setting("text", "system", "System prompt override", "", system_default_text(profile, spec)),
        Setting("switch", "show_prompt", "Show the rendered prompt",
                False, "Attach the exact text sent to the model (after the chat template) and its token count."),
    ]
    return items


# The settings dialog's own "Reset" button (Chainlit's) puts back the values the dialog had when it
# opened, not the defaults: it only undoes unsaved edits (the page calls it "Undo changes",
# chat_app/dialog_text.py). This switch, last in the panel, is the way back to the defaults: turned on,
# the app sends the panel again at the profile's defaults, which the open dialog shows at once (and
# the switch off again); Confirm keeps them, Cancel keeps the settings as they were.
RESTORE_DEFAULTS = Setting(
    "switch", "restore_defaults", "Restore the profile's defaults", False,
    "Puts every setting above back to this profile's default. Confirm keeps them; Cancel keeps the "
    "settings as they were. (\"Undo changes\" only undoes edits made since the dialog opened.)")


def system_default_text(profile: Profile, spec: AdapterSpec | None) -> str:
    """What an empty system prompt override means in ``profile``."""
    if profile.task == "compare":
        return "Empty: each compared adapter's own system prompt (from its adapter.yaml)."
    if spec is None:
        return "Empty: the base model's own default, if its chat template has one."
    return f"Empty: the adapter's own system prompt: {spec.prompt.system}"


def read_settings(raw: dict | None, items: Sequence[Setting]) -> Settings:
    """Settings from the panel's values (missing ones take the panel's initial values)."""
    values = {s.id: s.initial for s in items}
    values.update({k: v for k, v in (raw or {}).items() if k in values})

    def number(key, cast):
        value = values.get(key)
        return None if value is None else cast(value)

    system = values.get("system")
    compare = values.get("compare_adapter") or DEFAULT_COMPARE
    return Settings(
        temperature=number("temperature", float),
        top_p=max(0.01, min(1.0, number("top_p", float))) if values.get("top_p") is not None else None,
        max_new_tokens=number("max_new_tokens", lambda v: max(1, int(round(float(v))))),
        system=system if isinstance(system, str) and system.strip() else None,
        show_prompt=bool(values.get("show_prompt")),
        use_base=bool(values.get("use_base")),
        compare_adapter=compare if compare in COMPARE_ADAPTERS else DEFAULT_COMPARE,
    )


def is_phone(user_agent: str | None) -> bool:
    """Whether a browser says it is a phone ("Mobi" in its user agent, as MDN advises; tablets say
    no): there Chainlit shows the status panel over the chat rather than beside it."""
    return "Mobi" in (user_agent or "")


def status_markdown(state: str, load_seconds: float | None, error: str | None,
                    specs: dict, loaded: Sequence[str], base_model: str, profile: Profile,
                    other_bases: Mapping[str, str] | None = None) -> str:
    """The status panel beside the chat: model state, adapters, the profile's notices. Sent when a
    chat opens and when loading ends, not in between: each sending reopens a panel the user closed."""
    if state == "ready":
        model = f"✅ **Model ready** (`{base_model}`, loaded in {load_seconds or 0:.0f} s)"
    elif state == "failed":
        model = load_failed_message(error or "unknown error")
    else:
        model = ("⏳ **Loading the model…** (the first start converts the embedded model, about 30 s; "
                 "this panel changes when it is ready). You can type already: your first message waits for it.")
    lines = [model, ""]
    for name, spec in specs.items():
        if name in (other_bases or {}):  # its weights do not fit the base served
            lines.append(f"- `{name}` — {spec.title}: trained on `{other_bases[name]}`, not on this base: not "
                         f"loaded (base model + its prompt; `ADAPTERLAB_BASE_MODEL={other_bases[name]}` serves it)")
            continue
        trained = name in loaded if state == "ready" else spec.has_weights
        lines.append(f"- `{name}` — {spec.title}: " + ("trained ✅" if trained else "**not trained yet** 🚧 "
                                                          "(base model + its prompt)"))
    medical = is_medical(specs.get(profile.adapter) if profile.adapter else None)
    if profile.task == "generate" and medical:
        lines += ["", NOT_MEDICAL_ADVICE]
    elif profile.task == "extract" and medical:
        lines += ["", NOT_CLINICAL]
    elif profile.task == "compare":
        lines += ["", NOT_CLINICAL_COMPARE]
    return "\n".join(lines)
