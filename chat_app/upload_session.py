"""Keep a file attached just as a new chat starts.

Picking another chat profile, or a new chat, gives the page a new Chainlit session, which the server
creates only when the page's socket has reconnected, a moment later. A file attached in that moment
(measured: right after the profile's name changed in the header) was uploaded for a session the
server did not know yet: Chainlit 2.12 answered 404, the page said "Failed to upload notes.txt:
Session not found", and the file was gone. Such an upload now waits for its session, a few seconds
at most, and is then stored as any other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import parse_qs

UPLOAD_PATH = "/project/file"  # Chainlit's upload route (POST; a GET of /project/file/<id> reads one)
SESSION_WAIT_S = 5.0


def chainlit_session_exists(session_id: str) -> bool:
    from chainlit.session import WebsocketSession

    return WebsocketSession.get_by_id(session_id) is not None


class WaitForTheUploadsSession:
    """ASGI middleware: an upload whose ``session_id`` the server does not know yet waits until it
    does, or ``wait_s`` has passed (then Chainlit answers as before)."""

    def __init__(self, app, session_exists: Callable[[str], bool] = chainlit_session_exists,
                 wait_s: float = SESSION_WAIT_S):
        self.app, self.session_exists, self.wait_s = app, session_exists, wait_s

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path", "").endswith(UPLOAD_PATH):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if session_id := (query.get("session_id") or [""])[0]:
                await self._wait_for(session_id)
        await self.app(scope, receive, send)

    async def _wait_for(self, session_id: str) -> None:
        deadline = time.monotonic() + self.wait_s
        while not self.session_exists(session_id) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def install() -> None:
    """Put the middleware in front of Chainlit's server (before it starts: at the app's import)."""
    import chainlit.server as server

    # by name, not identity: `chainlit run -w` imports every module of chat_app/ afresh on a change,
    # after the server has started (Starlette then refuses a middleware, and app.py stopped there)
    if not any(getattr(m.cls, "__qualname__", None) == WaitForTheUploadsSession.__qualname__
               and getattr(m.cls, "__module__", None) == __name__ for m in server.app.user_middleware):
        server.app.add_middleware(WaitForTheUploadsSession)
