"""Adapter backends: one base model with named LoRA adapters, behind a small interface.

The runtime's tasks (classify, generate, extract) need only four operations from a backend:
render a chat, score continuations, complete prompts in a batch, and stream one completion.
``LocalBackend`` runs them with transformers + PEFT in this process. A server backend (an
OpenAI-compatible server such as vLLM with LoRA enabled, where the adapter name is the model
name, and prompt log-probabilities give the scores) can implement the same ``Backend`` protocol
without changing any caller.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .base_models import DEFAULT_BASE, LoadOptions, canonical_name, load_base


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings for one request; ``temperature == 0`` is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256


class BaseMismatchError(ValueError):
    """An adapter was trained on another base model than the one loaded."""


class Backend(Protocol):
    """What the runtime needs from an engine that serves a base model and named adapters.

    ``adapter=None`` everywhere means the base model (adapters disabled).
    """

    base_name: str
    context_length: int

    def adapter_names(self) -> list[str]: ...

    def render(self, messages: Sequence[dict[str, str]]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def truncate(self, text: str, max_tokens: int) -> str: ...

    def score(self, adapter: str | None, prompts: Sequence[str],
              continuations: Sequence[Sequence[str]], batch_size: int = 16) -> list[list[float]]:
        """Log-likelihood of each prompt's continuations: ``result[i][j]`` for
        ``continuations[i][j]`` after ``prompts[i]``."""
        ...

    def complete(self, adapter: str | None, prompts: Sequence[str], params: GenerationParams,
                 batch_size: int = 8) -> list[str]: ...

    def stream(self, adapter: str | None, prompt: str, params: GenerationParams) -> Iterator[str]: ...


_UNKNOWN = object()  # the adapter state PEFT is in is not known (after loading)


def recorded_base(adapter_dir: Path) -> str | None:
    """The base model an adapter's ``adapter_config.json`` says it was trained on."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return config.get("base_model_name_or_path")


class LocalBackend:
    """Base model + PEFT adapters in this process; thread-safe, one model in memory.

    "Base" is the same weights with adapters disabled, so a base-vs-fine-tuned comparison never
    loads a second model. A lock makes every model call atomic with its adapter choice, so
    concurrent callers (threads, browser sessions) never mix adapters or outputs.
    """

    def __init__(self, model: Any, tokenizer: Any, base_name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self._lock = threading.RLock()
        self._adapters: list[str] = []
        self._active: str | None | object = _UNKNOWN  # adapter name, None (disabled) or _UNKNOWN

    @classmethod
    def load(cls, base: str = DEFAULT_BASE, adapters: dict[str, Path] | None = None,
             options: LoadOptions = LoadOptions(), *, progress: bool = True) -> "LocalBackend":
        """Load the base once and every given adapter folder as a named PEFT adapter on it."""
        model, tokenizer = load_base(base, options, progress=progress)
        backend = cls(model, tokenizer, canonical_name(base))
        for name, path in (adapters or {}).items():
            backend.add_adapter(name, path)
        return backend

    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    def add_adapter(self, name: str, path: Path) -> None:
        """Attach the PEFT adapter in ``path`` under ``name``; refuses one trained on another base."""
        from peft import PeftModel

        trained_on = recorded_base(path)
        if trained_on is not None and canonical_name(trained_on) != self.base_name:
            raise BaseMismatchError(
                f"adapter {name!r} ({path}) was trained on base model {canonical_name(trained_on)!r}, "
                f"but the loaded base model is {self.base_name!r}")
        with self._lock:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name,
                                                       is_trainable=False)
            self.model.eval()
            self._adapters.append(name)
            self._active = _UNKNOWN  # loading may change which adapter PEFT has active

    # --- text helpers ----------------------------------------------------------------------

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        from .prompts import render

        return render(self.tokenizer, messages)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # --- model calls -----------------------------------------------------------------------

    def activate(self, adapter: str | None) -> None:
        """Make ``adapter`` the active one (None: adapters disabled) until another is asked for.

        Every request does this itself; it is public for benchmarks and warm-up.
        """
        with self._lock:
            self._switch_to(adapter)

    def _switch_to(self, adapter: str | None) -> None:
        """Switch PEFT's adapter state only when it differs from the last request's (lock held).

        PEFT's ``set_adapter`` and ``disable_adapter()`` walk every module of the model (about
        15 ms and 60 ms per request on a 2-core CPU for SmolLM2-135M with three adapters), so the
        state is kept between requests and a request with the same adapter as the previous one
        pays nothing.
        """
        if adapter is not None and adapter not in self._adapters:
            raise KeyError(f"adapter {adapter!r} is not loaded (loaded: {self._adapters})")
        if not self._adapters or adapter == self._active:
            return
        tuner = self.model.base_model  # the PEFT tuner (LoraModel)
        if adapter is None:
            tuner.disable_adapter_layers()
        else:
            if self._active is None or self._active is _UNKNOWN:
                tuner.enable_adapter_layers()
            if self.model.active_adapter != adapter:
                self.model.set_adapter(adapter)
        self._active = adapter

    @contextmanager
    def _using(self, adapter: str | None):
        """Hold the model with ``adapter`` active (None: adapters disabled)."""
        with self._lock:
            self._switch_to(adapter)
            yield self.model

    def _device(self):
        return next(self.model.parameters()).device

    def score(self, adapter, prompts, continuations, batch_size=16):
        """One forward pass per prompt: the prompt once, each continuation after it.

        A row holds ``prompt + c1 + c2 + ...``; a 4-D attention mask lets each continuation see the
        prompt and its own earlier tokens only, and position ids restart after the prompt for each
        one, so every continuation is scored exactly as if it followed the prompt alone — at the
        cost of one prompt instead of one prompt per label.
        """
        import torch

        tok = self.tokenizer
        rows = []
        for prompt, options in zip(prompts, continuations, strict=True):
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            rows.append((prompt_ids, [tok(c, add_special_tokens=False)["input_ids"] for c in options]))
        scores: list[list[float]] = []
        with self._using(adapter) as model, torch.inference_mode():
            device = self._device()
            dtype = next(model.parameters()).dtype
            dtype = dtype if dtype.is_floating_point else torch.float32
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                ids, positions, mask, targets = _packed_rows(chunk, tok.pad_token_id)
                additive = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
                # the vocabulary projection is computed only where a scored token is predicted
                keep = sorted({at for per_option in targets for pairs in per_option for at, _ in pairs})
                column = {at: i for i, at in enumerate(keep)}
                logits = model(input_ids=ids.to(device), position_ids=positions.to(device),
                               attention_mask=additive[:, None].to(device),
                               logits_to_keep=torch.tensor(keep, device=device)).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
                for row, per_option in enumerate(targets):
                    scores.append([float(sum(logprobs[row, column[at], token] for at, token in pairs))
                                   for pairs in per_option])
        return scores

    def _generate_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def complete(self, adapter, prompts, params, batch_size=8):
        import torch

        tok = self.tokenizer
        outputs: list[str] = []
        with self._using(adapter) as model, torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start:start + batch_size])
                tok.padding_side = "left"  # generation continues from the right edge
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(self._device()) for k, v in enc.items()}
                out = model.generate(**enc, **self._generate_kwargs(params))
                new_tokens = out[:, enc["input_ids"].shape[1]:]
                outputs.extend(tok.batch_decode(new_tokens, skip_special_tokens=True))
        return outputs

    def stream(self, adapter, prompt, params) -> Iterator[str]:
        """Yield text pieces as they are decoded; closing the iterator stops the generation."""
        from transformers import StoppingCriteria, TextIteratorStreamer

        tok = self.tokenizer
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        cancelled = threading.Event()
        failure: list[BaseException] = []

        class StopWhenCancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return cancelled.is_set()

        def work():
            import torch

            try:
                with self._using(adapter) as model, torch.inference_mode():
                    if cancelled.is_set():
                        return
                    enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(self._device())
                    model.generate(**enc, streamer=streamer, stopping_criteria=[StopWhenCancelled()],
                                   **self._generate_kwargs(params))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
            finally:
                streamer.end()

        worker = threading.Thread(target=work, daemon=True, name="adapterlab-generate")
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
            worker.join()
            if failure:
                raise failure[0]
        finally:
            cancelled.set()


def _packed_rows(rows, pad_id):
    """Token ids, position ids, boolean attention mask [batch, q, k] and, per row and continuation,
    the (logit index, token id) pairs whose log-probabilities add up to the continuation's score."""
    import torch

    width = max(len(p) + sum(len(c) for c in cs) for p, cs in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width, width), dtype=torch.bool)
    targets = []
    for r, (prompt, options) in enumerate(rows):
        n = len(prompt)
        ids[r, :n] = torch.tensor(prompt)
        positions[r, :n] = torch.arange(n)
        mask[r, :n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        at, per_option = n, []
        for option in options:
            m = len(option)
            ids[r, at:at + m] = torch.tensor(option, dtype=torch.long)
            positions[r, at:at + m] = torch.arange(n, n + m)
            mask[r, at:at + m, :n] = True
            mask[r, at:at + m, at:at + m] = torch.ones(m, m, dtype=torch.bool).tril()
            # the logit predicting token t of the option sits one place before it
            previous = [n - 1] + list(range(at, at + m - 1))
            per_option.append(list(zip(previous, option)))
            at += m
        for q in range(at, width):
            mask[r, q, q] = True  # padding attends to itself only, so no row is fully masked
        targets.append(per_option)
    return ids, positions, mask, targets
