"""training.packed_attention against transformers' own SDPA path on a padding-free packed batch:
the same loss and the same gradients, so swapping it in changes speed, not training."""

from __future__ import annotations

import pytest

from training.packed_attention import ATTENTION_NAME, use_packed_attention


def packed_batch(lengths, vocab: int, seed: int = 0):
    """A TRL padding-free batch: examples of ``lengths`` flattened into one row with boundaries."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    generator = torch.Generator().manual_seed(seed)
    examples = [{"input_ids": torch.randint(3, vocab, (n,), generator=generator).tolist()} for n in lengths]
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch, use_cache=False).loss  # as TRL's SFTTrainer calls it (a cache turns off
    # transformers' detection of packed rows)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lengths", [[5, 17, 9, 30], [12], [1, 40, 2]])
def test_packed_attention_gives_the_block_masked_loss_and_gradients(tiny_base, lengths):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation="sdpa", dtype=torch.float32)
    model.train()
    batch = packed_batch(lengths, model.config.vocab_size)
    assert batch["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in batch  # really one packed row
    want_loss, want_grads = loss_and_grads(model, batch)

    use_packed_attention(model)
    assert model.config._attn_implementation == ATTENTION_NAME
    got_loss, got_grads = loss_and_grads(model, batch)

    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)  # fp32 noise:
        # examples are padded to a multiple of 8 tokens, so SDPA blocks the sums differently


def test_examples_do_not_see_each_other(tiny_base):
    """The first example's logits do not depend on what is packed after it."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    use_packed_attention(model)
    first = packed_batch([8, 20], model.config.vocab_size, seed=1)
    other = packed_batch([8, 20], model.config.vocab_size, seed=1)
    other["input_ids"][0, 8:] = torch.randint(3, model.config.vocab_size, (20,), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a = model(**first).logits[0, :8]
        b = model(**other).logits[0, :8]
        changed = model(**other).logits[0, 8:] - model(**first).logits[0, 8:]
    torch.testing.assert_close(a, b)
    assert changed.abs().max() > 1e-3  # the second example's own tokens did change its logits
