"""The static-cache decoder (the GPU's CUDA-graph path) produces exactly what ``model.generate`` does.

On CPU its steps run eagerly: the same cache, positions, masks and token choice the graph replays.
"""

from __future__ import annotations

import warnings

import pytest

from adapters.decoding import StaticDecoder, cache_length
from conftest import train_tiny_lora
from adapters.catalog import load_catalog

PROMPTS = ["<|im_start|>user\nWhat are the symptoms of diabetes?<|im_end|>\n<|im_start|>assistant\n",
           "hello", "win a free prize call now " * 12]


def generate_ids(model, tokenizer, prompt: str, new: int, **options) -> list[int]:
    import torch

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=new, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id, **options)
    return out[0, ids.shape[1]:].tolist()


def decoder_ids(decoder, tokenizer, prompt: str, new: int, state=None, **options) -> list[int]:
    import torch

    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        return decoder.generate(state, ids, new, **options)


def repeats_an_ngram(prompt: list[int], new: list[int], n: int) -> bool:
    """Whether a generated token completes an n-gram that already occurred (the prompt included)."""
    seq = prompt + new
    seen = {tuple(seq[i:i + n]) for i in range(len(prompt) - n + 1)}
    for i in range(max(0, len(prompt) - n + 1), len(seq) - n + 1):
        if tuple(seq[i:i + n]) in seen:
            return True
        seen.add(tuple(seq[i:i + n]))
    return False


@pytest.fixture()
def base_and_lora(tiny_base, catalog):
    """The tiny base with a LoRA adapter (trained a few steps so it changes the outputs) via PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = load_catalog(catalog)["medquad"]
    train_tiny_lora(tiny_base, spec, [("What are the symptoms of diabetes?", "Thirst and hunger.")],
                    spec.directory, steps=15)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(spec.directory))
    return model.eval(), tokenizer


def test_static_decoding_matches_generate_with_an_adapter_and_without(base_and_lora):
    model, tokenizer = base_and_lora
    decoder = StaticDecoder(model, [tokenizer.eos_token_id], context_length=1024)
    assert not decoder.use_graphs  # CPU: the eager path of the same steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoder_ids(decoder, tokenizer, PROMPTS[0], 5)
    # the cache goes in by the keyword this transformers takes (renamed `cache` in 5.24; 5.40 drops the old)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    for prompt in PROMPTS:
        with_adapter = decoder_ids(decoder, tokenizer, prompt, 40, state="medquad")
        assert with_adapter == generate_ids(model, tokenizer, prompt, 40)
        with model.disable_adapter():
            assert decoder_ids(decoder, tokenizer, prompt, 40, state=None) == generate_ids(model, tokenizer, prompt, 40)
    # a later, shorter request reuses the cache without seeing the earlier one
    assert decoder_ids(decoder, tokenizer, "hello", 10) == generate_ids(model, tokenizer, "hello", 10)


@pytest.mark.parametrize("n", [1, 2])
def test_no_repeat_ngram_size_bans_what_generate_bans(base_and_lora, n):
    model, tokenizer = base_and_lora
    decoder = StaticDecoder(model, [tokenizer.eos_token_id], context_length=1024)
    prompt_ids = tokenizer("hello", add_special_tokens=False)["input_ids"]
    free = decoder_ids(decoder, tokenizer, "hello", 60, state="medquad")
    banned = decoder_ids(decoder, tokenizer, "hello", 60, state="medquad", no_repeat_ngram_size=n)
    assert repeats_an_ngram(prompt_ids, free, n) and banned != free  # the ban has something to do
    assert not repeats_an_ngram(prompt_ids, banned, n)
    assert banned == generate_ids(model, tokenizer, "hello", 60, no_repeat_ngram_size=n)


def test_the_ngram_ban_follows_the_sequence_one_token_at_a_time():
    from adapters.decoding import NGramBan

    ban = NGramBan(3, [1, 2, 3, 1])
    assert ban.banned() == set()  # "3 1" has not been followed by anything yet
    ban.add(2)
    assert ban.banned() == {3}  # "1 2" was followed by 3
    assert NGramBan(0, [1, 1, 1]).banned() == set() and NGramBan(1, [4, 5]).banned() == {4, 5}


def test_decoding_stops_where_asked_and_at_the_cache_end(base_and_lora):
    model, tokenizer = base_and_lora
    decoder = StaticDecoder(model, [tokenizer.eos_token_id], context_length=300)
    seen = []
    ids = tokenizer("hello", add_special_tokens=False)["input_ids"]
    out = decoder.generate(None, ids, 30, on_token=lambda t: seen.append(t) or len(seen) < 5)
    assert out == seen and len(out) == 5
    long_prompt = list(range(5, 295))  # 290 tokens: only 10 fit in a 300-token context
    assert len(decoder.generate(None, long_prompt, 50)) <= 10


def test_cache_lengths_are_powers_of_two_within_the_context():
    assert cache_length(10, 8192) == 256
    assert cache_length(257, 8192) == 512
    assert cache_length(5000, 8192) == 8192
    assert cache_length(9000, 8192) == 8192


def test_sampling_is_reproducible_with_a_seeded_generator(base_and_lora):
    import torch

    model, tokenizer = base_and_lora
    decoder = StaticDecoder(model, [tokenizer.eos_token_id], context_length=1024)
    ids = tokenizer("hello", add_special_tokens=False)["input_ids"]
    runs = [decoder.generate(None, ids, 20, temperature=1.5, top_p=0.9,
                             generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert runs[0] == runs[1]
    greedy = decoder.generate(None, ids, 20)
    hot = [decoder.generate(None, ids, 20, temperature=5.0, generator=torch.Generator().manual_seed(s))
           for s in range(3)]
    assert any(h != greedy for h in hot)


def test_the_backend_streams_and_completes_through_the_decoder_as_it_does_on_a_gpu(tiny_base, catalog):
    from adapters import Runtime

    runtime = Runtime.local(catalog, base=str(tiny_base), progress=False)
    messages = [{"role": "user", "content": "What are the symptoms of diabetes?"}]
    expected = runtime.generate(None, messages, max_new_tokens=30, temperature=0, stream=False).read()
    backend = runtime.backend
    backend._static_decoder = StaticDecoder(backend.model, [backend.tokenizer.eos_token_id],
                                            backend.context_length, use_graphs=False)
    streamed = runtime.generate(None, messages, max_new_tokens=30, temperature=0, stream=True)
    pieces = list(streamed)
    assert len(pieces) > 1 and "".join(pieces) == expected
    assert runtime.generate(None, messages, max_new_tokens=30, temperature=0, stream=False).read() == expected
    early = runtime.generate(None, messages, max_new_tokens=30, temperature=0, stream=True)
    next(iter(early))
    early.pieces.close()  # the user stopped it: the model is free again at once
    assert runtime.generate(None, messages, max_new_tokens=30, temperature=0, stream=False).read() == expected


def test_an_adapter_merged_into_the_base_weights_gives_the_adapters_logits(base_and_lora):
    """What the GPU replays for an adapter: the base graph (adapters off) over W + scale·B·A."""
    import torch

    from adapters.decoding import adapters_disabled, merged_weights

    model, tokenizer = base_and_lora
    ids = tokenizer(PROMPTS[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        unmerged = model(input_ids=ids).logits
        with adapters_disabled(model):
            base = model(input_ids=ids).logits
            pairs = merged_weights(model, "default")
            originals = [w.detach().clone() for w, _ in pairs]
            for weight, merged in pairs:
                weight.data.copy_(merged)
            merged_logits = model(input_ids=ids).logits
            for (weight, _), saved in zip(pairs, originals):
                weight.data.copy_(saved)
        again = model(input_ids=ids).logits
    assert pairs and (unmerged - base).abs().max() > 1e-3  # the adapter changes the logits
    assert torch.allclose(merged_logits, unmerged, atol=1e-4)
    assert torch.equal(again, unmerged)  # adapters back on, base weights restored


@pytest.mark.parametrize("temperature, top_p, spread, nucleus", [
    (0.7, 0.9, 3.0, "within the candidates"),   # a peaked distribution, as a model's usually is
    (1.0, 0.5, 5.0, "within the candidates"),
    (1.0, 0.5, 1.0, "beyond them"),
    (1.5, 0.95, 0.05, "beyond them"),           # nearly flat: the whole vocabulary is sorted
    (0.7, 1.0, 3.0, "the whole vocabulary"),    # no top-p
])
def test_sampling_draws_from_the_distribution_of_transformers_warpers(temperature, top_p, spread, nucleus):
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from adapters.decoding import SAMPLE_CANDIDATES, sampling_distribution

    logits = torch.randn(49152, generator=torch.Generator().manual_seed(0)) * spread  # SmolLM2's vocabulary
    tokens, probs = sampling_distribution(logits, temperature, top_p)
    scores = TemperatureLogitsWarper(temperature)(None, logits[None])
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    expected = torch.softmax(scores, dim=-1)[0]
    got = torch.zeros_like(expected)
    got[tokens] = probs
    assert set(tokens.tolist()) == set(expected.nonzero().flatten().tolist())
    assert torch.allclose(got, expected, atol=1e-7, rtol=1e-4)
    assert (len(tokens) <= SAMPLE_CANDIDATES) == (nucleus == "within the candidates")


def test_rows_sampled_together_draw_from_each_rows_own_distribution():
    """``sample_rows`` draws every row at once; each row's tokens follow that row's own temperature
    and top-p (``sampling_distribution``), including a row whose nucleus needs the whole vocabulary."""
    import torch

    from adapters.decoding import SAMPLE_CANDIDATES, sample_rows, sampling_distribution

    torch.manual_seed(0)
    peaked, flat = torch.randn(2, 49152) * 5, torch.randn(1, 49152) * 0.05
    logits = torch.cat([peaked, flat])
    settings = [(1.0, 0.8), (1.3, 0.9), (1.0, 0.9)]  # the flat row's nucleus is beyond the candidates
    draws = [sample_rows(logits, [t for t, _ in settings], [p for _, p in settings]) for _ in range(400)]
    for i, (temperature, top_p) in enumerate(settings):
        tokens, probs = sampling_distribution(logits[i], temperature, top_p)
        allowed = dict(zip(tokens.tolist(), probs.tolist()))
        seen = [d[i] for d in draws]
        assert all(t in allowed for t in seen), f"row {i} drew a token outside its nucleus"
        if len(allowed) <= SAMPLE_CANDIDATES:  # frequencies follow the row's probabilities
            top = max(allowed, key=allowed.get)
            assert abs(seen.count(top) / len(seen) - allowed[top]) < 0.08
    assert len({d[2] for d in draws}) > 300  # the flat row really draws from its wide nucleus
