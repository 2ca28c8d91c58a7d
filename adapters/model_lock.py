"""The model's lock, which a long generation lends to waiting callers between two decoding steps.

Why: the backend runs one model for every user, one call at a time. A streamed answer on a 2-core
CPU holds the model for tens of seconds, and a spam check (0.1 s of work) asked for meanwhile used to
wait for all of it. Now a generation calls ``lend`` after each step: when callers are waiting for the
model (``hold``), it lets them run first, then goes on where it was. Its keys/values are its own, so
what others run in between cannot change its text; the caller of ``lend`` switches its adapter back
(``LocalBackend``).

Streams do not get in this way: a stream waits for the running generation (``adapters.batching``),
so ``taken_by_a_generation`` tells a stream's thread that picked the lock up during a loan to put it
down again. The CUDA-graph decoder never lends: it merges its adapter into the base weights while
it decodes, which a borrower would run with.

A thread that puts the model down gives back its OpenMP workers (``adapters.openmp``): PyTorch's CPU
operators are much slower while more than one thread keeps them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .openmp import release_thread_team

LEND_WAIT_S = 1.0  # longest a lending generation waits for later arrivals before it takes its turn again


class ModelLock:
    """A reentrant lock for the model that a generation can lend between its steps."""

    def __init__(self):
        self._lock = threading.RLock()
        self._returned = threading.Condition(self._lock)  # a borrower has put the model down
        self._count = threading.Lock()  # guards _waiting, which is changed without the model lock
        self._waiting = 0  # callers blocked in hold(), waiting for the model
        self._lent = 0  # generations paused in lend(), in this thread or others
        self._depth = threading.local()  # how many times this thread holds the model

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the model (reentrant): at once if free, else after the current call, or as soon as a
        generation lends it."""
        with self._count:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count:
                self._waiting -= 1
        self._held(+1)
        try:
            yield
        finally:
            self._returned.notify_all()
            self.release()

    def try_hold(self, timeout: float) -> bool:
        """Take the model if it is free within ``timeout`` seconds (then ``release`` it); for threads
        that poll, and are not counted as waiting."""
        if not self._lock.acquire(timeout=timeout):
            return False
        self._held(+1)
        return True

    def release(self) -> None:
        self._held(-1)
        if not self.held_here():
            # before another thread can run the model: OpenMP leaves a pause beside parallel work unspecified
            release_thread_team()
        self._lock.release()

    def held_here(self) -> bool:
        """Whether this thread holds the model (perhaps on loan from a paused generation, which
        cannot take a step until this thread gives it back)."""
        return getattr(self._depth, "n", 0) > 0

    def _held(self, change: int) -> None:
        self._depth.n = getattr(self._depth, "n", 0) + change

    @property
    def taken_by_a_generation(self) -> bool:
        """A generation has lent the model and will take it back: held now, it was picked up on loan."""
        return self._lent > 0

    @property
    def someone_waiting(self) -> bool:
        return self._waiting > 0

    def lend(self) -> bool:
        """Between two steps of a generation (the model held): let every caller waiting for it run
        first. True when someone did, so the caller sets its adapter again."""
        if not self._waiting:
            return False
        self._lent += 1
        try:
            self._returned.wait_for(lambda: not self._waiting, timeout=LEND_WAIT_S)
        finally:
            self._lent -= 1
        return True
