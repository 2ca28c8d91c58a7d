"""One-stream decoding with a static key/value cache, replayed as a CUDA graph on a GPU.

Why this exists: for a 135M-parameter model, a decode step is a few hundred small kernels; eager
PyTorch + PEFT spends ~8 µs of Python and launch time per kernel, so ``model.generate`` on an H100
was bound by the CPU at ~11 tokens/s (benchmarks/results/serve-cuda-h100.json, 2026-11-23). Capturing
one decode step (the forward pass with the adapter that is active, plus the greedy choice) as a CUDA
graph turns it into one launch. Everything else stays the model's own code: transformers'
``StaticCache`` keeps keys/values at fixed addresses, the attention mask is a 4-D additive mask we
update in place, and sampling uses transformers' logits warpers, so the tokens are those of
``model.generate`` (a test compares them on CPU, where the same steps run eagerly).

A graph is captured per (adapter state, cache length) the first time it is needed: the adapter's
LoRA branches are baked into the graph, so switching adapters between requests costs nothing.
Caches are sized in powers of two (``cache_length``) so a short chat does not attend over the full
context window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

MIN_CACHE = 256


def cache_length(needed: int, context_length: int) -> int:
    """The static cache size for ``needed`` tokens: the next power of two from ``MIN_CACHE``, at most
    the model's context length."""
    size = MIN_CACHE
    while size < needed:
        size *= 2
    return min(size, context_length)


class StaticDecoder:
    """Greedy or sampled decoding of one prompt at a time for one model; not thread-safe (the
    backend's lock serializes callers).

    ``state`` names what the model computes right now (the active adapter, or None for the base):
    a captured graph replays the model as it was at capture, so each state gets its own graph.
    """

    def __init__(self, model: Any, eos_token_ids: Sequence[int], context_length: int,
                 use_graphs: bool | None = None):
        import torch

        self.model = model
        self.eos = set(int(t) for t in eos_token_ids)
        self.context_length = context_length
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        self.dtype = dtype if dtype.is_floating_point else torch.float32
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self._slots: dict[int, _Slot] = {}  # cache length -> cache, buffers and graphs

    def forget_graphs(self) -> None:
        """Drop captured graphs (an adapter's weights changed)."""
        for slot in self._slots.values():
            slot.graphs.clear()

    def generate(self, state: Any, prompt_ids: Sequence[int], max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0,
                 on_token: Callable[[int], bool] | None = None, generator=None) -> list[int]:
        """New token ids after ``prompt_ids`` (stopping at an end-of-sequence token, which is kept,
        as ``generate`` keeps it). ``on_token(id)`` is called for each; returning False stops."""
        import torch

        n = len(prompt_ids)
        length = cache_length(n + max_new_tokens, self.context_length)
        max_new_tokens = min(max_new_tokens, length - n)
        if max_new_tokens <= 0:
            return []
        slot = self._slots.get(length) or self._slots.setdefault(length, _Slot(self, length))
        step = slot.step_for(state) if self.use_graphs else slot.eager_step
        logits = slot.prefill(prompt_ids)
        produced: list[int] = []
        for i in range(max_new_tokens):
            token = self._choose(logits, temperature, top_p, generator)
            produced.append(token)
            keep_going = on_token(token) if on_token else True
            if token in self.eos or keep_going is False or i == max_new_tokens - 1:
                break
            logits = step(token, n + i)
        return produced

    def _choose(self, logits, temperature: float, top_p: float, generator) -> int:
        import torch

        if temperature <= 0:
            return int(logits.argmax(-1))
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

        scores = TemperatureLogitsWarper(temperature)(None, logits.float()[None])
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))


class _Slot:
    """A static cache of one length with its input buffers and the graphs that use them."""

    def __init__(self, decoder: StaticDecoder, length: int):
        import torch
        from transformers import StaticCache

        self.decoder = decoder
        self.length = length
        model, device = decoder.model, decoder.device
        self.cache = StaticCache(config=_config(model), max_cache_len=length)
        self.ids = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.blocked = torch.finfo(decoder.dtype).min
        self.mask = torch.full((1, 1, 1, length), self.blocked, dtype=decoder.dtype, device=device)
        self.graphs: dict[Any, tuple[Any, Any]] = {}  # state -> (CUDA graph, its logits tensor)

    def prefill(self, prompt_ids: Sequence[int]):
        """Fill the cache with the prompt; the logits of the token after it."""
        import torch

        n = len(prompt_ids)
        device, dtype = self.decoder.device, self.decoder.dtype
        self.cache.reset()
        causal = torch.full((n, self.length), self.blocked, dtype=dtype, device=device)
        causal[:, :n] = torch.zeros((n, n), dtype=dtype, device=device).masked_fill(
            ~torch.ones((n, n), dtype=torch.bool, device=device).tril(), self.blocked)
        out = self.decoder.model(input_ids=torch.tensor([list(prompt_ids)], device=device),
                                 position_ids=torch.arange(n, device=device)[None],
                                 attention_mask=causal[None, None], past_key_values=self.cache,
                                 use_cache=True, logits_to_keep=1)
        self.mask.fill_(self.blocked)
        self.mask[..., :n] = 0
        return out.logits[0, -1]

    def _advance(self, token: int, position: int) -> None:
        """Point the buffers at the next step: input ``token`` at ``position``, visible to itself."""
        self.ids.fill_(token)
        self.position.fill_(position)
        self.mask[..., position] = 0

    def _forward(self):
        return self.decoder.model(input_ids=self.ids, position_ids=self.position, attention_mask=self.mask,
                                  past_key_values=self.cache, use_cache=True).logits[0, -1]

    def eager_step(self, token: int, position: int):
        self._advance(token, position)
        return self._forward()

    def step_for(self, state: Any) -> Callable[[int, int], Any]:
        """The decode step as a replay of the graph captured for ``state``."""
        if state not in self.graphs:
            self.graphs[state] = self._capture()
        graph, logits = self.graphs[state]

        def step(token: int, position: int):
            self._advance(token, position)
            graph.replay()
            return logits

        return step

    def _capture(self):
        """Capture one decode step; leaves the cache empty (the caller prefills next)."""
        import torch

        self.prefill([0])  # a valid state to warm up from: one token in the cache
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for position in (1, 2):  # warm-up: lazy allocations happen outside the graph
                self.eager_step(0, position)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self._advance(0, 3)
        with torch.cuda.graph(graph):
            logits = self._forward()
        self.cache.reset()
        return graph, logits


def _config(model):
    """The transformers config of a model, through a PEFT wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config
