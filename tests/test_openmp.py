"""A thread that puts the model down keeps no OpenMP workers (adapters/openmp.py says why)."""

from __future__ import annotations

import os
import threading
import time

import pytest

torch = pytest.importorskip("torch")

from adapters import openmp  # noqa: E402
from adapters.model_lock import ModelLock  # noqa: E402


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def settled_os_threads(target: int, timeout: float = 2.0) -> int:
    """The process's thread count once it has reached ``target`` (exiting threads take a moment)."""
    deadline = time.monotonic() + timeout
    while os_threads() != target and time.monotonic() < deadline:
        time.sleep(0.01)
    return os_threads()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_a_long_lived_thread_gives_back_its_openmp_workers_when_it_puts_the_model_down():
    if torch.get_num_threads() < 2 or openmp._pause_all() is None:
        pytest.skip("needs PyTorch on libgomp with 2 or more threads")
    lock = ModelLock()
    counts: dict[str, int] = {}

    def caller():  # like the CLI's main thread or one of Chainlit's worker threads
        counts["before"] = os_threads()
        with lock.hold():
            with lock.hold():  # reentrant: the workers stay until the outermost hold ends
                torch.ones(8_000_000).mul_(2)  # a parallel operator: this thread gets OpenMP workers
            counts["holding"] = os_threads()
        counts["after"] = settled_os_threads(counts["before"])

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join()
    assert counts["holding"] > counts["before"], counts
    assert counts["after"] == counts["before"], counts
