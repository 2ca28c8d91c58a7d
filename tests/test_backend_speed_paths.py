"""The fused scoring path of LocalBackend (adapters.fused_llama.FusedLlama) against the plain
transformers + PEFT forward: same scores, no weight copies, and a fall back where it does not apply."""

from __future__ import annotations

import warnings

import pytest

from adapters.backends import GenerationParams
from adapters.fused_llama import FusedLlama
from test_bench_serve import HAMMY, SPAMMY, flat, runtime, spam_prompts, trained_weights, two_adapters  # noqa: F401


def base_weight(module):
    """A projection's base weight, LoRA-wrapped or not."""
    return getattr(module, "base_layer", module).weight


def transformers_only(rt):
    """The runtime's backend with the fused path switched off (scores through model(...))."""
    rt.backend._fused = None
    return rt


@pytest.mark.parametrize("adapter", ["spam", "oncology", None])
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("cached", [False, True])
def test_fused_scores_equal_transformers_scores(tiny_base, two_adapters, adapter, batch_size, cached):
    fast, plain = runtime(tiny_base, two_adapters), transformers_only(runtime(tiny_base, two_adapters))
    prompts, options, prefix = spam_prompts(fast, [*SPAMMY, *HAMMY, "x"])
    prefix = prefix if cached else ""
    got = fast.backend.score(adapter, prompts, options, batch_size=batch_size, shared_prefix=prefix)
    assert isinstance(fast.backend._fused, FusedLlama)  # the tiny Llama takes the fused path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        want = plain.backend.score(adapter, prompts, options, batch_size=batch_size, shared_prefix=prefix)
    assert not [w for w in caught if "past_key_values" in str(w.message)]  # renamed `cache` in transformers 5.24
    # float32 rounding of sums ordered differently: relative to the score's size
    assert flat(got) == pytest.approx(flat(want), rel=2e-6, abs=1e-5)


@pytest.mark.parametrize("adapter", ["spam", None])
def test_fused_scores_equal_transformers_scores_in_bfloat16(tiny_base, two_adapters, adapter):
    """bf16 base weights under float32 LoRA weights (PEFT's default, and how a GPU or a bf16 CPU
    serves): the LoRA term and its sum are float32 on both paths, rounded to bf16 once."""
    import torch

    from adapters import Runtime
    from adapters.base_models import LoadOptions

    def bf16_runtime():
        return Runtime.local(two_adapters, base=str(tiny_base), options=LoadOptions(dtype="bfloat16"),
                             progress=False)

    fast, plain = bf16_runtime(), transformers_only(bf16_runtime())
    prompts, options, prefix = spam_prompts(fast, [*SPAMMY, *HAMMY, "x"])
    got = fast.backend.score(adapter, prompts, options, batch_size=4, shared_prefix=prefix)
    fused = fast.backend._fused
    assert isinstance(fused, FusedLlama) and fused.dtype == torch.bfloat16
    if adapter:
        assert fused._lora_terms(adapter)[0][0][0].dtype == torch.float32
    want = plain.backend.score(adapter, prompts, options, batch_size=4, shared_prefix=prefix)
    # equal here; a GEMM blocked differently on another CPU may round a bf16 activation differently.
    # The LoRA term in bf16 instead (A and B rounded) is off by 5e-3 relative: this fails it
    assert flat(got) == pytest.approx(flat(want), rel=2e-3, abs=1e-3)


def test_token_logprobs_keep_float32_differences_that_bf16_logits_round_away():
    import torch

    from adapters.backends import token_logprobs

    torch.manual_seed(0)
    hidden = torch.randn(256, 64).to(torch.bfloat16)
    weight = (torch.randn(300, 64) * 2.5).to(torch.bfloat16)  # logits of a few tens, as a model's
    weight[1] = weight[0]
    weight[1, 0] += 0.02  # token 1 is token 0 but slightly different: nearly tied labels
    exact = hidden.float() @ weight.float().T  # what float32 arithmetic gives for these bf16 values
    rounded = (hidden @ weight.T).float()
    zero, one = torch.zeros(256, dtype=torch.long), torch.ones(256, dtype=torch.long)
    ties = (rounded[:, 0] == rounded[:, 1]) & (exact[:, 0] != exact[:, 1])
    assert ties.sum() >= 100  # the case this is for really occurs here
    got = token_logprobs(hidden, weight, zero) - token_logprobs(hidden, weight, one)
    want = exact[:, 0] - exact[:, 1]
    assert torch.allclose(got, want, atol=1e-4)  # bf16 logits would say 0 for every tie
    assert torch.allclose(token_logprobs(hidden.float(), weight.float(), zero),  # float32: log-softmax
                          torch.log_softmax(exact, dim=-1)[:, 0], atol=1e-4)


def test_a_head_that_is_not_plain_is_scored_from_the_models_own_logits(tiny_base, two_adapters):
    from adapters.backends import plain_output_weight

    plain, other = runtime(tiny_base, two_adapters), runtime(tiny_base, two_adapters)
    llama = other.backend.model.get_base_model()
    assert plain_output_weight(llama) is llama.lm_head.weight
    llama.config.model_type = "gemma2"  # as if its logits were capped: only the model knows them
    assert plain_output_weight(llama) is None
    calls = []
    llama.register_forward_hook(lambda module, args, output: calls.append(output.logits.shape))
    prompts, options, prefix = spam_prompts(plain, [*SPAMMY, *HAMMY])
    got = other.backend.score("spam", prompts, options, shared_prefix=prefix)
    assert calls[-1][0] == len(prompts)  # the batch went through the model's own forward and head
    want = plain.backend.score("spam", prompts, options, shared_prefix=prefix)
    assert flat(got) == pytest.approx(flat(want), rel=2e-6, abs=1e-5)


def test_fusing_copies_no_weights_and_leaves_generation_alone(tiny_base, two_adapters):
    rt = runtime(tiny_base, two_adapters)
    before = rt.backend.complete("spam", ["win a prize"], GenerationParams(max_new_tokens=8))
    rt.classify("spam", SPAMMY)
    fused = rt.backend._fused
    attention = fused.llama.model.layers[0].self_attn
    w_qkv = fused.layers[0][0][0]
    q_weight = base_weight(attention.q_proj)
    assert q_weight.untyped_storage().data_ptr() == w_qkv.untyped_storage().data_ptr()  # a view, not a copy
    assert base_weight(attention.k_proj).data_ptr() == w_qkv[q_weight.shape[0]:].data_ptr()
    after = rt.backend.complete("spam", ["win a prize"], GenerationParams(max_new_tokens=8))
    assert after == before


def test_a_rebound_weight_rebuilds_the_fused_path(tiny_base, two_adapters):
    import torch

    rt = runtime(tiny_base, two_adapters)
    prompts, options, prefix = spam_prompts(rt, SPAMMY)
    first = rt.backend.score("spam", prompts, options, shared_prefix=prefix)
    old = rt.backend._fused
    weight = base_weight(old.llama.model.layers[1].mlp.up_proj)
    with torch.no_grad():
        weight.data = weight.data.clone() * 0.5  # re-bound (as .to() or a reload would) and changed
    assert not old.intact()
    changed = rt.backend.score("spam", prompts, options, shared_prefix=prefix)
    assert rt.backend._fused is not old and rt.backend._fused.intact()
    plain = transformers_only(runtime(tiny_base, two_adapters))
    with torch.no_grad():
        w = base_weight(plain.backend.model.base_model.model.model.layers[1].mlp.up_proj)
        w.data = w.data.clone() * 0.5
    assert flat(changed) == pytest.approx(flat(plain.backend.score("spam", prompts, options)), abs=1e-5)
    assert flat(changed) != pytest.approx(flat(first), abs=1e-4)


def test_training_mode_and_unsupported_models_use_the_transformers_path(tiny_base, two_adapters):
    rt = runtime(tiny_base, two_adapters)
    prompts, options, _ = spam_prompts(rt, SPAMMY)
    rt.backend.model.train()
    assert rt.backend._fused_path() is None
    rt.backend.model.eval()
    assert isinstance(rt.backend._fused_path(), FusedLlama)
    llama = rt.backend.model.base_model.model
    llama.config.mlp_bias = True  # as if the MLP had biases: not what the fused forward computes
    try:
        assert FusedLlama.build(rt.backend.model) is None
    finally:
        llama.config.mlp_bias = False


def test_switching_adapters_directly_leaves_peft_as_its_own_switch_would(tiny_base, two_adapters):
    """The direct switch (LoRA layers' two flags) against PEFT's set_adapter / disable_adapter_layers."""
    import torch

    fast, slow = runtime(tiny_base, two_adapters), runtime(tiny_base, two_adapters)
    slow.backend._switch_layers = []  # no direct switch: PEFT's own methods
    ids = fast.backend.tokenizer("win a free prize now", return_tensors="pt")["input_ids"]
    assert fast.backend._fast_switch_layers()  # plain LoRA: switched directly
    for adapter in ["spam", None, "oncology", "spam", None, "oncology", None]:
        states, outputs = [], []
        for rt in (fast, slow):
            rt.backend.activate(adapter)
            model = rt.backend.model
            layers = [m for m in model.modules() if hasattr(m, "lora_A")]
            states.append(([m.active_adapters for m in layers], [m.disable_adapters for m in layers],
                           model.active_adapter if adapter else None))
            with torch.inference_mode():
                outputs.append(model(input_ids=ids).logits)
        assert states[0] == states[1], adapter
        assert torch.equal(outputs[0], outputs[1]), adapter
    with torch.inference_mode():
        fast.backend.activate(None)
        base = fast.backend.model(input_ids=ids).logits
        fast.backend.activate("spam")
        assert not torch.equal(fast.backend.model(input_ids=ids).logits, base)  # the switch did something


def test_an_adapter_row_decoding_cannot_run_makes_a_gpu_decode_streams_one_at_a_time(tiny_base, tmp_path,
                                                                                     monkeypatch):
    """Without row decoding, a GPU batches streams through PEFT's mixed-adapter ``generate``, far
    slower than graph-replayed streams in turn. Adding a DoRA adapter (which the fused forward does
    not cover) had left the stream batch at its default."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapters.backends import LocalBackend
    from adapters.batching import MAX_STREAM_BATCH

    dora = tmp_path / "dora"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                   LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)).save_pretrained(dora)
    monkeypatch.setattr(LocalBackend, "_on_gpu", lambda self: True)  # as if the model were on a GPU
    backend = LocalBackend.load(str(tiny_base), progress=False)
    assert backend.max_stream_batch == MAX_STREAM_BATCH  # the tiny Llama is one row decoding covers
    backend.add_adapter("dora", dora)
    assert backend.max_stream_batch == 1
