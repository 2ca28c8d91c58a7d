"""The one runtime of the process, loaded in a background thread so the page is usable meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from adapters import Runtime


class RuntimeHolder:
    """Loads the runtime once (base model + every trained adapter) and hands it to every session.

    ``state`` is ``"idle"``, ``"loading"``, ``"ready"`` or ``"failed"``; ``error`` says why loading
    failed, in words a user can act on.
    """

    def __init__(self, loader: Callable[[], Runtime], on_done: Callable[["RuntimeHolder"], None] | None = None):
        self._loader = loader
        self._on_done = on_done  # called in the loading thread once loading ended (ready or failed)
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.runtime: Runtime | None = None
        self.error: str | None = None
        self.started_at: float | None = None
        self.load_seconds: float | None = None

    @property
    def state(self) -> str:
        if self._ready.is_set():
            return "ready" if self.runtime is not None else "failed"
        return "loading" if self._thread is not None else "idle"

    def start(self) -> "RuntimeHolder":
        """Start loading in a daemon thread; calling it again does nothing."""
        with self._lock:
            if self._thread is None:
                self.started_at = time.perf_counter()
                self._thread = threading.Thread(target=self._load, name="adapterlab-load", daemon=True)
                self._thread.start()
        return self

    def _load(self) -> None:
        try:
            self.runtime = self._loader()
        except BaseException as exc:  # noqa: BLE001 - shown to the user instead of crashing the app
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.load_seconds = time.perf_counter() - (self.started_at or time.perf_counter())
            self._ready.set()
            if self._on_done is not None:
                self._on_done(self)

    def wait(self, timeout: float | None = None) -> Runtime | None:
        """The runtime once loaded (None if loading failed or ``timeout`` passed)."""
        self.start()
        self._ready.wait(timeout)
        return self.runtime

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else time.perf_counter() - self.started_at
