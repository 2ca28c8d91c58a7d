"""Streamed answers of several callers decoded together, and the queue they wait in.

Why: the backend serves one model, one request at a time, so answers that users asked for at the
same time (each perhaps with another adapter) ran one after another: eight streams on a 2-core CPU
took 35 s, and the last one waited 29 s for its first token (benchmarks/results/serve-cpu.json of
2026-11-29). Now a stream that gets the model takes every stream waiting along (``claim``).

Where the fused forward applies (Llama-shaped models in float32/bfloat16, the embedded one included)
they decode as rows of ``adapters.row_decoding``, and streams that arrive meanwhile join between two
steps (``take``). Elsewhere one ``generate`` call decodes them as rows of one batch (``RowBatch``):
prompts left-padded, PEFT's mixed-adapter batches (``adapter_names=``: an adapter, or the base, per
row), per row its own decoding settings, n-gram ban, token limit and stop flag, its tokens streamed
back to its own caller; streams that arrive while such a batch runs wait for it (static batching).
Other calls (a spam check) run between two steps of either (``adapters.model_lock``), which is why
a mixed ``generate`` batch's row adapters are told to its own thread only (``RowAdapters``).
On a GPU a stream alone runs the CUDA-graph decoder; without row decoding a GPU takes streams one at a
time (``max_batch`` 1), faster there than an eager batch (benchmarks/results/serve-cuda-h200.json).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .decoding import NGramBan, choose_token

MAX_STREAM_BATCH = 16  # rows decoded together at most; the rest wait for the next batch
BASE_ROW = "__base__"  # PEFT's name for a row of a mixed batch that runs the base model


@dataclass(eq=False)
class StreamRequest:
    """One caller's streamed answer: what to decode, and where its text goes."""

    adapter: str | None  # None: the base model
    prompt_ids: list[int]
    params: Any  # backends.GenerationParams
    streamer: Any  # a TextIteratorStreamer: the caller reads the text pieces from it
    on_finish: Callable[[str], None] | None = None  # called with "stop" or "length" when it ends by itself
    cancelled: threading.Event = field(default_factory=threading.Event)  # the caller has gone
    released: threading.Event = field(default_factory=threading.Event)  # no longer decoded
    failure: list[BaseException] = field(default_factory=list)
    runner: threading.Thread | None = None  # the thread decoding it, once claimed
    alone: bool = False  # claimed into a batch of its own (the single-stream path)
    rows: int = 0  # rows its batch may grow to while it decodes (``complete``'s batch_size); 0: the queue's


class StreamQueue:
    """Streams waiting for the model, in arrival order."""

    def __init__(self, max_batch: int = MAX_STREAM_BATCH):
        self.max_batch = max_batch
        self._waiting: list[StreamRequest] = []
        # reentrant: the garbage collector may close an abandoned stream (whose cleanup withdraws it)
        # in whichever thread allocates, also one inside add/claim/withdraw with this lock held
        self._lock = threading.RLock()

    def add(self, request: StreamRequest) -> None:
        with self._lock:
            self._waiting.append(request)

    def waiting(self) -> int:
        """How many streams wait for the model (none has claimed them yet)."""
        with self._lock:
            return len(self._waiting)

    def withdraw(self, request: StreamRequest) -> None:
        """Take ``request`` out of the queue if no batch has claimed it yet (its caller has gone),
        and end its text, which no batch will."""
        with self._lock:
            if request in self._waiting:
                self._waiting.remove(request)
                request.streamer.end()
                request.released.set()

    def take(self, limit: int) -> list[StreamRequest]:
        """Up to ``limit`` waiting streams (oldest first) for a batch that is running in this
        thread and has room for them; streams whose caller has gone are dropped."""
        with self._lock:
            taken, self._waiting = self._waiting[:max(0, limit)], self._waiting[max(0, limit):]
            for r in taken:
                r.runner = threading.current_thread()
        return self._live(taken)

    def claim(self, request: StreamRequest) -> list[StreamRequest]:
        """``request`` and the streams waiting with it (oldest first, at most ``max_batch``, or
        ``request.rows`` when that is more), now decoded by this thread; [] when another thread has
        claimed ``request`` already. Streams whose caller has gone are dropped."""
        with self._lock:
            if request not in self._waiting:
                return []
            width = max(self.max_batch, request.rows)
            batch = [request] + [r for r in self._waiting if r is not request][:width - 1]
            self._waiting = [r for r in self._waiting if r not in batch]
            for r in batch:
                r.runner = threading.current_thread()
        live = self._live(batch)
        for r in live:
            r.alone = len(live) == 1
        return live

    @staticmethod
    def _live(claimed: list[StreamRequest]) -> list[StreamRequest]:
        """The claimed streams whose caller is still there; the others are released."""
        live = [r for r in claimed if not r.cancelled.is_set()]
        for r in claimed:
            if r not in live:
                r.streamer.end()
                r.released.set()
        return live


class TokenIds:
    """A streamer that keeps the new token ids (the first ``put`` is the prompt), for ``complete``."""

    def __init__(self):
        self.ids: list[int] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.ids.extend(value.view(-1).tolist())
        self._prompt_seen = True

    def end(self) -> None:
        pass


@dataclass(eq=False)
class _Row:
    request: StreamRequest
    ban: NGramBan
    produced: list[int] = field(default_factory=list)
    open: bool = True


class RowBatch:
    """The per-row state of one batched ``generate`` call, in the three roles generate gives it:
    logits processor (``choose``), stopping criteria (``stop``) and streamer (``put``/``end``)."""

    def __init__(self, requests: Sequence[StreamRequest], eos_ids: set[int], finish_reason):
        self.rows = [_Row(r, NGramBan(r.params.no_repeat_ngram_size, r.prompt_ids)) for r in requests]
        self.eos_ids = eos_ids
        self.finish_reason = finish_reason  # (new ids, max_new_tokens) -> "stop" | "length"
        self._prompt_seen = False

    # as a logits processor: each row's own settings
    def choose(self, input_ids, scores):
        """Scores where a row's own choice (its n-gram ban, temperature, top-p) is the only token
        left, so that generate's greedy pick is that choice; rows plainly greedy are left alone."""
        chosen = {}
        for i, row in enumerate(self.rows):
            params = row.request.params
            banned = row.ban.banned()
            if row.open and (params.temperature > 0 or banned):
                chosen[i] = choose_token(scores[i], params.temperature, params.top_p, banned=banned)
        if not chosen:
            return scores
        scores = scores.clone()
        for i, token in chosen.items():
            scores[i].fill_(float("-inf"))
            scores[i, token] = 0.0
        return scores

    # as stopping criteria: a row is done once closed (ended, at its limit, or its caller gone)
    def stop(self, input_ids, scores, **kwargs):
        import torch

        for row in self.rows:
            if row.open and row.request.cancelled.is_set():
                self._close(row, finished=False)
        return torch.tensor([not row.open for row in self.rows], dtype=torch.bool, device=input_ids.device)

    # as a streamer: the prompt first, then one new token per row at each step
    def put(self, value) -> None:
        import torch

        if not self._prompt_seen:
            self._prompt_seen = True
            for row in self.rows:
                row.request.streamer.put(torch.tensor([row.request.prompt_ids]))  # which it skips
            return
        for row, token in zip(self.rows, value.tolist()):
            if not row.open:
                continue  # generate pads rows that are done
            if row.request.cancelled.is_set():
                self._close(row, finished=False)
                continue
            row.produced.append(token)
            row.ban.add(token)
            row.request.streamer.put(torch.tensor([token]))
            if token in self.eos_ids or len(row.produced) >= row.request.params.max_new_tokens:
                self._close(row, finished=True)

    def hand_over(self) -> None:
        """Another decoder (``adapters.row_decoding.decode_streams``) decodes the rows from here on,
        and releases them: ``end`` and ``fail`` leave them alone."""
        for row in self.rows:
            row.open = False

    def end(self) -> None:
        """generate has returned: close every row still open (on_finish only when it ended by itself)."""
        for row in self.rows:
            if row.open:
                self._close(row, finished=False)

    def fail(self, exc: BaseException) -> None:
        for row in self.rows:
            if row.open:
                row.request.failure.append(exc)
                self._close(row, finished=False)

    def _close(self, row: _Row, finished: bool) -> None:
        row.open = False
        release(row.request, row.produced, finished, self.finish_reason)


def release(request: StreamRequest, produced: list[int], finished: bool, finish_reason) -> None:
    """The stream is no longer decoded: tell its caller (``on_finish`` when it ``finished`` by
    itself: an end token or its limit, not a caller gone or a failure), end its text."""
    try:
        if finished and request.on_finish is not None and not request.cancelled.is_set():
            request.on_finish(finish_reason(produced, request.params.max_new_tokens))
    except Exception as exc:  # noqa: BLE001 - raised in its caller's thread, not the batch's
        request.failure.append(exc)
    finally:
        request.streamer.end()
        request.released.set()


class RowAdapters:
    """PEFT's mixed-adapter batches (each row its adapter, ``BASE_ROW`` for the base), told to the
    LoRA layers per thread.

    PEFT's own way, ``generate(adapter_names=...)``, hooks every LoRA layer of the model with the
    batch's names for the whole call, so whatever else ran on the model meanwhile (a caller the batch
    lends the model to between two steps, ``adapters.model_lock``) would be given the batch's names
    too. These hooks, put on once, give the names only to forward passes in the thread that set them;
    the layers then run PEFT's own mixed-batch forward."""

    def __init__(self):
        self._local = threading.local()

    def install(self, model) -> None:
        """Hook the model's LoRA layers (once each; adapters loaded later add none)."""
        from peft.tuners.lora import LoraLayer

        for module in model.modules():
            if isinstance(module, LoraLayer) and not getattr(module, "_adapterlab_row_adapters", False):
                module.register_forward_pre_hook(self._give_names, with_kwargs=True)
                module._adapterlab_row_adapters = True

    @contextmanager
    def rows(self, names: list[str] | None):
        """Within: this thread's forward passes run row i with ``names[i]`` (None: the active adapter)."""
        self._local.names = names
        try:
            yield
        finally:
            self._local.names = None

    def _give_names(self, module, args, kwargs):
        names = getattr(self._local, "names", None)
        if names is None:
            return None
        return args, {**kwargs, "adapter_names": names}


def padded_batch(requests: Sequence[StreamRequest], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids padded on the left (generation continues from the right edge) and their attention mask."""
    width = max(len(r.prompt_ids) for r in requests)
    ids = [[pad_id] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in requests]
    mask = [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests]
    return ids, mask


def adapter_rows(requests: Sequence[StreamRequest]) -> list[str] | None:
    """PEFT's ``adapter_names`` for a batch that mixes adapters (the base as ``BASE_ROW``); None when
    every row uses the same one, which then runs as the active adapter."""
    names = [r.adapter for r in requests]
    if len(set(names)) == 1:
        return None
    return [name if name is not None else BASE_ROW for name in names]
