"""The app's settings, read once from environment variables (every one optional).

| variable | default | meaning |
| --- | --- | --- |
| ``ADAPTERLAB_CATALOG`` | ``adapters/`` | the adapter catalogue to serve |
| ``ADAPTERLAB_BASE_MODEL`` | the catalogue's base | base model name, Hub id or local folder |
| ``ADAPTERLAB_DATABASE_URL`` | SQLite file in ``.chainlit/`` | chat history; ``postgresql+asyncpg://...`` for a server |
| ``ADAPTERLAB_APP_USER``, ``ADAPTERLAB_APP_PASSWORD`` | unset: no login | optional password login |
| ``ADAPTERLAB_BATCH_LIMIT`` | 1000 | most rows of one classify upload |
| ``ADAPTERLAB_EXTRACT_BATCH_LIMIT`` | 50 | most rows of one extraction upload (generation is slow on CPU) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from adapters.catalog import CATALOG_DIR

HISTORY_FILE = "adapterlab-history.sqlite3"


@dataclass(frozen=True)
class AppConfig:
    catalog: Path
    base_model: str | None
    database_url: str
    app_user: str | None
    app_password: str | None
    batch_limit: int
    extract_batch_limit: int

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
    )


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
