"""The app's settings, read once from environment variables (every one optional).

| variable | default | meaning |
| --- | --- | --- |
| ``ADAPTERLAB_CATALOG`` | ``adapters/`` | the adapter catalogue to serve |
| ``ADAPTERLAB_BASE_MODEL`` | the catalogue's base | base model name, Hub id or local folder |
| ``ADAPTERLAB_DATABASE_URL`` | SQLite file in ``.chainlit/`` | chat history; ``postgresql+asyncpg://...`` for a server |
| ``ADAPTERLAB_APP_USER``, ``ADAPTERLAB_APP_PASSWORD`` | unset: no login | optional password login |
| ``CHAINLIT_AUTH_SECRET`` | made once in ``.chainlit/`` | signs logins (``lasting_auth_secret``) |
| ``ADAPTERLAB_BATCH_LIMIT`` | 1000 | most rows of one classify upload |
| ``ADAPTERLAB_EXTRACT_BATCH_LIMIT`` | 50 | most rows of one extraction upload (generation is slow on CPU) |
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from adapters.catalog import CATALOG_DIR

HISTORY_FILE = "adapterlab-history.sqlite3"
AUTH_SECRET_FILE = "adapterlab-auth-secret"  # beside the history, in the app root's .chainlit/


@dataclass(frozen=True)
class AppConfig:
    catalog: Path
    base_model: str | None
    database_url: str
    app_user: str | None
    app_password: str | None
    batch_limit: int
    extract_batch_limit: int
    app_root: Path

    @property
    def login_required(self) -> bool:
        return bool(self.app_user and self.app_password)

    @property
    def database_kind(self) -> str:
        """``sqlite`` or the URL's scheme, for display (never the URL: it can hold a password)."""
        return self.database_url.split(":", 1)[0].split("+", 1)[0]


def load_config(environ: Mapping[str, str] | None = None, app_root: str | Path | None = None) -> AppConfig:
    """The settings from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ
    root = Path(app_root or env.get("CHAINLIT_APP_ROOT") or os.getcwd())
    database_url = env.get("ADAPTERLAB_DATABASE_URL") or \
        f"sqlite+aiosqlite:///{(root / '.chainlit' / HISTORY_FILE).resolve()}"
    return AppConfig(
        catalog=Path(env.get("ADAPTERLAB_CATALOG") or CATALOG_DIR),
        base_model=env.get("ADAPTERLAB_BASE_MODEL") or None,
        database_url=database_url,
        app_user=env.get("ADAPTERLAB_APP_USER") or None,
        app_password=env.get("ADAPTERLAB_APP_PASSWORD") or None,
        batch_limit=_positive(env, "ADAPTERLAB_BATCH_LIMIT", 1000),
        extract_batch_limit=_positive(env, "ADAPTERLAB_EXTRACT_BATCH_LIMIT", 50),
        app_root=root,
    )


def lasting_auth_secret(app_root: str | Path) -> tuple[str, Path] | None:
    """The secret that signs logins when ``CHAINLIT_AUTH_SECRET`` is unset, and its file: random,
    made once and readable by this user only, in the app root's ``.chainlit/`` beside the chat
    history, so that a restart keeps people signed in. (A random one per start had signed everyone
    out at each restart, and a page left open logged Chainlit's "Invalid authentication token"
    tracebacks.) None when the folder cannot be written: the caller makes one per start."""
    path = Path(app_root) / ".chainlit" / AUTH_SECRET_FILE
    try:
        secret = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
        if len(secret) >= 32:
            return secret, path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{AUTH_SECRET_FILE}.")  # mode 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
        if path.exists():  # too short to be one this made: cut, or written by hand
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and a second app starting at once keeps the first one's
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                os.replace(tmp, path)
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path.read_text(encoding="utf-8").strip(), path
    except OSError:
        return None


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a positive integer") from None
    if value < 1:
        raise ValueError(f"{name}={raw!r}: expected a positive integer")
    return value
