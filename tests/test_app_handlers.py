"""The chat app without a browser: LangChain prompts equal adapters.prompts, the chains return what the
runtime returns, and the handlers say the right thing for good and bad input (tiny random model)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re

import pytest

from adapters import AdapterNotTrainedError, Runtime
from adapters.catalog import load_catalog
from adapters.prompts import chat_messages, few_shot_turns, task_messages
from chat_app import chains, handlers, offline, problems, uploads, welcome
from chat_app.config import load_config

EXAMPLES = [("win {cash} now", "spam"), ("dinner at 7?", '{"cancer_type": null, "stage": "IV"}')]
TEXTS = ["hello", "Braces {text} and {0} stay as they are", "ünïcødé ✓ \n two lines"]


def runtime(tiny_base, catalog) -> Runtime:
    return Runtime.local(catalog, base=str(tiny_base), progress=False)


# --- prompts: the LangChain templates are adapters.prompts ----------------------------------------

@pytest.mark.parametrize("system", [None, "Custom system prompt with {braces}"])
@pytest.mark.parametrize("examples", [(), EXAMPLES])
def test_task_prompt_messages_are_exactly_task_messages(catalog, system, examples):
    for spec in load_catalog(catalog).values():
        template = chains.task_prompt(spec, system=system, examples=examples)
        for text in TEXTS:
            got = chains.as_dicts(template.invoke({"text": text}).to_messages())
            assert got == task_messages(spec, text, system=system, examples=examples)


def test_task_prompt_follows_a_changed_user_template(catalog):
    spec_file = catalog / "spam" / "adapter.yaml"
    spec_file.write_text(spec_file.read_text().replace('user_template: "Message: {text}"',
                                                       'user_template: "SMS <<{text}>> end"'))
    spec = load_catalog(catalog)["spam"]
    got = chains.as_dicts(chains.task_prompt(spec, examples=EXAMPLES).invoke({"text": "hi"}).to_messages())
    assert got == task_messages(spec, "hi", examples=EXAMPLES)
    assert got[-1]["content"] == "SMS <<hi>> end"


@pytest.mark.parametrize("adapter", [None, "medquad", "spam"])
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_chat_prompt_messages_are_exactly_chat_messages(catalog, adapter, system):
    spec = load_catalog(catalog)[adapter] if adapter else None
    turns = [{"role": "user", "content": "first {question}"}, {"role": "assistant", "content": "an answer"}]
    shots = few_shot_turns(EXAMPLES[:1])
    value = chains.chat_prompt(spec, system=system).invoke(
        {"history": chains.history_messages(spec, [*shots, *turns]), "text": "second"})
    expected = chat_messages(spec, [*shots, *turns, {"role": "user", "content": "second"}], system=system)
    assert chains.as_dicts(value.to_messages()) == expected


def test_an_empty_system_prompt_is_one_rule_for_tasks_and_chats(catalog):
    """task_messages rendered "" as an empty system turn where chat_messages dropped it, and the
    tokenizer's template then put SmolLM's default system prompt into a chat: one spec, two prompts."""
    spec = load_catalog(catalog)["medquad"]
    task = task_messages(spec, "What is glaucoma?", system="")
    assert task == chat_messages(spec, [{"role": "user", "content": "What is glaucoma?"}], system="")
    assert task[0] == {"role": "system", "content": ""}
    assert chat_messages(None, [{"role": "user", "content": "hi"}])[0]["role"] == "user"  # none given: the template's


def test_a_first_chat_turn_is_the_task_prompt(catalog):
    spec = load_catalog(catalog)["medquad"]
    value = chains.chat_prompt(spec).invoke({"history": [], "text": "What is glaucoma?"})
    assert chains.as_dicts(value.to_messages()) == task_messages(spec, "What is glaucoma?")


# --- chains over the runtime -----------------------------------------------------------------------

def test_classify_and_extract_chains_return_what_the_runtime_returns(tiny_base, catalog):
    rt = runtime(tiny_base, catalog)
    got = chains.classify_chain(rt, "spam", base=True).invoke({"texts": TEXTS})
    direct = rt.classify("spam", TEXTS, base=True)
    assert [g["label"] for g in got] == [d.label for d in direct]
    for g, d in zip(got, direct):
        assert g["probs"] == pytest.approx(d.probs)
    got = chains.extract_chain(rt, "oncology", base=True, max_new_tokens=8).invoke({"texts": TEXTS[:2]})
    direct = rt.extract("oncology", TEXTS[:2], base=True, max_new_tokens=8)
    assert [g["raw"] for g in got] == [d.raw for d in direct]
    assert [list(g["fields"]) for g in got] == [list(rt.spec("oncology").fields)] * 2


def test_few_shot_examples_reach_the_runtime(tiny_base, catalog, monkeypatch):
    rt = runtime(tiny_base, catalog)
    seen = []
    original = rt.classify
    monkeypatch.setattr(rt, "classify", lambda *a, **kw: seen.append(kw) or original(*a, **kw))
    chains.classify_chain(rt, "spam", base=True, system="S", examples=EXAMPLES[:1]).invoke({"texts": ["x"]})
    assert seen[0]["examples"] == EXAMPLES[:1] and seen[0]["system"] == "S" and seen[0]["base"] is True


def test_a_chain_refuses_to_run_when_its_prompt_drifts_from_adapters_prompts(tiny_base, catalog, monkeypatch):
    rt = runtime(tiny_base, catalog)
    # a template that puts the text in other words than adapters.prompts would (a LangChain change)
    make = chains._user_template
    monkeypatch.setattr(chains, "_user_template", lambda rendered: make(rendered + " (drifted)"))
    with pytest.raises(chains.PromptMismatchError):
        chains.classify_chain(rt, "spam", base=True).invoke({"texts": ["hello"]})


def test_an_untrained_adapter_says_so_and_the_base_path_works(tiny_base, catalog):
    rt = runtime(tiny_base, catalog)
    with pytest.raises(AdapterNotTrainedError, match="adapterlab train spam"):
        chains.classify_chain(rt, "spam", base=False).invoke({"texts": ["hello"]})
    assert chains.classify_chain(rt, "spam", base=True).invoke({"texts": ["hello"]})[0]["label"] in ("ham", "spam")
    spec = rt.spec("spam")
    variant = handlers.choose_variant(spec, trained=False, use_base=False)
    assert variant.problem and "not trained yet" in variant.problem and "adapterlab train spam" in variant.problem
    assert handlers.choose_variant(spec, trained=False, use_base=True) == handlers.Variant(
        True, "base model + spam prompt — adapter not trained yet")
    assert not handlers.choose_variant(spec, trained=True, use_base=False).base


def test_generate_chain_streams_the_runtime_answer_with_history(tiny_base, catalog):
    rt = runtime(tiny_base, catalog)
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    info = chains.GenerationInfo()
    chain = chains.generate_chain(rt, "medquad", base=True, temperature=0, max_new_tokens=12, info=info)
    pieces = list(chain.stream({"history": history, "text": "q2"}))
    direct = rt.generate("medquad", [*history, {"role": "user", "content": "q2"}], base=True, temperature=0,
                         max_new_tokens=12, stream=False).read()
    assert len(pieces) > 1 and "".join(pieces) == info.text == direct
    assert info.prompt_tokens > 0 and info.first_piece_seconds is not None and not info.truncated
    assert info.cut_at == 12  # the tiny random model does not end its answer within 12 tokens
    footer = handlers.generation_footer("base", 1.0, 0.1, info.prompt_tokens, 12, False, medical=True,
                                        cut_at=info.cut_at)
    assert "cut at the 12-token limit (⚙️ max new tokens)" in footer
    assert "cut at" not in handlers.generation_footer("base", 1.0, 0.1, 9, 5, False, medical=True)
    quick = handlers.generation_footer("base", 0.548, 0.536, 9, 5, False, medical=False)
    assert "first token 0.54 s · total 0.55 s" in quick and "Not medical advice" not in quick
    assert "total 12.3 s" in handlers.generation_footer("base", 12.34, 0.5, 9, 5, False, medical=False)
    hot = handlers.generation_footer("fine-tuned", 1.0, 0.1, 9, 5, False, medical=False, sampling=(1.2, 1.0))
    assert hot.startswith("*fine-tuned · temperature 1.2, top-p 1 · first token")
    assert "· greedy ·" in handlers.generation_footer("base", 1.0, 0.1, 9, 5, False, medical=False, sampling=(0.0, 1.0))


def test_the_footer_says_what_of_the_input_was_cut_to_fit(tiny_base, catalog):
    rt = runtime(tiny_base, catalog)
    budget = rt.spec("medquad").max_input_tokens
    info = chains.GenerationInfo()
    chain = chains.generate_chain(rt, "medquad", base=True, temperature=0, max_new_tokens=4, info=info)
    "".join(chain.stream({"history": [], "text": "what is asthma " * 400}))
    assert info.truncated and info.message_cut_to == budget and info.turns_dropped == 0
    footer = handlers.generation_footer("base", 1.0, 0.1, info.prompt_tokens, 4, info.truncated, medical=True,
                                        message_cut_to=info.message_cut_to, turns_dropped=info.turns_dropped)
    assert f"only {budget:,} tokens of your message were read, its start and its end" in footer
    assert "oldest" not in footer

    turn = "tell me about diabetes " * (budget // rt.backend.count_tokens("tell me about diabetes ") // 2)
    history = [m for _ in range(6) for m in ({"role": "user", "content": turn}, {"role": "assistant", "content": turn})]
    info = chains.GenerationInfo()
    chain = chains.generate_chain(rt, "medquad", base=True, temperature=0, max_new_tokens=4, info=info)
    "".join(chain.stream({"history": history, "text": "and asthma?"}))
    assert info.message_cut_to is None and info.turns_dropped > 0
    assert info.prompt_tokens <= rt.backend.context_length - 4
    footer = handlers.generation_footer("base", 1.0, 0.1, info.prompt_tokens, 4, info.truncated, medical=True,
                                        message_cut_to=None, turns_dropped=info.turns_dropped)
    assert f"the {info.turns_dropped} oldest messages left out to fit the context" in footer


def test_generate_chain_streams_asynchronously_and_stops_when_abandoned(tiny_base, catalog):
    rt = runtime(tiny_base, catalog)

    async def scenario():
        info = chains.GenerationInfo()
        chain = chains.generate_chain(rt, None, temperature=0, max_new_tokens=10, info=info)
        pieces = [p async for p in chain.astream({"history": [], "text": "hello"})]
        long_run = chains.generate_chain(rt, None, temperature=0, max_new_tokens=400)
        stream = long_run.astream({"history": [], "text": "hello"})
        await stream.__anext__()
        await stream.aclose()  # the Stop button: the generation must end and free the model
        return pieces, info

    pieces, info = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "".join(pieces) == info.text and info.text
    # the model is free again: a classify call does not wait for the abandoned 400-token generation
    result = asyncio.run(asyncio.wait_for(asyncio.to_thread(rt.classify, "spam", ["x"], base=True), 30))
    assert result[0].label in ("ham", "spam")


def test_a_stop_while_a_piece_is_being_sent_ends_the_chains_run_at_once(tiny_base, catalog):
    """Stopped while the app awaits the page (sending a piece), a plain ``async for`` over
    ``chain.astream`` leaves LangChain's generators suspended: its run (the UI's steps) ends only
    when the garbage collector closes them, and their late closing printed 'async generator ignored
    GeneratorExit' tracebacks into the server log. ``stream_pieces`` ends it in the stopped task."""
    import gc

    from langchain_core.callbacks import BaseCallbackHandler

    rt = runtime(tiny_base, catalog)

    class Ends(BaseCallbackHandler):
        def __init__(self):
            self.errors, self.ends = [], []

        def on_chain_error(self, error, **kwargs):
            self.errors.append(type(error).__name__)

        def on_chain_end(self, outputs, **kwargs):
            self.ends.append(outputs)

    async def scenario():
        info, ends = chains.GenerationInfo(), Ends()
        chain = chains.generate_chain(rt, None, temperature=0, max_new_tokens=400, info=info)
        sent = []

        async def send(piece):  # the page: slow enough that a stop lands here
            sent.append(piece)
            await asyncio.sleep(0.05)

        task = asyncio.create_task(chains.stream_pieces(chain, {"history": [], "text": "hello"},
                                                        {"callbacks": [ends]}, send))
        while len(sent) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ends, info, sent

    gc.disable()  # nothing may wait for the collector
    try:
        ends, info, sent = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        gc.enable()
    assert "StoppedByUser" in ends.errors  # the run ended as stopped, in the task that was stopped
    assert info.seconds is not None and info.text.startswith("".join(sent))


def test_a_stop_while_the_answer_waits_for_the_model_drops_its_request_at_once(tiny_base, catalog):
    """Another request holds the model (a batch, another user's answer): a stopped answer leaves the
    model's queue at once. Before, its request stayed queued, was decoded once the model was free,
    and was dropped only after its first token."""
    rt = runtime(tiny_base, catalog)
    queue = rt.backend._streams

    async def scenario():
        chain = chains.generate_chain(rt, None, temperature=0, max_new_tokens=50)

        async def send(piece):
            pass

        with rt.backend._lock.hold():
            task = asyncio.create_task(chains.stream_pieces(chain, {"history": [], "text": "hi"}, {}, send))
            while queue.waiting() < 1:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):
                if not queue.waiting():
                    break
                await asyncio.sleep(0.02)
            return queue.waiting()

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == 0, "the stopped request waited for the model"


def test_a_stop_ends_every_step_at_the_source_wherever_it_lands(tiny_base, catalog, monkeypatch):
    """The app marks a step failed unless ``chains.stopped_by_user`` says its error was a stop. A stop
    reaches the chain's source and ends every step with ``StoppedByUser``, wherever it lands.
    Cancelling the chain instead left a step that had just handed over its piece waiting at its
    ``yield`` (LangChain pulls each step in a task of its own), to be closed later by the garbage
    collector (GeneratorExit: 37 of 200 stops): CI saw that once as a failed-step mark, and twice as
    a traceback in the server log."""
    import random

    from langchain_core.callbacks import AsyncCallbackHandler

    rt = runtime(tiny_base, catalog)

    def fast_stream(*args, **kwargs):  # pieces as fast as they can come, so a stop lands anywhere
        while True:
            yield " word"

    monkeypatch.setattr(rt.backend, "stream", fast_stream)

    class Errors(AsyncCallbackHandler):
        def __init__(self):
            self.errors = []

        async def on_chain_error(self, error, **kwargs):
            self.errors.append(error)

    async def scenario(handler):
        chain = chains.generate_chain(rt, None, temperature=0)

        async def send(piece):
            pass

        for _ in range(50):
            task = asyncio.create_task(chains.stream_pieces(chain, {"history": [], "text": "hi"},
                                                            {"callbacks": [handler]}, send))
            await asyncio.sleep(random.uniform(0.005, 0.03))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    handler = Errors()
    random.seed(0)
    asyncio.run(asyncio.wait_for(scenario(handler), 120))
    kinds = {type(e).__name__ for e in handler.errors}
    assert len(handler.errors) >= 50 and kinds == {"StoppedByUser"}, kinds  # none closed from outside
    assert all(chains.stopped_by_user(e) for e in handler.errors)
    assert not chains.stopped_by_user(RuntimeError("the model failed"))


def test_the_stop_button_cancelling_the_task_closes_the_models_stream(tiny_base, catalog, monkeypatch):
    """Chainlit's Stop button cancels the message's asyncio task; the generation behind it must be
    closed then (its backend stream frees the model at the next token), not left running to
    ``max_new_tokens`` while every other request waits for the model lock."""
    import threading
    import time

    rt = runtime(tiny_base, catalog)
    real_stream = rt.backend.stream
    closed = threading.Event()

    def endless_stream(*args, on_finish=None, **kwargs):  # the real stream, then pieces for ever: only a close ends it
        try:
            yield from real_stream(*args, **kwargs)  # without on_finish: this stream never finishes
            while True:
                time.sleep(0.01)
                yield " more"
        except GeneratorExit:
            time.sleep(1.0)  # as a real stream waits for its model to stop, or for another request's lock
            closed.set()
            raise

    monkeypatch.setattr(rt.backend, "stream", endless_stream)

    async def scenario():
        info = chains.GenerationInfo()
        chain = chains.generate_chain(rt, None, temperature=0, max_new_tokens=8, info=info)
        pieces = []

        async def consume():
            async for piece in chain.astream({"history": [], "text": "hello"}):
                pieces.append(piece)

        task = asyncio.create_task(consume())
        while len(pieces) < 12:
            await asyncio.sleep(0.01)
        stalls = []  # the event loop serves every page: the close must not hold it

        async def heartbeat():
            last = time.perf_counter()
            while not closed.is_set():
                await asyncio.sleep(0.02)
                stalls.append(time.perf_counter() - last)
                last = time.perf_counter()

        beat = asyncio.create_task(heartbeat())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        was_closed = await asyncio.to_thread(closed.wait, 10)
        await beat
        return was_closed, info, max(stalls)

    was_closed, info, longest_stall = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert was_closed, "the stream was not closed after the task was cancelled"
    assert longest_stall < 0.5, f"closing the stream held the event loop for {longest_stall:.2f} s"
    # what the footer of a stopped answer needs is known: not cut at a limit, but stopped
    assert info.prompt_tokens > 0 and info.seconds is not None and info.cut_at is None
    footer = handlers.generation_footer("base", info.seconds, info.first_piece_seconds, info.prompt_tokens, 12,
                                        info.truncated, medical=False, cut_at=info.cut_at, stopped="stopped by you")
    assert "stopped by you" in footer and "cut at" not in footer


@pytest.mark.parametrize("stopped", [False, True])
def test_a_streamed_answer_s_steps_show_the_input_the_chain_received(tiny_base, catalog, stopped):
    """LangChain starts a run it streams before the run's input has arrived, reporting it as
    ``{"input": ""}``, and hands the input over when the run ends. Chainlit's tracer set a step's
    input at the start only, so the steps of every generated answer showed ``{"input": ""}``; the
    app's ``StepsTracer`` fills it in at the end, also for a stopped answer."""
    from chainlit.context import init_http_context

    from chat_app import steps

    rt = runtime(tiny_base, catalog)
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    question = "What causes glaucoma?"

    async def shown_steps() -> dict[str, dict]:
        """Each step as the page last got it, by name."""
        context, shown, pieces = init_http_context(), {}, []

        async def update_step(step_dict):
            shown[step_dict["name"]] = step_dict

        async def send(piece):
            pieces.append(piece)
            await asyncio.sleep(0)

        context.emitter.update_step = update_step
        chain = chains.generate_chain(rt, "medquad", base=True, temperature=0, max_new_tokens=400 if stopped else 6)
        tracer = steps.StepsTracer(stop_reason=lambda task: "stopped: the page was closed")
        task = asyncio.create_task(chains.stream_pieces(chain, {"history": history, "text": question},
                                                        {"callbacks": [tracer]}, send))
        if stopped:
            while len(pieces) < 2:
                await asyncio.sleep(0.01)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return shown

    shown = asyncio.run(asyncio.wait_for(shown_steps(), 60))
    answer = shown[chains.run_name("medquad", "generate", "base")]  # the step the page shows first
    runtime_step = shown["runtime.generate"]  # the model call, within it
    assert json.loads(answer["input"]) == {"history": history, "text": question}, answer["input"]
    assert json.loads(runtime_step["input"])["text"] == question, runtime_step["input"]
    assert question in json.dumps(json.loads(runtime_step["input"])["prompt"])  # the rendered prompt
    assert answer["showInput"] == runtime_step["showInput"] == "json"
    if stopped:
        assert answer["output"] == runtime_step["output"] == "stopped: the page was closed"
    else:
        assert json.loads(runtime_step["output"])["output"]  # the answer, as before


# --- input checks and uploads -------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   \n\t", None])
def test_an_empty_message_gets_a_clear_answer(text):
    with pytest.raises(problems.InputProblem, match="empty"):
        handlers.text_to_send(text)


def test_a_100kb_message_is_truncated_by_the_runtime_and_the_user_is_told(tiny_base, catalog):
    text, notes = handlers.text_to_send("win a free prize call now " * 4000)  # ~100 kB
    assert len(text) > 100_000 and notes == []
    rt = runtime(tiny_base, catalog)
    (result,) = chains.classify_chain(rt, "spam", base=True).invoke({"texts": [text]})
    assert result["truncated"]
    assert "only its start and its end were read" in handlers.truncation_note(rt.spec("spam"), text)
    huge, notes = handlers.text_to_send("x" * 300_000)
    assert len(huge) == handlers.MAX_MESSAGE_CHARS and "only the first" in notes[0]


def test_txt_upload_is_one_text_a_line():
    upload = uploads.read_upload("sms.txt", "first\n\n  second  \r\nthird\n".encode(), limit=100)
    assert upload.texts == ["first", "second", "third"] and upload.source == "lines" and not upload.notes


def test_csv_upload_uses_the_text_column_whatever_its_case():
    data = 'id,Message,label\n1,"Hello, there",ham\n2,"WIN ""now""",spam\n3,,ham\n'.encode()
    upload = uploads.read_upload("batch.CSV", data, limit=100)
    assert upload.texts == ["Hello, there", 'WIN "now"'] and upload.source == "Message"
    bom = "\ufefftext\nnoted\n".encode()
    assert uploads.read_upload("x.csv", bom, limit=5).texts == ["noted"]


def test_a_csv_text_with_unquoted_commas_is_read_whole_and_said_so():
    data = b"id,text\n1,Hi, are you free tonight? Call me, love\n2,See you at 6\n3,WINNER, claim your prize\n"
    upload = uploads.read_upload("commas.csv", data, limit=100)
    assert upload.texts == ["Hi, are you free tonight? Call me, love", "See you at 6", "WINNER, claim your prize"]
    assert "Rows 2, 4 have more fields than the header: their texts hold an unquoted comma," in upload.notes[0]


def test_a_batch_names_each_text_by_its_row_in_the_file_and_keeps_the_file_s_columns():
    """A note said "row 4" for what the table showed as #3, rows without text vanished unsaid, and
    the results file dropped the upload's ids, so results could not be joined back to patients."""
    data = (b"patient_id,narrative\nP1,Stage IV melanoma\nP2,\"Lung, EGFR\"\nP3,\n"
            b"P4,Colon cancer, KRAS G12D\n")
    upload = uploads.read_upload("onco.csv", data, limit=100)
    assert upload.texts == ["Stage IV melanoma", "Lung, EGFR", "Colon cancer, KRAS G12D"]
    assert upload.rows == [2, 3, 5] and upload.columns == ["patient_id"]
    assert upload.values == [["P1"], ["P2"], ["P4"]]
    assert upload.notes == ["Row 5 has more fields than the header: its text holds an unquoted comma, "
                            "so the rest of the row was read as its text.",
                            "Row 4 has no text in column `narrative` and was skipped."]
    results = [{"label": "ham", "probs": {"ham": 0.9, "spam": 0.1}, "truncated": False}] * 3
    header, rows = handlers.batch_rows("classify", upload.texts, results, labels=("ham", "spam"))
    md = handlers.batch_markdown("classify", "onco.csv", upload, header, rows, "base", 0.5)
    assert "| row | text | answer |" in md and "| 5 | Colon cancer, KRAS G12D | **ham** |" in md
    assert "a chat reopened from the history keeps this message, not the file" in md  # said before it is lost
    parsed = list(csv.reader(io.StringIO(handlers.results_csv(header, rows, upload).decode("utf-8-sig"))))
    assert parsed[0][:3] == ["row", "patient_id", "text"] and [r[:2] for r in parsed[1:]] == [
        ["2", "P1"], ["3", "P2"], ["5", "P4"]]

    lines = uploads.read_upload("sms.txt", b"first\n\nsecond\n", limit=1)
    assert lines.rows == [1] and lines.row_name == "line" and "up to line 1" in lines.notes[0]


def test_a_csv_text_column_is_found_by_a_word_of_its_name_and_a_headerless_column_is_read_whole():
    """"Clinical Note" was not a text column, and a one-column file without a header said "no text
    column (columns found: <its first message>)"."""
    upload = uploads.read_upload("notes.csv", b"Patient ID,Clinical Notes\nP1,Stage II melanoma\n", limit=10)
    assert upload.texts == ["Stage II melanoma"] and upload.source == "Clinical Notes" and upload.columns == ["Patient ID"]
    plain = uploads.read_upload("sms.csv", b"Are you free tonight?\n\nWIN a prize now\n", limit=10)
    assert plain.texts == ["Are you free tonight?", "WIN a prize now"] and plain.rows == [1, 3]
    assert plain.notes == ["Row 1 (`Are you free tonight?`) names no text column, so the file was read as one "
                           "text a row, row 1 included."]


def test_a_first_text_that_has_a_column_word_in_it_is_not_taken_for_a_header():
    """"Text me when you get home" was read as a header naming its text column (it holds "text"):
    that first message was dropped without a word."""
    data = b"Text me when you get home\nWINNER!! Claim your free prize now, call 09061701461\nOk lar\n"
    with pytest.raises(problems.InputProblem, match=r"no text column \(its first row: `Text me when you get home`"):
        uploads.read_upload("sms.csv", data, limit=10)
    quoted = uploads.read_upload("sms.csv", b"Text me when you get home\nOk lar\n", limit=10)
    assert quoted.texts == ["Text me when you get home", "Ok lar"]


def test_a_file_column_named_like_a_result_is_kept_under_another_name():
    """A spam CSV with its gold `label` gave a results CSV with two `label` columns."""
    upload = uploads.read_upload("gold.csv", b"id,label,text\n1,spam,WIN now\n", limit=10)
    header, rows = handlers.batch_rows("classify", upload.texts, [
        {"label": "ham", "probs": {"ham": 0.9, "spam": 0.1}, "truncated": False}], labels=("ham", "spam"))
    first = handlers.results_csv(header, rows, upload).decode("utf-8-sig").splitlines()[0]
    assert first == "row,id,file_label,text,label,p_ham,p_spam,truncated"
    # a `row` of its own had given `row,row,...`; a `Label` differs from `label` only in case
    upload = uploads.read_upload("own-row.csv", b"row,Label,P_spam,text\n7,spam,0.5,WIN now\n", limit=10)
    first = handlers.results_csv(header, rows, upload).decode("utf-8-sig").splitlines()[0]
    assert first == "row,file_row,file_Label,file_P_spam,text,label,p_ham,p_spam,truncated"


def test_a_csv_whose_text_column_is_not_last_refuses_rows_with_unquoted_commas():
    with pytest.raises(problems.InputProblem, match=r"row 3 has more fields than the header \(2\)"):
        uploads.read_upload("commas.csv", b"text,label\nhello,ham\nWIN, now,spam\n", limit=100)


def test_a_csv_quote_that_never_closes_is_refused_naming_its_row_and_line():
    # Python's csv reads everything after such a quote as one text: rows 3 to 5 became one message
    data = b'text,label\n"a text\nover two lines",ham\nhello,ham\n"WIN now,spam\nsee you,ham\nok,ham\n'
    with pytest.raises(problems.InputProblem, match=r"row 4 \(line 5\) opens a double quote that is never closed"):
        uploads.read_upload("quote.csv", data, limit=100)
    closed = uploads.read_upload("quote.csv", data.replace(b'"WIN now', b'"WIN now"'), limit=100)
    assert closed.texts == ["a text\nover two lines", "hello", "WIN now", "see you", "ok"]
    # quotes inside an unquoted text, which strict reading would refuse, are still read as they were
    assert uploads.read_upload("q.csv", b'text\nhe said "hi" there\n"a"b\n', limit=10).texts == [
        'he said "hi" there', 'ab']


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_csv_with_another_delimiter_is_read_by_its_header(delimiter):
    data = f"id{delimiter}text\n1{delimiter}Are we meeting today, at 6?\n2{delimiter}WIN now\n".encode()
    upload = uploads.read_upload("semi.csv", data, limit=100)
    assert upload.texts == ["Are we meeting today, at 6?", "WIN now"] and not upload.notes


@pytest.mark.parametrize("name, data, message", [
    ("data.csv", b"id,label\n1,ham\n", r"no text column \(its first row: `id`, `label`\)\. Name the column"),
    ("ids.csv", b"note_id,sms label\n1,ham\n", r"no text column \(its first row: `note_id`, `sms label`\)"),
    ("sms.csv", b"Go until jurong point, crazy\nOk lar\n", r"no text column .* uploaded as a `\.txt`"),
    ("blob.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    ("mixed.txt", b"caf\xc3\xa9 and \x81\x8d", r"not UTF-8 text \(byte 0x81 on line 1\)"),
    ("half.txt", b"\xff\xfeh\x00i\x00\x00", "starts as UTF-16 text but is not"),
    ("notes.jsonl", b'{"text": "ok"}\n{"text": "a", "text": "b"}\n[1]\n',
     r"lines 2, 3 are not JSON objects \(line 2: key \"text\" appears twice in one object\)"),
    ("one.jsonl", b'{"text": "ok"}\n[1]\n', r"line 2 is not a JSON object \(a JSON list"),  # its line named once
    ("keys.jsonl", b'{"id": 1, "label": "ham"}\n', r"no text key \(keys found: `id`, `label`\)"),
    ("photo.png", b"\x89PNG", r"upload a `\.txt` file"),
    ("notes.xlsx", b"PK\x03\x04", r"a spreadsheet workbook, .* Save the sheet as CSV \(in Excel: File → Save As"),
    ("empty.txt", b"\n\n  \n", "no text"),
    ("empty.csv", b"", "empty"),
])
def test_bad_uploads_get_a_clear_message(name, data, message):
    with pytest.raises(problems.InputProblem, match=message):
        uploads.read_upload(name, data, limit=10)


def test_an_excel_csv_in_windows_1252_with_semicolons_is_read_and_its_results_keep_the_semicolons():
    """Excel on Windows saves "CSV" in Windows-1252, with semicolons where the list separator is one:
    such a file was refused as not UTF-8, and a results file in commas opened as one column there."""
    data = "id;text\r\nP1;Dose 5 µg, 38,5 °C fever – café\r\nP2;WIN £100 now\r\n".encode("cp1252")
    upload = uploads.read_upload("export.csv", data, limit=10)
    assert upload.texts == ["Dose 5 µg, 38,5 °C fever – café", "WIN £100 now"]
    assert upload.notes[0].startswith("The file is not UTF-8 (byte 0xb5 on line 2), so it was read "
                                      "as Windows-1252")
    header, rows = handlers.batch_rows("classify", upload.texts, [
        {"label": "ham", "probs": {"ham": 0.9, "spam": 0.1}, "truncated": False}] * 2, labels=("ham", "spam"))
    written = handlers.results_csv(header, rows, upload).decode("utf-8-sig").splitlines()
    assert written[0].startswith("row;id;text;label;") and written[1].startswith("2;P1;Dose 5 µg, 38,5 °C")


def test_an_excel_unicode_text_file_in_utf_16_is_read():
    upload = uploads.read_upload("notes.txt", "Stage II — ER+\r\nKRAS G12D\r\n".encode("utf-16"), limit=10)
    assert upload.texts == ["Stage II — ER+", "KRAS G12D"]
    assert upload.notes == ['The file is UTF-16 text (as Excel saves "Unicode text") and was read as such.']


def test_a_jsonl_upload_reads_the_text_key_and_keeps_the_other_keys():
    """The oncology data set's own file (instruction, input, output) could not be attached."""
    lines = [{"id": "n1", "input": "Stage IV melanoma, BRAF V600E.", "output": {"stage": "IV"}},
             {"id": "n2", "input": "  "},
             {"id": "n3", "input": "Lung adenocarcinoma", "extra": None}]
    data = ("\n".join(json.dumps(line) for line in lines) + "\n\n").encode()
    upload = uploads.read_upload("onco.JSONL", data, limit=10)
    assert upload.texts == ["Stage IV melanoma, BRAF V600E.", "Lung adenocarcinoma"]
    assert upload.source == "input" and upload.rows == [1, 3] and upload.row_name == "line"
    assert upload.columns == ["id", "output", "extra"]
    assert upload.values == [["n1", '{"stage": "IV"}', ""], ["n3", "", ""]]
    assert upload.notes == ["Line 2 has no text (a non-empty string) under `input` and was skipped."]
    header, rows = handlers.batch_rows("classify", upload.texts, [
        {"label": "ham", "probs": {"ham": 0.9, "spam": 0.1}, "truncated": False}] * 2, labels=("ham", "spam"))
    assert "from `onco.JSONL` (key `input`)" in handlers.batch_markdown(
        "classify", "onco.JSONL", upload, header, rows, "base", 1.0)


def test_a_jsonl_upload_whose_lines_differ_in_keys_reads_the_key_that_holds_the_texts():
    """A walkthrough's file of two `note` lines and one `{"text": ""}` was refused as holding no text:
    `text` comes first among the text keys, and it held none."""
    data = b'{"id": 1, "note": "Stage IV NSCLC, EGFR negative."}\n{"id": 2, "note": "ER+ IDC."}\n{"text": ""}\n'
    upload = uploads.read_upload("notes.jsonl", data, limit=10)
    assert upload.source == "note" and upload.texts == ["Stage IV NSCLC, EGFR negative.", "ER+ IDC."]
    assert upload.notes == ["Line 3 has no text (a non-empty string) under `note` and was skipped."]
    tied = uploads.read_upload("tied.jsonl", b'{"note": "a note"}\n{"text": "a text"}\n', limit=10)
    assert tied.source == "text"  # as many under each: the first text key, as before


def test_a_10000_line_upload_is_cut_to_the_limit_and_says_so():
    data = "\n".join(f"message number {i}" for i in range(10_000)).encode()
    upload = uploads.read_upload("big.txt", data, limit=1000)
    assert len(upload.texts) == 1000 and upload.total == 10_000
    assert "10,000 texts; only the first 1,000" in upload.notes[0]
    assert handlers.batch_start_message("big.txt", upload) == ("⏳ Processing the first 1,000 of the 10,000 texts in "
                                                               "`big.txt` (the limit for one upload on this server)…")
    assert handlers.batch_progress_message("big.txt", upload, 32) == (
        "⏳ Processed 32 of 1,000 texts (the first 1,000 of 10,000) from `big.txt`…")


def test_an_upload_over_the_size_limit_is_refused():
    with pytest.raises(problems.InputProblem, match="limit is 5 MB"):
        uploads.read_upload("big.txt", b"x\n" * (3 * 1024 * 1024), limit=10)


def test_the_page_refuses_files_over_the_apps_own_size_limit():
    """The page's limit (Chainlit's ``max_size_mb``) had been 20 MB against the app's 5 MB: a user told
    "File is larger than 20 MB" split a file into halves the app then refused."""
    import tomllib

    from chat_app import cli

    config = tomllib.loads((cli.PROJECT_ROOT / ".chainlit" / "config.toml").read_text())
    assert config["features"]["spontaneous_file_upload"]["max_size_mb"] * 2**20 == uploads.MAX_UPLOAD_BYTES


# --- what is rendered --------------------------------------------------------------------------

def test_classification_shows_the_label_and_each_probability():
    md = handlers.classification_markdown({"label": "spam", "probs": {"ham": 0.25, "spam": 0.75},
                                           "truncated": False}, ["ham", "spam"], "fine-tuned `spam` adapter")
    assert md.startswith("### SPAM · 75.0%")
    assert "| ham | 25.0% |" in md and "| **spam** | 75.0% |" in md
    assert "█" * 15 + "░" * 5 in md and "fine-tuned `spam` adapter" in md
    assert "threshold" not in md  # argmax: nothing to explain
    facts = handlers.run_facts(0.214, 52)
    assert facts == "total 0.21 s · 52 prompt tokens" and handlers.run_facts(12.34, 300, 74) == (
        "total 12.3 s · 300 prompt tokens, 74 generated")
    md = handlers.classification_markdown({"label": "spam", "probs": {"ham": 0.25, "spam": 0.75}},
                                          ["ham", "spam"], "fine-tuned `spam` adapter", facts)
    assert md.endswith("*fine-tuned `spam` adapter · total 0.21 s · 52 prompt tokens*")


def test_a_tuned_threshold_is_explained_where_it_decided():
    md = handlers.classification_markdown({"label": "ham", "probs": {"ham": 0.45, "spam": 0.55},
                                           "truncated": False, "threshold": 0.6}, ["ham", "spam"], "fine-tuned")
    assert md.startswith("### HAM · p(spam) 55.0% < threshold 60.0%")  # ham although less probable
    assert "**spam** when p(spam) ≥ 60.0%" in md


FIELDS = ("cancer_type", "stage", "gene_mutation", "biomarker", "treatment", "response", "metastasis_site")


def extraction(valid=True, repaired=False, **values):
    return {"fields": {f: values.get(f) for f in FIELDS}, "valid": valid, "repaired": repaired,
            "raw": "raw | output", "error": None if valid else "the model's output is not a JSON object",
            "truncated": False}


def test_extraction_shows_seven_fields_null_json_and_flags():
    text = "Lung adenocarcinoma, widely metastatic; EGFR-mutant. Started osimertinib."
    md = handlers.extraction_markdown(extraction(cancer_type="lung | adenocarcinoma", stage="IV",
                                                 treatment="osimertinib and radiotherapy"), FIELDS, "v", text)
    assert len(re.findall(r"^\| `\w+` \|", md, re.M)) == 7
    assert "| field | value | in your text |" in md
    assert "| `cancer_type` | lung \\| adenocarcinoma | ✓ every word |" in md
    assert "| `stage` | IV | ○ no word: inferred (or invented) |" in md  # "metastatic", not "IV", is in the text
    assert "| `treatment` | osimertinib and radiotherapy | ◐ some words |" in md
    assert "| `response` | *null* |  |" in md
    assert '```json\n{\n  "cancer_type": "lung | adenocarcinoma",' in md and '"response": null' in md
    assert md.startswith("✅ Valid JSON") and "output as it came" not in md
    assert "the format, not the facts" in md  # a green check over invented values must not read as "right"
    repaired = handlers.extraction_markdown(extraction(repaired=True), FIELDS, "v", text)
    assert repaired.startswith("⚠️ **Repaired output**") and "raw | output" in repaired
    invalid = handlers.extraction_markdown(extraction(valid=False), FIELDS, "v", text)
    assert invalid.startswith("❌ **Invalid output**") and "nothing is invented" in invalid
    assert invalid.count("JSON object") == 1  # said once, not again as the parser's reason
    # cut off by the token limit: its nulls are unwritten fields, not findings missing from the text
    cut = handlers.extraction_markdown(extraction(repaired=True) | {"cut_at": 16}, FIELDS, "v", text)
    assert cut.startswith("⌛ **Cut at the 16-token limit** (⚙️ max new tokens)") and "never written" in cut


def test_compare_has_three_labelled_columns_with_latency_and_tokens(catalog):
    specs = load_catalog(catalog)
    outcomes = [handlers.Outcome("base", {"label": "ham", "probs": {"ham": 0.6, "spam": 0.4}}, 0.12, 90),
                handlers.Outcome("few-shot", unavailable=handlers.few_shot_unavailable(specs["spam"])),
                handlers.Outcome("fine-tuned", {"label": "spam", "probs": {"ham": 0.7, "spam": 0.3},
                                                "threshold": 0.12}, 0.2, 90)]
    md = handlers.compare_markdown(specs["spam"], "x", outcomes)
    assert "|  | **base** | **few-shot** | **fine-tuned** |" in md
    # spam at p(spam) 30%: the column says why
    assert "| decided by | the most probable label | — | p(spam) 30.0% ≥ threshold 12.0% |" in md
    assert "| p(spam) | 40.0%" in md and "| latency | 0.12 s | — | 0.20 s |" in md
    assert "| tokens | 90 in | — | 90 in |" in md and "no few-shot examples yet" in md
    assert "last command" not in md  # picked with this message: nothing to explain
    again = handlers.compare_markdown(specs["spam"], "x", outcomes, "the one the last command picked")
    assert ("*No adapter was picked with this message, so this compares `spam`, the one the last command "
            "picked. To compare another, pick it with the buttons under the message box" in again)
    # a question typed with no button picked: it had said only "`spam`: the settings panel (…)"
    default = handlers.compare_markdown(specs["spam"], "x", outcomes, "the settings panel's")
    assert "No adapter was picked with this message, so this compares `spam`, the settings panel's." in default
    assert "🛡️ spam, 🩺 medquad, 🔬 oncology" in again  # a phone shows the buttons' icons without names
    onc = [handlers.Outcome("base", extraction(stage="IV"), 1.0, 100, 20),
           handlers.Outcome("few-shot (k=3)", extraction(stage="IV"), 1.0, 300, 20),
           handlers.Outcome("fine-tuned", extraction(stage="IIIA", repaired=True), 1.0, 100, 20)]
    md = handlers.compare_markdown(specs["oncology"], "Stage IV lung cancer", onc)
    assert "| `stage` ≠ | **IV** | **IV** | **IIIA** ○ |" in md  # differing fields marked; IIIA not in the text
    assert "○ no word of the value is in your text" in md
    assert "| `response` | *null* | *null* | *null* |" in md and "⚠️ repaired" in md
    gen = handlers.compare_markdown(specs["medquad"], "q", [handlers.Outcome("base", "line one\nline | two", 2.0, 50, 9)])
    assert "| answer | line one line \\| two |" in gen and "50 in / 9 out" in gen and "cut at" not in gen
    cut = handlers.compare_markdown(specs["medquad"], "q", [handlers.Outcome("base", "a", 2.0, 50, 64, cut_at=64)])
    assert "50 in / 64 out (cut at the 64-token limit)" in cut
    stopped = handlers.compare_markdown(specs["medquad"], "q", [
        handlers.Outcome("base", "so far", 2.0, 52, 7, stopped="stopped by you")])
    assert "| tokens | 52 in / 7 out |" in stopped  # a stopped column: its prompt and what it wrote, not "—"
    assert "| output | valid | valid | ⚠️ repaired |" in md  # no green check: valid JSON can hold invented values


@pytest.mark.parametrize("question, warned", [
    ("What dose of metformin should I take? I'm 70kg", True),
    ("Is it safe in pregnancy?", True),  # a follow-up: the drug is in an earlier turn
    ("How much ibuprofen can I take a day?", True),
    ("Can I take 500 mg twice a day?", True),
    ("Is it safe while breastfeeding?", True),
    ("What are the symptoms of glaucoma?", False),
    ("Is it hereditary?", False),
    ("How many people are affected by glaucoma?", False),  # a MedQuAD question type
])
def test_a_medical_question_about_a_dose_or_pregnancy_gets_a_stronger_notice(question, warned):
    assert (handlers.medical_risk_notice(question) == handlers.DOSE_OR_PREGNANCY_NOTICE) is warned


def test_compare_says_what_each_column_is_and_shows_an_unread_output(catalog):
    """A walkthrough: students could not tell what "few-shot (k=4)" was beside "base", and an
    oncology base column of nulls, cut at the token limit, read as "found nothing": its output,
    which the single extraction view shows, was not shown."""
    specs = load_catalog(catalog)
    onc = [handlers.Outcome("base", extraction(valid=False) | {"raw": "The patient has a long story",
                                                               "cut_at": 256}, 9.0, 100, 256),
           handlers.Outcome("few-shot (k=3)", extraction(valid=False) | {"raw": "I cannot"}, 1.0, 300, 5),
           handlers.Outcome("fine-tuned", extraction(stage="IV"), 1.0, 100, 20)]
    md = handlers.compare_markdown(specs["oncology"], "Stage IV lung cancer", onc)
    assert "**few-shot (k=3)**: the base model, with worked examples from the adapter's training data" in md
    assert "**base**: the base model alone" in md and "**fine-tuned**: the base model with the trained adapter" in md
    assert ("**base**'s output as it came (cut at the 256-token limit: the fields after the cut were never "
            "written):\n\n```text\n"
            "The patient has a long story\n```") in md
    assert "**few-shot (k=3)**'s output as it came (not a JSON object, so every field is null)" in md
    assert "**fine-tuned**'s output" not in md  # read: its fields are in the table


def test_compare_says_when_the_text_was_cut_and_marks_values_by_the_part_read(catalog):
    """Compare read a long note cut to the adapter's 512 tokens (its rendered prompt showed the
    `[…]`) and said nothing of it, where the profiles of each task say so; and it marked a value found
    only in the part left out as in the text."""
    specs = load_catalog(catalog)
    text = "Stage IV lung cancer. " + "Unrelated history. " * 400 + "Started osimertinib."
    read = "Stage IV lung cancer. […] Started osimertinib."
    cut = extraction(stage="IV") | {"truncated": True, "text_read": read}
    cut["fields"] = {**cut["fields"], "gene_mutation": "Unrelated"}
    onc = [handlers.Outcome("base", cut, 1.0, 531, 20, truncated=True),
           handlers.Outcome("fine-tuned", cut, 1.0, 531, 20, truncated=True)]
    md = handlers.compare_markdown(specs["oncology"], text, onc)
    assert handlers.truncation_note(specs["oncology"], text) in md
    assert "| `gene_mutation` | Unrelated ○ | Unrelated ○ |" in md  # a word of the part left out backs nothing
    whole = handlers.compare_markdown(specs["oncology"], "Stage IV lung cancer",
                                      [handlers.Outcome("base", extraction(stage="IV"), 1.0, 60, 20)])
    assert "✂️" not in whole
    spam = handlers.compare_markdown(specs["spam"], text, [handlers.Outcome(
        "base", {"label": "ham", "probs": {"ham": 0.6, "spam": 0.4}}, 0.1, 300, truncated=True)])
    assert handlers.truncation_note(specs["spam"], text) in spam
    gen = handlers.compare_markdown(specs["medquad"], text, [handlers.Outcome("base", "a", 2.0, 560, 9, truncated=True)])
    assert handlers.truncation_note(specs["medquad"], text) in gen


def test_batch_rows_table_and_csv(catalog):
    texts = ["a", "b, with comma"]
    results = [{"label": "ham", "probs": {"ham": 0.9, "spam": 0.1}, "truncated": False},
               {"label": "spam", "probs": {"ham": 0.2, "spam": 0.8}, "truncated": True}]
    header, rows = handlers.batch_rows("classify", texts, results, labels=("ham", "spam"))
    data = handlers.results_csv(header, rows)
    assert data.startswith("\ufeff".encode())
    parsed = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert parsed == [["text", "label", "p_ham", "p_spam", "truncated"],
                      ["a", "ham", "0.9", "0.1", "False"], ["b, with comma", "spam", "0.2", "0.8", "True"]]
    upload = uploads.Upload(texts, "text", 2, ["only the first 2"])
    md = handlers.batch_markdown("classify", "in.csv", upload, header, rows, "base", 0.5)
    assert "**ham**: 1 · **spam**: 1" in md and "| 1 | a | **ham** |" in md
    assert "| 2 ✂️ | b, with comma | **spam** | 20.0% | 80.0% |" in md  # its text was cut: marked by its row
    assert "ℹ️ only the first 2" in md and "✂️ 1 text(s)" in md and md.startswith("### 2 texts from `in.csv`")
    assert md.index("ℹ️ only the first 2") < md.index("| 1 | a |")  # how the file was read comes first
    one = handlers.batch_markdown("classify", "one.csv", uploads.Upload(["a"], "text", 1), header, rows[:1],
                                  "base", 0.5)
    assert one.startswith("### 1 text from `one.csv`")
    header, rows = handlers.batch_rows("extract", ["n"], [extraction(stage="IV")], fields=FIELDS)
    assert header == ["text", *FIELDS, "valid", "repaired", "truncated", "cut_at_tokens", "not_in_text",
                      "negated_in_text"]
    assert rows[0][2] == "IV"
    assert list(csv.reader(io.StringIO(handlers.results_csv(header, rows).decode("utf-8-sig"))))[1][1] == ""


def test_an_address_in_an_uploaded_text_is_not_made_a_link():
    """A spam upload's table showed a phishing text's address as a link that opened in a new tab
    (the page's markdown links bare "http://…", "www.…" and e-mail addresses, also when written with
    a backslash escape, since it links the parsed text), and the shortened text's "…" was part of
    the link's address."""
    from markdown_it import MarkdownIt

    texts = ["Your parcel could not be delivered. Pay the £1.99 fee at http://parcel-redeliver.info/pay?id=1",
             "Claim at WWW.prize-now.com or mail claims@prize-now.com, https://bit.ly/x"]
    results = [{"label": "spam", "probs": {"ham": 0.1, "spam": 0.9}, "truncated": False}] * 2
    header, rows = handlers.batch_rows("classify", texts, results, labels=("ham", "spam"))
    md = handlers.batch_markdown("classify", "sms.csv", uploads.Upload(texts, "text", 2), header, rows,
                                 "fine-tuned", 0.5)
    shown = re.sub(r"<[^>]+>", "", MarkdownIt("commonmark").enable("table").render(md))
    # the patterns GitHub-flavoured markdown (the page's) links in a text (JavaScript's \w is ASCII)
    gfm_links = r"(?i)https?://|www(?=\.)|[-.A-Za-z0-9_+]+@[-A-Za-z0-9_]+(?:\.[-A-Za-z0-9_]+)+"
    assert not re.search(gfm_links, shown), shown
    # and the page shows the text as it was, less the invisible word joiners
    shown = shown.replace(handlers.NO_LINK, "")
    assert "fee at http://parcel-redelive" in shown
    assert "WWW.prize-now.com or mail claims@prize-now.com, https://bit.ly/x" in shown


def test_a_word_after_a_colon_in_a_table_is_not_read_as_a_directive():
    """The page's markdown (remark-directive) read "note:urgent" as a directive and dropped it: a batch
    cell "Click [here](javascript:alert(1))" showed as "Click [here](javascript" and "(1))"."""
    texts = ["Reminder:call the clinic today, note:urgent", "Click [here](javascript:alert(1))"]
    results = [{"label": "spam", "probs": {"ham": 0.1, "spam": 0.9}, "truncated": False}] * 2
    header, rows = handlers.batch_rows("classify", texts, results, labels=("ham", "spam"))
    md = handlers.batch_markdown("classify", "sms.csv", uploads.Upload(texts, "text", 2), header, rows,
                                 "fine-tuned", 0.5)
    assert not re.search(r":[A-Za-z]", md), md
    assert "Reminder:call the clinic today, note:urgent" in md.replace(handlers.NO_LINK, "")
    assert "javascript:alert(1)" in md.replace(handlers.NO_LINK, "")
    fields = {"diagnosis": "NSCLC adenocarcinoma", "biomarkers": "EGFR:negative"}
    result = {"fields": fields, "valid": True, "repaired": False, "raw": json.dumps(fields), "truncated": False}
    md = handlers.extraction_markdown(result, list(fields), "fine-tuned", "Dx:NSCLC adenocarcinoma. EGFR:negative.")
    assert f"EGFR:{handlers.NO_LINK}negative" in md
    assert json.dumps(fields, ensure_ascii=False, indent=2) in md  # the JSON block (and its copy button) as it was


def test_unusable_references_are_explained_by_each_kind_once():
    unusable = [(2, "not JSON"), (3, "a JSON list, not an object"), (4, "not JSON"), (5, "a number"), (6, "a string")]
    agreement = handlers.Agreement("extract", "`output` key", row_name="line", compared=1, score=1.0,
                                   counts={"stage": 1.0}, unusable=unusable)
    md = handlers.agreement_markdown(agreement)
    assert ("⚠️ Lines 2, 3, 4, 5, 6 were not compared: their `output` key holds a reference that is not a JSON "
            "object with every field (line 2: not JSON; line 3: a JSON list, not an object; line 5: a number …).") in md


def spam_result(label: str) -> dict:
    return {"label": label, "probs": {"ham": 0.9, "spam": 0.1} if label == "ham" else {"ham": 0.2, "spam": 0.8},
            "truncated": False}


def test_sms_spam_collection_lines_are_read_as_label_and_text():
    """`ham<TAB>text` lines (the data set's own layout) were classified whole, label included:
    "ham<TAB>URGENT! Your account has been suspended..." came out ham. Now the label is the file's
    `label` column, which the answers are compared with."""
    data = b"ham\tURGENT! Your account is suspended, verify now\nspam\tWIN a prize\n\nham\tLunch at 1?\n"
    for name in ("SMSSpamCollection.txt", "sms.tsv"):
        upload = uploads.read_upload(name, data, limit=10)
        assert upload.texts == ["URGENT! Your account is suspended, verify now", "WIN a prize", "Lunch at 1?"]
        assert (upload.columns, upload.values, upload.rows) == (["label"], [["ham"], ["spam"], ["ham"]], [1, 2, 4])
        assert "`label<TAB>text`" in upload.notes[0]
        agreement = handlers.reference_agreement("classify", upload, [spam_result(label) for label in
                                                                      ("spam", "spam", "ham")], labels=("ham", "spam"))
        assert agreement.per_row == [False, True, True]
        assert "the file's `label` column" in handlers.agreement_markdown(agreement, ("ham", "spam"))  # not "key"
    # tabs inside texts, an id first (ids do not repeat), or some lines without a tab: lines as they are
    for other in (b"1\tHello there\n2\tSee you\n3\tBye now\n", b"ham\tok\nno tab on this line\n"):
        assert uploads.read_upload("plain.txt", other, limit=10).columns == []
    headed = uploads.read_upload("msgs.tsv", b"id\tmessage\n7\tHello there\n", limit=10)
    assert (headed.texts, headed.columns, headed.values) == (["Hello there"], ["id"], [["7"]])
    # the data set's own first line names the columns: it had been read as a message labelled "Label"
    named = uploads.read_upload("head.tsv", b"Label\tSMS\n" + data * 3, limit=20)
    assert named.texts[0] == "URGENT! Your account is suspended, verify now" and len(named.texts) == 9
    assert named.rows[0] == 2 and "line 1 names them" in named.notes[0]
    wide = uploads.read_upload("wide.tsv", b"label\ttext\tid\nham\tHello\t5\n", limit=10)  # three fields
    assert (wide.texts, wide.columns) == (["Hello"], ["label", "id"])


def test_labelled_lines_in_any_case_with_an_odd_or_missing_label_keep_their_labels():
    """A walkthrough's `.txt` of `ham`/`spam`/`HAM` lines, one `unknown` and one with no label was
    read as whole lines, each label classified with its text, and no word said why."""
    data = b"ham\tHey are you coming tonight?\nspam\tWIN a free prize\nHAM\tLunch at 1?\nunknown\tSee you\n" \
           b"\tCall me back\nspam\tClaim your reward now\n"
    upload = uploads.read_upload("sms.txt", data, limit=10)
    assert upload.texts[0] == "Hey are you coming tonight?" and len(upload.texts) == 6
    assert upload.values == [["ham"], ["spam"], ["HAM"], ["unknown"], [""], ["spam"]]
    agreement = handlers.reference_agreement("classify", upload, [spam_result(label) for label in
                                             ("ham", "spam", "ham", "ham", "ham", "spam")], labels=("ham", "spam"))
    assert agreement.missing == [5] and [row for row, _ in agreement.unusable] == [4]
    # what comes before the tabs is no label: each whole line is a text, and a note says why
    for data, why in ((b"a1\tHello there\nb2\tSee you\nc3\tBye now\n", "3 different words"),
                      (b"ham\tok\nnot one word\tfine\n", "line 2 has `not one word`"),
                      (b"1\tHello there\n2\tSee you\n", "line 1 has `1` before its tab, not a one-word label")):
        plain = uploads.read_upload("plain.txt", data, limit=10)
        assert plain.columns == [] and why in plain.notes[0] and "each whole line" in plain.notes[0]


def test_a_spam_upload_with_gold_labels_says_how_the_answers_agree_and_marks_each_row():
    """A spam CSV's `label` column of ham/spam was kept as `file_label` and nothing more: the
    answers were never compared with it."""
    data = b"id,label,text\n1,ham,Lunch at 1?\n2,SPAM,WIN cash now\n3,spam,Free prize\n4,maybe,Hello\n5,,Call me\n"
    upload = uploads.read_upload("gold.csv", data, limit=10)
    results = [spam_result(label) for label in ("ham", "spam", "ham", "ham", "spam")]
    agreement = handlers.reference_agreement("classify", upload, results, labels=("ham", "spam"))
    assert agreement.per_row == [True, True, False, None, None]
    assert (agreement.compared, agreement.agreed, agreement.missing) == (3, 2, [6])
    assert agreement.unusable == [(5, "maybe")]
    header, rows = handlers.batch_rows("classify", upload.texts, results, labels=("ham", "spam"))
    header, rows = handlers.with_agreement(header, rows, agreement)
    md = handlers.batch_markdown("classify", "gold.csv", upload, header, rows, "fine-tuned", 1.0, agreement=agreement)
    assert "🎯 **Accuracy against the file's `label` column: 66.7%** (2 of 3 rows agree" in md
    assert "| reference ↓ · answer → | ham | spam |" in md
    assert "| **ham** | 1 | 0 |" in md and "| **spam** | 1 | 1 |" in md  # SPAM read as spam, any case
    # each row's reference beside its answer (the chat had shown the answers only)
    assert "| p(spam) | reference |" in md and "| SPAM ✓ |" in md and "| spam ✗ |" in md and "| maybe ✗" not in md
    assert "⚠️ Row 5 was not compared: its `label` column holds a label that is not one of ham, spam (`maybe`)." in md
    assert "ℹ️ Row 6 was not compared: its `label` column is empty." in md
    assert "| 4 | Free prize | **ham** |" in md  # the preview table as before
    parsed = list(csv.reader(io.StringIO(handlers.results_csv(header, rows, upload).decode("utf-8-sig"))))
    assert parsed[0] == ["row", "id", "file_label", "text", "label", "p_ham", "p_spam", "truncated",
                         "agrees_with_reference"]
    assert [(r[2], r[4], r[-1]) for r in parsed[1:]] == [("ham", "ham", "True"), ("SPAM", "spam", "True"),
                                                         ("spam", "ham", "False"), ("maybe", "ham", ""), ("", "spam", "")]

    plain = uploads.read_upload("plain.csv", b"id,text\n1,Lunch at 1?\n", limit=10)
    assert handlers.reference_agreement("classify", plain, results[:1], labels=("ham", "spam")) is None
    header, rows = handlers.batch_rows("classify", plain.texts, results[:1], labels=("ham", "spam"))
    assert handlers.with_agreement(header, rows, None) == (header, rows)
    assert "🎯" not in handlers.batch_markdown("classify", "plain.csv", plain, header, rows, "v", 1.0)
    nothing = uploads.read_upload("odd.csv", b"label,text\nyes,Lunch at 1?\n", limit=10)
    odd = handlers.reference_agreement("classify", nothing, results[:1], labels=("ham", "spam"))
    assert handlers.agreement_markdown(odd, ("ham", "spam")).startswith(
        "🎯 The file's `label` column holds no usable reference (a label among ham, spam), so nothing was compared.")


def test_an_oncology_jsonl_upload_is_scored_against_its_outputs_as_the_evaluation_scores_it():
    """The oncology data set's own JSONL carries the reference fields under `output`: they were
    kept as a column beside the extracted fields, never compared. The app's score is the
    evaluation metric's, on the same pairs."""
    from training.evaluate import load_metric

    reference = {"cancer_type": "breast cancer", "stage": "IIA", "gene_mutation": None,
                 "biomarker": "ER-negative; HER2 amplification", "treatment": "trastuzumab", "response": None,
                 "metastasis_site": None}
    other = dict(reference, cancer_type="melanoma", stage="IV", biomarker=None, treatment="nivolumab")
    lines = [{"instruction": "Extract", "input": "Breast cancer, stage IIA ...", "output": reference},
             {"input": "Melanoma stage IV ...", "output": json.dumps(other)},  # JSON text, as a Hub data set stores it
             {"input": "Lung ...", "output": ["not", "an", "object"]},
             {"input": "Colon ...", "output": {"stage": "II"}},
             {"input": "Prostate ..."}]
    upload = uploads.read_upload("onco.jsonl", "\n".join(json.dumps(line) for line in lines).encode(), limit=10)
    results = [extraction(cancer_type="Breast Cancer", stage="IIB", biomarker="HER2 amplification, ER negative",
                          treatment="trastuzumab"),
               extraction(cancer_type="melanoma", stage="IV", treatment="pembrolizumab"),
               extraction(stage="I"), extraction(stage="II"), extraction()]
    agreement = handlers.reference_agreement("extract", upload, results, fields=FIELDS)
    metric = load_metric("field_extraction").compute(
        predictions=[json.dumps(r["fields"]) for r in results[:2]],
        references=[json.dumps(reference), json.dumps(other)], fields=list(FIELDS))
    assert agreement.score == pytest.approx(metric["micro_field_accuracy"]) == pytest.approx(12 / 14)
    assert agreement.counts == pytest.approx(metric["per_field"])
    assert agreement.per_row == [pytest.approx(6 / 7), pytest.approx(6 / 7), None, None, None]
    assert agreement.differing[:2] == [["stage"], ["treatment"]] and agreement.missing == [5]
    assert agreement.unusable == [(3, "a JSON list, not an object"),
                                  (4, "an object without `cancer_type`, `gene_mutation`, `biomarker` …")]
    header, rows = handlers.batch_rows("extract", upload.texts, results, fields=FIELDS)
    header, rows = handlers.with_agreement(header, rows, agreement)
    assert header[-4:] == ["not_in_text", "negated_in_text", "field_agreement", "fields_differing"]
    assert [r[-2:] for r in rows] == [[0.857143, "stage"], [0.857143, "treatment"], [None, None], [None, None],
                                      [None, None]]
    md = handlers.batch_markdown("extract", "onco.jsonl", upload, header, rows, "v", 1.0, agreement=agreement)
    assert ("🎯 **Micro field accuracy against the file's `output` key: 85.7%** (12 of 14 values in 2 rows match, "
            "compared as the evaluation compares them") in md
    assert "| field | matches the reference |" in md
    assert "| stage | 1 of 2 (50%) |" in md and "| treatment | 1 of 2 (50%) |" in md and "| cancer\\_type | 2 of 2 (100%) |" in md
    assert "| JSON | vs reference |" in md and "| ✗ stage |" in md and "| ✗ treatment |" in md and "| — |" in md
    assert ("⚠️ Lines 3, 4 were not compared: their `output` key holds a reference that is not a JSON object with "
            "every field (line 3: a JSON list, not an object; line 4: an object without `cancer_type`, "
            "`gene_mutation`, `biomarker` …).") in md  # each problem, not only the first
    assert "ℹ️ Line 5 was not compared: its `output` key is empty." in md
    parsed = list(csv.reader(io.StringIO(handlers.results_csv(header, rows, upload).decode("utf-8-sig"))))
    assert parsed[0][:4] == ["line", "instruction", "output", "text"]  # the file's columns as before
    assert parsed[1][-2:] == ["0.857143", "stage"] and parsed[3][-2:] == ["", ""]

    prose = handlers.reference_agreement("extract", upload, [extraction(valid=False)] * 5, fields=FIELDS)
    assert prose.per_row[:2] == [0.0, 0.0] and prose.score == 0.0  # not JSON: the reference's nulls are no match


def test_a_reference_object_is_usable_only_with_every_field_a_string_or_null():
    assert handlers.reference_fields("", FIELDS) == (None, None)
    assert handlers.reference_fields("{oops", FIELDS) == (None, "not JSON")
    assert handlers.reference_fields('"IV"', FIELDS) == (None, "a JSON string, not an object")
    full = dict.fromkeys(FIELDS)
    assert handlers.reference_fields(json.dumps(full | {"stage": 4}), FIELDS) == (
        None, "an object whose `stage` is a number, not a string or null")
    assert handlers.reference_fields(json.dumps(full | {"stage": "IV", "extra": 1}), FIELDS) == (
        full | {"stage": "IV"}, None)


def test_the_chat_app_never_imports_training():
    """chat_app reads adapters/ only (README, "How it fits together"): the evaluation's comparison
    it shares lives in adapters.field_match."""
    import ast
    from pathlib import Path

    imported = set()
    for path in Path(handlers.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {(path.name, alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module))
    assert not [(f, m) for f, m in imported if m == "training" or m.startswith("training.")]


def test_an_extraction_batch_marks_values_whose_words_are_not_in_the_text():
    """A sprained ankle came back as "bacteria (fever-resistant)", stage II, marked ✅ in a batch,
    with nothing in the table or the CSV to say those words were not in the text."""
    texts = ["34-year-old man with a sprained ankle, given ibuprofen.", "Stage IV melanoma, BRAF V600E."]
    results = [extraction(cancer_type="bacteria (fever-resistant)", stage="II", treatment="ibuprofen"),
               extraction(cancer_type="melanoma", stage="IV", gene_mutation="BRAF V600E")]
    header, rows = handlers.batch_rows("extract", texts, results, fields=FIELDS)
    assert [r[header.index("not_in_text")] for r in rows] == ["cancer_type; stage", ""]
    md = handlers.batch_markdown("extract", "notes.csv", uploads.Upload(texts, "text", 2), header, rows, "v", 1.0)
    assert "| 1 | 34-year-old man with a sprained ankle, given ibuprofen. | bacteria (fever-resistant) ○ | II ○ |" in md
    assert "| 2 | Stage IV melanoma, BRAF V600E. | melanoma | IV | BRAF V600E |" in md
    assert "| valid |" in md and "✅" not in md and "not_in_text" in md
    results[1] = extraction(repaired=True, cancer_type="melanoma") | {"cut_at": 16}
    header, rows = handlers.batch_rows("extract", texts, results, fields=FIELDS)
    md = handlers.batch_markdown("extract", "notes.csv", uploads.Upload(texts, "text", 2), header, rows, "v", 1.0)
    assert "⌛ cut at the 16-token limit: **1**" in md and "| ⌛ cut |" in md
    assert rows[1][header.index("cut_at_tokens")] == 16


def test_a_finding_the_text_says_is_absent_is_flagged_in_every_view(catalog):
    """"no EGFR or ALK alterations" came back as the biomarker "PD-L1 80%; EGFR/ALK alterations",
    marked "✓ every word" in the text: the view that says where to look pointed away from the
    worst error in the answer."""
    text = "Lung adenocarcinoma. PD-L1 80%, no EGFR or ALK alterations. Started pembrolizumab."
    result = extraction(cancer_type="lung adenocarcinoma", biomarker="PD-L1 80%; EGFR/ALK alterations",
                        treatment="pembrolizumab")
    md = handlers.extraction_markdown(result, FIELDS, "v", text)
    assert md.startswith("⚠️ **`biomarker` holds a finding your text says is absent** (⊘ in the table)")
    assert ("| `biomarker` | PD-L1 80%; EGFR/ALK alterations | ✓ every word · ⊘ EGFR/ALK alterations: the text "
            "says “no EGFR or ALK alterations” |") in md
    assert "| `treatment` | pembrolizumab | ✓ every word |" in md
    assert not handlers.extraction_markdown(extraction(biomarker="PD-L1 80%"), FIELDS, "v", text).startswith("⚠️")
    brain = handlers.extraction_markdown(extraction(metastasis_site="brain"), FIELDS, "v", "Brain MRI negative.")
    # the whole value: no ✓ beside it, which would read as "backed by the text"
    assert "| `metastasis_site` | brain | ⊘ every word, but the text says “Brain MRI negative” |" in brain
    assert brain.startswith("⚠️ **`metastasis_site` holds a finding your text says is absent**")
    two = handlers.extraction_markdown(extraction(metastasis_site="brain", biomarker="EGFR mutation"), FIELDS, "v",
                                       "Brain MRI negative; without EGFR mutation.")
    assert two.startswith("⚠️ **`biomarker` and `metastasis_site` hold findings your text says are absent**")
    header, rows = handlers.batch_rows("extract", [text, "Stage IV melanoma."], [result, extraction(stage="IV")],
                                       fields=FIELDS)
    assert [r[header.index("negated_in_text")] for r in rows] == [
        "biomarker: EGFR/ALK alterations (no EGFR or ALK alterations)", ""]
    batch = handlers.batch_markdown("extract", "notes.csv", uploads.Upload([text, "Stage IV melanoma."], "text", 2),
                                    header, rows, "v", 1.0)
    assert "| PD-L1 80%; EGFR/ALK alterations ⊘ |" in batch and "`negated_in_text` quotes the words" in batch
    specs = load_catalog(catalog)
    onc = [handlers.Outcome("base", extraction(biomarker="PD-L1 80%"), 1.0, 100, 20),
           handlers.Outcome("fine-tuned", result, 1.0, 100, 20)]
    compared = handlers.compare_markdown(specs["oncology"], text, onc)
    assert "| **PD-L1 80%** | **PD-L1 80%; EGFR/ALK alterations** ⊘ |" in compared
    assert handlers.NEGATED_LEGEND in compared
    assert handlers.NEGATED_LEGEND not in handlers.compare_markdown(specs["oncology"], text, onc[:1])


def test_a_cut_input_is_checked_against_the_part_the_model_read():
    text = "Follow-up visit, vitals stable. " * 3 + "Diagnosis: melanoma."
    result = extraction(cancer_type="melanoma") | {"truncated": True, "text_read": "Follow-up visit, vitals stable."}
    md = handlers.extraction_markdown(result, FIELDS, "v", text)
    assert "| `cancer_type` | melanoma | ○ no word: inferred (or invented) |" in md  # "melanoma" came after the cut


def test_a_batch_checks_each_cut_text_against_the_part_the_model_read():
    """A batch's marks and its CSV's not_in_text read the whole text, where a single extraction read
    the part the model saw: a value found only past the cut looked backed by the text."""
    texts = ["Follow-up visit, vitals stable. " * 3 + "Diagnosis: melanoma."]
    results = [extraction(cancer_type="melanoma") | {"truncated": True, "text_read": "Follow-up visit, vitals stable."}]
    header, rows = handlers.batch_rows("extract", texts, results, fields=FIELDS)
    assert rows[0][header.index("not_in_text")] == "cancer_type"
    read = [handlers.text_read(t, r) for t, r in zip(texts, results)]
    md = handlers.batch_markdown("extract", "notes.csv", uploads.Upload(texts, "text", 1), header, rows, "v", 1.0, read)
    assert "| melanoma ○ |" in md


def test_a_classified_text_of_several_lines_says_it_was_one_message():
    pasted = "Are you coming tonight?\nWINNER!! Claim your free iPhone now\n\nMum says call her back\n"
    assert handlers.one_message_note(pasted).startswith("ℹ️ Your text has 3 lines and was classified as one message.")
    assert handlers.one_message_note("Are you coming tonight?\n") == ""


def test_values_with_no_word_in_the_text_at_all_get_a_warning():
    invented = handlers.extraction_markdown(extraction(cancer_type="melanoma", treatment="surgery"), FIELDS, "v",
                                            "hello")
    assert handlers.NOTHING_BACKED in invented
    backed = handlers.extraction_markdown(extraction(cancer_type="melanoma", stage="IV"), FIELDS, "v",
                                          "Melanoma, widely metastatic.")  # one inferred value, one backed
    empty = handlers.extraction_markdown(extraction(), FIELDS, "v", "hello")  # all null: nothing invented
    assert handlers.NOTHING_BACKED not in backed and handlers.NOTHING_BACKED not in empty
    assert "have no word in your text" not in backed  # one of two values unbacked: no warning


def test_most_values_with_no_word_in_the_text_get_a_warning_too():
    """A chest-pain note came back as a stage IV lung adenocarcinoma on chemotherapy; its one value in
    the text (the troponin) had kept every warning away."""
    note = "45-year-old man with chest pain radiating to the left arm. Troponin elevated. ST elevation in II, III, aVF."
    md = handlers.extraction_markdown(extraction(cancer_type="lung adenocarcinoma", stage="IV",
                                                 biomarker="Troponin elevated", treatment="doxorubicin",
                                                 response="stable disease"), FIELDS, "v", note)
    assert md.startswith("⚠️ **4 of 5 values have no word in your text** (○)") and handlers.NOTHING_BACKED not in md


def test_an_invented_item_of_a_list_value_is_named():
    """Bone and liver metastases only, and the model added lung: the value read "◐ some words"."""
    text = "Breast cancer with bone and liver metastases."
    result = extraction(metastasis_site="bone, liver, lung")
    md = handlers.extraction_markdown(result, FIELDS, "v", text)
    assert "| `metastasis_site` | bone, liver, lung | ◐ some words (no word in the text: lung) |" in md
    header, rows = handlers.batch_rows("extract", [text], [result], fields=FIELDS)
    assert rows[0][header.index("not_in_text")] == "metastasis_site: lung"


def test_profiles_have_realistic_starters_and_compare_uses_commands():
    names = [p.name for p in handlers.PROFILES]
    assert names == ["Chat", "Spam check", "Medical Q&A", "Oncology extraction", "Compare"]
    assert all(len(p.starters) >= 2 for p in handlers.PROFILES)
    compare = handlers.profile_named("Compare")
    assert {s.command for s in compare.starters} == set(handlers.COMPARE_ADAPTERS)
    assert handlers.profile_named(None).name == "Chat" and handlers.profile_named("nope").name == "Chat"


def test_another_catalogue_gets_a_profile_per_adapter_and_no_profile_of_an_absent_one(catalog):
    import dataclasses

    specs = load_catalog(catalog)
    assert handlers.profiles_for(specs) == handlers.PROFILES  # the shipped catalogue: the hand-made ones
    mood = dataclasses.replace(specs["spam"], name="mood", title="Mood", description="How a text feels.",
                               labels=("positive", "negative", "neutral"), decision="argmax")
    chat = dataclasses.replace(specs["medquad"], name="chatty", title="Chat", tags=())  # a title already taken
    profiles = handlers.profiles_for({"oncology": specs["oncology"], "mood": mood, "chatty": chat})
    assert [(p.name, p.task, p.adapter) for p in profiles] == [
        ("Chat", "chat", None), ("Oncology extraction", "extract", "oncology"),
        ("Chat (chatty)", "generate", "chatty"), ("Mood", "classify", "mood")]  # no Compare: spam is absent
    assert handlers.profile_named("Mood", profiles).description.startswith("How a text feels. Attach a .txt")
    assert handlers.profile_named("Mood", profiles).starters == ()  # no few-shot examples stored yet
    (catalog / "spam" / "few_shot.jsonl").write_text(json.dumps({"input": "What a lovely sunny day it is",
                                                                  "target": "positive"}) + "\n")
    (starter,) = handlers.profile_named("Mood", handlers.profiles_for({"mood": mood})).starters
    assert (starter.label, starter.message) == ("What a lovely sunny…", "What a lovely sunny day it is")
    # the medical notices go with adapters tagged medical, not with every generated answer
    chatty = handlers.status_markdown("ready", 1, None, {"chatty": chat}, ["chatty"], "b", profiles[2])
    assert "Not medical advice" not in chatty
    medquad = handlers.status_markdown("ready", 1, None, specs, [], "b", handlers.profile_named("Medical Q&A"))
    assert "Not medical advice" in medquad


def test_settings_take_the_adapters_defaults_and_normalise(catalog):
    specs = load_catalog(catalog)
    medical = handlers.profile_named("Medical Q&A")
    items = handlers.settings_for(medical, specs["medquad"], trained=False)
    assert {i.id for i in items} == {"temperature", "top_p", "max_new_tokens", "use_base", "system", "show_prompt"}
    defaults = handlers.read_settings(None, items)
    assert (defaults.temperature, defaults.top_p, defaults.max_new_tokens) == (0.0, 1.0, 256)
    assert defaults.use_base and defaults.system is None and not defaults.show_prompt
    changed = handlers.read_settings({"temperature": 0.7, "top_p": 0, "max_new_tokens": 64.0, "system": "  ",
                                      "show_prompt": True, "unknown": 1}, items)
    assert (changed.temperature, changed.top_p, changed.max_new_tokens) == (0.7, 0.01, 64)
    assert changed.system is None and changed.show_prompt
    spam_items = handlers.settings_for(handlers.profile_named("Spam check"), specs["spam"], trained=True)
    assert {i.id for i in spam_items} == {"use_base", "system", "show_prompt"}
    assert handlers.read_settings({"system": "Only say spam."}, spam_items).system == "Only say spam."
    compare_items = handlers.settings_for(handlers.profile_named("Compare"), None, trained=True)
    assert handlers.read_settings({"compare_adapter": "bogus"}, compare_items).compare_adapter == "spam"


def test_rendered_prompt_and_its_token_count_come_from_the_runtime(tiny_base, catalog):
    rt = runtime(tiny_base, catalog)
    prompt = rt.rendered_prompt("spam", [{"role": "user", "content": "hello"}], system="Sys")
    assert prompt.startswith("<|im_start|>system\nSys<|im_end|>") and "Message: hello" in prompt
    assert handlers.rendered_prompt_title(rt.backend.count_tokens(prompt)).startswith("Rendered prompt · ")


def test_status_panel_shows_loading_then_adapters_and_notices(catalog):
    specs = load_catalog(catalog)
    loading = handlers.status_markdown("loading", None, None, specs, [], "base", handlers.profile_named("Chat"))
    assert "Loading the model" in loading and "changes when it is ready" in loading
    assert " s so far" not in loading  # the panel is not refreshed while loading: no counter to go stale
    ready = handlers.status_markdown("ready", 7.0, None, specs, [], "base", handlers.profile_named("Medical Q&A"))
    assert "Model ready" in ready and "7 s" in ready and ready.count("not trained yet") == 3
    assert "Not medical advice" in ready
    failed = handlers.status_markdown("failed", 1, "OSError: gone", specs, [], "b", handlers.profile_named("Chat"))
    assert "could not be loaded" in failed and "OSError: gone" in failed
    compare = handlers.status_markdown("ready", 1, None, specs, [], "b", handlers.profile_named("Compare"))
    oncology = handlers.status_markdown("ready", 1, None, specs, [], "b",
                                        handlers.profile_named("Oncology extraction"))
    assert "Not for clinical decisions" in compare and "synthetic narratives" not in compare
    assert "synthetic narratives" in oncology


def test_phones_are_told_from_tablets_and_desktops_by_their_user_agent():
    iphone = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Version/17.0 Mobile/15E148 Safari/604.1")
    android_phone = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                     "Chrome/120.0 Mobile Safari/537.36")
    android_tablet = ("Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Chrome/120.0 Safari/537.36")
    desktop = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36"
    assert handlers.is_phone(iphone) and handlers.is_phone(android_phone)
    assert not any(handlers.is_phone(ua) for ua in (android_tablet, desktop, "", None))


def test_history_keeps_turns_and_is_rebuilt_from_a_saved_thread():
    history = handlers.add_turn([], "q1", "a1")
    history = handlers.add_turn(history, "q2", "a2", max_messages=2)
    assert history == [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    steps = [{"type": "user_message", "output": "q1", "createdAt": "1"},
             {"type": "run", "output": "chain step", "createdAt": "2"},
             {"type": "assistant_message", "output": "a1\n---\nfooter", "createdAt": "3",
              "metadata": json.dumps({"answer": "a1"})},
             {"type": "user_message", "output": "unanswered", "createdAt": "4"}]
    assert handlers.history_from_steps(steps) == [{"role": "user", "content": "q1"},
                                                  {"role": "assistant", "content": "a1"}]


def test_an_exchange_without_answer_text_is_no_turn_live_or_resumed():
    """An answer stopped before its first word had stayed in the conversation as an empty assistant
    turn, sent with every later prompt."""
    history = handlers.add_turn([], "q1", "a1")
    assert handlers.add_turn(history, "stopped at once", "") == history
    assert handlers.add_turn(history, "stopped at once", "  \n") == history
    steps = [{"type": "user_message", "output": "q1", "createdAt": "1"},
             {"type": "assistant_message", "output": "a1", "createdAt": "2", "metadata": {"answer": "a1"}},
             {"type": "user_message", "output": "stopped at once", "createdAt": "3"},
             {"type": "assistant_message", "output": "*(the model produced no text)*", "createdAt": "4",
              "metadata": {"answer": ""}},
             {"type": "user_message", "output": "never answered", "createdAt": "5"},
             {"type": "user_message", "output": "q2", "createdAt": "6"},
             {"type": "assistant_message", "output": "a2", "createdAt": "7", "metadata": {"answer": "a2"}}]
    assert handlers.history_from_steps(steps) == [*history, {"role": "user", "content": "q2"},
                                                  {"role": "assistant", "content": "a2"}]


def test_a_message_that_sent_files_names_them_and_is_no_turn_of_the_conversation():
    assert handlers.attached_files_text(["notes.csv", "a`b|c.txt"]) == "📎 notes.csv, a_b_c.txt"
    steps = [{"type": "user_message", "output": handlers.attached_files_text(["notes.csv"]), "createdAt": "1",
              "metadata": json.dumps({handlers.FILES_KEY: ["notes.csv"]})},
             {"type": "assistant_message", "output": "### 3 texts from notes.csv", "createdAt": "2"},
             {"type": "user_message", "output": "check these", "createdAt": "3", "metadata": {"files": ["b.txt"]}},
             {"type": "assistant_message", "output": "### 1 text from b.txt", "createdAt": "4"},
             {"type": "user_message", "output": "q1", "createdAt": "5"},
             {"type": "assistant_message", "output": "a1", "createdAt": "6", "metadata": {"answer": "a1"}}]
    assert handlers.history_from_steps(steps) == [{"role": "user", "content": "q1"},
                                                  {"role": "assistant", "content": "a1"}]


# --- chainlit.md, offline page, settings from the environment ------------------------------------

def test_chainlit_md_says_not_trained_yet_and_carries_the_disclaimer(catalog, tmp_path):
    specs = load_catalog(catalog)
    path = welcome.write_chainlit_md(tmp_path, specs, "smollm2-135m-instruct")
    text = path.read_text()
    assert "Nothing here is for clinical decisions" in text
    assert text.count("**not trained yet**") == 3
    for spec in specs.values():
        assert spec.title in text and f"adapterlab train {spec.name}" in text
        assert f"Limitations: {spec.limitations}\n" in text  # the same text as the model card's


def test_chainlit_md_points_to_the_model_card_when_a_spec_states_no_limitations(catalog, tmp_path):
    import yaml

    spec_file = catalog / "spam" / "adapter.yaml"
    raw = yaml.safe_load(spec_file.read_text())
    del raw["limitations"]
    spec_file.write_text(yaml.safe_dump(raw))
    text = welcome.render_chainlit_md(load_catalog(catalog), "base")
    assert f"Limitations: see the model card in {(catalog / 'spam' / 'README.md').resolve()}." in text


def test_chainlit_md_shows_the_metrics_json_numbers(catalog, tmp_path):
    metrics = {"adapter": "spam", "task": "classify", "test_examples": 836, "few_shot_k": 4,
               "evaluated_at": "2026-11-23T10:00:00+00:00",
               "variants": {"base": {"accuracy": 0.41, "f1": 0.2}, "few_shot": {"accuracy": 0.6, "f1": 0.35},
                            "fine_tuned": {"accuracy": 0.9876, "f1": 0.9512}},
               "headline": {"accuracy": 0.9876, "f1": 0.9512},
               "targets": [{"metric": "f1", "target": ">= 0.95", "value": 0.9512, "met": True}]}
    (catalog / "spam" / "metrics.json").write_text(json.dumps(metrics))
    (catalog / "oncology" / "metrics.json").write_text("{not json")
    text = welcome.render_chainlit_md(load_catalog(catalog), "base")
    assert "| metric | base | few-shot (k=4) | fine-tuned |" in text
    assert "| accuracy | 0.410 | 0.600 | 0.988 |" in text and "| f1 | 0.200 | 0.350 | 0.951 |" in text
    assert "836 examples" in text and "✅ f1 >= 0.95: measured 0.951" in text
    assert text.count("**not trained yet**") == 2  # an unreadable metrics.json counts as none


@pytest.mark.parametrize("content", ['{"variants": [1, 2]}', '{"variants": {"base": 0.5}}', "[]", "{not json"])
def test_a_broken_metrics_json_leaves_the_page_up_and_says_why_in_the_log(catalog, caplog, content):
    """The page reads metrics.json through the checked reader; `"variants": [1, 2]` crashed it."""
    (catalog / "spam" / "metrics.json").write_text(content)
    with caplog.at_level("WARNING", logger="adapterlab.chat_app"):
        text = welcome.render_chainlit_md(load_catalog(catalog), "base")
    assert text.count("**not trained yet**") == 3 and "### Spam check" in text
    assert f"{catalog / 'spam' / 'metrics.json'}: " in caplog.text and "no metrics for spam" in caplog.text


def test_the_committed_chainlit_md_is_generated_from_the_shipped_metrics():
    """chainlit.md is in the repository (what Chainlit shows when the app is not running it); it
    must equal what the shipped specs and metrics.json files produce, as the app serves."""
    from adapters.catalog import CATALOG_DIR
    from adapters.base_models import DEFAULT_BASE

    committed = (CATALOG_DIR.parent / "chainlit.md").read_text(encoding="utf-8")
    assert committed == welcome.render_chainlit_md(load_catalog(CATALOG_DIR), DEFAULT_BASE), (
        "chainlit.md is stale: run `python -m chat_app.welcome` and commit it")
    # Chainlit's readme dialog shows each line break: a paragraph wrapped over lines read broken
    lines = committed.split("\n")
    block = ("|", "-", "#")
    wrapped = [a for a, b in zip(lines, lines[1:]) if a.strip() and b.strip()
               and not a.lstrip().startswith(block) and not b.lstrip().startswith(block)]
    assert not wrapped, wrapped


def test_another_catalogues_readme_describes_its_own_adapters(catalog, tmp_path):
    import dataclasses

    spec = load_catalog(catalog)["spam"]
    mood = dataclasses.replace(spec, name="mood", title="Mood check", description="How a message feels.",
                               labels=("positive", "negative", "neutral"), decision="argmax", limitations="",
                               directory=tmp_path / "mine" / "mood")
    text = welcome.render_chainlit_md({"mood": mood}, "/models/tiny")
    assert "- **Chat** — the plain base model." in text and "- **Mood check** — How a message feels." in text
    assert "Spam check" not in text and "Oncology" not in text and "Compare" not in text
    assert "clinical decisions" not in text and "A teaching and demonstration app" in text
    assert f"see the model card in {tmp_path / 'mine' / 'mood' / 'README.md'}." in text
    assert f"`adapterlab train mood --catalog {tmp_path / 'mine'}`" in text


def test_the_readme_asks_new_weights_for_an_evaluation_not_a_training_that_would_replace_them(catalog, tmp_path):
    import dataclasses

    spec = dataclasses.replace(load_catalog(catalog)["spam"], directory=tmp_path / "mine" / "spam")
    assert "not trained yet" in welcome.metrics_section(spec, None)
    (spec.directory).mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (spec.directory / name).write_text("{}")
    section = welcome.metrics_section(spec, None)
    assert "weights present, not evaluated yet" in section and "adapterlab train" not in section
    assert f"`adapterlab eval spam --catalog {tmp_path / 'mine'}` evaluates them" in section


def test_the_app_s_advice_for_another_catalogue_names_its_folder_and_catalog_option(catalog, tmp_path):
    """The not-trained and no-few-shot messages named `adapters/<name>/` and `adapterlab train <name>`
    for any catalogue, so a user of another one trained (or looked in) the project's."""
    import dataclasses

    spec = dataclasses.replace(load_catalog(catalog)["spam"], directory=tmp_path / "mine" / "spam")
    option = f"--catalog {tmp_path / 'mine'}"
    assert f"`{tmp_path / 'mine' / 'spam'}/`" in handlers.not_trained_message(spec)
    assert f"`adapterlab train spam {option}`" in handlers.not_trained_message(spec)
    assert f"`adapterlab train spam {option}`" in handlers.adapter_status_line(spec, trained=False)
    assert handlers.few_shot_unavailable(spec) == (
        f"no few-shot examples yet (evaluation writes `{tmp_path / 'mine' / 'spam' / 'few_shot.jsonl'}`: "
        f"`adapterlab eval spam {option}`)")


def test_the_readme_served_is_the_one_rendered_and_the_file_is_left_alone(catalog, tmp_path, monkeypatch):
    import chainlit.server as server

    monkeypatch.setattr(server, "get_markdown_str", server.get_markdown_str)  # undone after the test
    (tmp_path / "chainlit.md").write_text("the project's own page\n")
    text = welcome.render_chainlit_md(load_catalog(catalog), "another-base")
    assert welcome.serve(text)
    for language in ("en-US", "fr-FR"):
        assert server.get_markdown_str(str(tmp_path), language) == text
    assert (tmp_path / "chainlit.md").read_text() == "the project's own page\n"  # another catalogue: not written


def test_the_served_page_loads_nothing_from_other_hosts():
    import chainlit.server as server

    html = offline.strip_external_assets(open(server.build_dir + "/index.html", encoding="utf-8").read())
    assert not re.search(r"""<(link|script)[^>]+(href|src)=["']https?://""", html)
    assert '/assets/index-' in html and "<div id=\"root\">" in html


def test_every_response_carries_the_image_policy_and_an_unanswered_request_logs_no_error():
    """Starlette's BaseHTTPMiddleware raised "RuntimeError: No response returned" (an ASGI traceback in
    the server log) for a request its client left before the answer."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.testclient import TestClient

    async def unanswered(scope, receive, send):  # what a handler does whose client went away
        return None

    async def hello(request):
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", hello), Mount("/gone", app=unanswered)])
    offline.add_image_policy(app)
    assert TestClient(app).get("/").headers["content-security-policy"] == offline.IMAGE_POLICY
    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/gone/x", "raw_path": b"/gone/x", "root_path": "",
             "query_string": b"", "headers": [], "scheme": "http", "server": ("test", 80), "app": app}
    asyncio.run(app(scope, receive, send))
    assert sent == []


def test_config_from_environment(tmp_path):
    config = load_config({}, app_root=tmp_path)
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/.chainlit/adapterlab-history.sqlite3"
    assert not config.login_required and config.batch_limit == 1000 and config.database_kind == "sqlite"
    config = load_config({"ADAPTERLAB_APP_USER": "ana", "ADAPTERLAB_APP_PASSWORD": "pw",
                          "ADAPTERLAB_DATABASE_URL": "postgresql+asyncpg://u:secret@db/chat",
                          "ADAPTERLAB_BATCH_LIMIT": "20"}, app_root=tmp_path)
    assert config.login_required and config.batch_limit == 20 and config.database_kind == "postgresql"
    with pytest.raises(ValueError, match="ADAPTERLAB_BATCH_LIMIT"):
        load_config({"ADAPTERLAB_BATCH_LIMIT": "0"}, app_root=tmp_path)


def test_logins_are_signed_with_a_secret_made_once_beside_the_history(tmp_path):
    """With no CHAINLIT_AUTH_SECRET the app had made a random secret at each start: a restart signed
    everyone out, and a page left open logged Chainlit's "Invalid authentication token" tracebacks."""
    import stat

    from chat_app.config import lasting_auth_secret

    secret, path = lasting_auth_secret(tmp_path)
    assert path == tmp_path / ".chainlit" / "adapterlab-auth-secret" and len(secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # readable by this user only
    assert lasting_auth_secret(tmp_path) == (secret, path)  # the next start signs with the same one
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    path.write_text("cut\n")  # not one this made: replaced
    again, _ = lasting_auth_secret(tmp_path)
    assert again != secret and len(again) >= 32 and lasting_auth_secret(tmp_path)[0] == again
    (tmp_path / "file").write_text("")
    assert lasting_auth_secret(tmp_path / "file") is None  # no folder to write in: one per start


# --- persistence ---------------------------------------------------------------------------------

def test_history_and_feedback_are_stored_in_a_sqlite_file_created_on_first_use(tmp_path, caplog):
    from chainlit.context import init_http_context
    from chainlit.types import Feedback
    from chainlit.user import User

    from chat_app.persistence import HistoryDataLayer

    db = tmp_path / "sub" / "history.sqlite3"
    secret = "patient note: stage IV melanoma"

    async def scenario():
        init_http_context()
        layer = HistoryDataLayer(f"sqlite+aiosqlite:///{db}")
        user = await layer.create_user(User(identifier="ana"))
        await layer.update_thread("t1", name="first", user_id=user.id, tags=["Oncology extraction"],
                                  metadata={"chat_profile": "Oncology extraction",
                                            "history": [{"role": "user", "content": secret}]})
        await layer.create_step({"id": "s1", "threadId": "t1", "name": "ana", "type": "user_message",
                                 "output": secret, "streaming": False, "createdAt": "2026-01-01T00:00:00Z",
                                 "metadata": {}, "modes": {"m": "x"}})
        await layer.create_step({"id": "s2", "threadId": "t1", "name": "adapterlab", "type": "assistant_message",
                                 "output": "a table", "streaming": False, "createdAt": "2026-01-01T00:00:01Z",
                                 "metadata": {"answer": "a table"}})
        await layer.upsert_feedback(Feedback(forId="s2", value=0, threadId="t1", comment="wrong stage"))
        await layer.execute_sql("INSERT INTO nowhere VALUES (:x)", {"x": secret})  # fails, logged safely
        # a file sent alone: Chainlit names the thread "" while the app names it after the file
        await layer.update_thread("t2", name="", user_id=user.id, tags=["Spam check"])
        await layer.update_thread("t2", name="many.txt", user_id=user.id, tags=["Spam check"])
        # renamed by its user in the history: as given
        await layer.update_thread("t3", name="Remember the milk", user_id=user.id, tags=["Compare"])
        await layer.update_thread("t3", name="milk test")
        thread, named, renamed = [await layer.get_thread(t) for t in ("t1", "t2", "t3")]
        await layer.engine.dispose()
        return thread, named, renamed

    thread, named, renamed = asyncio.run(scenario())
    assert db.is_file()
    assert thread["name"] == "Oncology extraction · first"
    assert named["name"] == "Spam check · many.txt" and named["tags"] == ["Spam check"]
    assert renamed["name"] == "milk test" and renamed["tags"] == ["Compare"]
    from chat_app.persistence import THREAD_NAME_CHARS, thread_name

    pasted = thread_name("Dear doctor,\n\n" + "the patient was seen " * 5000, ["Medical Q&A"])  # a 100 kB paste
    assert len(pasted) == THREAD_NAME_CHARS and pasted.startswith("Medical Q&A · Dear doctor, the patient")
    assert pasted.endswith("…") and thread_name("  \n ", ["Chat"]) is None
    assert thread["tags"] == ["Oncology extraction"] and thread["metadata"]["chat_profile"] == "Oncology extraction"
    assert "history" not in thread["metadata"]  # the conversation is stored once, in the steps
    steps = {s["id"]: s for s in thread["steps"]}
    assert steps["s1"]["output"] == secret and steps["s2"]["metadata"] == {"answer": "a table"}
    assert steps["s2"]["feedback"]["value"] == 0 and steps["s2"]["feedback"]["comment"] == "wrong stage"
    assert "INSERT statement failed (OperationalError)" in caplog.text
    assert secret not in caplog.text


def test_a_deleted_chat_stays_deleted_when_its_open_page_saves_or_writes_again(tmp_path):
    """Deleting a chat while it was open: the page's disconnect saved its session again, which
    re-created the chat with no owner and the conversation in its metadata, and a message sent
    afterwards was stored under it."""
    import sqlite3

    from chainlit.context import init_http_context
    from chainlit.types import Feedback
    from chainlit.user import User

    from chat_app.persistence import HistoryDataLayer

    db = tmp_path / "history.sqlite3"

    async def scenario():
        init_http_context()
        layer = HistoryDataLayer(f"sqlite+aiosqlite:///{db}")
        user = await layer.create_user(User(identifier="ana"))
        await layer.update_thread("t1", name="dinner", user_id=user.id, tags=["Spam check"])
        step = {"id": "s1", "threadId": "t1", "name": "ana", "type": "user_message", "output": "dinner tonight?",
                "streaming": False, "createdAt": "2026-01-01T00:00:00Z", "metadata": {}}
        await layer.create_step(step)
        await layer.delete_thread("t1")
        deleted = layer.is_deleted("t1")
        await layer.update_thread("t1", metadata={"chat_profile": "Spam check", "history": ["dinner tonight?"]})
        await layer.create_step({**step, "id": "s2", "output": "are you still there?"})
        await layer.upsert_feedback(Feedback(forId="s2", value=1, threadId="t1"))
        await layer.engine.dispose()
        return deleted

    assert asyncio.run(scenario())
    with sqlite3.connect(db) as connection:
        for table in ("threads", "steps", "feedbacks"):
            assert connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table


def test_a_removed_message_stays_removed_when_its_last_update_is_written_late(tmp_path):
    """Chainlit writes a message's update and its removal in tasks it does not wait for: a batch's
    progress line, updated then removed, came back in the reopened chat when the update landed last."""
    import sqlite3

    from chainlit.context import init_http_context

    from chat_app.persistence import HistoryDataLayer

    db = tmp_path / "history.sqlite3"

    async def scenario():
        init_http_context()
        layer = HistoryDataLayer(f"sqlite+aiosqlite:///{db}")
        await layer.update_thread("t1", name="batch")
        step = {"id": "p1", "threadId": "t1", "name": "progress", "type": "assistant_message",
                "output": "⏳ Processed 32 of 300 texts", "streaming": False,
                "createdAt": "2026-01-01T00:00:00Z", "metadata": {}}
        await layer.create_step(step)
        execute = layer.execute_sql

        async def slow_step_writes(query, parameters):  # the update's write is the slower one
            if query.lstrip().startswith("INSERT INTO steps"):
                await asyncio.sleep(0.3)
            return await execute(query, parameters)

        layer.execute_sql = slow_step_writes
        update = asyncio.create_task(layer.update_step({**step, "output": "⏳ Processed 300 of 300 texts"}))
        remove = asyncio.create_task(layer.delete_step("p1"))
        await asyncio.gather(update, remove)
        await layer.update_step({**step, "output": "a write after the removal"})
        await layer.engine.dispose()

    asyncio.run(scenario())
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT COUNT(*) FROM steps").fetchone() == (0,)


def test_a_chat_read_while_a_message_of_it_is_written_has_the_message(tmp_path):
    """Chainlit writes a message in a task it does not wait for; a chat read meanwhile (a page
    reloaded as its answer ended) lacked the message."""
    from chainlit.context import init_http_context

    from chat_app.persistence import HistoryDataLayer

    async def scenario():
        init_http_context()
        layer = HistoryDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'history.sqlite3'}")
        await layer.update_thread("t1", name="asthma")
        execute = layer.execute_sql

        async def slow_step_writes(query, parameters):
            if query.lstrip().startswith("INSERT INTO steps"):
                await asyncio.sleep(0.3)
            return await execute(query, parameters)

        layer.execute_sql = slow_step_writes
        asyncio.create_task(layer.create_step({  # as Chainlit sends a message
            "id": "a1", "threadId": "t1", "name": "adapterlab", "type": "assistant_message", "output": "Wheezing.",
            "streaming": False, "createdAt": "2026-01-01T00:00:00Z", "metadata": {}}))
        thread = await layer.get_thread("t1")
        await layer.engine.dispose()
        return [step["id"] for step in thread["steps"]]

    assert asyncio.run(scenario()) == ["a1"]


def test_adapterlab_serve_runs_chainlit_on_the_app():
    from adapters.cli import build_parser
    from chat_app import cli

    args = build_parser().parse_args(["serve", "--port", "8123", "--base-model", "/models/x"])
    command, env = cli.serve_command(args)
    assert args.func is cli.cmd_serve
    assert command[1:4] == ["-m", "chainlit", "run"] and command[4].endswith("chat_app/app.py")
    assert command[-5:] == ["--host", "127.0.0.1", "--port", "8123", "--headless"]
    assert env["ADAPTERLAB_BASE_MODEL"] == "/models/x" and (cli.PROJECT_ROOT / ".chainlit" / "config.toml").is_file()


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["serve", "--port", "70000"], {}, "a port is a number from 1 to 65535, got '70000'"),
    (["serve"], {"CHAINLIT_PORT": "abc"}, "got 'abc' (from --port or $CHAINLIT_PORT)"),
    (["serve", "--base-model", "/tmp/no-such-model-here"], {}, "unknown base model '/tmp/no-such-model-here'"),
    (["serve"], {"ADAPTERLAB_BASE_MODEL": "/tmp/no-such-model-here"}, "unknown base model"),
    (["serve"], {"ADAPTERLAB_CATALOG": "/tmp/no-such-catalog-here"}, "no such adapter catalogue folder"),
])
def test_serve_refuses_a_bad_port_or_base_before_the_server_starts(argv, env, message, monkeypatch, capsys):
    """A port out of range printed "serving on ...:70000" and then tracebacks; a missing base
    started the server, which failed in the background with the page already up; a bad
    CHAINLIT_PORT broke every adapterlab command, serve or not."""
    from adapters.cli import main
    from chat_app import cli

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli.os, "execve", lambda *a: pytest.fail("the server was started"))
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: pytest.fail("the server was started"))
    with pytest.raises(SystemExit) if "port" in message else contextlib.nullcontext():
        assert main(argv) == 2
    assert message in capsys.readouterr().err
    if "CHAINLIT_PORT" in env:
        assert main(["adapters"]) == 0  # other commands do not read it


def test_the_runtime_loads_once_in_the_background_and_failures_are_reported():
    import threading

    from chat_app.state import RuntimeHolder

    release, calls = threading.Event(), []

    def loader():
        calls.append(1)
        release.wait(10)
        return "runtime"

    done = []
    holder = RuntimeHolder(loader, on_done=lambda h: done.append((h.state, h.error)))
    assert holder.state == "idle"
    holder.start().start()
    assert holder.state == "loading" and holder.wait(timeout=0.05) is None
    release.set()
    assert holder.wait(timeout=10) == "runtime" and holder.state == "ready" and calls == [1]
    assert holder.load_seconds is not None
    for _ in range(100):  # on_done runs in the loading thread right after the state is set
        if done:
            break
        threading.Event().wait(0.01)
    assert done == [("ready", None)]  # the app logs this line: ready (or failed, and why) after N s

    def broken():
        raise OSError("no space left on device")

    failed = RuntimeHolder(broken).start()
    assert failed.wait(timeout=10) is None and failed.state == "failed"
    assert failed.error == "OSError: no space left on device"


def test_chain_callbacks_run_on_the_callers_event_loop(tiny_base, catalog):
    """Chainlit's LangChain handler is async and writes to a data layer bound to the server's loop:
    every step of a chain (the prompt template included) must report on that loop, not a new one."""
    from langchain_core.callbacks import AsyncCallbackHandler

    rt = runtime(tiny_base, catalog)

    class Loops(AsyncCallbackHandler):
        def __init__(self):
            self.seen = []

        async def on_chain_start(self, serialized, inputs, **kwargs):
            self.seen.append(asyncio.get_running_loop())

        async def on_chat_model_start(self, *args, **kwargs):  # pragma: no cover - no chat model here
            pass

    async def scenario():
        handler = Loops()
        config = {"callbacks": [handler]}
        await chains.classify_chain(rt, "spam", base=True).ainvoke({"texts": ["a", "b"]}, config=config)
        await chains.extract_chain(rt, "oncology", base=True, max_new_tokens=4).ainvoke({"texts": ["a"]}, config=config)
        async for _ in chains.generate_chain(rt, "medquad", base=True, max_new_tokens=4).astream(
                {"history": [], "text": "q"}, config=config):
            pass
        return handler.seen, asyncio.get_running_loop()

    seen, loop = asyncio.run(scenario())
    assert len(seen) >= 9 and all(s is loop for s in seen)


@pytest.mark.parametrize(("answer", "closed"), [
    ("Here:\n```python\ndef f(n):\n    return n", "Here:\n```python\ndef f(n):\n    return n\n```"),
    ("~~~~\ncode\n~~~", "~~~~\ncode\n~~~\n~~~~"),  # a shorter fence does not close a longer one
    ("```\na\n```\nthen text", "```\na\n```\nthen text"),  # closed already: unchanged
    ("```\na\n```\n\n```js\nb", "```\na\n```\n\n```js\nb\n```"),
    ("no code at all", "no code at all"),
])
def test_an_answer_cut_inside_a_code_block_is_closed_before_its_footer(answer, closed):
    assert handlers.with_fences_closed(answer) == closed


def test_the_system_prompt_setting_says_what_empty_means_in_each_profile(catalog):
    specs = load_catalog(catalog)
    hint = {p.name: next(s.description for s in handlers.settings_for(p, specs.get(p.adapter), True)
                         if s.id == "system") for p in handlers.PROFILES}
    assert hint["Spam check"] == f"Empty: the adapter's own system prompt: {specs['spam'].prompt.system}"
    assert "each compared adapter's own" in hint["Compare"] and "adapter" not in hint["Chat"]
    # the panel shows descriptions as plain text: markdown would show its backticks and stars
    for p in handlers.PROFILES:
        for trained in (True, False):
            for s in handlers.settings_for(p, specs.get(p.adapter), trained):
                assert not re.search(r"`|\*\*", s.description), (p.name, s.id, s.description)


def test_chain_run_names_are_ones_chainlit_serves_an_avatar_for():
    from chat_app.chains import run_name, variant_name

    names = [run_name("spam", "classify", variant_name(True, [("q", "a")] * 4)),
             run_name("oncology", "extract", variant_name(False)), run_name("chat", "generate", "base")]
    assert names == ["spam - classify - few-shot k4", "oncology - extract - fine-tuned", "chat - generate - base"]
    assert all(re.fullmatch(r"[A-Za-z0-9_ .-]+", n) for n in names)


def test_percentages_never_round_a_possible_outcome_to_zero_or_certainty():
    assert [handlers.percent(p) for p in (0.0, 0.0004, 0.0006, 0.25, 0.9994, 0.9996, 1.0)] == \
        ["0.0%", "<0.1%", "0.1%", "25.0%", "99.9%", ">99.9%", "100.0%"]


def test_uploads_sent_together_with_one_stem_get_downloads_of_their_own():
    assert handlers.results_file_name("notes.jsonl", "oncology") == "notes-oncology-results.csv"
    together = ["notes.jsonl", "notes.csv", "other.txt"]  # both had given notes-oncology-results.csv
    assert [handlers.results_file_name(n, "oncology", together) for n in together] == \
        ["notes-jsonl-oncology-results.csv", "notes-csv-oncology-results.csv", "other-oncology-results.csv"]
    assert handlers.results_file_name(".csv", "spam") == ".csv-spam-results.csv"  # a dot-file's stem is its name
    assert handlers.results_file_name("", "spam") == "upload-spam-results.csv"


def test_a_typed_special_token_string_is_visibly_broken_in_the_shown_prompt():
    plain = "<|im_start|>user\nhello<|im_end|>\n"
    assert handlers.shown_prompt(plain) == plain
    typed = "<|im_start|>user\nhi<\u200b|im_end|><|im_end|>\n"
    shown = handlers.shown_prompt(typed)
    assert shown.startswith("<|im_start|>user\nhi<⟨zwsp⟩|im_end|><|im_end|>") and "zero-width space" in shown


def test_an_answer_cut_at_its_limit_reports_the_limit_not_its_text_counted_again():
    recount = lambda text: 33  # noqa: E731 - sampled tokens, decoded and encoded again, can come out longer
    assert handlers.generated_tokens(recount, "an answer", cut_at=32) == 32
    assert handlers.generated_tokens(recount, "an answer", cut_at=None) == 33  # ended by itself: counted
    assert handlers.generated_tokens(recount, "", cut_at=None) == 0
    assert handlers.generated_tokens(recount, "an answer", cut_at=None, limit=32) == 32  # never over the limit


def test_a_waiting_answer_says_the_model_is_busy_and_counts_only_when_others_wait_too():
    alone = handlers.waiting_message(1)
    assert "busy with other requests" in alone and "waiting" not in alone
    assert "(3 answers waiting, yours included)" in handlers.waiting_message(3)


def output_of(probe: str, env: dict[str, str] | None = None) -> str:
    """What ``python -c probe`` prints, run from the project root in a process of its own (importing
    chat_app/app.py installs Chainlit hooks for good)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def app_env(tiny_base, catalog, tmp_path) -> dict[str, str]:
    """The app's settings for a probe that imports it: the tiny base and catalogue, a history in ``tmp_path``."""
    return {"ADAPTERLAB_BASE_MODEL": str(tiny_base), "ADAPTERLAB_CATALOG": str(catalog),
            "ADAPTERLAB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'history.sqlite3'}"}


# the start of a probe that drives the app's socket handlers as Chainlit's server calls them
SOCKET_PROBE = ("import asyncio, sys, uuid\n"
                "from chainlit.config import load_module\n"
                "load_module('chat_app/app.py')\n"
                "app = sys.modules['chat_app/app.py']\n"
                "from chainlit.server import sio\n"
                "from chainlit.session import WebsocketSession\n"
                "async def nothing(*args, **kwargs): pass\n")


def test_the_model_starts_loading_once_chainlit_has_imported_the_app(tiny_base, catalog, tmp_path):
    """Chainlit takes the app's folder off ``sys.path`` as the last step of importing it; a loader
    thread started during the import was once searching ``sys.path`` then, and the model failed to
    load with "No module named 'transformers'". The load starts at the app's startup instead."""
    probe = ("import sys\n"
             "from chainlit.config import config, load_module\n"
             "load_module('chat_app/app.py')\n"
             "app = sys.modules['chat_app/app.py']\n"
             "print(app.HOLDER.state, config.code.on_app_startup is not None)\n")
    printed = output_of(probe, app_env(tiny_base, catalog, tmp_path))
    assert printed.split()[-2:] == ["idle", "True"], printed  # loading waits for the startup hook


def test_a_second_stop_does_not_cancel_the_keeping_of_what_the_first_stopped(tiny_base, catalog, tmp_path):
    """A stopped answer keeps what was said (it counts its tokens and sends the message, both awaited);
    a second Stop meanwhile (another page showing the answer, or a page closed) cancelled that too,
    and the answer was lost. The Stop button, a closed page and a left chat stop a task once, unless
    the first Stop did not take: pressed again after ``STOP_SETTLE_S``, it cancels again."""
    probe = (SOCKET_PROBE +
             "stop_button = sio.handlers['/']['stop']\n"
             "async def main():\n"
             "    session = WebsocketSession(id='s', socket_id='sid', emit=nothing, emit_call=nothing,\n"
             "                               user_env={}, client_type='webapp')\n"
             "    kept = []\n"
             "    async def answer():\n"
             "        try:\n"
             "            await asyncio.sleep(60)\n"
             "        except asyncio.CancelledError:\n"
             "            await asyncio.sleep(0.3)  # keeping what was said: counting, sending\n"
             "            kept.append(app._stop_reason())\n"
             "    session.current_task = task = asyncio.create_task(answer())\n"
             "    await asyncio.sleep(0.05)\n"
             "    await stop_button('sid')\n"
             "    await asyncio.sleep(0.05)\n"
             "    await stop_button('sid')  # another page's Stop\n"
             "    await asyncio.gather(task, return_exceptions=True)\n"
             "    print(task.cancelled(), kept)\n"
             "    # a Stop that did not take (lost on its way) can be pressed again once the first has settled\n"
             "    app.STOP_SETTLE_S = 0.2\n"
             "    async def deaf():\n"
             "        try:\n"
             "            await asyncio.sleep(60)\n"
             "        except asyncio.CancelledError:\n"
             "            pass\n"
             "        await asyncio.sleep(60)\n"
             "    session.current_task = task = asyncio.create_task(deaf())\n"
             "    await asyncio.sleep(0.05)\n"
             "    await stop_button('sid')\n"
             "    await asyncio.sleep(0.3)\n"
             "    await stop_button('sid')\n"
             "    await asyncio.sleep(0.05)\n"
             "    print(task.cancelled())\n"
             "asyncio.run(main())\n")
    printed = output_of(probe, app_env(tiny_base, catalog, tmp_path))
    assert printed.strip().splitlines()[-2:] == ["False ['stopped by you']", "True"], printed


@pytest.mark.parametrize("ends", ["while Chainlit reads the chat", "after the page is shown the chat"])
def test_a_page_that_resumes_a_chat_as_its_answer_ends_shows_the_answer(tiny_base, catalog, tmp_path, ends):
    """Chainlit sends a resumed chat as it read it when the page connected, and the page replaces its
    messages with it. An answer that ended meanwhile (a Stop pressed on a just-reloaded page) was not
    stored yet: the page lost the answer and the conversation lacked it (the browser test of a
    reload, once in CI and 1 in 11 runs here). The chat is sent again once the answer is stored.
    An answer whose stream had ended but whose task still kept it as the page connected (it had
    ended, stopped, just after the chat was read) was neither sent again as a stream nor with the
    chat: the page never showed it (once in CI on 2026-12-01, 1 in 12 runs of the browser test)."""
    during_read = ends == "while Chainlit reads the chat"
    probe = (SOCKET_PROBE + f"DURING_READ = {during_read}\n" +
             "import chainlit.data as cl_data\n"
             "from chainlit.context import init_ws_context\n"
             "from chainlit.user import User\n"
             "from chainlit.user_session import user_sessions\n"
             "connected = sio.handlers['/']['connection_successful']\n"
             "async def nothing(*args, **kwargs): pass\n"
             "async def main():\n"
             "    layer = cl_data.get_data_layer()\n"
             "    user = await layer.create_user(User(identifier='ann'))\n"
             "    chat = str(uuid.uuid4())\n"
             "    owner = WebsocketSession(id='owner', socket_id='o1', emit=nothing, emit_call=nothing,\n"
             "                             user_env={}, client_type='webapp', user=user, thread_id=chat)\n"
             "    owner.has_first_interaction = True\n"
             "    init_ws_context(owner)\n"
             "    await layer.update_thread(chat, name='asthma', user_id=user.id)\n"
             "    await layer.create_step({'id': 'q1', 'threadId': chat, 'type': 'user_message', 'name': 'ann',\n"
             "                             'output': 'What are the symptoms of asthma?',\n"
             "                             'createdAt': '2026-12-01T00:00:00.000Z', 'metadata': {}, 'streaming': False})\n"
             "    release = asyncio.Event()\n"
             "    async def answer():  # the reloaded page's Stop ends it\n"
             "        app._pages_showing(asyncio.current_task(), owner)\n"
             "        await release.wait()\n"
             "        asyncio.create_task(layer.create_step({  # as Chainlit writes a message: not awaited\n"
             "            'id': 'a1', 'threadId': chat, 'type': 'assistant_message', 'name': 'adapterlab',\n"
             "            'output': 'Wheezing. stopped by you', 'createdAt': '2026-12-01T00:00:01.000Z',\n"
             "            'metadata': {'answer': 'Wheezing.'}, 'streaming': False}))\n"
             "    task = asyncio.create_task(answer())\n"
             "    await asyncio.sleep(0.05)\n"
             "    read = layer.get_thread\n"
             "    async def read_as_the_answer_ends(thread_id):  # Chainlit reads the chat, the answer ends\n"
             "        layer.get_thread = read\n"
             "        thread = await read(thread_id)\n"
             "        if DURING_READ:\n"
             "            release.set()\n"
             "            await task\n"
             "        else:  # still kept by its task as the page is shown the chat\n"
             "            asyncio.get_running_loop().call_later(0.3, release.set)\n"
             "        return thread\n"
             "    layer.get_thread = read_as_the_answer_ends\n"
             "    sent = []\n"
             "    async def emit(event, data): sent.append((event, data))\n"
             "    WebsocketSession(id='page', socket_id='p1', emit=emit, emit_call=nothing, user_env={},\n"
             "                     client_type='webapp', user=user, thread_id=chat)  # the reloaded page\n"
             "    await connected('p1')\n"
             "    print([[step['id'] for step in data['steps']] for event, data in sent if event == 'resume_thread'])\n"
             "    print(user_sessions['page']['history'])\n"
             "    last = max(i for i, (event, _) in enumerate(sent) if event == 'resume_thread')\n"
             "    print([event for event, _ in sent[last:]])\n"
             "asyncio.run(main())\n")
    printed = output_of(probe, app_env(tiny_base, catalog, tmp_path)).strip().splitlines()
    assert printed[-3] == "[['q1'], ['q1', 'a1']]", printed  # as read, then again with the answer
    assert "set_sidebar_elements" in printed[-1], printed  # the status panel, which the thread replaced
    assert printed[-2] == ("[{'role': 'user', 'content': 'What are the symptoms of asthma?'}, "
                           "{'role': 'assistant', 'content': 'Wheezing.'}]"), printed


def test_compare_says_the_settings_panel_chose_its_adapter_until_a_command_does(tiny_base, catalog, tmp_path):
    """The panel's choice was stored as if a command had picked it: from the second message on,
    Compare said it ran "the one the last command picked", though no command had been."""
    probe = (SOCKET_PROBE +
             "from chainlit.context import init_ws_context\n"
             "class Message:\n"
             "    def __init__(self, command): self.command = command\n"
             "async def main():\n"
             "    init_ws_context(WebsocketSession(id='s', socket_id='s1', emit=nothing, emit_call=nothing,\n"
             "                                     user_env={}, client_type='webapp', chat_profile='Compare'))\n"
             "    async def settings_sent(*args, **kwargs): pass\n"
             "    app._send_settings = settings_sent\n"
             "    for command in (None, None, 'medquad', None):\n"
             "        print(await app._compare_adapter_for(Message(command), None))\n"
             "asyncio.run(main())\n")
    printed = output_of(probe, app_env(tiny_base, catalog, tmp_path)).strip().splitlines()[-4:]
    assert printed == ["('spam', \"the settings panel's\")", "('spam', \"the settings panel's\")",
                       "('medquad', None)", "('medquad', 'the one the last command picked')"], printed


def test_an_upload_for_a_session_the_server_does_not_know_yet_waits_for_it():
    """A file attached as a new chat starts is uploaded for a session Chainlit creates a moment later
    (Chainlit answered 404 and the file was lost): the upload waits for it, and only the upload."""
    import time

    from chat_app.upload_session import WaitForTheUploadsSession

    known: set[str] = set()
    reached: list[tuple[str, bool, float]] = []

    async def chainlit(scope, receive, send):
        reached.append((scope["method"], "new" in known, time.monotonic()))

    async def scenario():
        middleware = WaitForTheUploadsSession(chainlit, session_exists=known.__contains__, wait_s=1.0)
        asyncio.get_running_loop().call_later(0.3, known.add, "new")
        upload = {"type": "http", "method": "POST", "path": "/project/file", "query_string": b"session_id=new&"}
        started = time.monotonic()
        await middleware(upload, None, None)
        await middleware({**upload, "query_string": b"session_id=never"}, None, None)  # then Chainlit says 404
        await middleware({"type": "http", "method": "GET", "path": "/project/file/f1",
                          "query_string": b"session_id=other"}, None, None)
        return started

    started = asyncio.run(scenario())
    (post, post_known, post_at), (_, _, never_at), (get, _, get_at) = reached
    assert post == "POST" and post_known and 0.25 < post_at - started < 0.9  # it waited for its session
    assert 0.9 < never_at - post_at < 1.5  # at most wait_s
    assert get == "GET" and get_at - never_at < 0.1  # other requests do not wait


def test_the_upload_middleware_is_installed_once_when_watch_mode_imports_the_app_again():
    """`chainlit run -w` reloads the app on a change by dropping every module under chat_app/ and
    importing app.py again, after the server has started: the middleware class is then a new object,
    so install() added it again, Starlette refused ("Cannot add middleware after an application has
    started") and app.py stopped there, its hooks unregistered."""
    probe = ("import importlib, os, sys\n"
             "import chainlit.server as server\n"
             "from chat_app import upload_session\n"
             "upload_session.install()\n"
             "server.app.middleware_stack = server.app.build_middleware_stack()  # the server has started\n"
             "folder = os.path.abspath('chat_app')\n"
             "for name, module in list(sys.modules.items()):  # as chainlit.config.load_module(force_refresh=True)\n"
             "    if (getattr(module, '__file__', None) or '').startswith(folder):\n"
             "        sys.modules.pop(name)\n"
             "again = importlib.import_module('chat_app.upload_session')\n"
             "assert again.WaitForTheUploadsSession is not upload_session.WaitForTheUploadsSession\n"
             "again.install()\n"
             "print(sum(m.cls.__name__ == 'WaitForTheUploadsSession' for m in server.app.user_middleware))\n")
    assert output_of(probe).strip().splitlines()[-1] == "1"
