"""The adapterlab web app: ``chainlit run chat_app/app.py`` (or ``adapterlab serve``).

Profiles: Chat (base model), Spam check, Medical Q&A, Oncology extraction and Compare. The base model
and the trained adapters load once per process, in a background thread started when Chainlit starts
the app (``on_app_startup``; not during the import, see ``start_loading_the_model``), so the page is
usable at once (the status panel shows the loading state). Every model call goes through
``adapters.Runtime``, wrapped as LangChain chains (``chains.py``); what to show is decided by the
plain functions in ``handlers.py``, and an attached file is read into texts by ``uploads.py``. Settings
come from environment variables (``config.py``).
"""

from __future__ import annotations

import asyncio
import faulthandler
import hmac
import logging
import os
import secrets
import signal
import time
import traceback
import uuid
import weakref
from pathlib import Path

import chainlit as cl
import chainlit.data as cl_data
from chainlit.config import config as chainlit_config
from chainlit.input_widget import Select, Slider, Switch, TextInput
from chainlit.utils import utc_now, wrap_user_function

from adapters import DEFAULT_BASE, AdapterNotTrainedError, InputError, Runtime, load_catalog
from adapters.runtime import train_command
from chat_app import (chains, dialog_text, handlers, offline, page_text, problems, steps, upload_session, uploads,
                      welcome)
from chat_app.config import lasting_auth_secret, load_config
from chat_app.persistence import NOT_KEPT, HistoryDataLayer
from chat_app.state import RuntimeHolder

log = logging.getLogger("adapterlab.chat_app")
log.setLevel(logging.INFO)


class _ExpectedChainlitWarnings(logging.Filter):
    """Chainlit warns on every page load that elements are not persisted (``persistence.py`` says
    why): a state this app chose, repeated dozens of times an hour, which buried the warnings that
    matter."""

    EXPECTED = ("storage client is not initialized",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.EXPECTED)


logging.getLogger("chainlit").addFilter(_ExpectedChainlitWarnings())

CONFIG = load_config(app_root=chainlit_config.root)
SPECS = load_catalog(CONFIG.catalog)
PROFILES = handlers.profiles_for(SPECS)
BASE_MODEL = CONFIG.base_model or ", ".join(sorted({s.base_model for s in SPECS.values()})) or DEFAULT_BASE
HOLDER = RuntimeHolder(lambda: Runtime.local(CONFIG.catalog, base=CONFIG.base_model, progress=False,
                                             skip_other_bases=True),
                       on_done=lambda holder: log.info("adapterlab: model %s after %.1f s%s", holder.state,
                                                       holder.load_seconds or 0.0,
                                                       f": {holder.error}" if holder.error else ""))


@cl.on_app_startup
def start_loading_the_model() -> None:
    """Load the model in the background once Chainlit has imported this module, not during the import:
    Chainlit puts this file's folder first on ``sys.path`` while it imports it and takes it off at
    the end, and a loader thread started during the import was once searching ``sys.path`` at that
    moment, skipped the site-packages entry and failed with "No module named 'transformers'" (CI)."""
    HOLDER.start()


if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>` writes every thread's stack to the log (a stuck load)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
offline.install()
page_text.install()
dialog_text.install(history=CONFIG.login_required)
upload_session.install()
welcome.serve(welcome.render_chainlit_md(SPECS, BASE_MODEL))
log.info("adapterlab: loading %s in the background; chat history in %s", BASE_MODEL, CONFIG.database_kind)

UPLOAD_TASKS = ("classify", "extract")
COMPARE_REFRESH_S = 0.5  # how often Compare's progress message shows the answer being generated
CHUNK = {"classify": 32, "extract": 8}  # texts per model call in a batch upload (progress in between)
RECONNECT_GRACE_S = 10  # an answer waits this long for its page to reconnect (socket.io retries within ~5 s)


# --- set-up: data layer, login, profiles ---------------------------------------------------------------

@cl.data_layer
def data_layer():
    return HistoryDataLayer(CONFIG.database_url)


if CONFIG.login_required:
    if not os.environ.get("CHAINLIT_AUTH_SECRET"):
        if lasting := lasting_auth_secret(CONFIG.app_root):
            os.environ["CHAINLIT_AUTH_SECRET"] = lasting[0]
            log.info("adapterlab: logins are signed with the secret in %s (CHAINLIT_AUTH_SECRET unset)", lasting[1])
        else:
            os.environ["CHAINLIT_AUTH_SECRET"] = secrets.token_urlsafe(48)
            log.warning("adapterlab: CHAINLIT_AUTH_SECRET is not set and %s cannot be written; using a random "
                        "secret, so logins end when the app restarts (`chainlit create-secret` makes a lasting "
                        "one)", CONFIG.app_root / ".chainlit")

    @cl.password_auth_callback
    async def password_login(username: str, password: str):
        user_ok = hmac.compare_digest(username.encode(), CONFIG.app_user.encode())
        password_ok = hmac.compare_digest(password.encode(), CONFIG.app_password.encode())
        if user_ok and password_ok:
            return cl.User(identifier=username, metadata={"role": "user", "provider": "credentials"})
        return None


def _trained(name: str) -> bool:
    runtime = HOLDER.runtime
    if runtime is not None:
        return name in runtime.backend.adapter_names()
    return SPECS[name].has_weights


@cl.set_chat_profiles
async def chat_profiles(current_user=None, language=None):
    profiles = []
    for p in PROFILES:
        status = ""
        if p.adapter:
            status = "\n\n" + handlers.adapter_status_line(SPECS[p.adapter], _trained(p.adapter))
        if p.task == "generate" and handlers.is_medical(SPECS.get(p.adapter)):
            status += "\n\n" + handlers.NOT_MEDICAL_ADVICE
        profiles.append(cl.ChatProfile(
            name=p.name, markdown_description=p.description + status, default=p.default,
            starters=[cl.Starter(label=s.label, message=s.message, command=s.command) for s in p.starters]))
    return profiles


# --- session state ---------------------------------------------------------------------------------

def _profile() -> handlers.Profile:
    return handlers.profile_named(cl.user_session.get("chat_profile"), PROFILES)


def _setting_items(profile: handlers.Profile) -> list[handlers.Setting]:
    spec = SPECS.get(profile.adapter) if profile.adapter else None
    return handlers.settings_for(profile, spec, _trained(profile.adapter) if profile.adapter else True)


def _widget(item: handlers.Setting, value):
    common = {"id": item.id, "label": item.label, "initial": value, "description": item.description or None}
    if item.kind == "slider":
        return Slider(**common, min=item.min, max=item.max, step=item.step)
    if item.kind == "switch":
        return Switch(**common)
    if item.kind == "select":
        common.pop("initial")
        return Select(**common, values=list(item.values), initial_value=value)
    return TextInput(**common, multiline=True, placeholder="empty: the profile's default")


def _settings() -> handlers.Settings:
    return handlers.read_settings(cl.user_session.get("settings"), _setting_items(_profile()))


def _settings_panel(profile: handlers.Profile, restored: dict | None = None) -> cl.ChatSettings:
    """The settings panel with the profile's items, at their defaults or the ``restored`` values, and
    the switch that restores the defaults (always off)."""
    items = _setting_items(profile)
    values = {i.id: i.initial for i in items} | {k: v for k, v in (restored or {}).items()
                                                  if k in {i.id for i in items}}
    return cl.ChatSettings([_widget(i, values[i.id]) for i in items]
                           + [_widget(handlers.RESTORE_DEFAULTS, False)])


async def _send_settings(profile: handlers.Profile, restored: dict | None = None) -> None:
    """The settings panel with the profile's items, at their defaults or the ``restored`` values."""
    cl.user_session.set("settings", await _settings_panel(profile, restored).send())


async def _setup_session(restored: dict | None = None, show_status: bool = True) -> None:
    """Settings, commands and status panel of a chat that opens; ``show_status=False`` for a resumed
    chat, whose page replaces its elements when Chainlit sends the thread, after on_chat_resume
    (``_after_connection`` shows the panel then)."""
    profile = _profile()
    await _send_settings(profile, restored)
    await cl.context.emitter.set_commands([
        {"id": name, "icon": icon, "description": f"Compare base / few-shot / fine-tuned on `{name}`",
         "button": True, "persistent": False}
        for name, (icon, _emoji) in handlers.COMMAND_ICONS.items()
    ] if profile.task == "compare" else [])
    if show_status:
        await _show_status(profile)
    if HOLDER.state == "loading":
        asyncio.create_task(_announce_when_ready(profile))


def _on_phone() -> bool:
    return handlers.is_phone(cl.context.session.environ.get("HTTP_USER_AGENT"))


def _status_element_id() -> str:
    """The id of this page's status panel element, the same at each sending, so that the page keeps
    one (it adds each new element id to its elements)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"adapterlab:status:{cl.context.session.id}"))


async def _show_status(profile: handlers.Profile) -> None:
    """The status panel; on a phone only to say that loading failed, since there Chainlit lays the
    panel over three quarters of the chat (the toasts and the first answer say the rest).

    Its element is marked ``display="side"``: Chainlit 2.12's page closes the side panel whenever
    its elements change and none of them is a side element (a file sent with a message, the chat
    rebuilt at its own address after its first message, signed in), and opens it again from the
    side elements it holds; ``ElementSidebar`` alone sends an inline one, so the panel went at those
    moments and could not be brought back."""
    if _on_phone() and HOLDER.state != "failed":
        return
    runtime = HOLDER.runtime
    loaded = runtime.backend.adapter_names() if runtime else []
    content = handlers.status_markdown(HOLDER.state, HOLDER.load_seconds, HOLDER.error,
                                       SPECS, loaded, BASE_MODEL, profile, runtime.other_bases if runtime else None)
    try:
        await cl.ElementSidebar.set_elements([cl.Text(id=_status_element_id(), name="Status", content=content,
                                                      display="side")], key=uuid.uuid4().hex)
        await cl.ElementSidebar.set_title("Status")
    except FileNotFoundError:
        # Chainlit removed the session's file folder while the element was written: the page was
        # closed as it opened (seen once in the browser tests); there is nobody to show it to
        log.info("status panel not sent: the session ended while it was written")


async def _announce_when_ready(profile: handlers.Profile) -> None:
    try:
        await cl.context.emitter.send_toast("Loading the model… the page works meanwhile.", "info")
        while HOLDER.state == "loading":
            await asyncio.to_thread(HOLDER.wait, 5)
        await _show_status(profile)
        if HOLDER.state == "ready":
            await cl.context.emitter.send_toast(f"Model ready ({HOLDER.load_seconds:.0f} s).", "success")
        else:
            await cl.context.emitter.send_toast("The model could not be loaded: see the status panel.", "error")
    except Exception as exc:  # noqa: BLE001 - the page was closed meanwhile
        log.debug("status update skipped: %s", type(exc).__name__)


@cl.on_chat_start
async def on_chat_start():
    cl.user_session.set("history", [])
    gone = await _new_chat_if_the_address_holds_none()
    await _setup_session()
    if gone:
        await cl.Message(content=handlers.CHAT_GONE, metadata={NOT_KEPT: True}).send()


async def _new_chat_if_the_address_holds_none() -> bool:
    """Whether the page asked for a chat that is not there (``/thread/<id>`` of a deleted chat, or a
    wrong id); if so, the session becomes a new chat of its own.

    Chainlit 2.12 then toasts "Couldn't resume chat: Thread not found." for four seconds and shows a
    blank chat, which kept the address's id: its first message was refused as sent in a deleted chat
    (``handlers.CHAT_DELETED``) or, once the server had restarted, stored under the deleted chat's
    id, bringing that chat back. The caller says so in the chat instead (the page hides the toast).
    """
    session = cl.context.session
    wanted = getattr(session, "thread_id_to_resume", None)
    layer = cl_data.get_data_layer()
    if not wanted or session.has_first_interaction or layer is None or await layer.get_thread(wanted):
        return False
    session.thread_id, session.thread_id_to_resume = str(uuid.uuid4()), None
    return True


@cl.on_chat_resume
async def on_chat_resume(thread):
    cl.user_session.set("thread_named", True)
    # from the stored messages, every page's: the chat's metadata holds no copy (persistence.py), and
    # one saved by the last page to close lacked the turns another page had added
    cl.user_session.set("history", handlers.history_from_steps(thread.get("steps") or []))
    await _setup_session(cl.user_session.get("settings"), show_status=False)
    RESUMED_AT_CONNECTION[cl.context.session] = _messages_of(thread)


@cl.on_chat_end
async def on_chat_end():
    """The page left this chat, was closed or lost its connection: stop its running answer, as the
    Stop button does, rather than let it hold the one model up to max_new_tokens while everyone else
    waits, unless another page shows it. A connection that comes back within RECONNECT_GRACE_S keeps
    its answer (Chainlit calls this on every disconnect, and the page reconnects to the same session
    after a network blip), and so does an answer that a reload, or the chat opened in another tab,
    shows meanwhile (``_show_the_answer_being_written``)."""
    session = cl.context.session
    CLOSED_AT[session] = session.socket_id
    task = session.current_task
    if task is None or task.done():
        return
    pages = _pages_showing(task, session)
    if session.to_clear:  # a new chat, or another profile: this page will not show the answer again
        if session in pages[1:]:
            pages.remove(session)
        if not _open_pages(task):
            _stop(task, "stopped: the chat was left")
        return
    log.info("adapterlab: a page's connection closed during an answer; stopping it unless a page "
             "shows it within %d s", RECONNECT_GRACE_S)
    asyncio.create_task(_stop_unless_shown(task))


async def _stop_unless_shown(task: asyncio.Task) -> None:
    await asyncio.sleep(RECONNECT_GRACE_S)
    if not _open_pages(task):
        _stop(task, "stopped: the page was closed")


ANSWER_PAGES: dict[asyncio.Task, list] = {}  # running message task -> sessions showing its answer, its own first
CLOSED_AT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # session -> its page's socket id when it closed
STREAMED_ANSWERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # message task -> the answer it streams


def _pages_showing(task: asyncio.Task, session) -> list:
    """The sessions whose pages show ``task``'s answer, ``session`` (its own) first when it is new.
    Forgotten when the task ends (a weak mapping would keep it for ever: the sessions refer to it)."""
    pages = ANSWER_PAGES.get(task)
    if pages is None:
        pages = ANSWER_PAGES[task] = [session]
        task.add_done_callback(lambda done: ANSWER_PAGES.pop(done, None))
    return pages


def _open_pages(task: asyncio.Task) -> list:
    """The sessions whose pages show ``task``'s answer and are connected (not closed, or reconnected
    since, which gives the session a new socket id) and still in its chat."""
    return [page for page in ANSWER_PAGES.get(task, ())
            if CLOSED_AT.get(page) != page.socket_id and not page.to_clear]


def _answer_being_written(thread_id: str) -> asyncio.Task | None:
    """The message task answering in the chat ``thread_id``, if one runs."""
    for task, pages in list(ANSWER_PAGES.items()):
        if not task.done() and pages[0].thread_id == thread_id:
            return task
    return None


async def _show_the_answer_being_written(session) -> bool:
    """A chat resumed while an answer in it is still written (signed in: a reload is a new session,
    as is the chat opened in another tab) showed the stored messages only: the answer went on for
    the old page, gone after a reload, and was stopped as "the page was closed". This page now shows
    it too: it gets the answer so far and what comes next (the answering session's events are sent
    to it as well), a Stop button that stops it, and, once it is written, the conversation with it.
    Nothing is stored twice: the answering session stores the answer, as before.

    Chainlit resumes the chat again at each reconnection of the page (its page connects twice as
    it opens), and the thread it sends replaces the page's messages: the answer is sent again.
    Whether it was is returned: not when no answer runs, nor when its stream has ended (a stopped
    answer being kept, whose task has not ended yet)."""
    task = _answer_being_written(session.thread_id)
    if task is None:
        return False
    pages = ANSWER_PAGES[task]
    if session not in pages:
        pages.append(session)
        session.current_task = task  # Stop, leaving the chat and closing the page now act on it here
        asyncio.create_task(_take_the_conversation_when_written(task, pages[0]))
    _send_events_to_every_page(pages[0], task)
    emitter = cl.context.emitter
    await emitter.task_start()
    answer = STREAMED_ANSWERS.get(task)
    if answer is None or not answer.streaming:
        return False
    await emitter.stream_start(answer.to_dict())
    await emitter.send_token(answer.id, answer.content, is_sequence=True)  # what came meanwhile
    return True


def _send_events_to_every_page(owner, task: asyncio.Task) -> None:
    """Make what the answering session ``owner`` sends to its page go to every page that shows
    ``task``'s answer, while it runs (each page's current connection: they reconnect too)."""
    original = owner.emit
    if getattr(original, "_adapterlab_answer", None) is task:
        return

    async def emit(event, data):
        result = await original(event, data)
        if not task.done():
            for page in list(ANSWER_PAGES.get(task, ()))[1:]:
                if page is not owner and CLOSED_AT.get(page) != page.socket_id:
                    await page.emit(event, data)
        return result

    emit._adapterlab_answer = task
    owner.emit = emit


async def _take_the_conversation_when_written(task: asyncio.Task, owner) -> None:
    """Once the answer is written, this session's conversation is the answering session's: the one
    it was resumed with, from the stored messages, lacked the answer (Chainlit stores a message in a
    task of its own, so it may not be stored yet when the answer ends)."""
    from chainlit.user_session import user_sessions

    await asyncio.wait({task})
    history = (user_sessions.get(owner.id) or {}).get("history")
    if history is not None:
        cl.user_session.set("history", list(history))


STOP_REASONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # message task -> why the app stopped it
STOP_SAID: weakref.WeakSet = weakref.WeakSet()  # message tasks whose stop a message has already told


STOPPED_AT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # message task -> when _stop cancelled it
STOP_SETTLE_S = 3.0  # a stopped answer is kept (counted, sent) well within this


def _stop(task: asyncio.Task | None, reason: str | None = None) -> None:
    """Cancel a message's task, once: a second Stop soon after (from another page showing the
    answer, or a page closed meanwhile) would cancel the handler that keeps what the first one
    stopped while it sends it, and lose the answer. A Stop after ``STOP_SETTLE_S`` cancels again,
    in case the first was lost on its way. ``reason`` is the app's, when the Stop button did not
    stop it."""
    if task is None or task.done():
        return
    if time.monotonic() - STOPPED_AT.get(task, -STOP_SETTLE_S) < STOP_SETTLE_S:
        return
    STOPPED_AT[task] = time.monotonic()
    if reason:
        STOP_REASONS.setdefault(task, reason)
    task.cancel()


def _stop_reason(task: asyncio.Task | None = None) -> str:
    """Why a message's task (default: the current one) was cancelled: the Stop button, unless the app
    stopped it."""
    task = task or asyncio.current_task()
    return STOP_REASONS.get(task, "stopped by you") if task is not None else "stopped by you"


# session whose connection resumed a chat -> the messages of the thread Chainlit sends its page
RESUMED_AT_CONNECTION: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _messages_of(thread: dict) -> list[tuple]:
    """What a page shows of a stored chat's messages: each one's id and text."""
    return [(step.get("id"), step.get("output")) for step in thread.get("steps") or []]


def _after_connection() -> None:
    """Wrap Chainlit 2.12's ``connection_successful``, for what must come after it:

    - it clears the page's "answering" state whenever a page connects (it sends ``task_end``), so a
      page that reconnected mid-answer lost its Stop button while the answer went on: a reconnected
      session with an answer still running gets its Stop button back;
    - it sends a resumed chat's thread after ``on_chat_resume``, and the page then replaces its
      elements with the thread's, the status panel's among them, and its messages with the stored
      ones: the panel, and an answer still being written in the chat, are shown after that; and
      the chat is sent again if an answer in it ended meanwhile, or is ending (a stopped answer
      being kept), once it has ended (``_send_the_chat_again_if_it_changed``).
    """
    from chainlit.context import init_ws_context
    from chainlit.server import sio
    from chainlit.session import WebsocketSession

    original = sio.handlers.get("/", {}).get("connection_successful")
    if original is None or getattr(original, "_adapterlab", False):
        return

    async def connection_successful(sid):
        session = WebsocketSession.get(sid)
        answering = _answer_being_written(session.thread_id) if session and session.thread_id else None
        await original(sid)
        if session is None:
            return
        init_ws_context(session)
        task = session.current_task if session.restored else None
        if task is not None and not task.done():
            await cl.context.emitter.task_start()
            if len(ANSWER_PAGES.get(task, ())) > 1 and ANSWER_PAGES[task][0] is session:
                _send_events_to_every_page(session, task)  # Chainlit gave it a new emit
        if (sent := RESUMED_AT_CONNECTION.pop(session, None)) is not None:
            await _show_status(_profile())
            shown = await _show_the_answer_being_written(session)
            if answering is not None and not shown:
                # it ended, or is ending (a Stop on the page's first connection: its stream has
                # ended and its task keeps the answer), while the chat was read without it
                await asyncio.wait({answering}, timeout=STOP_SETTLE_S)
                if answering.done() and await _send_the_chat_again_if_it_changed(session, sent):
                    await _show_status(_profile())  # the thread brings its elements, without the panel

    connection_successful._adapterlab = True
    sio.on("connection_successful", connection_successful)


_after_connection()


async def _send_the_chat_again_if_it_changed(session, sent: list[tuple]) -> bool:
    """Chainlit sends a resumed chat as it read it when the page connected, and the page replaces
    its messages with it. An answer that ended meanwhile was not stored then (a Stop pressed on a
    page that had just been reloaded, which connects twice): the page lost the answer, and the
    chat's conversation lacked it (once in CI, and 1 in 11 runs of its browser test here). Read
    again once the answer's writes have landed, the chat is sent again if it changed (whether it
    was is returned)."""
    layer = cl_data.get_data_layer()
    thread = await layer.get_thread(session.thread_id) if layer else None
    if thread is None or _messages_of(thread) == sent:
        return False
    cl.user_session.set("history", handlers.history_from_steps(thread.get("steps") or []))
    await cl.context.emitter.resume_thread(thread)
    return True


def _stop_without_a_second_message() -> None:
    """Chainlit 2.12's Stop handler sends "Task manually stopped." before it cancels the message's
    task, under the app's own "stopped by you" (which says what was kept). Replace it with one that
    only cancels; a step that says nothing of its own stop gets the app's line (``on_message``)."""
    from chainlit.config import config
    from chainlit.context import init_ws_context
    from chainlit.server import sio
    from chainlit.session import WebsocketSession

    original = sio.handlers.get("/", {}).get("stop")
    if original is None or getattr(original, "_adapterlab", False):
        return

    async def stop(sid):
        if session := WebsocketSession.get(sid):
            init_ws_context(session)
            _stop(session.current_task)
            if config.code.on_stop:
                await config.code.on_stop()

    stop._adapterlab = True
    sio.on("stop", stop)


_stop_without_a_second_message()


def _accept_empty_uploads() -> None:
    """Chainlit 2.12 refuses to store a 0-byte upload (``persist_file`` raises ValueError for empty
    content: an "Upload failed" toast and an ASGI traceback) before the app sees it. Store it as an
    empty file, so the app says what is wrong with it as for any other file."""
    from chainlit.session import BaseSession

    original = BaseSession.persist_file
    if getattr(original, "_adapterlab", False):
        return

    async def persist_file(self, name, mime, path=None, content=None):
        if not path and content is not None and len(content) == 0:
            self.files_dir.mkdir(exist_ok=True)
            empty = self.files_dir / f"empty-{uuid.uuid4()}"
            empty.touch()
            try:
                return await original(self, name, mime, path=str(empty))
            finally:
                empty.unlink(missing_ok=True)
        return await original(self, name, mime, path=path, content=content)

    persist_file._adapterlab = True
    BaseSession.persist_file = persist_file


_accept_empty_uploads()


@cl.on_settings_update
async def on_settings_update(settings):
    if settings.get(handlers.RESTORE_DEFAULTS.id):  # confirmed before the panel at its defaults came
        await _send_settings(_profile())
    else:
        cl.user_session.set("settings", settings)
    cl.user_session.set("compare_adapter", None)  # the panel's adapter applies until a command is picked


async def on_settings_edit(settings):
    """A change in the open settings dialog, before Confirm: "Restore the profile's defaults" turned on
    sends the panel again at the defaults, which the page puts in the open dialog (Chainlit resets the
    dialog's values to the inputs' ``initial`` when it gets inputs). Nothing is saved until Confirm,
    and Cancel (or "Undo changes") goes back to the values the dialog opened with."""
    if settings.get(handlers.RESTORE_DEFAULTS.id):
        await _settings_panel(_profile()).refresh()


# Registered without Chainlit's task_start / task_end, which ``@cl.on_settings_edit`` sends around
# every edit (a keystroke in the system prompt too): the page shows them as an answer starting and
# ending (Stop in place of Send, behind the dialog), for a handler that answers nothing
chainlit_config.code.on_settings_edit = wrap_user_function(on_settings_edit)


# --- messages --------------------------------------------------------------------------------------

@cl.on_message
async def on_message(message: cl.Message):
    profile = _profile()
    _pages_showing(asyncio.current_task(), cl.context.session)
    if _chat_deleted():
        await cl.Message(content=handlers.CHAT_DELETED).send()
        return
    try:
        files = [e for e in (message.elements or []) if getattr(e, "path", None)]
        typed = bool(message.content.strip())
        text_answered = typed and profile.task not in UPLOAD_TASKS  # files are read in batch profiles only
        if files and not text_answered:
            await _name_the_files_in(message, files)
        if not cl.user_session.get("thread_named"):
            cl.user_session.set("thread_named", True)
            if files and not typed:
                await _name_thread(", ".join(f.name for f in files))
            asyncio.create_task(_give_the_chat_its_address(cl.context.session, cl.context.emitter))
        runtime = await _ready_runtime()
        if files and profile.task in UPLOAD_TASKS:
            if typed:
                await cl.Message(content=handlers.TYPED_TEXT_WITH_FILES).send()
            await _uploads(runtime, profile, files)
            return
        if files:
            await cl.Message(content=handlers.files_not_read(typed)).send()
            if not typed:
                return
        text, notes = handlers.text_to_send(message.content)
        for note in notes:
            await cl.Message(content=f"ℹ️ {note}").send()
        if profile.task == "compare":
            adapter, chosen_by = await _compare_adapter_for(message, profile)
            await _compare(runtime, text, adapter, chosen_by)
        elif profile.task in ("chat", "generate"):
            await _generate(runtime, profile, text)
        elif profile.task == "classify":
            await _classify(runtime, profile, text)
        else:
            await _extract(runtime, profile, text)
    except problems.InputProblem as exc:
        await cl.Message(content=str(exc)).send()
    except InputError as exc:  # the runtime's messages start in lower case, to follow "error: "
        await cl.Message(content=f"✏️ {str(exc)[:1].upper()}{str(exc)[1:]}").send()
    except AdapterNotTrainedError:
        await cl.Message(content=handlers.not_trained_message(SPECS[profile.adapter])).send()
    except asyncio.CancelledError:  # stopped in a step that says nothing itself (a check, an extraction)
        if asyncio.current_task() not in STOP_SAID:
            await cl.Message(content=f"⏹ {_stop_reason()[:1].upper()}{_stop_reason()[1:]}.").send()
        # the message's task ends normally, without an error mark
    except Exception as exc:  # noqa: BLE001 - the app keeps serving; details without message text
        log.error("adapterlab: %s failed with %s\n%s", profile.name, type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)))
        await cl.Message(content=f"❌ Something went wrong ({type(exc).__name__}). The app keeps running; "
                                 "try again, or with a shorter input.").send()
    finally:
        await _save_session()


async def _name_the_files_in(message: cl.Message, files: list) -> None:
    """Mark a message that sent files as such (a resumed chat's history leaves it out), and give one
    sent without text the files' names as its text. Chainlit 2.12 shows a message's files above its
    bubble and the bubble empty; the files themselves are not kept (``persistence.py``), so a chat
    reopened from the history showed an empty bubble alone."""
    names = [f.name for f in files]
    message.metadata = {**(message.metadata or {}), handlers.FILES_KEY: names}
    if not message.content.strip():
        message.content = handlers.attached_files_text(names)
    await message.update()


async def _compare_adapter_for(message: cl.Message, profile: handlers.Profile) -> tuple[str, str | None]:
    """The adapter a comparison runs, and what chose it when not this message's command: the
    command picked with this message, else the last one picked, else the settings panel's."""
    last = cl.user_session.get("compare_adapter")
    adapter = message.command or last or _settings().compare_adapter
    if message.command:  # the panel's choice is not stored as a command's: it read "the last command picked"
        cl.user_session.set("compare_adapter", adapter)
    if message.command and _settings().compare_adapter != adapter:  # the panel names what runs
        await _send_settings(profile, {**(cl.user_session.get("settings") or {}), "compare_adapter": adapter})
    return adapter, None if message.command else ("the one the last command picked" if last
                                                    else "the settings panel's")


def _chat_deleted() -> bool:
    layer = cl_data.get_data_layer()
    return isinstance(layer, HistoryDataLayer) and layer.is_deleted(cl.context.session.thread_id)


async def _save_session() -> None:
    """Save the chat's profile and settings with it after each message, as Chainlit does only when
    its page disconnects: a second tab (or a page after a crash) resumed it as a plain Chat, with
    default settings, while the first was open."""
    from chainlit.socket import persist_user_session

    session = cl.context.session
    if session.thread_id and getattr(session, "has_first_interaction", False):
        try:
            await persist_user_session(session.thread_id, session.to_persistable())
        except Exception as exc:  # noqa: BLE001 - the answer is given; saving it again is a nicety
            log.warning("chat history: saving the session failed (%s)", type(exc).__name__)


async def _name_thread(name: str) -> None:
    """Name a new chat whose first message is a file sent without text. Chainlit 2.12 names a thread
    after its first message's text, and its page shows the Stop button, lists the chat in the
    history and moves to the chat's address only once that name is not empty (the
    ``first_interaction`` event); for a file alone it is "", so a long upload could not be stopped.
    Chainlit sends its "" from a task of its own, after writing the thread: ours goes after it."""
    session, emitter = cl.context.session, cl.context.emitter
    await _once_chainlit_has_written_the_thread(emitter)
    await emitter.emit("first_interaction", {"interaction": name, "thread_id": session.thread_id})
    if layer := cl_data.get_data_layer():
        await layer.update_thread(thread_id=session.thread_id, name=name,
                                  tags=[session.chat_profile] if session.chat_profile else None)


async def _give_the_chat_its_address(session, emitter) -> None:
    """Signed in, a chat's first message moves the page to the chat's address (``/thread/<id>``), so
    that a reload reopens it. Chainlit 2.12 does it from its history sidebar, which a phone (or a
    window under 768 px) mounts only when its sheet is opened: there the address stayed "/" and a
    reload opened a blank chat. Once Chainlit has written the thread, the page is told its id, and
    ``public/adapterlab.js`` moves to its address if Chainlit has not."""
    if session.user is None or not session.thread_id:
        return
    await _once_chainlit_has_written_the_thread(emitter)
    await emitter.send_window_message({"adapterlab_thread": session.thread_id})


async def _once_chainlit_has_written_the_thread(emitter) -> None:
    """Wait (10 s at most) for the task in which Chainlit writes a new chat's thread, if one runs."""
    chainlit_init = [task for task in asyncio.all_tasks() if _runs(task, type(emitter).init_thread, emitter)]
    if chainlit_init:
        await asyncio.wait(chainlit_init, timeout=10)


def _runs(task: asyncio.Task, method, instance) -> bool:
    """Whether ``task`` is running ``instance.method(...)`` and has not finished."""
    coroutine = task.get_coro()
    frame = getattr(coroutine, "cr_frame", None)
    return (getattr(coroutine, "cr_code", None) is method.__code__ and frame is not None
            and frame.f_locals.get("self") is instance)


async def _ready_runtime() -> Runtime:
    if HOLDER.state == "ready":
        return HOLDER.runtime
    if HOLDER.state == "failed":
        raise problems.InputProblem(handlers.load_failed_message(HOLDER.error or "unknown error"))
    waiting = cl.Message(content=handlers.loading_message(HOLDER.elapsed()))
    await waiting.send()
    try:
        while HOLDER.state == "loading":
            await asyncio.to_thread(HOLDER.wait, 3)
            waiting.content = handlers.loading_message(HOLDER.elapsed())
            await waiting.update()
    except asyncio.CancelledError:  # stopped while waiting: the "answered as soon as ready" promise goes
        waiting.content = f"⏹ {_stop_reason()} while the model was loading: this message is not answered."
        await waiting.update()
        STOP_SAID.add(asyncio.current_task())
        raise
    if HOLDER.state == "failed":
        waiting.content = handlers.load_failed_message(HOLDER.error or "unknown error")
        await waiting.update()
        raise problems.InputProblem("The model is not available.")
    waiting.content = handlers.ready_message(HOLDER.load_seconds, HOLDER.runtime.backend.adapter_names())
    await waiting.update()
    return HOLDER.runtime


def _callbacks() -> dict:
    return {"callbacks": [steps.StepsTracer(stop_reason=_stop_reason)]}


def _variant(runtime: Runtime, profile: handlers.Profile, settings: handlers.Settings) -> handlers.Variant:
    spec = runtime.spec(profile.adapter)
    return handlers.choose_variant(spec, profile.adapter in runtime.backend.adapter_names(), settings.use_base)


async def _usable_variant(runtime: Runtime, profile: handlers.Profile,
                          settings: handlers.Settings) -> handlers.Variant | None:
    """The profile adapter's variant to run, or None after telling the user why there is none."""
    variant = _variant(runtime, profile, settings)
    if variant.problem:
        await cl.Message(content=variant.problem).send()
        return None
    return variant


async def _rendered_prompt(runtime: Runtime, adapter: str | None, messages: list[dict], settings,
                           examples=()) -> str:
    """The exact text the model is sent for ``messages`` under these settings (cut to fit)."""
    return await asyncio.to_thread(runtime.rendered_prompt, adapter, messages, system=settings.system,
                                   examples=examples, max_new_tokens=settings.max_new_tokens)


def _shown_prompt(prompt: str, tokens: int, settings) -> list:
    """The rendered prompt as an element of the answer, when the settings ask for it."""
    if not settings.show_prompt:
        return []
    return [cl.Text(name=handlers.rendered_prompt_title(tokens), content=handlers.shown_prompt(prompt),
                    display="inline", language="text")]


async def _prompt_element(runtime: Runtime, adapter: str | None, messages: list[dict], settings) -> list:
    """``_shown_prompt`` for ``messages``, rendered only when it is shown."""
    if not settings.show_prompt:
        return []
    prompt = await _rendered_prompt(runtime, adapter, messages, settings)
    return _shown_prompt(prompt, runtime.backend.count_tokens(prompt), settings)


async def _generate(runtime: Runtime, profile: handlers.Profile, text: str) -> None:
    settings = _settings()
    spec = runtime.spec(profile.adapter) if profile.adapter else None
    if spec is not None:
        variant = await _usable_variant(runtime, profile, settings)
        if variant is None:
            return
        base, label = variant.base, variant.label
    else:
        base, label = True, "base model (no adapter)"
    history = list(cl.user_session.get("history") or [])
    info = chains.GenerationInfo()
    chain = chains.generate_chain(runtime, profile.adapter, base=base, system=settings.system,
                                  temperature=settings.temperature, top_p=settings.top_p,
                                  max_new_tokens=settings.max_new_tokens, info=info)
    answer = cl.Message(content="")
    STREAMED_ANSWERS[asyncio.current_task()] = answer  # a reloaded page is sent it so far
    streamed: list[str] = []
    notice = asyncio.create_task(_tell_while_waiting(runtime, answer, streamed))

    async def show(piece: str) -> None:
        first = not streamed
        if first:  # a resumed thread shows the answer where it began, not where it ended
            answer.created_at = utc_now()
            notice.cancel()
        shown = page_text.shown_piece("".join(streamed[-1:]), piece)  # "Note:this" showed as "Note"
        streamed.append(piece)
        await answer.stream_token(shown, is_sequence=first)  # the first piece replaces a waiting notice

    try:
        await chains.stream_pieces(chain, {"history": history, "text": text}, _callbacks(), show)
    except asyncio.CancelledError:  # the Stop button: keep what was said, on the page and in the history
        info.text, info.stopped = "".join(streamed), _stop_reason()  # the text the page shows
        # handled in full, so the message's task ends normally, not as a failed step
    finally:
        notice.cancel()
    await _send_answer(runtime, profile, settings, history, text, answer, info, label)


async def _tell_while_waiting(runtime: Runtime, answer: cl.Message, streamed: list[str]) -> None:
    """While an answer has no text yet and other requests hold the model, say so in its place
    (on a 2-core CPU another user's answer can hold it for tens of seconds)."""
    await asyncio.sleep(handlers.WAIT_NOTICE_S)
    shown = None
    while not streamed:
        waiting = runtime.backend.waiting_streams()
        notice = handlers.waiting_message(waiting) if waiting else None
        if notice and notice != shown:
            await answer.stream_token(notice, is_sequence=True)
            shown = notice
        await asyncio.sleep(1.0)


async def _send_answer(runtime: Runtime, profile: handlers.Profile, settings, history: list[dict], text: str,
                       answer: cl.Message, info: chains.GenerationInfo, label: str) -> None:
    """End a streamed answer: its footer, its metadata for resumed threads, and the turn in the history."""
    spec = SPECS.get(profile.adapter or "")
    params = runtime.generation_params(profile.adapter, settings.temperature, settings.top_p, settings.max_new_tokens)
    output_tokens = handlers.generated_tokens(runtime.backend.count_tokens, info.text, info.cut_at,
                                              params.max_new_tokens)
    footer = handlers.generation_footer(label, info.seconds, info.first_piece_seconds, info.prompt_tokens,
                                        output_tokens, info.truncated, medical=handlers.is_medical(spec),
                                        cut_at=info.cut_at, stopped=info.stopped,
                                        message_cut_to=info.message_cut_to, turns_dropped=info.turns_dropped,
                                        sampling=(params.temperature, params.top_p))
    if handlers.is_medical(spec) and (risk := handlers.medical_risk_notice(text)):
        footer += "\n\n" + risk
    shown = (page_text.shown(handlers.with_fences_closed(info.text)) if info.text.strip()
             else "*(the model produced no text)*")
    answer.content = shown + "\n\n---\n" + footer
    answer.metadata = {"answer": info.text, "adapter": profile.adapter, "variant": label}
    answer.elements = await _prompt_element(runtime, profile.adapter, [*history, {"role": "user", "content": text}],
                                            settings)
    await answer.send()  # ends the stream, persists the message and sends its elements
    cl.user_session.set("history", handlers.add_turn(history, text, info.text))


async def _classify(runtime: Runtime, profile: handlers.Profile, text: str) -> None:
    settings = _settings()
    variant = await _usable_variant(runtime, profile, settings)
    if variant is None:
        return
    spec = runtime.spec(profile.adapter)
    chain = chains.classify_chain(runtime, profile.adapter, base=variant.base, system=settings.system)
    started = time.perf_counter()
    (result,) = await chain.ainvoke({"texts": [text]}, config=_callbacks())
    seconds = time.perf_counter() - started
    prompt = await _rendered_prompt(runtime, profile.adapter, [{"role": "user", "content": text}], settings)
    tokens = runtime.backend.count_tokens(prompt)
    content = handlers.classification_markdown(result, spec.labels, variant.label, handlers.run_facts(seconds, tokens))
    if result["truncated"]:
        content += "\n\n" + handlers.truncation_note(spec, text)
    if note := handlers.one_message_note(text):
        content += "\n\n" + note
    elements = _shown_prompt(prompt, tokens, settings)
    await cl.Message(content=content, elements=elements,
                     metadata={"answer": result["label"], "probs": result["probs"]}).send()


async def _extract(runtime: Runtime, profile: handlers.Profile, text: str) -> None:
    settings = _settings()
    variant = await _usable_variant(runtime, profile, settings)
    if variant is None:
        return
    spec = runtime.spec(profile.adapter)
    chain = chains.extract_chain(runtime, profile.adapter, base=variant.base, system=settings.system,
                                 max_new_tokens=settings.max_new_tokens)
    started = time.perf_counter()
    (result,) = await chain.ainvoke({"texts": [text]}, config=_callbacks())
    seconds = time.perf_counter() - started
    prompt = await _rendered_prompt(runtime, profile.adapter, [{"role": "user", "content": text}], settings)
    tokens = runtime.backend.count_tokens(prompt)
    limit = runtime.generation_params(profile.adapter, max_new_tokens=settings.max_new_tokens).max_new_tokens
    facts = handlers.run_facts(seconds, tokens, handlers.generated_tokens(runtime.backend.count_tokens, result["raw"],
                                                                          result["cut_at"], limit))
    content = handlers.extraction_markdown(result, spec.fields, variant.label, text, facts)
    if result["truncated"]:
        content += "\n\n" + handlers.truncation_note(spec, text)
    if handlers.is_medical(spec):
        content += "\n\n" + handlers.NOT_CLINICAL
    elements = _shown_prompt(prompt, tokens, settings)
    await cl.Message(content=content, elements=elements, metadata={"answer": result["fields"]}).send()


async def _uploads(runtime: Runtime, profile: handlers.Profile, files: list) -> None:
    settings = _settings()
    variant = await _usable_variant(runtime, profile, settings)
    if variant is None:
        return
    spec = runtime.spec(profile.adapter)
    limit = CONFIG.batch_limit if profile.task == "classify" else CONFIG.extract_batch_limit
    for file in files:
        try:
            path = Path(file.path)
            uploads.check_upload_size(file.name, path.stat().st_size)
            upload = uploads.read_upload(file.name, await asyncio.to_thread(path.read_bytes), limit)
        except problems.InputProblem as exc:
            await cl.Message(content=str(exc)).send()
            continue
        download = handlers.results_file_name(file.name, spec.name, [f.name for f in files])
        await _run_batch(runtime, profile, spec, variant, settings, file.name, upload, download)


async def _run_batch(runtime, profile, spec, variant, settings, name: str, upload: uploads.Upload,
                     download: str) -> None:
    """Run an upload's texts in chunks, with a progress line, then send its table and ``download``."""
    if profile.task == "classify":
        chain = chains.classify_chain(runtime, spec.name, base=variant.base, system=settings.system)
    else:
        chain = chains.extract_chain(runtime, spec.name, base=variant.base, system=settings.system,
                                     max_new_tokens=settings.max_new_tokens)
    total = len(upload.texts)
    progress = cl.Message(content=handlers.batch_start_message(name, upload))
    await progress.send()
    started = time.perf_counter()
    results: list[dict] = []
    step = CHUNK[profile.task]
    try:
        for start in range(0, total, step):
            # no LangChain step per chunk: a 1,000-row upload would fill the page with steps
            results += await chain.ainvoke({"texts": upload.texts[start:start + step]})
            progress.content = handlers.batch_progress_message(name, upload, len(results))
            await progress.update()
    except asyncio.CancelledError:  # the Stop button: the texts done are kept, as Chat and Compare keep theirs
        if not results:
            progress.content = f"⏹ Stopped before any of the {total:,} texts from `{name}` was done ({_stop_reason()})."
            await progress.update()
            return
        reason = _stop_reason()
        upload = upload.first(len(results), f"{reason[:1].upper()}{reason[1:]} after {len(results):,} of "
                                            f"{total:,} texts: this table and the file hold their results.")
    seconds = time.perf_counter() - started
    header, rows = handlers.batch_rows(profile.task, upload.texts, results, spec.labels, spec.fields)
    agreement = handlers.reference_agreement(profile.task, upload, results, spec.labels, spec.fields)
    header, rows = handlers.with_agreement(header, rows, agreement)
    # one table (the message's preview) and the CSV: Chainlit's cl.Dataframe repeated the preview in
    # another format, and its pager, one link per 10 rows, pushed Previous/Next off the page past
    # about 250 rows
    elements = [cl.File(name=download, content=handlers.results_csv(header, rows, upload),
                        mime="text/csv", display="inline")]
    content = handlers.batch_markdown(profile.task, name, upload, header, rows, variant.label, seconds,
                                      [handlers.text_read(t, r) for t, r in zip(upload.texts, results)], agreement)
    if profile.task == "extract" and handlers.is_medical(spec):
        content += "\n\n" + handlers.NOT_CLINICAL
    await progress.remove()
    await cl.Message(content=content, elements=elements).send()


async def _compare(runtime: Runtime, text: str, adapter: str, chosen_by: str | None = None) -> None:
    if adapter not in handlers.COMPARE_ADAPTERS:  # only a forged command names another
        adapter = handlers.DEFAULT_COMPARE
    settings = _settings()
    spec = runtime.spec(adapter)
    examples = runtime.few_shot_examples(adapter)
    trained = adapter in runtime.backend.adapter_names()
    columns = [("base", True, (), None),
               (chains.variant_name(True, examples) if examples else "few-shot", True, examples,
                None if examples else handlers.few_shot_unavailable(spec)),
               ("fine-tuned", False, (), None if trained else f"the `{adapter}` adapter is not trained yet "
                                                             f"(`{train_command(spec)}`)")]
    outcomes: list[handlers.Outcome] = []
    config = _callbacks()
    pieces: list[str] = []  # the generated column's answer so far
    started = time.perf_counter()
    # a generated column takes ~16 s on a 2-core CPU: say which one runs, and show its answer as it comes
    progress, progress_sent = (cl.Message(content="") if spec.task != "classify" else None), False
    try:
        for number, (name, base, shots, unavailable) in enumerate(columns, start=1):
            if unavailable:
                outcomes.append(handlers.Outcome(name, unavailable=unavailable))
                continue
            pieces.clear()
            started = time.perf_counter()
            if progress is not None:
                progress.content = handlers.compare_progress(adapter, name, number, len(columns))
                await (progress.update() if progress_sent else progress.send())
                progress_sent = True
            outcomes.append(await _compare_column(runtime, spec, text, settings, name, base, shots, config, pieces,
                                                  progress))
    except asyncio.CancelledError:  # the Stop button: the columns that ran are kept, as other profiles keep theirs
        running, reason, seconds = columns[len(outcomes)][0], _stop_reason(), time.perf_counter() - started
        for name, _, shots, _ in columns[len(outcomes):]:
            partial = "".join(pieces) if name == running else ""
            if not partial:
                outcomes.append(handlers.Outcome(name, unavailable=f"{reason} before it ran", stopped=reason))
                continue
            # its prompt counted as a column that ran counts it ("52 in / 74 out", not "74 out")
            prompt_tokens = await _prompt_tokens(runtime, adapter, text, settings, shots)
            outcomes.append(handlers.Outcome(name, partial, seconds, prompt_tokens,
                                             runtime.backend.count_tokens(partial), stopped=reason))
    content = handlers.compare_markdown(spec, text, outcomes, chosen_by)
    if spec.task == "generate":
        ban = spec.generation.no_repeat_ngram_size
        content += ("\n\n*Greedy decoding (temperature 0" + (f", no {ban}-token sequence repeated" if ban else "")
                    + ") in every column, so the columns differ only by model and prompt.*")
        content += "\n\n" + handlers.NOT_MEDICAL_ADVICE
    elif spec.task == "extract":
        content += "\n\n" + handlers.NOT_CLINICAL
    elements = await _prompt_element(runtime, adapter, [{"role": "user", "content": text}], settings)
    if progress_sent:
        await progress.remove()
    await cl.Message(content=content, elements=elements, metadata={"compare": adapter}).send()


async def _compare_column(runtime: Runtime, spec, text: str, settings, name: str, base: bool, shots, config,
                          pieces: list[str], progress: cl.Message | None = None) -> handlers.Outcome:
    """One variant's result for Compare; a generated answer's pieces go into ``pieces`` as they come,
    and into the ``progress`` message about twice a second."""
    adapter = spec.name
    started = time.perf_counter()
    output_tokens = cut_at = None
    limit = runtime.generation_params(adapter, max_new_tokens=settings.max_new_tokens).max_new_tokens
    if spec.task == "classify":
        chain = chains.classify_chain(runtime, adapter, base=base, system=settings.system, examples=shots)
        (result,) = await chain.ainvoke({"texts": [text]}, config=config)
        truncated = result["truncated"]
    elif spec.task == "extract":
        chain = chains.extract_chain(runtime, adapter, base=base, system=settings.system, examples=shots,
                                     max_new_tokens=settings.max_new_tokens)
        (result,) = await chain.ainvoke({"texts": [text]}, config=config)
        output_tokens = handlers.generated_tokens(runtime.backend.count_tokens, result["raw"], result["cut_at"], limit)
        truncated = result["truncated"]
    else:
        info = chains.GenerationInfo()
        chain = chains.generate_chain(runtime, adapter, base=base, system=settings.system, examples=shots,
                                      temperature=0.0, max_new_tokens=settings.max_new_tokens, info=info)
        heading, shown = (progress.content if progress else ""), time.perf_counter()

        async def collect(piece: str) -> None:
            nonlocal shown
            pieces.append(piece)
            if progress is not None and time.perf_counter() - shown > COMPARE_REFRESH_S:
                so_far = page_text.shown(handlers.with_fences_closed("".join(pieces)))
                progress.content = heading + "\n\n" + so_far + " ▌"
                await progress.update()
                shown = time.perf_counter()

        await chains.stream_pieces(chain, {"history": [], "text": text}, config, collect)
        result = "".join(pieces)
        output_tokens = handlers.generated_tokens(runtime.backend.count_tokens, result, info.cut_at, limit)
        cut_at, truncated = info.cut_at, info.message_cut_to is not None
    seconds = time.perf_counter() - started
    prompt_tokens = await _prompt_tokens(runtime, adapter, text, settings, shots)
    return handlers.Outcome(name, result, seconds, prompt_tokens, output_tokens, cut_at=cut_at, truncated=truncated)


async def _prompt_tokens(runtime: Runtime, adapter: str, text: str, settings, shots) -> int:
    """The tokens of a Compare column's prompt as the model reads it (cut to fit, for a long text)."""
    prompt = await _rendered_prompt(runtime, adapter, [{"role": "user", "content": text}], settings, shots)
    return runtime.backend.count_tokens(prompt)
