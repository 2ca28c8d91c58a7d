"""Whether the Hugging Face Hub can be reached, asked once per process, and Hub calls that fail fast
when it cannot.

Offline, huggingface_hub retries a failed connection five times with back-off, so a command that
falls back to the Hub took ~25 s (a data set) or ~50 s (a base model) to say it could not. When the
Hub's host does not answer a 3-second connect, Hub calls here run in the libraries' own offline mode
(what ``HF_HUB_OFFLINE=1`` does): files already in the Hugging Face cache still load, and anything
else fails at once with a message that says the Hub is not reachable.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 3.0


@functools.cache
def unreachable_reason() -> str | None:
    """None when the Hub's host accepts a connection; else why not, e.g. "huggingface.co: Name or
    service not known". Asked once per process (a Hub that comes back needs a new command)."""
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except socket.gaierror as exc:
        return f"{host}: {exc.strerror or exc}"
    except TimeoutError:
        return f"{host}:{port}: no answer within {CONNECT_TIMEOUT_S:g} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


@contextlib.contextmanager
def offline_if_unreachable() -> Iterator[str | None]:
    """Run the body in the Hub libraries' offline mode when the Hub cannot be reached; yields the
    reason (None when the Hub is reachable or offline mode was already asked for)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # HF_HUB_OFFLINE=1: the libraries already answer from the cache
        yield None
        return
    reason = unreachable_reason()
    if reason is None:
        yield None
        return
    # the libraries read HF_HUB_OFFLINE once, at import, into these module constants
    modules = [constants, sys.modules.get("datasets.config")]
    saved = [(m, m.HF_HUB_OFFLINE) for m in modules if m is not None and hasattr(m, "HF_HUB_OFFLINE")]
    for module, _ in saved:
        module.HF_HUB_OFFLINE = True
    try:
        yield reason
    finally:
        for module, value in saved:
            module.HF_HUB_OFFLINE = value
