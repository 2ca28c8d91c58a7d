"""Keep the page offline: Chainlit's index.html links Google Fonts and a KaTeX stylesheet on a CDN.

The page works without them (system fonts; LaTeX is off), so the links are removed from the HTML the
server sends; nothing else in the page reaches outside this server (the end-to-end test checks it).
"""

from __future__ import annotations

import re

_EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']https?://[^\"']*[\"'][^>]*>\s*", re.IGNORECASE)
_EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']https?://[^\"']*[\"'][^>]*>\s*</script>\s*",
                              re.IGNORECASE)


def strip_external_assets(html: str) -> str:
    """``html`` without ``<link>``/``<script>`` tags that load from another host."""
    return _EXTERNAL_SCRIPT.sub("", _EXTERNAL_LINK.sub("", html))


def install() -> bool:
    """Wrap Chainlit's index.html renderer; False if this Chainlit version has no such function."""
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
    return True
