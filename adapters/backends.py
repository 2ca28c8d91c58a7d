"""Adapter backends: one base model with named LoRA adapters, behind a small interface.

The runtime's tasks (classify, generate, extract) need from a backend what the ``Backend`` protocol
lists: render a chat (and an answer after it), count and cut tokens, score continuations, complete
prompts in a batch, and stream one completion. ``LocalBackend`` runs them with transformers + PEFT
in this process. A server backend (an OpenAI-compatible server such as vLLM with LoRA enabled,
where the adapter name is the model name, and prompt log-probabilities give the scores) can
implement the same protocol without changing any caller.
"""

from __future__ import annotations

import atexit
import functools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .batching import MAX_STREAM_BATCH, RowAdapters, StreamQueue
from .model_lock import ModelLock
from .base_models import DEFAULT_BASE, LoadOptions, cache_keyword, canonical_name, load_base, cudnn_attention
from .fused_llama import FusedLlama, additive_mask


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings for one request; ``temperature == 0`` is greedy; ``no_repeat_ngram_size``
    (0: off) bans repeating any sequence of that many tokens, prompt included."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    no_repeat_ngram_size: int = 0


class BaseMismatchError(ValueError):
    """An adapter was trained on another base model than the one loaded."""


class AdapterFilesError(ValueError):
    """An adapter's files (config or weights) cannot be read: corrupt, truncated, not PEFT's."""


class Backend(Protocol):
    """What the runtime needs from an engine that serves a base model and named adapters.

    ``adapter=None`` everywhere means the base model (adapters disabled).
    """

    base_name: str
    context_length: int
    device: str  # where the model runs: "cpu", "cuda:0", or the server's name for a remote engine

    def adapter_names(self) -> list[str]: ...

    def render(self, messages: Sequence[dict[str, str]]) -> str: ...

    def render_answer(self, messages: Sequence[dict[str, str]], answer: str) -> str:
        """``answer`` as the text after ``render(messages)`` that a model trained on it writes (the
        chat template's end-of-turn marker included): what a classifier's label is scored as."""
        ...

    def literal(self, text: str) -> str:
        """``text`` as ``render`` puts it in a message (special-token strings broken)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def waiting_streams(self) -> int:
        """Streamed answers asked for that wait for the model, busy with other requests."""
        ...

    def token_counts(self, texts: Sequence[str]) -> list[int]: ...

    def over_budget(self, texts: Sequence[str], budget: int) -> list[bool]: ...

    def truncate(self, text: str, max_tokens: int, keep_end: int = 0) -> str:
        """``text`` cut to about ``max_tokens`` tokens: its start, or with ``keep_end`` its start and
        its last ``keep_end`` tokens, a marker between them."""
        ...

    def score(self, adapter: str | None, prompts: Sequence[str],
              continuations: Sequence[Sequence[str]], batch_size: int = 16,
              shared_prefix: str = "") -> list[list[float]]:
        """Log-likelihood of each prompt's continuations: ``result[i][j]`` for
        ``continuations[i][j]`` after ``prompts[i]``.

        ``shared_prefix`` is a hint, text that the prompts start with (a task's rendered template
        before its input); a backend may reuse its computation across calls, never change a score.
        """
        ...

    def complete(self, adapter: str | None, prompts: Sequence[str], params: GenerationParams,
                 batch_size: int = 8) -> list[str]: ...

    def stream(self, adapter: str | None, prompt: str, params: GenerationParams,
               on_finish: Callable[[str], None] | None = None) -> Iterator[str]:
        """Text pieces as they are decoded. When the generation ends by itself, ``on_finish`` gets
        why: "stop" (an end-of-sequence token) or "length" (``max_new_tokens`` reached). The
        iterator may have a ``cancel()``, callable from any thread, which ends it also while another
        thread waits for its next piece: at once while it waits for the model, else at the next token
        (``close()`` can only stop it between two pieces)."""
        ...


class CancellableStream(Iterator[str]):
    """A stream's text pieces, plus ``cancel()``: the app's Stop button runs it from the event loop
    while a worker thread waits in ``next``. A pull that waits for the model (which another request
    may hold for a while) returns at once, one that waits for a token after that token; ``close()``,
    like a generator's, can only run between two pulls."""

    def __init__(self, pieces: Iterator[str], cancel: Callable[[], None]):
        self._pieces = pieces
        self.cancel = cancel

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()


def text_streamer(tokenizer, **kwargs):
    """transformers' ``TextIteratorStreamer``, except that a symbol such as an emoji is handed on as
    soon as it is decoded. transformers holds symbols back until the next space (one might start
    markup or be half a character), so an answer of emoji alone showed only at its end. Half a
    character decodes to U+FFFD, which is still held (and ``Generation`` holds it too).

    It extends ``TextStreamer._is_chinese_char``, the private test (transformers 5.x) by which
    ``put`` hands on a text ending in a CJK character at once; a test streams emoji through it."""
    return _symbol_streamer_class()(tokenizer, **kwargs)


@functools.cache
def _symbol_streamer_class():
    import unicodedata

    from transformers import TextIteratorStreamer

    class SymbolStreamer(TextIteratorStreamer):
        def _is_chinese_char(self, cp: int) -> bool:
            return super()._is_chinese_char(cp) or (cp != 0xFFFD and unicodedata.category(chr(cp)) == "So")

    return SymbolStreamer


_UNKNOWN = object()  # the adapter state PEFT is in is not known (after loading)
PREFIX_CACHE_ENTRIES = 8  # (adapter, prompt prefix) key/value caches kept for scoring
MIN_CACHED_PREFIX = 8  # tokens; a shorter shared prefix is recomputed with each row
STOP_WAIT_S = 30.0  # longest a closed stream waits for its generation to stop (one token; a long prefill on a CPU)
STREAM_CLAIM_POLL_S = 0.02  # how often a stream waiting for the model checks whether a batch took it
EXIT_WAIT_S = 5.0  # longest the process waits at exit for decoding threads to finish
DECODING_THREAD = "adapterlab-generate"  # the name of every thread that decodes streams and completions


def _join_decoding_threads(timeout: float = EXIT_WAIT_S) -> None:
    """At exit, let the threads that decode (daemons, named ``DECODING_THREAD``) finish first. A
    completion's caller has its texts once its rows end, while the thread goes on to free the cache
    and put the model down (giving back its OpenMP workers); killed in the middle of that by the
    interpreter's exit, the process aborted ("terminate called without an active exception", status
    134) in 2 of 3 `adapterlab predict oncology` runs."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name == DECODING_THREAD and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(_join_decoding_threads)


def recorded_base(adapter_dir: Path) -> str | None:
    """The base model an adapter's ``adapter_config.json`` says it was trained on."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AdapterFilesError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise AdapterFilesError(f"{path}: not UTF-8 text") from None
    if not isinstance(config, dict):
        raise AdapterFilesError(f"{path}: expected a JSON object (PEFT's adapter config)")
    return config.get("base_model_name_or_path")


def other_base(adapter_dir: Path, base: str) -> str | None:
    """The base model an adapter was trained on, as recorded, when that is not ``base``; else None."""
    trained_on = recorded_base(adapter_dir)
    return trained_on if trained_on is not None and canonical_name(trained_on) != canonical_name(base) else None


class LocalBackend:
    """Base model + PEFT adapters in this process; thread-safe, one model in memory.

    "Base" is the same weights with adapters disabled, so a base-vs-fine-tuned comparison never
    loads a second model. A lock makes every model call atomic with its adapter choice, so
    concurrent callers (threads, browser sessions) never mix adapters or outputs; streamed answers
    are decoded together, one row each, and join a running batch between two steps
    (``adapters.row_decoding``; ``adapters.batching`` for models it does not cover).
    """

    # streams decoded as rows that join and leave between steps (adapters.row_decoding) where the model
    # allows; False: through generate, batched only as they wait (the path of other models; tests)
    continuous_batching = True

    def __init__(self, model: Any, tokenizer: Any, base_name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self._lock = ModelLock()  # lent between generation steps to waiting callers (adapters.model_lock)
        self.lend_between_steps = True  # False: a generation keeps the model to its end (benchmarks)
        self._tokenizer_lock = threading.Lock()
        self._byte_level: bool | None = None  # see _tokens_within_bytes
        self._specials: list[str] | None = None  # special-token strings, see literal
        self._adapters: list[str] = []
        self._active: str | None | object = _UNKNOWN  # adapter name, None (disabled) or _UNKNOWN
        self._prefix_cache: OrderedDict[tuple, Any] = OrderedDict()  # (adapter, token ids) -> KV
        self._fused: FusedLlama | None | object = _UNKNOWN  # the fast scoring path; None: unsupported
        self._static_decoder: Any = None  # adapters.decoding.StaticDecoder, made on first CUDA use
        self._rows: Any = None  # adapters.row_decoding.RowDecoder, made on the first stream
        self._switch_layers: list | None = None  # LoRA layers switched directly (None: not looked yet)
        self._rows_apply = FusedLlama.applies(model)  # whether row decoding covers this model
        self._streams = StreamQueue(max_batch=self._default_stream_batch())  # streams waiting for the model
        self._row_adapters = RowAdapters()  # the adapter of each row of a mixed batch

    @classmethod
    def load(cls, base: str = DEFAULT_BASE, adapters: dict[str, Path] | None = None,
             options: LoadOptions = LoadOptions(), *, progress: bool = True) -> "LocalBackend":
        """Load the base once and every given adapter folder as a named PEFT adapter on it."""
        from .openmp import release_thread_team

        model, tokenizer = load_base(base, options, progress=progress)
        backend = cls(model, tokenizer, canonical_name(base))
        for name, path in (adapters or {}).items():
            backend.add_adapter(name, path)
        release_thread_team()  # loading ran on this thread's OpenMP workers (adapters.openmp)
        return backend

    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    def _on_gpu(self) -> bool:
        return next(self.model.parameters()).device.type == "cuda"

    def _default_stream_batch(self) -> int:
        """How many waiting streams are decoded together: rows of the row decoder
        (``adapters.row_decoding``) where the fused forward applies; else on a GPU one at a time,
        since there an eager batch through PEFT's mixed-adapter generate took 190 ms a step for 7
        rows, 6.8x slower in all than graph-replayed streams in turn
        (benchmarks/results/serve-cuda-h200.json of 2026-11-30, before row decoding)."""
        return 1 if self._on_gpu() and not self._rows_apply else MAX_STREAM_BATCH

    @property
    def max_stream_batch(self) -> int:
        """Most streams decoded together in one batch (1: one at a time)."""
        return self._streams.max_batch

    @max_stream_batch.setter
    def max_stream_batch(self, rows: int) -> None:
        if rows < 1:
            raise ValueError(f"max_stream_batch must be at least 1, not {rows}")
        self._streams.max_batch = rows

    def waiting_streams(self) -> int:
        return self._streams.waiting()

    def cached_prefixes(self) -> list[tuple[str | None, int]]:
        """(adapter, token count) of each prompt prefix whose keys/values scoring keeps, oldest first."""
        with self._lock.hold():
            return [(adapter, len(ids)) for adapter, ids in self._prefix_cache]

    def add_adapter(self, name: str, path: Path) -> None:
        """Attach the PEFT adapter in ``path`` under ``name``; refuses one trained on another base."""
        from peft import PeftModel

        trained_on = other_base(path, self.base_name)
        if trained_on is not None:
            raise BaseMismatchError(
                f"adapter {name!r} ({path}) was trained on base model {canonical_name(trained_on)!r}, "
                f"but the loaded base model is {self.base_name!r}")
        with self._lock.hold():
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name,
                                                           is_trainable=False)
            except Exception as exc:  # safetensors, PEFT and torch each raise their own kinds
                reason = (str(exc).strip().splitlines() or [""])[0][:300]
                raise AdapterFilesError(f"adapter {name!r} ({path}): its files cannot be loaded: "
                                        f"{type(exc).__name__}: {reason}") from exc
            self.model.eval()
            self._adapters.append(name)
            self._active = _UNKNOWN  # loading may change which adapter PEFT has active
            self._prefix_cache.clear()  # a name may now stand for other weights
            self._fused = _UNKNOWN  # the model object and its LoRA layers changed
            self._switch_layers = None
            self._static_decoder = None  # it holds the model object, graphs and merged weights of before
            self._rows_apply = FusedLlama.applies(self.model)  # not with an adapter it cannot run (DoRA)
            self._streams.max_batch = min(self._streams.max_batch, self._default_stream_batch())

    # --- text helpers ----------------------------------------------------------------------

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        from .prompts import render

        return render(self.tokenizer, messages)

    def render_answer(self, messages: Sequence[dict[str, str]], answer: str) -> str:
        from .prompts import render_example

        return render_example(self.tokenizer, messages, answer)[1]

    def literal(self, text: str) -> str:
        from .prompts import literal_text, special_strings

        if self._specials is None:
            self._specials = special_strings(self.tokenizer)
        return literal_text(text, self._specials)

    def encode(self, texts, **kwargs):
        """The tokenizer's output for ``texts`` (no special tokens added), under the tokenizer's own
        lock: a fast tokenizer keeps padding and truncation as shared state that each call sets
        before encoding, so two threads could otherwise pad each other's batches (seen as wrong
        scores in the concurrency test once prompts were tokenized as a batch)."""
        with self._tokenizer_lock:
            return self.tokenizer(texts, add_special_tokens=False, **kwargs)

    def count_tokens(self, text: str) -> int:
        return self.token_counts([text])[0]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Each text's token count, in one tokenizer call."""
        return [len(ids) for ids in self.encode(list(texts))["input_ids"]] if texts else []

    def over_budget(self, texts: Sequence[str], budget: int) -> list[bool]:
        """Whether each text has more than ``budget`` tokens, counted as the prompt will hold it: a
        special-token string (``<|im_end|>``) stays text there (``literal``), several tokens, not one.

        Under a byte-level BPE tokenizer every token covers at least one UTF-8 byte (plus perhaps
        a space the tokenizer puts first), so a text of fewer bytes than the budget is not counted:
        counting every text of a 512-SMS batch took 49 ms of its 294 on an H200 host.
        """
        bounded = self._tokens_within_bytes()
        unsure = [i for i, text in enumerate(texts) if not bounded or len(text.encode("utf-8")) + 1 > budget]
        over = [False] * len(texts)
        for i, ids in zip(unsure, self._text_ids([texts[i] for i in unsure])):
            over[i] = len(ids) > budget
        return over

    def _text_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of user text, special-token strings read as the text they are."""
        return self.encode(texts, split_special_tokens=True)["input_ids"] if texts else []

    def _tokens_within_bytes(self) -> bool:
        """Whether the tokenizer is byte-level BPE with no normalizer (which may expand text)."""
        if self._byte_level is None:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            described = json.loads(backend.to_str()) if backend is not None else {}
            pre = described.get("pre_tokenizer") or {}
            steps = pre.get("pretokenizers") or [pre]
            self._byte_level = (described.get("normalizer") is None
                                and (described.get("model") or {}).get("type") == "BPE"
                                and any(step.get("type") == "ByteLevel" for step in steps))
        return self._byte_level

    def truncate(self, text: str, max_tokens: int, keep_end: int = 0) -> str:
        ids = self._text_ids([text])[0]
        if not keep_end or len(ids) <= max_tokens:
            return self._whole_characters(ids[:max_tokens], text)
        marker = "\n[…]\n"  # where the middle was left out; its tokens come out of the start's share
        start = max(0, max_tokens - keep_end - len(self.encode(marker)["input_ids"]))
        return self._whole_characters(ids[:start], text) + marker + self._whole_characters(ids[-keep_end:], text)

    def _whole_characters(self, ids: list[int], text: str) -> str:
        """The text of ``ids``, a piece of ``text``, without a character cut between its byte tokens
        at either end (which decodes to U+FFFD, a character nobody typed, and re-encodes longer)."""
        decode = self.tokenizer.decode
        if "\ufffd" in text:  # the text's own replacement characters: nothing to tell apart
            return decode(ids)
        while ids and decode(ids).endswith("\ufffd"):
            ids = ids[:-1]
        while ids and decode(ids).startswith("\ufffd"):
            ids = ids[1:]
        return decode(ids)

    # --- model calls -----------------------------------------------------------------------

    def activate(self, adapter: str | None) -> None:
        """Make ``adapter`` the active one (None: adapters disabled) until another is asked for.

        Every request does this itself; it is public for benchmarks and warm-up.
        """
        with self._lock.hold():
            self._switch_to(adapter)

    def _switch_to(self, adapter: str | None) -> None:
        """Switch PEFT's adapter state only when it differs from the last request's (lock held).

        PEFT's ``set_adapter`` and ``disable_adapter_layers()`` walk every module of the model and
        reset ``requires_grad`` on every adapter's weights: 15-60 ms a switch on a 2-core CPU, ~20 ms
        on the H100's host, for SmolLM2-135M with three adapters. For inference only two things
        per LoRA layer matter (which adapter is active, whether adapters are off), so when the
        model is plain LoRA (``_fast_switch_layers``) those are set directly on the layers found
        once, in well under a millisecond; otherwise PEFT's own methods run. A test checks that both
        ways leave PEFT in the same state with the same outputs.
        """
        if adapter is not None and adapter not in self._adapters:
            raise KeyError(f"adapter {adapter!r} is not loaded (loaded: {self._adapters})")
        if not self._adapters or adapter == self._active:
            return
        tuner = self.model.base_model  # the PEFT tuner (LoraModel)
        layers = self._fast_switch_layers()
        if layers:
            # plain attributes, so object.__setattr__ skips nn.Module's parameter/buffer/submodule
            # checks (0.56 -> 0.05 ms for the 210 layers here)
            for layer in layers:
                object.__setattr__(layer, "_disable_adapters", adapter is None)
            if adapter is not None:
                active = [adapter]
                for layer in layers:
                    object.__setattr__(layer, "_active_adapter", active)
                tuner.active_adapter = self.model.active_adapter = adapter  # what PEFT's set_adapter records
        elif adapter is None:
            tuner.disable_adapter_layers()
        else:
            if self._active is None or self._active is _UNKNOWN:
                tuner.enable_adapter_layers()
            if self.model.active_adapter != adapter:
                self.model.set_adapter(adapter)
        self._active = adapter

    def _fast_switch_layers(self) -> list:
        """The LoRA layers to switch directly, found once per set of adapters; [] when the model has
        anything PEFT's own switch must handle (modules_to_save, other tuner layers) (lock held)."""
        if self._switch_layers is None:
            from peft.tuners.lora import LoraLayer
            from peft.tuners.tuners_utils import BaseTunerLayer

            tuner_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
            plain = all(isinstance(m, LoraLayer) and hasattr(m, "_active_adapter")
                        and hasattr(m, "_disable_adapters") and not m.merged for m in tuner_layers)
            saved = bool(getattr(self.model, "modules_to_save", None))
            self._switch_layers = tuner_layers if plain and tuner_layers and not saved else []
        return self._switch_layers

    @contextmanager
    def _using(self, adapter: str | None):
        """Hold the model with ``adapter`` active (None: adapters disabled)."""
        with self._lock.hold(), cudnn_attention(False):
            self._switch_to(adapter)
            yield self.model

    def _decoder(self):
        """The static-cache decoder that replays CUDA graphs, on a GPU; None on CPU, where
        ``generate`` with its dynamic cache is as fast (a static cache would attend over empty slots)."""
        if self._static_decoder is None and self._device().type == "cuda":
            from .decoding import StaticDecoder

            self._static_decoder = StaticDecoder(self.model, sorted(self._eos_ids()), self.context_length)
        return self._static_decoder

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set([eos] if isinstance(eos, int) else list(eos or [self.tokenizer.eos_token_id]))

    def _finish_reason(self, new_ids: list[int], max_new_tokens: int) -> str:
        """"length" when ``new_ids`` filled ``max_new_tokens`` without ending the answer, else "stop"."""
        ended = bool(new_ids) and new_ids[-1] in self._eos_ids()
        return "length" if len(new_ids) >= max_new_tokens and not ended else "stop"

    def _decode_one(self, adapter: str | None, prompt_ids: list[int], params: GenerationParams,
                    on_token=None) -> list[int]:
        """New token ids for one prompt through the static decoder (lock held, adapter active)."""
        return self._decoder().generate(adapter, prompt_ids, params.max_new_tokens, params.temperature,
                                        params.top_p, on_token=on_token,
                                        no_repeat_ngram_size=params.no_repeat_ngram_size)

    def _device(self):
        return next(self.model.parameters()).device

    @property
    def device(self) -> str:
        return str(self._device())

    def score(self, adapter, prompts, continuations, batch_size=16, shared_prefix=""):
        """One forward pass per prompt: the prompt once, each continuation after it.

        A row holds ``prompt + c1 + c2 + ...``; a 4-D attention mask lets each continuation see the
        prompt and its own earlier tokens only, and position ids restart after the prompt for each
        one, so every continuation is scored exactly as if it followed the prompt alone — at the
        cost of one prompt instead of one prompt per label.

        With ``shared_prefix``, the keys and values of the tokens every prompt of a batch shares
        with it (the template before the input) are computed once per adapter and kept
        (``PREFIX_CACHE_ENTRIES`` at most); each row then runs only its own tokens after them.
        """
        import torch

        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} lists of continuations")
        # one batched tokenizer call, and each distinct continuation once: per-string calls were a
        # third of a 512-message batch's time
        prompt_ids = self._prompt_ids(prompts, shared_prefix)
        distinct = sorted({c for options in continuations for c in options})
        option_ids = dict(zip(distinct, self.encode(distinct)["input_ids"])) if distinct else {}
        rows = [(ids, [option_ids[c] for c in options]) for ids, options in zip(prompt_ids, continuations)]
        prefix_ids = self.encode(shared_prefix)["input_ids"] if shared_prefix else []
        scores: list[list[float]] = []
        with self._using(adapter) as model, torch.inference_mode():
            fused = self._fused_path()
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                reused = shared_prefix_length(prefix_ids, [prompt for prompt, _ in chunk])
                past = self._prefix_kv(adapter, prefix_ids[:reused], len(chunk), fused) if reused else None
                scores.extend(self._score_chunk(model, chunk, reused, past, fused, adapter))
        return scores

    def _prompt_ids(self, prompts: Sequence[str], shared_prefix: str) -> list[list[int]]:
        """Each prompt's token ids, tokenizing the shared prefix's text up to its last special token
        once instead of once per prompt.

        A tokenizer splits its input at special tokens (``<|im_start|>``) before anything else and
        tokenizes the pieces between them on their own, so a prompt's ids are that head's ids then
        the rest's. The head (system message, few-shot turns) is most of a spam prompt: tokenizing
        only the rest halved the tokenizer's time for 512 messages (34 -> 17 ms on the 2-core CPU).
        Every prompt continues the head with the same template text, so checking the first prompt
        against whole tokenization checks the boundary; where it differs, prompts are tokenized whole.
        """
        prompts = list(prompts)
        head = self._special_head(shared_prefix)
        if head and prompts and all(p.startswith(head) for p in prompts):
            head_ids = self.encode(head)["input_ids"]
            rests = self.encode([p[len(head):] for p in prompts])["input_ids"]
            if head_ids + rests[0] == self.encode(prompts[0])["input_ids"]:
                return [head_ids + rest for rest in rests]
        return self.encode(prompts)["input_ids"] if prompts else []

    def _special_head(self, text: str) -> str:
        """``text`` up to the end of its last special token; "" if it has none. Only tokens that
        take no whitespace after them (``rstrip``) count: the rest must tokenize the same alone."""
        ends = [text.rfind(token.content) + len(token.content)
                for token in getattr(self.tokenizer, "added_tokens_decoder", {}).values()
                if token.special and not token.rstrip and token.content and token.content in text]
        return text[:max(ends)] if ends else ""

    def _fused_path(self) -> "FusedLlama | None":
        """The fused scoring forward for this model, or None where it does not apply (lock held)."""
        if self.model.training:  # dropout on: only the transformers path does what training mode means
            return None
        if self._fused is _UNKNOWN or (self._fused is not None and not self._fused.intact()):
            if self._fused is not _UNKNOWN:  # weights were re-bound, maybe changed: keys/values too
                self._prefix_cache.clear()
            self._fused = FusedLlama.build(self.model)
            if self._fused is not None and self._static_decoder is not None:
                self._static_decoder.forget_graphs()  # fusing moved the base weights (same values)
        return self._fused

    def _score_chunk(self, model, chunk, reused: int, past, fused=None, adapter=None) -> list[list[float]]:
        """Scores of one batch of (prompt ids, continuation ids) rows whose first ``reused`` prompt
        tokens are already in ``past`` (keys/values, None when ``reused`` is 0)."""
        import torch

        device = self._device()
        dtype = next(model.parameters()).dtype
        dtype = dtype if dtype.is_floating_point else torch.float32
        ids, positions, mask, (rows, columns, tokens, owners) = _packed_rows(
            [(p[reused:], cs) for p, cs in chunk], self.tokenizer.pad_token_id, offset=reused)
        scores = [[0.0] * len(options) for _, options in chunk]
        if not tokens:
            return scores
        additive = additive_mask(mask, dtype)
        # the vocabulary projection is computed only in the columns where a scored token is predicted
        keep = sorted(set(columns))
        at = {c: i for i, c in enumerate(keep)}
        keep_t = torch.tensor(keep, device=device)
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT unwrapped
        head = plain_output_weight(causal_lm)
        inputs = {"input_ids": ids.to(device), "position_ids": positions.to(device),
                  "attention_mask": additive[:, None].to(device), cache_keyword(): past, "use_cache": past is not None}
        if fused is not None and head is not None:
            out, _ = fused.forward(adapter, inputs["input_ids"], inputs["position_ids"], inputs["attention_mask"],
                                   past, keep=keep_t)
        elif head is not None:  # the decoder (transformers' base model) alone: final hidden states
            out = causal_lm.base_model(**inputs).last_hidden_state[:, keep_t]
        else:  # a head that scales or caps its logits: the model's own logits
            out = model(**inputs, logits_to_keep=keep_t).logits
        # only the scored tokens' log-probabilities leave the device: copying whole vocabulary rows
        # to the CPU took most of a 512-message batch's time on the H100 (~600 MB)
        row_t = torch.tensor(rows, device=out.device)
        column_t = torch.tensor([at[c] for c in columns], device=out.device)
        tokens_t = torch.tensor(tokens, device=out.device)
        if head is not None:
            picked = token_logprobs(out[row_t, column_t], head, tokens_t)
        else:
            chosen = out[row_t, column_t].float()  # [scored tokens, vocabulary]
            picked = chosen.gather(1, tokens_t[:, None])[:, 0] - torch.logsumexp(chosen, dim=-1)
        for (row, option), value in zip(owners, picked.tolist()):
            scores[row][option] += value
        return scores

    def _prefix_kv(self, adapter: str | None, prefix_ids: list[int], batch: int, fused=None):
        """The keys/values of ``prefix_ids`` under ``adapter`` for ``batch`` rows; computed once and
        kept in a small LRU (lock held, adapter active).

        On the fused path they are per-layer (key, value) tensors that the forward only reads
        (it concatenates them with the new tokens' into new tensors), so they are handed out as
        they are, expanded to the batch without a copy. The transformers path gets a deep copy of
        a DynamicCache, since its forward appends to the cache it is given.
        """
        import copy

        import torch

        key = (adapter, tuple(prefix_ids))
        if key in self._prefix_cache and self._prefix_cache[key][0] == (fused is not None):
            self._prefix_cache.move_to_end(key)
        else:
            ids = torch.tensor([prefix_ids], device=self._device())
            if fused is not None:
                n = len(prefix_ids)
                dtype = fused.dtype
                causal = additive_mask(torch.ones((n, n), dtype=torch.bool).tril(), dtype)
                _, kv = fused.forward(adapter, ids, torch.arange(n, device=ids.device)[None],
                                      causal[None, None].to(ids.device), None, keep=None)
            else:
                kv = getattr(self.model(input_ids=ids, use_cache=True, logits_to_keep=1), cache_keyword())
            self._prefix_cache[key] = (fused is not None, kv)  # which path's format the entry is in
            self._prefix_cache.move_to_end(key)
            while len(self._prefix_cache) > PREFIX_CACHE_ENTRIES:
                self._prefix_cache.popitem(last=False)
        _, kv = self._prefix_cache[key]
        if fused is not None:
            return [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
        past = copy.deepcopy(kv)  # the forward pass appends to the cache it is given
        if batch > 1:
            past.batch_repeat_interleave(batch)
        return past

    def _generate_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if params.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = params.no_repeat_ngram_size
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def complete(self, adapter, prompts, params, batch_size=8):
        """The text generated after each prompt. Where row decoding applies the prompts go the way of
        streams: rows of whatever the model decodes, refilled as rows end, up to ``batch_size`` rows
        (or ``MAX_STREAM_BATCH``, when more); for other models ``batch_size`` is that of ``generate``."""
        import torch

        if self.continuous_batching and self._rows_apply and prompts and not self._lock.held_here():
            return self._complete_as_rows(adapter, prompts, params, batch_size)
        tok = self.tokenizer
        outputs: list[str] = []
        with self._using(adapter) as model, torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start:start + batch_size])
                if len(chunk) == 1 and self._decoder() is not None:
                    ids = self.encode(chunk[0])["input_ids"]
                    outputs.append(tok.decode(self._decode_one(adapter, ids, params), skip_special_tokens=True))
                    continue
                # padded on the left: generation continues from the right edge
                enc = self.encode(chunk, return_tensors="pt", padding=True, padding_side="left")
                enc = {k: v.to(self._device()) for k, v in enc.items()}
                out = model.generate(**enc, stopping_criteria=[self._lending(adapter)], **self._generate_kwargs(params))
                new_tokens = out[:, enc["input_ids"].shape[1]:]
                outputs.extend(tok.batch_decode(new_tokens, skip_special_tokens=True))
        return outputs

    def _complete_as_rows(self, adapter, prompts, params, batch_size: int) -> list[str]:
        """``complete`` through the stream queue, as streams go: a worker thread decodes the rows
        (and whatever joins them) unless a running batch takes them in; the caller has its texts
        once its own rows end."""
        from .batching import StreamRequest, TokenIds

        if adapter is not None and adapter not in self._adapters:
            raise KeyError(f"adapter {adapter!r} is not loaded (loaded: {self._adapters})")
        requests = [StreamRequest(adapter, ids, params, TokenIds(), rows=batch_size)
                    for ids in self.encode(list(prompts))["input_ids"]]
        for request in requests:
            self._streams.add(request)
        worker = threading.Thread(target=lambda: [self._decode_when_free(r) for r in requests], daemon=True,
                                  name=DECODING_THREAD)
        worker.start()
        done = False
        try:
            for request in requests:
                request.released.wait()
            done = True
        finally:
            if not done:  # interrupted (Ctrl-C in `predict`): nothing of these runs on after the caller
                for request in requests:
                    request.cancelled.set()
                    self._streams.withdraw(request)
                for request in requests:
                    request.released.wait(timeout=STOP_WAIT_S)
                worker.join(timeout=STOP_WAIT_S)
        for request in requests:
            if request.failure:
                raise request.failure[0]
        return [self.tokenizer.decode(r.streamer.ids, skip_special_tokens=True) for r in requests]

    def stream(self, adapter, prompt, params, on_finish=None) -> Iterator[str]:
        """Yield text pieces as they are decoded; closing the iterator stops the generation (and
        ``on_finish`` is not called).

        Streams requested while the model is busy are decoded together once it is free, as rows of
        one batch (``adapters.batching``); a stream alone runs the single-stream path.
        """
        from .batching import StreamRequest

        if adapter is not None and adapter not in self._adapters:
            raise KeyError(f"adapter {adapter!r} is not loaded (loaded: {self._adapters})")
        streamer = text_streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        request = StreamRequest(adapter, self.encode(prompt)["input_ids"], params, streamer, on_finish)
        return CancellableStream(self._pieces(request), lambda: self._cancel(request))

    def _cancel(self, request) -> None:
        """The caller has gone: a stream still waiting for the model leaves the queue and its text
        ends now; one being decoded is dropped at its next token (its batch ends its text)."""
        request.cancelled.set()
        self._streams.withdraw(request)

    def _pieces(self, request) -> Iterator[str]:
        """``request``'s text; it asks for the model at the first pull (a stream never read decodes nothing)."""
        if request.cancelled.is_set():
            return
        self._streams.add(request)
        if request.cancelled.is_set():  # cancelled as it was added: not left in the queue
            self._streams.withdraw(request)
        worker = threading.Thread(target=self._decode_when_free, args=(request,), daemon=True,
                                  name=DECODING_THREAD)
        worker.start()
        try:
            for piece in request.streamer:
                if piece:
                    yield piece
            request.released.wait()
            if request.failure:
                raise request.failure[0]
        finally:
            request.cancelled.set()
            self._streams.withdraw(request)  # still waiting for the model: nothing to stop
            # the batch drops it at its next token; wait for that, so that nothing of this generation
            # runs on after the caller has gone (Ctrl-C in `predict` exited under a running generate:
            # "terminate called without an active exception", status 134), and for its thread when
            # it decoded this stream alone (a batch's thread goes on for the other rows). Not when
            # the garbage collector closes an abandoned stream from the thread decoding it, or from
            # one holding the model (on loan from that generation): neither can wait for the next
            # token, and the stream is dropped at it all the same
            if threading.current_thread() not in (worker, request.runner) and not self._lock.held_here():
                request.released.wait(timeout=STOP_WAIT_S)
                if request.alone or request.runner is not worker:
                    worker.join(timeout=STOP_WAIT_S)

    def _decode_when_free(self, request) -> None:
        """Wait for the model; then decode ``request`` and the streams waiting with it, unless another
        stream's thread has taken it into its batch meanwhile."""
        while request.runner is None and not request.released.is_set():
            if not self._lock.try_hold(timeout=STREAM_CLAIM_POLL_S):
                continue
            try:
                on_loan = self._lock.taken_by_a_generation  # then streams wait for that generation's end
                if not on_loan and (batch := self._streams.claim(request)):
                    self._decode_batch(batch)
            finally:
                self._lock.release()
            if not on_loan:
                return
            time.sleep(STREAM_CLAIM_POLL_S)

    def _decode_batch(self, batch) -> None:
        """Decode the claimed streams (lock held): as rows of the row decoder where it applies (on a
        GPU one alone through the CUDA-graph decoder first), else one alone through the
        single-stream path and several as rows of one generate call."""
        from .batching import RowBatch

        rows = RowBatch(batch, self._eos_ids(), self._finish_reason)
        try:
            if len(batch) == 1 and self._decoder() is not None:
                handed_over = self._decode_alone(batch[0])  # the CUDA-graph decoder, fastest for one stream
                if handed_over is not None:  # others asked meanwhile: it goes on as a row of their batch
                    rows.hand_over()
                    self._decode_continuous(self._row_decoder(), [], resumed=handed_over)
            elif self.continuous_batching and (decoder := self._row_decoder()) is not None:
                rows.hand_over()
                self._decode_continuous(decoder, batch)
            elif len(batch) == 1:
                self._decode_alone(batch[0])
            else:
                self._decode_rows(rows)
        except BaseException as exc:  # noqa: BLE001 - re-raised in each caller's thread
            rows.fail(exc)
        finally:
            rows.end()

    def _row_decoder(self):
        """The continuous-batching decoder (``adapters.row_decoding``) for this model and its
        adapters, or None where the fused forward does not apply (lock held)."""
        fused = self._fused_path()
        if fused is None:
            return None
        rows = self._rows
        if rows is None or rows.fused is not fused or rows.adapters != self._adapters:
            from .row_decoding import RowDecoder

            self._rows = rows = RowDecoder(fused, self._adapters, self.context_length)
        return rows

    def _decode_continuous(self, decoder, batch, resumed=None) -> None:
        """Decode the claimed streams (and a ``resumed`` one) as rows of ``decoder``, taking in
        streams that arrive while it runs, and lending the model between steps."""
        import torch

        from .row_decoding import decode_streams

        with torch.inference_mode(), cudnn_attention(False):
            decode_streams(decoder, batch, self._eos_ids(), self._finish_reason, take_more=self._streams.take,
                           between_steps=lambda: self.lend_between_steps and self._lock.lend(),
                           max_rows=self._streams.max_batch, resumed=resumed)
        if not decoder.use_graphs:  # a CPU allocates it again in milliseconds; a GPU keeps it and its graphs
            decoder.free()

    def _lending(self, adapter: str | None):
        """Stopping criteria for ``generate`` that never stop it, but lend the model to the callers
        waiting for it after each step (``adapters.model_lock``), then set ``adapter`` again.

        Only for generations whose state is all in ``generate``'s own cache and thread: not the
        CUDA-graph decoder, which merges its adapter into the base weights while it decodes
        (``adapters.batching.RowAdapters`` keeps a mixed-adapter batch's names to its own thread)."""
        from transformers import StoppingCriteria

        backend = self

        class LendBetweenSteps(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                if backend.lend_between_steps and backend._lock.lend():
                    backend._switch_to(adapter)
                return False

        return LendBetweenSteps()

    def _decode_alone(self, request):
        """One stream: the static decoder on a GPU, else ``generate`` with the request's streamer.

        On a GPU, when other streams or calls ask for the model meanwhile and row decoding applies,
        the stream stops there and is returned (``adapters.row_decoding.Resumed``) to go on as a row
        of a batch, which they join or borrow the model from between two steps; else None."""
        import torch
        from transformers import StoppingCriteria

        from .row_decoding import Resumed

        class StopWhenCancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return request.cancelled.is_set()

        params, streamer = request.params, request.streamer
        with self._using(request.adapter) as model, torch.inference_mode():
            ids = torch.tensor([request.prompt_ids], device=self._device())
            if self._decoder() is not None:
                rows_apply = self.continuous_batching and self._rows_apply and self._row_decoder() is not None
                others_asked = []

                def on_token(token: int) -> bool:
                    streamer.put(torch.tensor([token]))
                    # another stream (to join) or a call (to borrow the model, which this decoder
                    # cannot lend: the adapter is merged into the base weights) asks for the model
                    if rows_apply and ((self._streams.max_batch > 1 and self._streams.waiting())
                                       or (self.lend_between_steps and self._lock.someone_waiting)):
                        others_asked.append(True)
                        return False
                    return not request.cancelled.is_set()

                streamer.put(ids.cpu())  # the prompt, which the streamer skips
                new_ids = self._decode_one(request.adapter, request.prompt_ids, params, on_token=on_token)
                ended = not new_ids or new_ids[-1] in self._eos_ids() or len(new_ids) >= min(
                    params.max_new_tokens, self.context_length - len(request.prompt_ids))
                if others_asked and not ended and not request.cancelled.is_set():
                    return Resumed(request, new_ids, self._decoder().cached(len(request.prompt_ids) + len(new_ids) - 1))
            else:
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                     stopping_criteria=[StopWhenCancelled(), self._lending(request.adapter)],
                                     **self._generate_kwargs(params))
                new_ids = out[0, ids.shape[1]:].tolist()
            if request.on_finish is not None and not request.cancelled.is_set():
                request.on_finish(self._finish_reason(new_ids, params.max_new_tokens))

    def _decode_rows(self, rows) -> None:
        """Several streams as rows of one ``generate`` call: left-padded, each row with its own adapter
        (PEFT's mixed batches), settings, limit and streamer (``adapters.batching.RowBatch``)."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from .batching import adapter_rows, padded_batch

        requests = [row.request for row in rows.rows]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self._eos_ids())
        ids, mask = padded_batch(requests, pad)
        mixed = adapter_rows(requests)
        active = next((r.adapter for r in requests if r.adapter is not None), None)  # adapters on, for mixed rows
        # greedy picks, with each row's own choice put in by the logits processor (rows.choose)
        greedy = self._generate_kwargs(GenerationParams(max_new_tokens=max(r.params.max_new_tokens for r in requests)))
        with self._using(active) as model, torch.inference_mode(), self._row_adapters.rows(mixed):
            if mixed:
                self._row_adapters.install(model)
            device = self._device()
            model.generate(input_ids=torch.tensor(ids, device=device), attention_mask=torch.tensor(mask, device=device),
                           logits_processor=LogitsProcessorList([rows.choose]),
                           stopping_criteria=StoppingCriteriaList([rows.stop, self._lending(active)]),
                           streamer=rows, **greedy)


def shared_prefix_length(prefix_ids: list[int], prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt shares with ``prefix_ids`` but its last token, leaving
    each prompt at least its own last token (whose logit predicts the first continuation token);
    0 when too few to be worth a cached pass (``MIN_CACHED_PREFIX``).

    The prefix's last token is never reused: it may merge with the input's first one (``"Message: "``
    + ``"URGENT"`` is tokenized ``":"``, ``" URGENT"``), and leaving it out gives every input of a
    template the same cached length, so one cache entry. Compared as token ids, so a prefix the
    prompts do not really share is only reused as far as they do.
    """
    length = max(0, len(prefix_ids) - 1)
    for prompt in prompts:
        same = 0
        for a, b in zip(prefix_ids[:length], prompt[:len(prompt) - 1]):
            if a != b:
                break
            same += 1
        length = same
    return length if length >= MIN_CACHED_PREFIX else 0


# architectures whose logits are exactly lm_head(final hidden state): no scaling, capping or bias
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2"})


def plain_output_weight(causal_lm):
    """The output projection's weight where logits are exactly ``hidden @ weight.T`` (the model
    types above, a bias-free linear head); None elsewhere (Gemma 2 caps its logits, Cohere and
    Granite scale them, ...), where scoring takes the model's own logits."""
    import torch

    if getattr(getattr(causal_lm, "config", None), "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    head = causal_lm.get_output_embeddings()
    return head.weight if type(head) is torch.nn.Linear and head.bias is None else None


def token_logprobs(hidden, weight, tokens):
    """log p(token) at each row of final hidden states [n, hidden], for an output projection
    ``weight`` [vocabulary, hidden] (no bias).

    In bf16 a logit near 20 is rounded to a step of 0.125, and the base model is often nearly
    indifferent between two labels: with bf16 logits 31 of the 618 spam test prompts with few-shot
    examples scored within 0.001 of P = 0.5 (3 with this). So the two logits that decide the value,
    the token's and the largest one, are computed in float32 from the hidden state, and only the
    rest of the normaliser comes from the model-dtype logits: log p = l_token - l_top -
    log(sum_i exp(l_i - l_top)), whose largest term is exactly 1. Two tokens at one position then
    differ by exactly their float32 logits' difference. In float32 this is the plain log-softmax.
    """
    import torch
    import torch.nn.functional as F

    logits = F.linear(hidden, weight).float()  # [n, vocabulary]
    largest, top = logits.max(dim=-1)
    rest = torch.logsumexp(logits - largest[:, None], dim=-1)
    exact = hidden.float()
    token_logit = (exact * weight[tokens].float()).sum(-1)
    top_logit = (exact * weight[top].float()).sum(-1)
    return token_logit - top_logit - rest


def _packed_rows(rows, pad_id, offset: int = 0):
    """Token ids, position ids, boolean attention mask [batch, q, offset + q], and the scored
    tokens as three flat lists: (row, column of the logit that predicts it, token id), plus the
    (row, continuation) each belongs to. A continuation's score is the sum of its tokens'
    log-probabilities. ``offset`` tokens of every prompt are already cached (keys/values), so
    positions start there and every token may attend to them.

    Prompts are right-aligned (padded on the left) so that every row's continuations start in the
    same column: with the same continuations in every row (classification) only a few columns hold
    a scored logit, and the vocabulary projection runs on those alone. The mask is built for the
    whole batch at once from each column's segment (-1 padding, 0 prompt, j continuation j): a
    token sees earlier tokens of its own segment and the prompt. Per-row tensor building was most
    of a 512-message batch's Python time.
    """
    import torch

    prompt_width = max(len(p) for p, _ in rows)
    width = prompt_width + max(sum(len(c) for c in cs) for _, cs in rows)
    ids, segments, positions = [], [], []
    scored_rows, scored_columns, scored_tokens, owners = [], [], [], []
    for r, (prompt, options) in enumerate(rows):
        n, lead = len(prompt), prompt_width - len(prompt)
        row_ids, row_segments = [pad_id] * lead + list(prompt), [-1] * lead + [0] * n
        row_positions = [0] * lead + list(range(offset, offset + n))
        for j, option in enumerate(options):
            at, m = len(row_ids), len(option)
            row_ids += option
            row_segments += [j + 1] * m
            row_positions += range(offset + n, offset + n + m)
            # the logit predicting token t of the option sits one column before it
            scored_columns += [prompt_width - 1, *range(at, at + m - 1)][:m]
            scored_rows += [r] * m
            scored_tokens += option
            owners += [(r, j)] * m
        tail = width - len(row_ids)
        ids.append(row_ids + [pad_id] * tail)
        segments.append(row_segments + [-1] * tail)
        positions.append(row_positions + [0] * tail)
    ids, positions = torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long)
    segments = torch.tensor(segments, dtype=torch.long)
    column = torch.arange(width)
    causal = column[None, :] <= column[:, None]  # [q, k]; padding sees earlier padding, never nothing
    allowed = causal & ((segments[:, :, None] == segments[:, None, :]) | (segments[:, None, :] == 0))
    mask = torch.cat([torch.ones((len(rows), width, offset), dtype=torch.bool), allowed], dim=2)
    return ids, positions, mask, (scored_rows, scored_columns, scored_tokens, owners)
