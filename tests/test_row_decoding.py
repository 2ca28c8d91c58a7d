"""Row decoding (continuous batching): streams as rows of one cache, each at its own position with
its own adapter, joining and leaving between steps, give each stream what ``generate`` gives it alone.

On a CPU the steps run eagerly over the live rows; a GPU replays one graph of a padded step over the
whole cache, which ``test_a_padded_whole_cache_step...`` runs eagerly here.
"""

from __future__ import annotations

import threading

import pytest

from adapters.backends import GenerationParams
from adapters.fused_llama import FusedLlama
from adapters.batching import StreamRequest
from adapters.decoding import adapters_disabled
from adapters.row_decoding import RowDecoder, decode_streams
from test_decoding import PROMPTS, base_and_lora, generate_ids  # noqa: F401 - base_and_lora is a fixture

EOS = set()  # no end token: every row runs to its own limit, so lengths are known


class Tokens:
    """A streamer that keeps the token ids (the first put is the prompt, as with TextIteratorStreamer)."""

    def __init__(self):
        self.puts, self.ended = [], threading.Event()

    def put(self, value):
        self.puts.append(value.view(-1).tolist())

    def end(self):
        self.ended.set()

    @property
    def new_ids(self) -> list[int]:
        return [t for put in self.puts[1:] for t in put]


def request(tokenizer, prompt: str, adapter: str | None, new: int, **params) -> StreamRequest:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return StreamRequest(adapter, ids, GenerationParams(max_new_tokens=new, **params), Tokens())


def expected(model, tokenizer, req: StreamRequest, prompt: str) -> list[int]:
    new = req.params.max_new_tokens
    options = {"no_repeat_ngram_size": req.params.no_repeat_ngram_size} if req.params.no_repeat_ngram_size else {}
    if req.adapter is None:
        with adapters_disabled(model):
            return generate_ids(model, tokenizer, prompt, new, **options)
    return generate_ids(model, tokenizer, prompt, new, **options)


def test_rows_that_join_and_leave_each_get_what_generate_gives_them_alone(base_and_lora):
    model, tokenizer = base_and_lora
    decoder = RowDecoder(FusedLlama.build(model), ["default"], context_length=1024)
    asked = [(PROMPTS[0], "default", 12, {}), (PROMPTS[1], None, 5, {}), (PROMPTS[2], "default", 20, {}),
             (PROMPTS[1], "default", 9, {"no_repeat_ngram_size": 2})]
    first = [request(tokenizer, p, a, n, **o) for p, a, n, o in asked[:2]]
    joiners = [request(tokenizer, p, a, n, **o) for p, a, n, o in asked[2:]]
    calls = []

    def take_more(room):  # the third stream arrives after 3 steps, the fourth after 7
        calls.append(room)
        arrived = [joiners[i] for i, step in ((0, 3), (1, 7)) if len(calls) == step]
        return arrived[:room]

    decode_streams(decoder, first, EOS, lambda ids, limit: "length", take_more, between_steps=lambda: None,
                   max_rows=4)
    for req, (prompt, *_rest) in zip(first + joiners, asked):
        assert req.released.is_set() and req.streamer.ended.is_set()
        assert req.streamer.new_ids == expected(model, tokenizer, req, prompt), (prompt[:20], req.adapter)
    assert decoder.slots == 4  # grown from 2 as the rows joined


def test_a_joining_row_longer_than_the_cache_grows_it_and_the_running_rows_go_on(base_and_lora):
    model, tokenizer = base_and_lora
    decoder = RowDecoder(FusedLlama.build(model), ["default"], context_length=1024)
    short = request(tokenizer, PROMPTS[1], "default", 30)
    long_prompt = PROMPTS[2] * 3
    long = request(tokenizer, long_prompt, None, 20)
    assert len(short.prompt_ids) + 30 <= 256 < len(long.prompt_ids) + 20
    decode_streams(decoder, [short], EOS, lambda ids, limit: "length",
                   take_more=lambda room, pending=[long]: [pending.pop()] if pending else [],
                   between_steps=lambda: None, max_rows=2)
    assert decoder.capacity == 512
    assert short.streamer.new_ids == expected(model, tokenizer, short, PROMPTS[1])
    assert long.streamer.new_ids == expected(model, tokenizer, long, long_prompt)


def test_a_padded_whole_cache_step_gives_the_live_rows_the_same_logits(base_and_lora):
    """What a GPU captures: a step over a power-of-two number of rows (the spare ones reading token 0
    at position 0 of their own slot) attending over the whole cache, masked."""
    import torch

    model, tokenizer = base_and_lora
    decoder = RowDecoder(FusedLlama.build(model), ["default"], context_length=1024)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    decoder.reserve(4, max(len(p) for p in prompts) + 4)
    adapters = [1, 0, 1]
    firsts = decoder.prefill(0, [[None, "default"][a] for a in adapters], prompts).argmax(-1).tolist()
    positions = [len(p) for p in prompts]
    with torch.inference_mode():
        live, _ = decoder._step(torch.tensor(firsts)[:, None], torch.tensor(positions), torch.tensor(adapters),
                                upto=max(positions) + 1, rows=3)
        padded, greedy = decoder._step(torch.tensor(firsts + [0])[:, None], torch.tensor(positions + [0]),
                                       torch.tensor(adapters + [0]), upto=decoder.capacity, rows=4)
    assert torch.allclose(padded[:3], live, atol=5e-4)  # float32: other sums over more (masked) keys
    assert greedy[:3].tolist() == live.argmax(-1).tolist()


def test_capturing_a_graph_mid_batch_leaves_the_live_rows_keys_and_values(base_and_lora):
    """A GPU captures a step's graph the first time a batch needs it, with rows already in the cache;
    the warm-up steps before a capture really run, at the capture buffers' positions."""
    import torch

    model, tokenizer = base_and_lora
    decoder = RowDecoder(FusedLlama.build(model), ["default"], context_length=1024)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]]
    decoder.reserve(2, max(len(p) for p in prompts) + 4)
    decoder.prefill(0, ["default"] * len(prompts), prompts)
    before = [k.clone() for k in decoder.keys] + [v.clone() for v in decoder.values]
    with torch.inference_mode():
        decoder._step(*decoder.capture_inputs(2), upto=decoder.capacity, rows=2)
    after = decoder.keys + decoder.values
    for old, new in zip(before, after):
        assert torch.equal(old[:, :, :decoder.capacity - 1], new[:, :, :decoder.capacity - 1])


def test_a_caller_gone_mid_batch_is_dropped_and_the_others_finish(base_and_lora):
    model, tokenizer = base_and_lora
    decoder = RowDecoder(FusedLlama.build(model), ["default"], context_length=1024)
    leaving, staying = request(tokenizer, PROMPTS[1], None, 40), request(tokenizer, PROMPTS[0], "default", 15)
    steps = []

    def between_steps():
        steps.append(1)
        if len(steps) == 4:
            leaving.cancelled.set()

    finished = []
    staying.on_finish = finished.append
    leaving.on_finish = finished.append
    decode_streams(decoder, [leaving, staying], EOS, lambda ids, limit: "length", lambda room: [], between_steps,
                   max_rows=2)
    assert len(leaving.streamer.new_ids) == 5 and leaving.released.is_set()  # the prefill's token and four steps'
    assert staying.streamer.new_ids == expected(model, tokenizer, staying, PROMPTS[0])
    assert finished == ["length"]  # only the stream that ended by itself


@pytest.mark.parametrize("where", ["prefill", "step"])
def test_a_failure_reaches_every_caller_of_the_batch_and_releases_them(base_and_lora, monkeypatch, where):
    model, tokenizer = base_and_lora
    decoder = RowDecoder(FusedLlama.build(model), ["default"], context_length=1024)
    reqs = [request(tokenizer, PROMPTS[1], None, 10), request(tokenizer, PROMPTS[0], "default", 10)]

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(decoder, where, broken)
    decode_streams(decoder, reqs, EOS, lambda ids, limit: "length", lambda room: [], lambda: None, max_rows=2)
    for req in reqs:
        assert req.released.is_set() and req.streamer.ended.is_set()
        assert [str(e) for e in req.failure] == ["out of memory"]


def test_prompts_run_together_padded_give_each_the_logits_it_gets_alone(base_and_lora):
    import torch

    model, tokenizer = base_and_lora
    decoder = RowDecoder(FusedLlama.build(model), ["default"], context_length=1024)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    assert len({len(p) for p in prompts}) == 3
    decoder.reserve(6, max(len(p) for p in prompts) + 1)
    together = decoder.prefill(0, ["default", None, "default"], prompts)
    alone = torch.stack([decoder.prefill(3 + i, [a], [p])[0]
                         for i, (a, p) in enumerate(zip(["default", None, "default"], prompts))])
    assert torch.allclose(together, alone, atol=5e-4)
    for i, p in enumerate(prompts):  # the same keys/values where each prompt is (past it: padding's)
        assert torch.allclose(decoder.keys[0][i, :, :len(p)], decoder.keys[0][3 + i, :, :len(p)], atol=1e-5)


def test_prompts_of_similar_length_are_grouped_shortest_first():
    from adapters.row_decoding import _Live, prefill_groups

    def row(n):
        return _Live(StreamRequest(None, list(range(n)), GenerationParams(), Tokens()), 0, 10)

    groups = prefill_groups([row(n) for n in (100, 10, 12, 95, 11, 400)])
    assert [[len(r.request.prompt_ids) for r in g] for g in groups] == [[10, 11, 12], [95, 100], [400]]


def test_a_stream_handed_over_is_released_with_the_failure_when_taking_it_over_fails(base_and_lora, monkeypatch):
    from adapters.row_decoding import Resumed

    model, tokenizer = base_and_lora
    decoder = RowDecoder(FusedLlama.build(model), ["default"], context_length=1024)
    handed = request(tokenizer, PROMPTS[1], None, 10)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(decoder, "adopt", broken)
    decode_streams(decoder, [], EOS, lambda ids, limit: "length", lambda room: [], lambda: None, max_rows=2,
                   resumed=Resumed(handed, [5, 6], layers=[]))
    assert handed.released.is_set() and handed.streamer.ended.is_set()
    assert [str(e) for e in handed.failure] == ["out of memory"]


def test_rows_that_share_one_adapter_skip_the_gather_and_get_the_same_logits(base_and_lora, monkeypatch):
    """Eager passes whose rows all have one adapter (or all the base) use its LoRA weights as they
    are instead of gathering them per row: the same logits as the gathered path."""
    import torch

    import adapters.row_decoding as row_decoding

    model, tokenizer = base_and_lora
    prompt = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]

    def logits(adapter: str | None) -> tuple:
        decoder = RowDecoder(FusedLlama.build(model), ["default"], context_length=1024)
        decoder.reserve(2, len(prompt) + 2)
        first = decoder.prefill(0, [adapter, adapter], [prompt, prompt])
        index = decoder.adapter_index(adapter)
        step, _ = decoder.step([7, 7], [len(prompt)] * 2, [index, index])
        return first, step

    for adapter in ("default", None):
        uniform = logits(adapter)
        with monkeypatch.context() as patch:
            patch.setattr(row_decoding, "_adapter_rows", lambda rows, device: torch.tensor(rows, device=device))
            gathered = logits(adapter)
        for got, want in zip(uniform, gathered):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with_lora, without = logits("default"), logits(None)
    assert not torch.allclose(with_lora[1], without[1])  # the adapter does change them
