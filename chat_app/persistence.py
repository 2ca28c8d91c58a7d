"""Chat history and feedback through Chainlit's SQLAlchemy data layer.

SQLite by default (a local file whose tables are created on first use), PostgreSQL by URL
(``postgresql+asyncpg://...``, needs ``pip install asyncpg``). Differences from the stock layer:

- the tables are created when missing (Chainlit leaves that to the deployer);
- on SQLite, list and dict values (thread tags, step modes) are stored as JSON text and read back;
- database errors are logged with their type only: SQLAlchemy's messages include the statement's
  parameters, which hold message text, and this app keeps message text out of the logs;
- attachments (CSV downloads, tables) are not persisted (there is no blob storage): a resumed
  thread keeps every message's text but not its files;
- a thread is never renamed to "": Chainlit names a thread after its first message's text, which is
  empty for a file sent alone; the app names such a thread after the files (``app.on_message``);
- that first name starts with the chat's profile ("Spam check · Remember the milk"), which Chainlit
  gives as the thread's tag: the history lists the chats of every profile together, and one started
  from the same text in two profiles looked the same. A name the user gives a chat stays as given;
- a message removed stays removed: Chainlit writes a message's last update and its removal in
  tasks it does not wait for, and the update could land last and put the row back;
- a chat is read once the writes of its messages under way have landed (the same unawaited
  tasks): a page reloaded as an answer ended was sent the chat without it;
- a deleted chat stays deleted: Chainlit saves a session's state when its page disconnects, and
  that save re-created a chat deleted while open (ownerless, hidden, its conversation in the
  metadata), as did a message sent in it afterwards; writes for a deleted chat are dropped;
- a message the app marks with ``NOT_KEPT`` in its metadata is shown, not stored (the notice that
  a chat's address holds no chat, ``app.on_chat_start``: it belongs to no chat);
- the conversation is not copied into the chat's metadata (the app's "history" session key): a
  resumed chat rebuilds it from its stored messages (``handlers.history_from_steps``), so message
  text lives in one place, which a delete removes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from sqlalchemy import text
from sqlalchemy.engine import make_url

log = logging.getLogger("adapterlab.chat_app")

# The columns Chainlit's SQLAlchemy layer reads and writes (chainlit 2.12: StepDict, ElementDict,
# Feedback); types follow Chainlit's documented PostgreSQL schema.
POSTGRES_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS users ("id" UUID PRIMARY KEY, "identifier" TEXT NOT NULL UNIQUE,
        "metadata" JSONB NOT NULL, "createdAt" TEXT)""",
    """CREATE TABLE IF NOT EXISTS threads ("id" UUID PRIMARY KEY, "createdAt" TEXT, "name" TEXT,
        "userId" UUID, "userIdentifier" TEXT, "tags" TEXT[], "metadata" JSONB,
        FOREIGN KEY ("userId") REFERENCES users("id") ON DELETE CASCADE)""",
    """CREATE TABLE IF NOT EXISTS steps ("id" UUID PRIMARY KEY, "name" TEXT NOT NULL, "type" TEXT NOT NULL,
        "threadId" UUID NOT NULL, "parentId" UUID, "streaming" BOOLEAN NOT NULL, "waitForAnswer" BOOLEAN,
        "isError" BOOLEAN, "metadata" JSONB, "tags" TEXT[], "input" TEXT, "output" TEXT, "createdAt" TEXT,
        "command" TEXT, "start" TEXT, "end" TEXT, "generation" JSONB, "showInput" TEXT, "language" TEXT,
        "indent" INT, "defaultOpen" BOOLEAN, "autoCollapse" BOOLEAN, "modes" JSONB, "icon" TEXT,
        FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE)""",
    """CREATE TABLE IF NOT EXISTS elements ("id" UUID PRIMARY KEY, "threadId" UUID, "type" TEXT, "url" TEXT,
        "chainlitKey" TEXT, "name" TEXT NOT NULL, "display" TEXT, "objectKey" TEXT, "size" TEXT,
        "page" INT, "language" TEXT, "forId" UUID, "mime" TEXT, "props" JSONB, "autoPlay" BOOLEAN,
        "playerConfig" JSONB, FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE)""",
    """CREATE TABLE IF NOT EXISTS feedbacks ("id" UUID PRIMARY KEY, "forId" UUID NOT NULL, "threadId" UUID,
        "value" INT NOT NULL, "comment" TEXT,
        FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE)""",
]

SQLITE_TYPES = {"UUID": "TEXT", "JSONB": "TEXT", "TEXT[]": "TEXT"}  # SQLite stores these as text
NOT_KEPT = "not_kept"  # a message's metadata key: the app shows the message but does not store it
NOT_IN_METADATA = {"history"}  # session keys not saved with a chat: the conversation is in its steps


def sqlite_statement(postgres: str) -> str:
    """A PostgreSQL CREATE statement of this schema with its types mapped to SQLite's."""
    return re.sub(r"\bUUID\b|\bJSONB\b|\bTEXT\[\]", lambda m: SQLITE_TYPES[m.group(0)], postgres)


SQLITE_SCHEMA = [sqlite_statement(statement) for statement in POSTGRES_SCHEMA] + [
    'CREATE INDEX IF NOT EXISTS steps_thread ON steps ("threadId")',
    'CREATE INDEX IF NOT EXISTS threads_user ON threads ("userId")',
]


STEP_LOCK_STRIPES = 64  # locks shared by message ids (a lock per message would be kept for ever)
REMOVED_STEPS_KEPT = 4096  # removed messages whose late writes are dropped


class HistoryDataLayer(SQLAlchemyDataLayer):
    """Chainlit's SQLAlchemy data layer, creating its tables and keeping message text out of logs."""

    def __init__(self, url: str):
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite" and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(conninfo=url, storage_provider=None, show_logger=False)
        self._schema_ready = False
        self._deleted: set[str] = set()  # chats deleted while this server runs
        # the stock update_thread reads a chat's metadata, merges, then writes: two at once (the
        # app's save after a message, Chainlit naming the chat) lost one's keys
        self._thread_writes = asyncio.Lock()
        # Chainlit saves a message's update and its removal in tasks it does not wait for, so an
        # update written after the removal put the row back (a batch's "⏳ Processed 300 of 300"
        # line came back in the reopened chat). Writes of one message take turns, in the order they
        # were asked for, and a removed message is not written again.
        self._step_locks = [asyncio.Lock() for _ in range(STEP_LOCK_STRIPES)]
        self._deleted_steps: dict[str, None] = {}  # the latest removed messages, oldest first
        self._writing: dict[str, set[asyncio.Task]] = {}  # chat -> the tasks writing its messages now

    async def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        statements = SQLITE_SCHEMA if self.dialect == "sqlite" else POSTGRES_SCHEMA
        async with self.engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
        self._schema_ready = True

    async def execute_sql(self, query: str, parameters: dict) -> list[dict[str, Any]] | int | None:
        await self.ensure_schema()
        if self.dialect == "sqlite":
            parameters = {k: json.dumps(v) if isinstance(v, (list, dict)) else v
                          for k, v in parameters.items()}
        async with self.async_session() as session:
            try:
                await session.begin()
                result = await session.execute(text(query), parameters)
                await session.commit()
                if result.returns_rows:
                    return self.clean_result([dict(row._mapping) for row in result.fetchall()])
                return result.rowcount
            except Exception as exc:  # noqa: BLE001 - the stock layer also returns None on errors
                await session.rollback()
                log.warning("chat history: a %s statement failed (%s)", query.split(None, 1)[0].upper(),
                            type(exc).__name__)
                return None

    async def get_all_user_threads(self, user_id=None, thread_id=None):
        threads = await super().get_all_user_threads(user_id=user_id, thread_id=thread_id)
        if self.dialect == "sqlite" and threads:
            for thread in threads:
                thread["tags"] = _loads(thread.get("tags"), None)
                thread["metadata"] = _loads(thread.get("metadata"), {})
                for step in thread.get("steps", []):
                    step["metadata"] = _loads(step.get("metadata"), {})
                    step["tags"] = _loads(step.get("tags"), None)
                    step["generation"] = _loads(step.get("generation"), None)
                    for key in ("streaming", "waitForAnswer", "isError"):
                        if isinstance(step.get(key), int):
                            step[key] = bool(step[key])
        return threads

    async def update_thread(self, thread_id: str, name: str | None = None, tags: list[str] | None = None,
                            **changes):
        if thread_id in self._deleted:
            return None
        if isinstance(changes.get("metadata"), dict):
            changes["metadata"] = {k: v for k, v in changes["metadata"].items() if k not in NOT_IN_METADATA}
        async with self._thread_writes:
            return await super().update_thread(thread_id, name=thread_name(name, tags), tags=tags, **changes)

    async def delete_thread(self, thread_id: str):
        self._deleted.add(thread_id)
        return await super().delete_thread(thread_id)

    def is_deleted(self, thread_id: str | None) -> bool:
        return thread_id in self._deleted

    def _step_lock(self, step_id) -> asyncio.Lock:
        return self._step_locks[hash(step_id) % STEP_LOCK_STRIPES]

    async def create_step(self, step_dict):  # update_step writes through it too
        step_id, thread_id = step_dict.get("id"), step_dict.get("threadId")
        writing, task = self._writing.setdefault(thread_id, set()), asyncio.current_task()
        writing.add(task)
        try:
            async with self._step_lock(step_id):
                if thread_id in self._deleted or step_id in self._deleted_steps or _not_kept(step_dict):
                    return None
                return await super().create_step(step_dict)
        finally:
            writing.discard(task)
            if not writing and self._writing.get(thread_id) is writing:
                del self._writing[thread_id]

    async def get_thread(self, thread_id: str):
        """The chat as it will be once the writes of its messages under way have landed: Chainlit
        writes a message in a task it does not wait for, so a chat read as its answer ended (a page
        reloaded then) lacked the answer."""
        await self.messages_written(thread_id)
        return await super().get_thread(thread_id)

    async def messages_written(self, thread_id: str, timeout: float = 10.0) -> None:
        """Wait until the message writes of chat ``thread_id`` asked for so far have landed."""
        await asyncio.sleep(0)  # a write asked for just now starts (and is counted) first
        if pending := self._writing.get(thread_id, set()) - {asyncio.current_task()}:
            await asyncio.wait(pending, timeout=timeout)

    async def delete_step(self, step_id: str):
        async with self._step_lock(step_id):
            self._deleted_steps[step_id] = None
            if len(self._deleted_steps) > REMOVED_STEPS_KEPT:  # a late write comes within seconds
                del self._deleted_steps[next(iter(self._deleted_steps))]
            return await super().delete_step(step_id)

    async def upsert_feedback(self, feedback):
        if feedback.threadId in self._deleted:
            return feedback.id or ""
        return await super().upsert_feedback(feedback)

    async def create_element(self, element) -> None:
        """Attachments are not persisted (no blob storage configured); the message text is."""
        return None


def _not_kept(step_dict) -> bool:
    """Whether the app marked a message as shown only, not stored (``NOT_KEPT``)."""
    metadata = step_dict.get("metadata")
    return isinstance(metadata, dict) and bool(metadata.get(NOT_KEPT))


THREAD_NAME_CHARS = 100  # a sidebar line; a 100 kB paste had named its chat with all of it


def thread_name(first_text: str | None, tags: list[str] | None) -> str | None:
    """The name a thread gets from its first message (None: keep the stored one): on one line, cut
    to ``THREAD_NAME_CHARS``, prefixed with its chat profile, Chainlit's only tag, when it has one."""
    if not first_text or not first_text.strip():
        return None
    name = " ".join(first_text.split())
    name = f"{tags[0]} · {name}" if tags else name
    return name if len(name) <= THREAD_NAME_CHARS else name[:THREAD_NAME_CHARS - 1].rstrip() + "…"


def _loads(value, default):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return default
    return value if value is not None else default
