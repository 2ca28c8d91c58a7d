"""One-stream decoding with a static key/value cache, replayed as a CUDA graph on a GPU.

Why this exists: for a 135M-parameter model, a decode step is about a thousand small kernels; eager
PyTorch + PEFT spends ~8 µs of Python and launch time per kernel, so ``model.generate`` on an H100
was bound by the CPU at ~11 tokens/s (benchmarks/results/serve-cuda-h100.json of 2026-11-23).
Capturing one decode step (the forward pass, the greedy choice and moving the buffers on by one
token) as a CUDA graph turns it into one launch. Everything else is the model's own code:
transformers' ``StaticCache`` keeps keys/values at fixed addresses, the attention mask is a 4-D
additive mask updated in place. Greedy tokens are those of ``model.generate`` (tests compare them on
CPU, where the same steps run eagerly); sampling draws from the distribution of transformers'
temperature and top-p warpers (``sampling_distribution``), with other random draws.

With a LoRA adapter active, the graph of the base model is replayed over weights with the adapter
merged in (W + scale·B·A, computed once per adapter and kept on the device): the unmerged LoRA
branches would double the kernels of every step. The prompt itself runs eagerly through PEFT with
the adapter unmerged, and the base weights are put back before the call returns.

Caches are sized in powers of two (``cache_length``) so a short chat does not attend over the whole
context window; one graph is captured per cache size, the first time it is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

from .base_models import cache_keyword

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

    ``state`` names the adapter PEFT has active (None: adapters disabled). Eagerly, the model runs
    as it is; with graphs, an adapter's merged weights are swapped in around the replays.
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
        self._slots: dict[int, _Slot] = {}  # cache length -> cache, buffers and graph
        self._merged: dict[str, list] = {}  # adapter -> [(base weight, merged copy)]
        self._originals: dict[int, Any] = {}  # id(base weight) -> its own values, kept once merged over
        self._last: _Slot | None = None  # the cache of the last generation

    def forget_graphs(self) -> None:
        """Drop graphs and merged weights (an adapter's or the base's weights changed)."""
        for slot in self._slots.values():
            slot.graph = None
        self._merged.clear()
        self._originals.clear()

    def generate(self, state: str | None, prompt_ids: Sequence[int], max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0,
                 on_token: Callable[[int], bool] | None = None, generator=None,
                 no_repeat_ngram_size: int = 0) -> list[int]:
        """New token ids after ``prompt_ids`` (stopping at an end-of-sequence token, which is kept,
        as ``generate`` keeps it). ``on_token(id)`` is called for each; returning False stops.
        ``no_repeat_ngram_size`` bans repeated n-grams as ``generate``'s option does."""
        n = len(prompt_ids)
        length = cache_length(n + max_new_tokens, self.context_length)
        max_new_tokens = min(max_new_tokens, length - n)
        if max_new_tokens <= 0:
            return []
        slot = self._slots.get(length) or self._slots.setdefault(length, _Slot(self, length))
        self._last = slot
        step = slot.replay if self.use_graphs else slot.step
        if self.use_graphs and slot.graph is None:
            slot.capture()
        ngrams = NGramBan(no_repeat_ngram_size, prompt_ids)
        logits = slot.prefill(prompt_ids)  # eagerly, through PEFT with ``state`` as it is
        token = choose_token(logits, temperature, top_p, generator, ngrams.banned())
        slot.start(token, n)
        produced: list[int] = []
        with self._merged_into_base(state if self.use_graphs else None):
            for i in range(max_new_tokens):
                produced.append(token)
                ngrams.add(token)
                keep_going = on_token(token) if on_token else True
                if token in self.eos or keep_going is False or i == max_new_tokens - 1:
                    break
                logits, greedy = step()
                banned = ngrams.banned()
                if temperature <= 0 and int(greedy) not in banned:
                    token = int(greedy)
                else:
                    token = choose_token(logits, temperature, top_p, generator, banned)
                    slot.ids.fill_(token)  # the step moved on with its greedy choice: replace it
        return produced

    def cached(self, length: int) -> list[tuple[Any, Any]]:
        """Per layer, the keys and values of the first ``length`` positions of the last generation
        (views [kv heads, length, head dim]): once ``on_token`` has stopped it, the prompt and every
        token but the last (which no step has read yet)."""
        return [(layer.keys[0, :, :length], layer.values[0, :, :length]) for layer in self._last.cache.layers]

    @contextmanager
    def _merged_into_base(self, adapter: str | None):
        """The base weights hold ``adapter`` merged in while inside (nothing happens for None)."""
        if adapter is None:
            yield
            return
        pairs = self._merged.get(adapter) or self._merged.setdefault(adapter, merged_weights(self.model, adapter))
        for weight, _ in pairs:
            if id(weight) not in self._originals:
                self._originals[id(weight)] = weight.detach().clone()
        try:
            for weight, merged in pairs:
                weight.data.copy_(merged)
            yield
        finally:
            for weight, _ in pairs:
                weight.data.copy_(self._originals[id(weight)])


SAMPLE_CANDIDATES = 256  # top-p sampling looks among this many most likely tokens first


def choose_token(logits, temperature: float, top_p: float, generator=None, banned=frozenset()) -> int:
    """The next token from one position's logits: the most likely one when ``temperature <= 0``,
    else drawn from ``sampling_distribution``; ``banned`` tokens never."""
    import torch

    if banned:
        logits = logits.index_fill(-1, torch.tensor(sorted(banned), device=logits.device), float("-inf"))
    if temperature <= 0:
        return int(logits.argmax(-1))
    tokens, probs = sampling_distribution(logits, temperature, top_p)
    return int(tokens[torch.multinomial(probs, 1, generator=generator)])


def sampling_distribution(logits, temperature: float, top_p: float):
    """(token ids, their probabilities) of transformers' temperature and top-p warpers over one
    position's logits: the smallest set of most likely tokens whose mass reaches ``top_p``
    (a token is kept while the mass of the tokens above it is below ``top_p``), renormalized.

    Why not the warpers themselves: top-p sorts the whole vocabulary, ~3 ms a token on a 2-core CPU
    for SmolLM2's 49,152 tokens (more than an eighth of a decode step), and per row of a batch. The
    nucleus nearly always lies within the ``SAMPLE_CANDIDATES`` most likely tokens, which ``topk``
    finds in a fraction of that; where it does not, the whole vocabulary is sorted as before. The
    distribution is the same (a test compares it with the warpers'); the random draws are not."""
    import torch

    scores = logits.float() / temperature
    log_total = torch.logsumexp(scores, dim=-1)
    if top_p >= 1.0:
        return torch.arange(scores.numel(), device=scores.device), torch.exp(scores - log_total)
    k = min(SAMPLE_CANDIDATES, scores.numel())
    top, tokens = scores.topk(k)  # descending
    probs = torch.exp(top - log_total)
    if k < scores.numel() and float(probs.sum()) < top_p:  # the nucleus reaches beyond the candidates
        top, tokens = scores.sort(descending=True)
        probs = torch.exp(top - log_total)
    keep = _nucleus(probs, top_p)
    kept = probs[keep]
    return tokens[keep], kept / kept.sum()


def _nucleus(probs, top_p):
    """Which of the descending ``probs`` [..., k] top-p keeps: each token while the mass of those
    ranked above it is below ``top_p``, and always the first (the warper's min_tokens_to_keep)."""
    keep = (probs.cumsum(-1) - probs) < top_p
    keep[..., 0] = True
    return keep


def sample_rows(logits, temperatures: Sequence[float], top_ps: Sequence[float]) -> list[int]:
    """One token drawn for each row of ``logits`` [rows, vocabulary], row i from
    ``sampling_distribution(logits[i], temperatures[i], top_ps[i])``: the rows' candidates in one
    batched pass and one draw (per row, a GPU launches a dozen small kernels and waits for the
    result; rows whose nucleus reaches beyond the candidates, or with no top-p, go one by one)."""
    import torch

    device = logits.device
    temperature = torch.tensor(list(temperatures), dtype=torch.float32, device=device)[:, None]
    top_p = torch.tensor(list(top_ps), dtype=torch.float32, device=device)[:, None]
    scores = logits.float() / temperature
    k = min(SAMPLE_CANDIDATES, scores.shape[-1])
    top, tokens = scores.topk(k, dim=-1)
    probs = torch.exp(top - torch.logsumexp(scores, dim=-1, keepdim=True))
    whole = (probs.sum(-1, keepdim=True) < top_p) | (top_p >= 1.0)  # these rows need the whole vocabulary
    kept = torch.where(_nucleus(probs, top_p), probs, torch.zeros_like(probs))
    kept[whole[:, 0]] = 1.0  # a placeholder draw, replaced below
    drawn = tokens.gather(-1, torch.multinomial(kept, 1)).view(-1).tolist()
    for i in whole[:, 0].nonzero().view(-1).tolist():
        row_tokens, row_probs = sampling_distribution(logits[i], temperatures[i], top_ps[i])
        drawn[i] = int(row_tokens[torch.multinomial(row_probs, 1)])
    return drawn


class NGramBan:
    """The tokens that would repeat an n-gram of the sequence so far (prompt included), kept up to
    date one token at a time: what ``generate``'s ``no_repeat_ngram_size`` bans, without rescanning."""

    def __init__(self, n: int, ids: Sequence[int] = ()):
        self.n, self.ids = n, []
        self.following: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> tokens seen after it
        for token in ids:
            self.add(token)

    def add(self, token: int) -> None:
        self.ids.append(token)
        if self.n and len(self.ids) >= self.n:
            self.following.setdefault(tuple(self.ids[-self.n:-1]), set()).add(token)

    def banned(self) -> set[int]:
        if not self.n or len(self.ids) < self.n - 1:
            return set()
        return self.following.get(tuple(self.ids[len(self.ids) - self.n + 1:]), set())


def lora_layers(model) -> list:
    """PEFT's LoRA layers in ``model`` (none for a plain model)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def merged_weights(model, adapter: str) -> list:
    """(base weight, base weight + the adapter's scaled B·A) for every layer the adapter changes."""
    import torch

    pairs = []
    with torch.no_grad():
        for layer in lora_layers(model):
            if adapter in getattr(layer, "lora_A", {}):
                weight = layer.get_base_layer().weight
                pairs.append((weight, weight + layer.get_delta_weight(adapter).to(weight.dtype)))
    return pairs


@contextmanager
def adapters_disabled(model):
    """PEFT's adapter layers off while inside, restored to how they were (no-op for a plain model)."""
    layers = lora_layers(model)
    enabled = bool(layers) and not layers[0].disable_adapters
    if enabled:
        model.base_model.disable_adapter_layers()
    try:
        yield
    finally:
        if enabled:
            model.base_model.enable_adapter_layers()


class _Slot:
    """A static cache of one length with its input buffers and the graph that uses them.

    Between steps the buffers hold the next input: token ``ids`` at ``position``, with the mask open
    up to that position; a step runs the model there, then moves them on with its greedy choice.
    """

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
        self.graph: Any = None
        self._outputs: tuple | None = None  # the graph's (logits, greedy token)

    def prefill(self, prompt_ids: Sequence[int]):
        """Fill the cache with the prompt; the logits of the token after it."""
        import torch

        n = len(prompt_ids)
        device, dtype = self.decoder.device, self.decoder.dtype
        self.cache.reset()
        from .fused_llama import additive_mask

        allowed = torch.zeros((n, self.length), dtype=torch.bool, device=device)
        allowed[:, :n] = torch.ones((n, n), dtype=torch.bool, device=device).tril()
        causal = additive_mask(allowed, dtype)
        out = self.decoder.model(input_ids=torch.tensor([list(prompt_ids)], device=device),
                                 position_ids=torch.arange(n, device=device)[None],
                                 attention_mask=causal[None, None], **{cache_keyword(): self.cache},
                                 use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]

    def start(self, token: int, position: int) -> None:
        """Set the buffers for the first step after a prompt of ``position`` tokens."""
        self.ids.fill_(token)
        self.position.fill_(position)
        self.mask.fill_(self.blocked)
        self.mask[..., :position + 1] = 0

    def step(self):
        """Run the model at the buffers, then move them on by the greedy token: (logits, token)."""
        logits = self.decoder.model(input_ids=self.ids, position_ids=self.position, attention_mask=self.mask,
                                    **{cache_keyword(): self.cache}, use_cache=True).logits[0, -1]
        greedy = logits.argmax(-1)
        self.ids.copy_(greedy.view(1, 1))
        self.position.add_(1)
        self.mask.index_fill_(-1, self.position.view(-1), 0)
        return logits, greedy

    def replay(self):
        self.graph.replay()
        return self._outputs

    def capture(self, cudnn: bool = True) -> None:
        """Capture ``step`` of the base model (adapters off); leaves the cache empty. cuDNN
        attention is on by default: in a graph its CPU cost is paid once (``cudnn_attention``)."""
        import torch

        from .base_models import cudnn_attention

        with cudnn_attention(cudnn), adapters_disabled(self.decoder.model):
            self.prefill([0])  # a valid state to warm up from: one token in the cache
            self.start(0, 1)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: lazy allocations happen outside the graph
                    self.step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._outputs = self.step()
        self.graph = graph
        self.cache.reset()


def _config(model):
    """The transformers config of a model, through a PEFT wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config
