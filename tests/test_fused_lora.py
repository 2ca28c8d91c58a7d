"""training.fused_lora against PEFT's own LoRA forward: the same loss and the same LoRA gradients
on a packed batch, PEFT's path wherever fusing does not apply, and a real training run with it."""

from __future__ import annotations

import pytest

from test_packed_attention import loss_and_grads, packed_batch
from training.fused_lora import fuse_lora_projections

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_model(tiny_base, dropout: float = 0.0, seed: int = 0):
    """The tiny base with a LoRA adapter whose B matrices are not zero (as after some training)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    model.train()
    return model


def lora_grads(grads: dict) -> dict:
    return {n: g for n, g in grads.items() if "lora_" in n}


def test_fused_projections_give_peft_loss_and_gradients(tiny_base):
    import torch

    plain, fused = lora_model(tiny_base), lora_model(tiny_base)
    layers = plain.config.num_hidden_layers
    assert fuse_lora_projections(fused) == 4 * layers  # q/k/v, o, gate/up and down in every layer
    batch = packed_batch([7, 19, 12], plain.config.vocab_size)
    want_loss, want = loss_and_grads(plain, batch)
    got_loss, got = loss_and_grads(fused, batch)
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    want, got = lora_grads(want), lora_grads(got)
    assert set(got) == set(want) and len(want) == 2 * len(TARGETS) * layers
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fusing_keeps_parameters_names_and_memory(tiny_base):
    plain, fused = lora_model(tiny_base), lora_model(tiny_base)
    fuse_lora_projections(fused)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()]
    attention = fused.base_model.model.model.layers[0].self_attn
    q, k = attention.q_proj.base_layer.weight, attention.k_proj.base_layer.weight
    # k's base weight is a view into the same storage as q's (the fused tensor), not a copy
    assert k.untyped_storage().data_ptr() == q.untyped_storage().data_ptr()
    state = {n: t for n, t in fused.state_dict().items() if "lora_" in n}
    assert state.keys() == {n for n in plain.state_dict() if "lora_" in n}


def test_a_disabled_adapter_and_another_input_take_peft_path(tiny_base):
    import torch

    plain, fused = lora_model(tiny_base), lora_model(tiny_base)
    fuse_lora_projections(fused)
    batch = packed_batch([9, 5], plain.config.vocab_size)
    with torch.no_grad(), plain.disable_adapter(), fused.disable_adapter():
        torch.testing.assert_close(fused(**batch).logits, plain(**batch).logits)
    # k_proj called on its own, with an input q_proj never saw: PEFT's own forward answers
    k_fused = fused.base_model.model.model.layers[0].self_attn.k_proj
    k_plain = plain.base_model.model.model.layers[0].self_attn.k_proj
    x = torch.randn(2, 3, plain.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(k_fused(x), k_plain(x))


def test_dropout_or_no_adapter_means_nothing_is_fused(tiny_base):
    import torch
    from transformers import AutoModelForCausalLM

    assert fuse_lora_projections(lora_model(tiny_base, dropout=0.1)) == 0
    assert fuse_lora_projections(AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)) == 0
