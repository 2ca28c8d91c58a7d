"""Streams decoded together as rows of one key/value cache, each row at its own position with its
own adapter; rows join and leave between two steps (continuous batching).

Why: with ``generate`` a batch is fixed when it starts, so a user who asked while another's answer
streamed waited for all of it (on the 2-core CPU, up to ~15 s for a 256-token answer) before their
first token; and PEFT's mixed-adapter forward runs each adapter's rows separately in every LoRA
layer (152 ms a step for 7 rows over 3 adapters and the base on the CPU, against 91 ms for one
adapter). Here every row has its own slot in the cache and writes at its own position, so a row
can be added between two steps (its prompt run into its slot, in one pass with the others that
join then) and a finished one removed;
and each LoRA projection is one gathered batched matmul over the rows, whatever their adapters:
an adapter's stacked A and scaled B are rows of a table whose entry 0 is zero (the base).

The layer arithmetic is scoring's own, ``adapters.fused_llama.FusedLlama.hidden_states`` (Llama
architectures, float32/bfloat16, plain LoRA; others keep ``generate``): fused q/k/v and gate/up
weights, SDPA with grouped key/value heads; this module adds the cache rows and the gathered LoRA.
On a GPU one decode step over ``slots`` rows (a power of two) is captured as a CUDA graph per cache
length, so a batch of streams runs at graph speed; on a CPU it runs eagerly over the rows there are,
attending only as far as the longest row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .decoding import cache_length
from .fused_llama import additive_mask


def lora_tables(fused, adapters: list[str]) -> list[list[Any]]:
    """Per decoder layer, per projection group of ``fused``: (A table [1 + adapters, R, in], B^T
    table [1 + adapters, R, out]), entry 0 zero (the base) and entry i + 1 ``adapters[i]`` (its A
    stacked, its scaled B block-diagonal, zero-padded to the largest rank R), or None where no
    adapter has a LoRA in the group."""
    import torch

    terms = [fused._lora_terms(name) for name in adapters]
    tables = []
    with torch.no_grad():
        for i, layer in enumerate(fused.layers):
            per_group = []
            for g, (weight, _, _) in enumerate(layer):
                present = [t[i][g] for t in terms]
                if all(p is None for p in present):
                    per_group.append(None)
                    continue
                a_dtype = next(p[0].dtype for p in present if p is not None)
                rank = max(p[0].shape[0] for p in present if p is not None)
                a_table = weight.new_zeros((1 + len(adapters), rank, weight.shape[1]), dtype=a_dtype)
                b_table = weight.new_zeros((1 + len(adapters), rank, weight.shape[0]), dtype=a_dtype)
                for j, p in enumerate(present):
                    if p is not None:
                        a_table[j + 1, :p[0].shape[0]] = p[0]
                        b_table[j + 1, :p[1].shape[0]] = p[1]
                per_group.append((a_table, b_table))
            tables.append(per_group)
    return tables


class RowDecoder:
    """The forward passes of rows in one cache: ``prefill`` prompts into their slots, then ``step``
    every row by one token. Not thread-safe (the backend's lock serializes callers).

    ``adapters`` fixes each adapter's index (row adapter 0 is the base). The cache holds
    ``slots`` rows of ``capacity`` positions; both grow as needed (``reserve``).
    """

    def __init__(self, fused, adapters: list[str], context_length: int, use_graphs: bool | None = None):
        self.fused = fused
        self.adapters = list(adapters)
        self.context_length = context_length
        llama = fused.llama
        self.device = next(llama.parameters()).device
        self.dtype = fused.dtype
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        # padding allowed in a pass of several prompts, as a share of their tokens: on a CPU padding costs
        # what a token does; on a GPU an eager prompt pass is launch-bound (~30-40 ms each for the
        # embedded model on an H200, tools/device/results/rows-cuda-check-real-h200.json)
        self.prefill_waste = 4.0 if self.device.type == "cuda" else 0.25
        self.tables = lora_tables(fused, self.adapters)
        self.head = llama.get_output_embeddings()
        self.slots, self.capacity = 0, 0
        self.keys: list[Any] = []  # per layer [slots, kv heads, capacity, head dim]
        self.values: list[Any] = []
        self._graphs: dict[tuple[int, int], tuple] = {}  # (rows, capacity) -> graph, inputs, outputs

    def adapter_index(self, adapter: str | None) -> int:
        return 0 if adapter is None else 1 + self.adapters.index(adapter)

    def reserve(self, slots: int, positions: int) -> None:
        """Room for ``slots`` rows of ``positions`` tokens (powers of two, kept once grown)."""
        import torch

        want_slots = max(self.slots, 1 << max(0, slots - 1).bit_length())
        want_capacity = max(self.capacity, cache_length(positions, self.context_length))
        if (want_slots, want_capacity) == (self.slots, self.capacity):
            return
        fused = self.fused
        shape = (want_slots, fused.kv_heads, want_capacity, fused.head_dim)
        grown_keys, grown_values = [], []
        for i in range(len(fused.layers)):
            k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            v = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if self.slots:
                k[:self.slots, :, :self.capacity] = self.keys[i]
                v[:self.slots, :, :self.capacity] = self.values[i]
            grown_keys.append(k)
            grown_values.append(v)
        self.keys, self.values = grown_keys, grown_values
        self.slots, self.capacity = want_slots, want_capacity
        self._graphs.clear()  # they point at the old tensors

    def free(self) -> None:
        """Give the cache's memory back (16 rows of a 4,096-token chat hold ~1.5 GB in bf16 for the
        embedded model); the next ``reserve`` allocates it again."""
        self.keys, self.values = [], []
        self.slots, self.capacity = 0, 0
        self._graphs.clear()

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first ``length`` positions of row ``source`` into row ``target``."""
        for k, v in zip(self.keys, self.values):
            k[target, :, :length] = k[source, :, :length]
            v[target, :, :length] = v[source, :, :length]

    def adopt(self, slot: int, layers: list[tuple[Any, Any]]) -> None:
        """Put another decoder's keys and values (per layer [kv heads, length, head dim]) into row ``slot``."""
        for (k, v), keys, values in zip(layers, self.keys, self.values):
            keys[slot, :, :k.shape[1]] = k
            values[slot, :, :v.shape[1]] = v

    def prefill(self, first_slot: int, adapters: list[str | None], prompts: list[list[int]]):
        """Run prompts together into rows ``first_slot``, ``first_slot + 1``, ... (each at its
        positions 0..n-1): the logits [prompts, vocabulary] of the token after each.

        Padded on the right to the longest: padding attends only to what precedes it, and its
        keys/values land past its row's prompt, where the row writes its own tokens before a step
        ever reads there."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.tensor([list(p) + [0] * (width - len(p)) for p in prompts], device=self.device)
        positions = torch.arange(width, device=self.device)[None].expand(len(prompts), width)
        rows = _adapter_rows([self.adapter_index(a) for a in adapters], self.device)
        last = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        with torch.inference_mode():
            hidden = self._layers(ids, positions, rows, write=("prompt", slice(first_slot, first_slot + len(prompts))),
                                  upto=width, mask=None)
            return self.head(hidden[torch.arange(len(prompts), device=self.device), last])

    def step(self, ids: list[int], positions: list[int], adapters: list[int]):
        """One token for each of the first ``len(ids)`` rows, row i reading token ``ids[i]`` at
        ``positions[i]`` with adapter index ``adapters[i]``: (logits [rows, vocabulary], greedy
        token ids [rows]), both on the model's device (a GPU's graph may give more rows: ignore
        them)."""
        import torch

        n = len(ids)
        if self.use_graphs:
            return self._replay(ids, positions, adapters)
        with torch.inference_mode():
            return self._step(torch.tensor(ids, device=self.device)[:, None],
                              torch.tensor(positions, device=self.device), _adapter_rows(adapters, self.device),
                              upto=max(positions) + 1, rows=n)

    def _step(self, ids, positions, adapters, upto: int, rows: int):
        """The decode step on tensors (what a graph captures): ``upto`` cache positions attended."""
        import torch

        column = torch.arange(upto, device=self.device)
        mask = additive_mask(column[None, :] <= positions[:, None], self.dtype)[:, None, None, :]
        hidden = self._layers(ids, positions[:, None], adapters, write=("step", rows), upto=upto, mask=mask)
        logits = self.head(hidden[:, -1])
        return logits, logits.argmax(-1)

    def _replay(self, ids, positions, adapters):
        import torch

        rows = 1 << max(0, len(ids) - 1).bit_length()
        key = (rows, self.capacity)
        if key not in self._graphs:
            self._graphs[key] = self._capture(rows)
        graph, (ids_in, positions_in, adapters_in), outputs = self._graphs[key]
        pad = rows - len(ids)
        # spare rows read token 0 at position 0 of their own slot, which no live row uses
        ids_in.copy_(torch.tensor([ids + [0] * pad], device="cpu").view(rows, 1), non_blocking=True)
        positions_in.copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        adapters_in.copy_(torch.tensor(adapters + [0] * pad), non_blocking=True)
        graph.replay()
        return outputs

    def capture_inputs(self, rows: int):
        """Input buffers for capturing a step of ``rows`` rows. The warm-up steps before a capture
        really run, and write keys/values where the buffers point, into the rows' slots: at the
        cache's last position, which no live row has reached yet (each writes a position before it
        attends to it), not at 0, where the rows' prompts start."""
        import torch

        ids = torch.zeros((rows, 1), dtype=torch.long, device=self.device)
        positions = torch.full((rows,), self.capacity - 1, dtype=torch.long, device=self.device)
        adapters = torch.zeros((rows,), dtype=torch.long, device=self.device)
        return ids, positions, adapters

    def _capture(self, rows: int):
        import torch

        ids, positions, adapters = self.capture_inputs(rows)
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: lazy allocations happen outside the graph
                    self._step(ids, positions, adapters, upto=self.capacity, rows=rows)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self._step(ids, positions, adapters, upto=self.capacity, rows=rows)
        return graph, (ids, positions, adapters), outputs

    def _layers(self, ids, positions, rows, write, upto: int, mask):
        """Final normed hidden states [batch, tokens, hidden]. ``write``: ("prompt", slots) puts the
        prompts' keys/values at positions 0..n-1 of those slots (causal attention within each);
        ("step", n) puts the n rows' single tokens at their positions and attends over the first
        ``upto`` positions of their slots under ``mask``."""
        fused = self.fused
        batch, length = ids.shape
        mode, where = write
        if mode == "step":
            scatter_at = positions[:, :, None, None].expand(batch, fused.kv_heads, 1, fused.head_dim)  # positions [batch, 1]

        def project(x, layer, group):
            return _project(x, fused.weight(layer, group), self.tables[layer][group], rows)

        def attend(layer, q, k, v, scale):
            if mode == "prompt":
                self.keys[layer][where, :, :length] = k
                self.values[layer][where, :, :length] = v
                return fused.attention(q, k, v, scale, is_causal=True)
            keys, values = self.keys[layer][:where], self.values[layer][:where]
            keys.scatter_(2, scatter_at, k)
            values.scatter_(2, scatter_at, v)
            return fused.attention(q, keys[:, :, :upto], values[:, :, :upto], scale, mask=mask)

        return fused.llama.model.norm(fused.hidden_states(ids, positions, project, attend))


def _adapter_rows(adapters: list[int], device):
    """What ``_project`` takes for these rows' adapter indices: one int when every row has the same
    one (an eager pass needs no gather then: 10-20% of a step on a 2-core CPU), else a
    tensor of them."""
    import torch

    return adapters[0] if len(set(adapters)) == 1 else torch.tensor(adapters, device=device)


def _project(x, weight, table, rows):
    """``x @ weight.T`` plus each row's own LoRA term: its adapter's A and B^T gathered from
    ``table`` by ``rows`` (adapter indices, 0 = none; an int: the same for every row), as PEFT
    computes it (under bf16 base weights the term and the sum in float32, rounded once)."""
    import torch
    import torch.nn.functional as F

    y = F.linear(x, weight)
    if table is None or (isinstance(rows, int) and rows == 0):
        return y
    a_table, b_table = table
    if isinstance(rows, int):
        a, b_t = a_table[rows], b_table[rows]  # [R, in], [R, out]
        return (y.to(a.dtype) + (x.to(a.dtype) @ a.T) @ b_t).to(y.dtype)
    a, b_t = a_table[rows], b_table[rows]  # [batch, R, in], [batch, R, out]
    low_rank = torch.bmm(x.to(a.dtype), a.transpose(1, 2))
    return (y.to(a.dtype) + torch.bmm(low_rank, b_t)).to(y.dtype)


@dataclass
class Resumed:
    """A stream handed over mid-answer: its tokens so far (all streamed; the last one not yet read by
    a step) and per layer the keys/values of its prompt and the others."""

    request: Any
    produced: list[int]
    layers: list[tuple[Any, Any]]


class _Live:
    """A stream being decoded: its slot is its index in the batch's list of rows."""

    def __init__(self, request, adapter: int, limit: int):
        from .decoding import NGramBan

        self.request = request
        self.adapter = adapter  # index into the LoRA tables
        self.limit = limit  # new tokens at most: the request's, or what the context leaves
        self.ban = NGramBan(request.params.no_repeat_ngram_size, request.prompt_ids)
        self.produced: list[int] = []
        self.position = len(request.prompt_ids)  # where the next token goes
        self.next = 0  # the token to read at the next step

    def choose(self, logits, greedy: int) -> int:
        """This row's next token: the greedy one unless its settings say otherwise."""
        from .decoding import choose_token

        params = self.request.params
        banned = self.ban.banned()
        if params.temperature <= 0 and greedy not in banned:
            return greedy
        return choose_token(logits, params.temperature, params.top_p, banned=banned)

    @property
    def plainly_sampled(self) -> bool:
        """Whether its next token is a draw with nothing banned (drawn with other rows' at once)."""
        return self.request.params.temperature > 0 and not self.ban.banned()


def chosen_tokens(rows: list["_Live"], logits, greedy: list[int]) -> list[int]:
    """Each row's next token: plainly sampled rows drawn together (``decoding.sample_rows``), the
    others one by one (``_Live.choose``)."""
    import torch

    from .decoding import sample_rows

    sampled = [i for i, row in enumerate(rows) if row.plainly_sampled]
    if len(sampled) < 2:
        return [row.choose(logits[i], greedy[i]) for i, row in enumerate(rows)]
    params = [rows[i].request.params for i in sampled]
    draws = sample_rows(logits[torch.tensor(sampled, device=logits.device)],
                        [p.temperature for p in params], [p.top_p for p in params])
    drawn = dict(zip(sampled, draws))
    return [drawn[i] if i in drawn else row.choose(logits[i], greedy[i]) for i, row in enumerate(rows)]


def decode_streams(decoder: RowDecoder, requests, eos_ids: set[int], finish_reason, take_more, between_steps,
                   max_rows: int, resumed: "Resumed | None" = None) -> None:
    """Decode ``requests`` (``adapters.batching.StreamRequest``) as rows of ``decoder`` until every
    row has ended, streaming each row's tokens to its caller. Between two steps: rows whose caller
    has gone are dropped, ``between_steps()`` runs (the backend lends the model there), and streams
    that arrived meanwhile join (``take_more(room)``), up to ``max_rows`` rows (or the largest
    ``rows`` a live request asks for: an evaluation's batch size). ``resumed``: a
    stream another decoder started, which goes on as the first row. Every stream is released
    (``adapters.batching.release``) by the time this returns; a failure goes to their callers."""
    _StreamBatch(decoder, eos_ids, finish_reason).run(list(requests), take_more, between_steps, max_rows, resumed)


class _StreamBatch:
    """The rows ``decode_streams`` decodes: ``live`` holds them in slot order (row i is slot i of
    the decoder), ``pending`` the streams claimed for this batch that are not rows yet."""

    def __init__(self, decoder: RowDecoder, eos_ids: set[int], finish_reason):
        self.decoder, self.eos_ids, self.finish_reason = decoder, eos_ids, finish_reason
        self.live: list[_Live] = []
        self.pending: list = []

    def run(self, requests: list, take_more, between_steps, max_rows: int, resumed: "Resumed | None") -> None:
        self.pending = requests + ([resumed.request] if resumed else [])
        try:
            if resumed is not None:
                self.resume(resumed.request, resumed.produced, resumed.layers)
            self.admit(self.pending)
            while self.live:
                self.drop_cancelled()
                if not self.live:
                    break
                self.step()
                if not self.live:
                    break
                between_steps()
                self.pending = take_more(max(max_rows, *(r.request.rows for r in self.live)) - len(self.live))
                for row in self.live:
                    row.request.alone = not self.pending and row.request.alone  # its thread now goes on for others
                self.admit(self.pending)
        except BaseException as exc:  # noqa: BLE001 - raised in each caller's thread, never here
            self.fail(exc)

    def resume(self, request, produced: list[int], layers) -> None:
        """Go on with a stream another decoder started, as row 0, from its cache ``layers``."""
        row = _Live(request, self.decoder.adapter_index(request.adapter),
                    min(request.params.max_new_tokens, self.decoder.context_length - len(request.prompt_ids)))
        row.produced, row.next = list(produced), produced[-1]
        row.position = len(request.prompt_ids) + len(produced) - 1
        for token in produced:
            row.ban.add(token)
        self.decoder.reserve(1, len(request.prompt_ids) + row.limit)
        self.decoder.adopt(0, layers)
        self.live.append(row)
        self.pending.remove(request)

    def admit(self, requests: list) -> None:
        """Start ``requests`` as rows, taking each out of that list once it is a row or released
        (what is left there on a failure is released by ``fail``): their prompts run together in
        groups of similar length, and each gets its first token."""
        import torch

        from .batching import release

        starting = []
        for request in list(requests):
            n = len(request.prompt_ids)
            request.streamer.put(torch.tensor([request.prompt_ids]))  # the prompt, which the streamer skips
            row = _Live(request, self.decoder.adapter_index(request.adapter),
                        min(request.params.max_new_tokens, self.decoder.context_length - n))
            if row.limit <= 0:
                release(request, [], True, self.finish_reason)
                requests.remove(request)
            else:
                starting.append(row)
        if not starting:
            return
        self.decoder.reserve(len(self.live) + len(starting), max(r.position + r.limit for r in starting))
        for group in prefill_groups(starting, self.decoder.prefill_waste):
            first = len(self.live)
            self.live.extend(group)
            for row in group:
                requests.remove(row.request)
            logits = self.decoder.prefill(first, [r.request.adapter for r in group],
                                          [r.request.prompt_ids for r in group])
            greedy = logits.argmax(-1).tolist()
            for i, row in enumerate(group):
                self.deliver(row, row.choose(logits[i], greedy[i]))

    def drop_cancelled(self) -> None:
        """Close the rows whose caller has gone."""
        for row in [r for r in self.live if r.request.cancelled.is_set()]:
            self.close(row, finished=False)

    def step(self) -> None:
        """One token for every live row."""
        rows = list(self.live)
        logits, greedy = self.decoder.step([r.next for r in rows], [r.position for r in rows],
                                           [r.adapter for r in rows])
        chosen = chosen_tokens(rows, logits, greedy.tolist())
        for i, row in enumerate(rows):
            row.position += 1
            if row.request.cancelled.is_set():
                self.close(row, finished=False)
            else:
                self.deliver(row, chosen[i])

    def deliver(self, row: _Live, token: int) -> None:
        """Stream ``token`` to the row's caller; the row ends at an end token or its limit."""
        import torch

        row.produced.append(token)
        row.ban.add(token)
        row.request.streamer.put(torch.tensor([token]))
        if token in self.eos_ids or len(row.produced) >= row.limit:
            self.close(row, finished=True)
        else:
            row.next = token

    def close(self, row: _Live, finished: bool) -> None:
        """Release the row's stream; the last row takes its slot, so rows stay 0..n-1."""
        from .batching import release

        slot = self.live.index(row)
        last = self.live.pop()
        if last is not row:
            self.decoder.move(len(self.live), slot, last.position + 1)  # + this step's token, if not counted yet
            self.live[slot] = last
        release(row.request, row.produced, finished, self.finish_reason)

    def fail(self, exc: BaseException) -> None:
        """Hand ``exc`` to the caller of every row and every claimed stream, and release them."""
        from .batching import release

        for row in self.live:
            row.request.failure.append(exc)
            release(row.request, row.produced, False, self.finish_reason)
        for request in self.pending:
            if not request.released.is_set():
                request.failure.append(exc)
                release(request, [], False, self.finish_reason)
        self.live.clear()


def prefill_groups(rows: list[_Live], waste: float = 0.25) -> list[list[_Live]]:
    """``rows`` in groups whose prompts run as one padded batch, shortest first: a group takes the
    next prompt while padding stays within ``waste`` of its tokens (on a CPU padding costs as much
    as a token; on a GPU one pass for several prompts saves their launch overheads)."""
    groups: list[list[_Live]] = []
    for row in sorted(rows, key=lambda r: len(r.request.prompt_ids)):
        n = len(row.request.prompt_ids)
        group = groups[-1] if groups else None
        if group is not None:
            real = sum(len(r.request.prompt_ids) for r in group) + n
            if n * (len(group) + 1) <= (1 + waste) * real:
                group.append(row)
                continue
        groups.append([row])
    return groups
