"""The runtime: the three tasks (classify, generate, extract) over a backend and the catalogue.

Training's evaluation, the CLI and the Chainlit app all call these methods, so a prompt is
rendered one way everywhere and a metric measures exactly what a user sees.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .backends import Backend, GenerationParams, LocalBackend, other_base
from .base_models import DEFAULT_BASE, LoadOptions, canonical_name
from .catalog import CATALOG_DIR, catalog_option, get_spec, load_catalog
from .fields import Extraction, parse_fields
from .prompts import Message, chat_messages, few_shot_turns, task_messages
from .spec import AdapterSpec

FEW_SHOT_FILE = "few_shot.jsonl"  # written by evaluation: the k training examples of its few-shot baseline
THRESHOLD_FILE = "threshold.json"  # written by evaluation when the spec's decision is tuned

# a text that a chat template which trims, escapes or otherwise rewrites messages would change,
# with a special-token string that the renderer breaks (prompts.literal_text)
TEMPLATE_PROBE = " \n\t<b>{text}</b> & \"quoted\" 'text' {{ x }} \\n <|im_end|> \n"
CHAT_DEFAULTS = GenerationParams(temperature=0.7, top_p=0.9, max_new_tokens=256)  # a chat with no adapter
GENERATION_RESERVE = 64  # tokens kept free for the chat template around the user's text
MIN_INPUT_TOKENS = 16  # a system prompt that leaves fewer for the user's text is refused


class InputError(ValueError):
    """An input the runtime refuses (empty text, a wrong message list); says what is wrong."""


class AdapterNotTrainedError(RuntimeError):
    """The adapter has a spec but no weights yet; the message says how to train it."""

    @classmethod
    def of(cls, spec: AdapterSpec) -> "AdapterNotTrainedError":
        return cls(f"adapter {spec.name!r} has no trained weights in {spec.directory}: train it with "
                   f"`{train_command(spec)}`, or run the base model with --base")


def train_command(spec: AdapterSpec) -> str:
    """The command that trains ``spec``'s adapter in its own catalogue."""
    return f"adapterlab train {spec.name}{catalog_option(spec)}"


def eval_command(spec: AdapterSpec) -> str:
    """The command that evaluates ``spec``'s adapter in its own catalogue."""
    return f"adapterlab eval {spec.name}{catalog_option(spec)}"


@dataclass(frozen=True)
class Classification:
    label: str
    probs: dict[str, float]  # one probability per label, summing to 1
    truncated: bool = False
    threshold: float | None = None  # the last label won when its probability reached this; None: argmax


@dataclass
class Generation:
    """A generated answer: iterate it for text pieces as they arrive, or read ``text``.

    ``finish_reason``, once the pieces are consumed: "stop" (the model ended its answer) or
    "length" (cut at ``max_new_tokens``, the limit this generation ran with); None when not known
    (stopped early, or not streamed)."""

    pieces: Iterator[str] = field(default_factory=lambda: iter(()))
    truncated: bool = False
    prompt_tokens: int = 0
    text: str = ""
    started: float = field(default_factory=time.perf_counter)
    first_piece_at: float | None = None
    finish_reason: str | None = None
    max_new_tokens: int | None = None
    finished_at: float | None = None  # when decoding ended (in the decoding thread, before the model is free)
    message_cut_to: int | None = None  # the last message was cut to this many tokens (its start and its end)
    turns_dropped: int = 0  # the oldest messages left out to fit the context (``truncated`` says either)

    def finished(self, reason: str) -> None:
        self.finish_reason = reason
        self.finished_at = time.perf_counter()

    def __iter__(self) -> Iterator[str]:
        # U+FFFD is what a character whose bytes are split across tokens decodes to until its last
        # token comes; held back, it is shown with what follows, and dropped when the answer ends
        # inside the character (cut by the token limit: an answer ended "🎉🎉�", and the "�" went
        # back to the model with the history)
        pending = ""
        try:
            for piece in self.pieces:
                if self.first_piece_at is None:
                    self.first_piece_at = time.perf_counter()
                piece = pending + piece
                whole = piece.rstrip("\ufffd")
                pending = piece[len(whole):]
                if whole:
                    self.text += whole
                    yield whole
        finally:  # a consumer that stops early (the app's Stop button) must free the model too
            self.close()

    def close(self) -> None:
        """Stop the generation: the model stops at its next token and serves the next request."""
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()

    def cancel(self) -> None:
        """Stop the generation from any thread, also while another thread waits for its next piece.
        Where the backend's stream can be cancelled, a request still waiting for the model ends at
        once and one being decoded at its next token; elsewhere nothing happens until ``close``."""
        cancel = getattr(self.pieces, "cancel", None)
        if cancel is not None:
            cancel()

    def read(self) -> str:
        """Consume the whole stream and return the full text."""
        for _ in self:
            pass
        return self.text


class Runtime:
    """Runs adapters from the catalogue on one backend."""

    def __init__(self, backend: Backend, specs: dict[str, AdapterSpec], other_bases: dict[str, str] | None = None):
        self.backend = backend
        self.specs = specs
        self.other_bases = other_bases or {}  # adapters left unloaded: trained on this other base

    @classmethod
    def local(cls, catalog: str | Path = CATALOG_DIR, base: str | None = None,
              options: LoadOptions = LoadOptions(), *, only: Sequence[str] | None = None,
              progress: bool = True, skip_other_bases: bool = False) -> "Runtime":
        """Load the base once and every catalogue adapter that has weights (or just ``only``). An
        adapter trained on another base is refused, or with ``skip_other_bases`` left unloaded and
        named in ``other_bases`` (the app serves the others)."""
        specs = load_catalog(catalog)
        base = base or _common_base({n: get_spec(specs, n) for n in only} if only else specs)
        names = [n for n in (only if only is not None else specs) if get_spec(specs, n).has_weights]
        other_bases = {}
        if skip_other_bases:
            trained_on = {n: other_base(specs[n].directory, base) for n in names}
            other_bases = {n: canonical_name(b) for n, b in trained_on.items() if b is not None}
            names = [n for n in names if n not in other_bases]
        backend = LocalBackend.load(base, {n: specs[n].directory for n in names}, options,
                                    progress=progress)
        return cls(backend, specs, other_bases)

    def spec(self, name: str) -> AdapterSpec:
        return get_spec(self.specs, name)

    def few_shot_examples(self, name: str) -> list[tuple[str, str]]:
        """The (input, answer) pairs evaluation chose for the few-shot baseline; [] before an evaluation."""
        return read_few_shot(self.spec(name))

    # --- tasks -----------------------------------------------------------------------------

    def classify(self, adapter: str, texts: Sequence[str], *, base: bool = False,
                 system: str | None = None, examples: Sequence[tuple[str, str]] = (),
                 batch_size: int = 16) -> list[Classification]:
        """Label each text with a probability for every label, from label log-likelihoods.

        Each label is scored as the full continuation the fine-tuned model is trained to emit
        (label + end-of-turn), so multi-token labels and labels that prefix others are handled.
        The fine-tuned adapter decides with its tuned threshold when the spec asks for one
        (``decision: validation_f1``); the base model, and an adapter without one, take the argmax.
        """
        spec = self._task_spec(adapter, "classify")
        target = self._target(spec, base)
        threshold = None if base else read_threshold(spec)
        fitted = self._fit(spec, texts, system, examples, self._label_room(spec))
        prompts, shared_prefix = self._task_prompts(spec, [text for text, _ in fitted], system, examples)
        continuations = [self._label_continuation(spec, label) for label in spec.labels]
        scores = self.backend.score(target, prompts, [continuations] * len(prompts),
                                    batch_size=batch_size, shared_prefix=shared_prefix)
        results = []
        for row, (_, truncated) in zip(scores, fitted):
            probs = dict(zip(spec.labels, _softmax(row)))
            results.append(Classification(decide(spec.labels, probs, threshold), probs, truncated, threshold))
        return results

    def generate(self, adapter: str | None, messages: Sequence[Message], *, base: bool = False,
                 system: str | None = None, temperature: float | None = None,
                 top_p: float | None = None, max_new_tokens: int | None = None,
                 examples: Sequence[tuple[str, str]] = (), stream: bool = True) -> Generation:
        """Answer a conversation; ``adapter=None`` chats with the plain base model.

        ``examples`` (input, answer) pairs are put before the conversation as few-shot turns.
        """
        spec = self.spec(adapter) if adapter is not None else None
        target = self._target(spec, base) if spec else None
        params = self._params(spec, temperature, top_p, max_new_tokens)
        messages, cut_to, dropped = self._fit_conversation(spec, messages, system, params.max_new_tokens, examples)
        prompt = self.backend.render(messages)
        generation = Generation(truncated=cut_to is not None or dropped > 0, message_cut_to=cut_to,
                                turns_dropped=dropped, prompt_tokens=self.backend.count_tokens(prompt),
                                max_new_tokens=params.max_new_tokens)
        if stream:
            generation.pieces = self.backend.stream(target, prompt, params, on_finish=generation.finished)
        else:
            generation.pieces = iter(self.backend.complete(target, [prompt], params))
        return generation

    def answer(self, adapter: str, questions: Sequence[str], *, base: bool = False,
               system: str | None = None, examples: Sequence[tuple[str, str]] = (),
               max_new_tokens: int | None = None, batch_size: int = 8) -> list[str]:
        """Answers to single-turn questions in batches (greedy): what evaluation of a generate
        adapter needs, through the same prompt as a chat's first turn."""
        spec = self._task_spec(adapter, "generate")
        target = self._target(spec, base)
        params = self._params(spec, 0.0, 1.0, max_new_tokens)
        prompts = [self.rendered_prompt(adapter, [{"role": "user", "content": q}], system=system,
                                        examples=examples, max_new_tokens=params.max_new_tokens) for q in questions]
        # an answer the token limit ended inside a character: its half is no text (see Generation)
        return [text.rstrip("\ufffd") for text in self.backend.complete(target, prompts, params, batch_size=batch_size)]

    def extract(self, adapter: str, texts: Sequence[str], *, base: bool = False,
                system: str | None = None, examples: Sequence[tuple[str, str]] = (),
                batch_size: int = 8,
                max_new_tokens: int | None = None) -> list[Extraction]:
        """The spec's fields for each text; invalid model output is flagged, never invented."""
        spec = self._task_spec(adapter, "extract")
        target = self._target(spec, base)
        params = self._params(spec, 0.0, 1.0, max_new_tokens)
        fitted = self._fit(spec, texts, system, examples, params.max_new_tokens)
        prompts = [self.backend.render(task_messages(spec, text, system=system, examples=examples))
                   for text, _ in fitted]
        outputs = self.backend.complete(target, prompts, params, batch_size=batch_size)
        results = []
        limit = params.max_new_tokens
        for raw, (read, truncated) in zip(outputs, fitted):
            result = parse_fields(raw, spec.fields)
            # an object the limit cut off: fields after the cut are null because unwritten, not absent
            # from the text (decoded text counted again can come out a token short of what was generated)
            cut = result.closed and self.backend.count_tokens(raw) >= limit - 1
            results.append(Extraction(result.fields, result.valid, result.repaired, result.raw,
                                      result.error, truncated, limit if cut else None, result.closed,
                                      read if truncated else None))
        return results

    def answer_logprob(self, adapter: str, questions: Sequence[str], answers: Sequence[str], *,
                       base: bool = False, examples: Sequence[tuple[str, str]] = (),
                       batch_size: int = 8) -> list[tuple[float, int]]:
        """(log-likelihood, token count) of each reference answer after its question's prompt.

        Evaluation turns these into perplexity of the references, under the same prompt the app uses.
        """
        spec = self._task_spec(adapter, "generate")
        target = self._target(spec, base)
        prompts = [self.rendered_prompt(adapter, [{"role": "user", "content": q}], examples=examples)
                   for q in questions]
        scores = self.backend.score(target, prompts, [[a] for a in answers], batch_size=batch_size)
        return [(row[0], n) for row, n in zip(scores, self.backend.token_counts(answers))]

    def rendered_prompt(self, adapter: str | None, messages: Sequence[Message], *,
                        system: str | None = None, examples: Sequence[tuple[str, str]] = (),
                        max_new_tokens: int | None = None) -> str:
        """The exact text a task would send to the model for this input (for prompt testing): cut
        to leave room for ``max_new_tokens`` (the spec's default when None) as the task does."""
        spec = self.spec(adapter) if adapter is not None else None
        max_new = self._params(spec, None, None, max_new_tokens).max_new_tokens
        if spec is not None and spec.task in ("classify", "extract"):
            room = self._label_room(spec) if spec.task == "classify" else max_new
            [(text, _)] = self._fit(spec, [messages[-1]["content"]], system, examples, room)
            return self.backend.render(task_messages(spec, text, system=system, examples=examples))
        full, _, _ = self._fit_conversation(spec, messages, system, max_new, examples)
        return self.backend.render(full)

    # --- helpers ---------------------------------------------------------------------------

    def _task_spec(self, name: str, task: str) -> AdapterSpec:
        spec = self.spec(name)
        if spec.task != task:
            raise InputError(f"adapter {name!r} is a {spec.task} adapter, not {task}")
        return spec

    def _target(self, spec: AdapterSpec, base: bool) -> str | None:
        """The backend adapter name to run, or None for the base model."""
        if base:
            return None
        if spec.name not in self.backend.adapter_names():
            raise AdapterNotTrainedError.of(spec)
        return spec.name

    def generation_params(self, adapter: str | None, temperature: float | None = None, top_p: float | None = None,
                          max_new_tokens: int | None = None) -> GenerationParams:
        """The decoding a request with these settings runs with: each one given, else the adapter's
        default (a chat's with ``adapter=None``)."""
        return self._params(self.spec(adapter) if adapter is not None else None, temperature, top_p, max_new_tokens)

    def _params(self, spec: AdapterSpec | None, temperature, top_p, max_new_tokens) -> GenerationParams:
        defaults = spec.generation if spec else CHAT_DEFAULTS
        params = GenerationParams(
            temperature=defaults.temperature if temperature is None else float(temperature),
            top_p=defaults.top_p if top_p is None else float(top_p),
            max_new_tokens=defaults.max_new_tokens if max_new_tokens is None else int(max_new_tokens),
            no_repeat_ngram_size=defaults.no_repeat_ngram_size)
        if params.temperature < 0 or not 0 < params.top_p <= 1 or params.max_new_tokens < 1:
            raise InputError(f"invalid generation settings {params}: need temperature >= 0, "
                             "0 < top_p <= 1, max_new_tokens >= 1")
        return params

    def _input_budget(self, spec: AdapterSpec | None, max_new_tokens: int) -> int:
        room = self.backend.context_length - max_new_tokens - GENERATION_RESERVE
        return max(1, min(spec.max_input_tokens, room) if spec else room)

    def _fit(self, spec: AdapterSpec, texts: Sequence[str], system: str | None = None,
             examples: Sequence[tuple[str, str]] = (), max_new_tokens: int | None = None) -> list[tuple[str, bool]]:
        """Each text, cut to the spec's input budget and to what the prompt around it leaves of the
        context, and whether it was cut."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InputError("the text is empty" if len(texts) == 1 else f"text {i} is empty")
            _check_encodable(text)
        max_new = max_new_tokens or spec.generation.max_new_tokens
        frame = self.backend.render(task_messages(spec, "", system=system, examples=examples))
        answer = "label" if spec.task == "classify" else "answer"
        budget = min(self._input_budget(spec, max_new), self._room_after(frame, max_new, answer))
        return [(self._cut_text(text, budget), True) if over else (text, False)
                for text, over in zip(texts, self.backend.over_budget(texts, budget))]

    def _room_after(self, frame: str, max_new_tokens: int, answer: str = "answer") -> int:
        """Tokens of input that fit beside ``frame`` (the rendered prompt around it: system message,
        examples, template) and the ``answer`` (a generated answer, or a classifier's label); a frame
        that leaves none is refused, naming the sizes."""
        frame_tokens = self.backend.count_tokens(frame)
        room = self.backend.context_length - max_new_tokens - frame_tokens
        if room < MIN_INPUT_TOKENS:
            lower = " (or lower max new tokens)" if answer == "answer" else ""
            raise InputError(
                f"the system prompt is too long: with the prompt around your text it takes "
                f"{frame_tokens:,} tokens, and this model reads {self.backend.context_length:,} in all, "
                f"{max_new_tokens:,} of them kept for the {answer}; shorten it{lower} to leave room for your text")
        return room

    def _cut_text(self, text: str, max_tokens: int) -> str:
        """A text cut to ``max_tokens``: its start and its end, the middle left out. A long paste
        usually ends with what is asked about it ("… what does this mean?"), and a clinical note with
        its assessment, which keeping the start alone lost."""
        return self.backend.truncate(text, max_tokens, keep_end=max_tokens // 2 if max_tokens >= 32 else 0)

    def _label_room(self, spec: AdapterSpec) -> int:
        """Tokens a classifier's answer takes: its longest label as trained (label + end of turn)."""
        return max(self.backend.count_tokens(self._label_continuation(spec, label)) for label in spec.labels)

    def _fit_conversation(self, spec, messages, system, max_new_tokens,
                          examples: Sequence[tuple[str, str]] = ()) -> tuple[list[Message], int | None, int]:
        """The conversation after the few-shot ``examples`` (kept whole, as the tasks keep theirs),
        with the spec's system message, each user message cut to the input budget and the oldest
        turns dropped to fit the context: (messages, tokens the last message was cut to or None, how
        many turns were dropped)."""
        shots = few_shot_turns(examples)
        turns = [*shots, *(dict(m) for m in messages)]
        for i, m in enumerate(turns):
            if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise InputError(f"message {i}: needs role system/user/assistant and text content")
        if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
            raise InputError("the last message must be a non-empty user message")
        for m in turns:
            _check_encodable(m["content"])
        budget = self._input_budget(spec, max_new_tokens)
        cut_to, dropped = None, 0
        # every message of the user's cut as the last one is: an earlier one over the budget, sent
        # whole with the history, made the prompt many times what the adapter reads
        asked = [i for i, m in enumerate(turns) if m["role"] == "user" and i >= len(shots)]
        for i, over in zip(asked, self.backend.over_budget([turns[i]["content"] for i in asked], budget)):
            if over:
                turns[i]["content"] = self._cut_text(turns[i]["content"], budget)
                cut_to = budget if i == len(turns) - 1 else cut_to
        full = chat_messages(spec, turns, system=system)
        limit = self.backend.context_length - max_new_tokens
        while self.backend.count_tokens(self.backend.render(full)) > limit:
            first_turn = 1 if full[0]["role"] == "system" else 0
            if len(full) - first_turn <= 1:  # the system message and this message are left: cut it
                frame = self.backend.render(chat_messages(spec, [{**turns[-1], "content": ""}], system=system))
                last = turns[-1]["content"]
                cut_to = min(self._room_after(frame, max_new_tokens), self.backend.count_tokens(last) - 1)
                turns[-1]["content"] = self._cut_text(last, cut_to)
                full[-1] = chat_messages(spec, [turns[-1]], system=system)[-1]
                continue
            del full[first_turn]
            dropped += 1
        return full, cut_to, dropped

    def _task_prompts(self, spec: AdapterSpec, texts: Sequence[str], system: str | None,
                      examples: Sequence[tuple[str, str]]) -> tuple[list[str], str]:
        """Each text's rendered prompt, exactly as ``render(task_messages(...))`` gives it, and the
        rendered text before the input that they all share ("" if it cannot be found).

        The template is rendered once and each text put in its place: rendering the chat template
        per text was the largest Python cost of a 512-message classify batch on a GPU host (~58 ms
        of 259 ms profiled). That is valid only where the template puts a message in verbatim, so
        it is checked on a probe (edge whitespace, markup, braces) and on the first text; any other
        template gets each text rendered.
        """
        def rendered(text: str) -> str:
            return self.backend.render(task_messages(spec, text, system=system, examples=examples))

        frame = self._template_frame(spec, system, examples)
        if frame is None:
            return [rendered(text) for text in texts], ""
        before, after = frame
        literal = self.backend.literal
        if texts and all(rendered(t) == before + literal(t) + after for t in (TEMPLATE_PROBE, texts[0])):
            return [before + literal(text) + after for text in texts], before
        return [rendered(text) for text in texts], before

    def _template_frame(self, spec: AdapterSpec, system: str | None,
                        examples: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
        """The rendered prompt around the input text, (before, after); None if it cannot be found.
        ``before`` is the same for every input of one task call (system message, few-shot turns,
        the user template's lead-in)."""
        marker = "\uE000"  # private use; in an example too, the prefix is only shorter (still exact)
        rendered = self.backend.render(task_messages(spec, marker, system=system, examples=examples))
        before, found, after = rendered.partition(marker)
        return (before, after) if found else None

    def _label_continuation(self, spec: AdapterSpec, label: str) -> str:
        """A label as training wrote it after the prompt (label + end of turn): the text scored."""
        return self.backend.render_answer(task_messages(spec, "x"), label)


def read_few_shot(spec: AdapterSpec) -> list[tuple[str, str]]:
    """Few-shot pairs stored beside a spec, as (input, rendered answer)."""
    path = spec.directory / FEW_SHOT_FILE
    if not path.is_file():
        return []
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((row["input"], row["target"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}, line {number}: needs a JSON object with 'input' and 'target' ({exc}); "
                             f"`{eval_command(spec)}` writes it again") from None
    return pairs


def read_threshold(spec: AdapterSpec) -> float | None:
    """The decision threshold tuned for a spec's adapter, or None (argmax) when it has none."""
    record = read_threshold_record(spec)
    return None if record is None else record["threshold"]


def read_threshold_record(spec: AdapterSpec) -> dict | None:
    """The record stored beside a spec's weights when its threshold was tuned (``threshold.json``:
    the threshold, between 0 and 1, and how it was chosen); None when the spec decides by argmax or
    nothing was tuned. A broken file is an error naming it."""
    path = spec.directory / THRESHOLD_FILE
    if spec.decision == "argmax" or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        record["threshold"] = float(record["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: needs a numeric 'threshold' ({exc})") from None
    if not 0 < record["threshold"] < 1:
        raise ValueError(f"{path}: threshold must be between 0 and 1, got {record['threshold']}")
    return record


def decide(labels: Sequence[str], probs: dict[str, float], threshold: float | None) -> str:
    """The label: the last one when its probability reaches ``threshold``, else the first (two
    labels); the most probable one when there is no threshold."""
    if threshold is None:
        return max(labels, key=probs.__getitem__)
    return labels[-1] if probs[labels[-1]] >= threshold else labels[0]


def _check_encodable(text: str) -> None:
    """Refuse text that cannot be encoded as UTF-8 (a lone surrogate from a bad JSON escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"the text holds a character that is not valid Unicode at position "
                         f"{exc.start} (an unpaired surrogate)") from None


def _softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _common_base(specs: dict[str, AdapterSpec]) -> str:
    bases = {s.base_model for s in specs.values()}
    if len(bases) > 1:
        raise ValueError(f"catalogue adapters name several base models ({sorted(bases)}); "
                         "choose one: base= (adapterlab: --base-model, the app: ADAPTERLAB_BASE_MODEL)")
    return bases.pop() if bases else DEFAULT_BASE
