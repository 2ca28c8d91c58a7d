"""The runtime's tasks as LangChain Runnables: a prompt template built from the adapter spec, then the
runtime call.

The templates are made from ``adapters.prompts``' own messages (``task_messages``, ``chat_messages``,
rendered with a slot where the text goes), so they produce exactly those (tests check it, and every
chain checks it again before calling the model), while the model call itself is the runtime's: the
app renders and runs a prompt the one way training and evaluation do. Chainlit's LangChain callback
handler shows each chain's steps (prompt, then the runtime call) in the UI.

Every chain takes a dict and returns plain data (dicts, strings), so the steps display as JSON:

- ``classify_chain``: ``{"texts": [...]}`` → ``[{"label", "probs", "truncated", "threshold"}, ...]``
- ``extract_chain``: ``{"texts": [...]}`` → ``[{"fields", "valid", "repaired", "raw", "error", "truncated", "cut_at",
  "text_read"}, ...]``
- ``generate_chain``: ``{"history": [...], "text": str}`` → streamed text pieces
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate, HumanMessagePromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from adapters import Runtime
from adapters.prompts import Message, chat_messages, few_shot_turns, task_messages
from adapters.spec import AdapterSpec

ROLES = {"system": "system", "human": "user", "ai": "assistant"}
LC_TYPES = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
STOP_DRAIN_S = 5.0  # a stopped chain ends within this (milliseconds, as a rule), or is cancelled


class PromptMismatchError(RuntimeError):
    """The LangChain template and ``adapters.prompts`` disagree: a bug, never shown as an answer."""


# --- prompt templates ------------------------------------------------------------------------------

# stands for the input while ``adapters.prompts`` renders the messages a template is made from
TEXT_SLOT = "\x00text\x00"


def task_prompt(spec: AdapterSpec, *, system: str | None = None,
                examples: Sequence[tuple[str, str]] = ()) -> ChatPromptTemplate:
    """The spec's prompt with one variable, ``text``: ``task_messages`` itself (system, few-shot
    turns, the user template), rendered with a slot where the text goes."""
    *fixed, last = task_messages(spec, TEXT_SLOT, system=system, examples=examples)
    return ChatPromptTemplate.from_messages([*_as_langchain(fixed), _user_template(last["content"])])


def chat_prompt(spec: AdapterSpec | None, *, system: str | None = None) -> ChatPromptTemplate:
    """A conversation: ``chat_messages``' system message, ``history`` (earlier turns and few-shot
    pairs, user turns already through the user template: see ``history_messages``), then the new
    user ``text`` through it."""
    *fixed, last = chat_messages(spec, [{"role": "user", "content": TEXT_SLOT}], system=system)
    return ChatPromptTemplate.from_messages([*_as_langchain(fixed), MessagesPlaceholder("history", optional=True),
                                             _user_template(last["content"])])


def history_messages(spec: AdapterSpec | None, turns: Sequence[Message]) -> list[BaseMessage]:
    """Earlier turns as LangChain messages, user turns through the spec's user template (as
    ``chat_messages`` puts them; no system message of its own)."""
    conversation = chat_messages(spec, turns, system="")  # its (empty) system turn first, left out
    return _as_langchain(conversation[1:] if turns else [])


def _as_langchain(messages: Sequence[Message]) -> list[BaseMessage]:
    """Fixed messages as message objects, not templates: braces in a system prompt or a JSON answer
    stay as they are."""
    return [LC_TYPES[m["role"]](content=m["content"]) for m in messages]


def _user_template(rendered: str) -> HumanMessagePromptTemplate:
    """The user turn rendered around ``TEXT_SLOT`` as a template whose one variable is ``text``."""
    escaped = [part.replace("{", "{{").replace("}", "}}") for part in rendered.split(TEXT_SLOT)]
    return HumanMessagePromptTemplate.from_template("{text}".join(escaped))


def as_dicts(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages as the runtime's ``{"role", "content"}`` dicts."""
    return [{"role": ROLES[m.type], "content": m.content} for m in messages]


# --- chains ----------------------------------------------------------------------------------------

def variant_name(base: bool, examples: Sequence[tuple[str, str]] = ()) -> str:
    if not base:
        return "fine-tuned"
    return f"few-shot (k={len(examples)})" if examples else "base"


def run_name(adapter: str, task: str, variant: str) -> str:
    """A chain's run name, which Chainlit shows as a step ("Used spam - classify - few-shot k4") and
    requests an avatar for: Chainlit 2.12 answers 400 for an avatar name with other characters than
    letters, digits, spaces and ``_ . -``, and the page shows an empty circle and logs an error."""
    name = f"{adapter} - {task} - {variant}".replace("(k=", "k").replace(")", "")
    return re.sub(r"[^A-Za-z0-9_ .-]", "_", name)


def classify_chain(runtime: Runtime, adapter: str, *, base: bool, system: str | None = None,
                   examples: Sequence[tuple[str, str]] = (), batch_size: int = 16) -> Runnable:
    spec = runtime.spec(adapter)
    prompt = task_prompt(spec, system=system, examples=examples)

    def run(inputs: dict) -> list[dict]:
        _check_task_prompts(spec, inputs, system, examples)
        results = runtime.classify(adapter, inputs["texts"], base=base, system=system,
                                   examples=examples, batch_size=batch_size)
        return [{"label": r.label, "probs": dict(r.probs), "truncated": r.truncated, "threshold": r.threshold}
                for r in results]

    name = run_name(adapter, "classify", variant_name(base, examples))
    return (_with_prompts(prompt) | RunnableLambda(run, name="runtime.classify")).with_config(run_name=name)


def extract_chain(runtime: Runtime, adapter: str, *, base: bool, system: str | None = None,
                  examples: Sequence[tuple[str, str]] = (), max_new_tokens: int | None = None,
                  batch_size: int = 8) -> Runnable:
    spec = runtime.spec(adapter)
    prompt = task_prompt(spec, system=system, examples=examples)

    def run(inputs: dict) -> list[dict]:
        _check_task_prompts(spec, inputs, system, examples)
        results = runtime.extract(adapter, inputs["texts"], base=base, system=system, examples=examples,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size)
        return [{"fields": dict(r.fields), "valid": r.valid, "repaired": r.repaired, "raw": r.raw,
                 "error": r.error, "truncated": r.truncated, "cut_at": r.cut_at, "text_read": r.text_read}
                for r in results]

    name = run_name(adapter, "extract", variant_name(base, examples))
    return (_with_prompts(prompt) | RunnableLambda(run, name="runtime.extract")).with_config(run_name=name)


@dataclass
class GenerationInfo:
    """What a generate chain learned about its run, for the UI (filled while it streams)."""

    prompt_tokens: int = 0
    truncated: bool = False
    message_cut_to: int | None = None  # the message was cut to this many tokens (its start and its end)
    turns_dropped: int = 0  # the oldest messages left out to fit the context
    cut_at: int | None = None  # the max-new-tokens limit the answer was cut at; None: it ended by itself
    first_piece_seconds: float | None = None
    seconds: float | None = None
    text: str = ""
    started: float = field(default_factory=time.perf_counter)
    stopped: str | None = None  # why it was stopped ("stopped by you", ...; the app sets this)


def generate_chain(runtime: Runtime, adapter: str | None, *, base: bool = False,
                   system: str | None = None, examples: Sequence[tuple[str, str]] = (),
                   temperature: float | None = None, top_p: float | None = None,
                   max_new_tokens: int | None = None,
                   info: GenerationInfo | None = None) -> Runnable:
    """Stream an answer to ``{"history": earlier turns, "text": the new user message}``.

    ``adapter=None`` is the plain base model (the Chat profile). ``info`` receives the token count,
    truncation flag and timing of the run.
    """
    spec = runtime.spec(adapter) if adapter is not None else None
    prompt = chat_prompt(spec, system=system)
    info = info if info is not None else GenerationInfo()

    def prepare(inputs: dict) -> dict:
        turns = [*few_shot_turns(examples), *inputs.get("history", [])]
        return {**inputs, "turns": turns, "history": history_messages(spec, turns)}

    def start(inputs: dict):
        messages = [*inputs["turns"], {"role": "user", "content": inputs["text"]}]
        expected = chat_messages(spec, messages, system=system)
        if as_dicts(inputs["prompt"].to_messages()) != expected:
            raise PromptMismatchError("the LangChain chat prompt differs from adapters.prompts.chat_messages")
        info.started = time.perf_counter()
        # few-shot turns are already in ``messages``: the runtime puts ``examples`` first the same way
        generation = runtime.generate(adapter, messages, base=base, system=system, temperature=temperature,
                                      top_p=top_p, max_new_tokens=max_new_tokens, stream=True)
        info.prompt_tokens, info.truncated = generation.prompt_tokens, generation.truncated  # known before any piece
        info.message_cut_to, info.turns_dropped = generation.message_cut_to, generation.turns_dropped
        return generation

    def finish(generation) -> None:
        info.cut_at = generation.max_new_tokens if generation.finish_reason == "length" else None
        info.text = generation.text
        info.seconds = time.perf_counter() - info.started
        if generation.first_piece_at is not None:
            info.first_piece_seconds = generation.first_piece_at - info.started

    def run(inputs: dict) -> Iterator[str]:
        generation = start(inputs)
        try:
            yield from generation
        finally:
            finish(generation)

    async def arun(inputs: dict, config: RunnableConfig) -> AsyncIterator[str]:
        generation = await asyncio.to_thread(start, inputs)
        try:
            async for piece in _iterate_in_thread(iter(generation), _stop_event(config), cancel=generation.cancel):
                yield piece
        finally:
            finish(generation)

    name = run_name(adapter or "chat", "generate", variant_name(base, examples) if spec else "base")
    step = RunnableLambda(run, afunc=arun, name="runtime.generate")
    return (RunnableLambda(prepare, name="history") | _with_prompt(prompt) | step).with_config(run_name=name)


# --- helpers ---------------------------------------------------------------------------------------

def _with_prompts(prompt: ChatPromptTemplate) -> Runnable:
    """Add ``prompts`` (one prompt value per text) to the input, through the template.

    The async variant keeps the template's run (and its callbacks) on the caller's event loop: run
    from a worker thread, async callback handlers would get a loop of their own, and Chainlit's
    data layer, bound to the server's loop, cannot be used from there.
    """

    def render(inputs: dict) -> dict:
        return {**inputs, "prompts": [prompt.invoke({"text": t}) for t in inputs["texts"]]}

    async def arender(inputs: dict) -> dict:
        return {**inputs, "prompts": [await prompt.ainvoke({"text": t}) for t in inputs["texts"]]}

    return RunnableLambda(render, afunc=arender, name="prompt template")


def _with_prompt(prompt: ChatPromptTemplate) -> Runnable:
    def render(inputs: dict) -> dict:
        return {**inputs, "prompt": prompt.invoke({"history": inputs["history"], "text": inputs["text"]})}

    async def arender(inputs: dict) -> dict:
        return {**inputs, "prompt": await prompt.ainvoke({"history": inputs["history"], "text": inputs["text"]})}

    return RunnableLambda(render, afunc=arender, name="prompt template")


def _check_task_prompts(spec: AdapterSpec, inputs: dict, system, examples) -> None:
    for text, value in zip(inputs["texts"], inputs["prompts"], strict=True):
        if as_dicts(value.to_messages()) != task_messages(spec, text, system=system, examples=examples):
            raise PromptMismatchError("the LangChain prompt differs from adapters.prompts.task_messages")


class StoppedByUser(Exception):
    """Raised inside a streaming chain when its consumer asked it to stop (``stream_pieces``), so that
    the run ends the way a failed run does: the error passes through each of LangChain's generators
    in turn, and none is left for the garbage collector to close."""


# the ``configurable`` key under which ``stream_pieces`` hands a chain its stop request
STOP_KEY = "adapterlab_stop"


def stopped_by_user(error: BaseException) -> bool:
    """Whether a chain run ended because its consumer stopped it (the Stop button, a closed page),
    not because it failed: ``StoppedByUser`` where the stop reached the chain's source, else the
    task's ``CancelledError``; or ``GeneratorExit`` for a LangChain step left waiting at its
    ``yield`` by a cancellation and closed later (LangChain pulls each step in a task of its own;
    that was 37 of 200 cancellations at random moments of a fast stream)."""
    return isinstance(error, (StoppedByUser, asyncio.CancelledError, GeneratorExit))


async def stream_pieces(chain: Runnable, inputs: dict, config: dict | None,
                        on_piece: Callable[[str], Awaitable[None]]) -> None:
    """Stream ``chain`` and hand each piece to ``on_piece`` (which may await: sending it to the page).

    When this call is cancelled (the Stop button, a closed page), the chain is stopped at its source:
    a generate chain's runtime step (which finds the request in its config under ``STOP_KEY``) raises
    ``StoppedByUser`` at once, that error ends each of LangChain's generators and the run (the steps
    the UI shows) in order, and then the cancellation goes on. Cancelling the chain instead, or a plain
    ``async for`` over ``chain.astream`` cancelled while ``on_piece`` awaited, left some of those
    generators suspended at a ``yield``; the garbage collector closed them later, and twice that
    printed a traceback into the server log ("async generator ignored GeneratorExit"; then, once,
    "no running event loop" from a generator closed outside the event loop). A chain that does not
    stop within ``STOP_DRAIN_S`` is cancelled. Errors of the chain are raised here.
    """
    stop = asyncio.Event()
    configurable = {**(config or {}).get("configurable", {}), STOP_KEY: stop}
    config = {**(config or {}), "configurable": configurable}
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump() -> None:
        try:
            async for piece in chain.astream(inputs, config=config):
                queue.put_nowait(piece)
        finally:
            queue.put_nowait(end)

    task = asyncio.create_task(pump())
    try:
        while (piece := await queue.get()) is not end:
            await on_piece(piece)
        await task  # the chain's error, if it failed
    except asyncio.CancelledError:
        if not task.done():
            stop.set()
            await asyncio.wait([task], timeout=STOP_DRAIN_S)
        raise
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # seen: a stop's StoppedByUser, or the error raised above


def _stop_event(config: RunnableConfig | None) -> asyncio.Event | None:
    return ((config or {}).get("configurable") or {}).get(STOP_KEY)


async def _iterate_in_thread(iterator: Iterator[str], stop: asyncio.Event | None = None,
                             cancel: Callable[[], None] | None = None) -> AsyncIterator[str]:
    """Pull a blocking iterator from a worker thread. When ``stop`` is set, raise ``StoppedByUser``
    without waiting for the pull; if the consumer stops or is cancelled, likewise. Either way the
    iterator is closed once the pending pull returns, which stops the model's generation; ``cancel``
    (the generation's) makes a pull that waits for the model return at once, so a stopped answer
    leaves the queue then, not after its first token."""
    loop = asyncio.get_running_loop()
    done = object()
    pending = None
    stop = stop or asyncio.Event()
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while True:
            if stop.is_set():  # also when asked while the last piece was on its way
                raise StoppedByUser()
            pending = loop.run_in_executor(None, next, iterator, done)
            await asyncio.wait([pending, stopped], return_when=asyncio.FIRST_COMPLETED)  # cancels neither
            if stop.is_set():
                raise StoppedByUser()
            piece, pending = pending.result(), None
            if piece is done:
                return
            yield piece
    finally:
        stopped.cancel()
        if pending is not None and cancel is not None:
            cancel()
        # closed in a worker thread too: closing waits for the model to stop at its next token, or
        # for the model lock, which another request may hold, and the event loop serves every page
        if pending is None:
            loop.run_in_executor(None, _close, iterator)
        else:  # a pull nobody waits for: closed once it returns (at once if it has)
            pending.add_done_callback(lambda pull: _close_after(pull, iterator))


def _close_after(pull: asyncio.Future, iterator) -> None:
    if not pull.cancelled():
        pull.exception()  # its error, if it failed, is not news: the answer has stopped
    asyncio.get_running_loop().run_in_executor(None, _close, iterator)


def _close(iterator) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except ValueError:  # still running in its thread: it stops at its next piece
            pass
