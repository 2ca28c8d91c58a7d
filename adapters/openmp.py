"""Keep PyTorch's CPU threads fast when several threads take turns with the model.

Why: PyTorch's CPU operators run on OpenMP (libgomp in the pip wheels), and every thread that runs
a parallel operator keeps a team of worker threads for as long as it lives. libgomp lets idle
workers spin (~3 ms) between operators only while it manages no more threads than there are CPUs;
beyond that they sleep at once, and every operator pays for waking them. The app and the CLI call
the model from long-lived threads (the main thread, Chainlit's worker threads) and decode streams
in threads of their own, so once a spam check had run, two teams lived on and every streamed token
cost twice as much: one stream on a 2-core CPU decoded 21-23 tokens/s after a spam check on the main
thread, 41-47 before it (tools/openmp_probe.py). A thread that puts the model down now gives its
team back (``omp_pause_resource_all``, OpenMP 5.0; ~0.1 ms), so only the thread using the model
keeps one; the next call builds it again in well under a millisecond.

That alone doubles the speed on an idle machine, but the one team left spins for up to ~3 ms
whenever it waits, and beside other busy processes that spinning took the CPU from the thread it
waited for (one stream 7-9 tokens/s, against 19-23 with two teams). So the package also sets
libgomp's spin count to 3,000 (``GOMP_SPINCOUNT``, read when PyTorch loads; a value set in the
environment wins): 42-44 tokens/s idle, 16-21 beside two busy processes, and a spam check on the
caller's thread p50 ~135 ms there, where two spinning teams had given 216 ms and 4.8 s
(2026-11-30, this 2-core CPU; ``tools/openmp_probe.py``).

Not libgomp (another OpenMP runtime, a build without OpenMP): nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads, keep what is cheap to keep
SPIN_COUNT = "3000"  # libgomp's busy-wait before a worker sleeps (its default: 300,000, ~3 ms)


def set_spin_count() -> None:
    """Set ``GOMP_SPINCOUNT`` for libgomp unless the environment has one, or PyTorch (and with it
    libgomp, which reads it once) is loaded already."""
    if "torch" not in sys.modules:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


@functools.cache
def _pause_all():
    """A function that calls ``omp_pause_resource_all`` in every libgomp this process has loaded
    (wheels such as scikit-learn's bundle their own copy beside PyTorch's), or None when there is none."""
    if sys.platform != "linux":
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = dict.fromkeys(line.split()[-1] for line in maps if "/libgomp" in line)
    except OSError:
        return None
    pauses = []
    for path in paths:
        try:
            pause = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        pauses.append(pause)
    if not pauses:
        return None
    return lambda kind: [pause(kind) for pause in pauses]


def release_thread_team() -> None:
    """Give back the OpenMP worker threads this thread keeps (none kept: nothing happens)."""
    if "torch" not in sys.modules:
        return  # libgomp comes with torch: nothing has run on it yet
    pause = _pause_all()
    if pause is not None:
        pause(OMP_PAUSE_SOFT)
