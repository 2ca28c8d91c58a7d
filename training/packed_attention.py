"""Attention for padding-free packed batches without a varlen kernel.

TRL's padding-free packing flattens a batch into one long row of several examples, each restarting
its position ids, and passes the examples' boundaries (``cu_seq_lens_q``, ``max_length_q``). With
flash-attn installed, transformers runs a varlen kernel on those boundaries. Without it (the GPU
image here has none), transformers' SDPA path builds a block-diagonal mask over the whole row, and
SDPA with a mask cannot use its flash kernel: for the spam spec's 16 x 320-token packs, the
memory-efficient kernel with a 5,120 x 5,120 mask spent ~74 ms of each step's GPU time on attention
(benchmarks/results/train-cuda-profile.txt), nearly all of it on masked-out pairs.

``packed_sdpa`` gives SDPA what a varlen kernel would compute: the examples are copied into a
[examples, heads, longest example, head_dim] batch (one ``index_copy`` per tensor), attended with
``is_causal=True`` and no mask (so SDPA may choose its flash kernel; a causal row never sees the
padding after it), and copied back. Every example sees exactly its own earlier tokens, as with the
block mask; a test checks the loss and gradients equal those of transformers' ``sdpa`` path.
"""

from __future__ import annotations

ATTENTION_NAME = "adapterlab_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention function: (output [batch, tokens, heads, head_dim], None)."""
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or attention_mask is not None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        # not a packed row (a padded batch, generation with a cache): transformers' own SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    slots, examples, longest = _slots(bounds, _multiple_of_8(kwargs["max_length_q"]), query.shape[2])
    heads = query.shape[1]
    output = F.scaled_dot_product_attention(
        _to_examples(query, slots, examples, longest), _to_examples(key, slots, examples, longest),
        _to_examples(value, slots, examples, longest), dropout_p=dropout, is_causal=True, scale=scaling,
        enable_gqa=key.shape[1] != heads)
    # [examples, heads, longest, d] -> the packed row's tokens, [1, tokens, heads, d]
    flat = output.transpose(1, 2).reshape(examples * longest, heads, output.shape[-1])
    return flat.index_select(0, slots)[None], None


def _multiple_of_8(length) -> int:
    """The examples' padded length: a multiple of 8, so a compiled layer (CUDA) is not compiled once
    for aligned and once for unaligned lengths (inductor guards on the alignment of its buffers)."""
    return (int(length) + 7) // 8 * 8


_last: list = [None, None]  # (boundaries tensor, its slots): computed once per forward, not per layer


def _slots(bounds, longest: int, tokens: int):
    """Each packed token's row in the [examples * longest] layout: example index * longest + its
    offset in the example (from the boundaries alone, so no device-to-host sync)."""
    import torch

    compiling = torch.compiler.is_compiling()  # a compiled layer recomputes: the cache would be a guard
    if not compiling and _last[0] is bounds:
        return _last[1]
    # bounds[0] is 0, so counting the starts at or before a token, less one, is its example. The
    # boundaries go to searchsorted as they are: inductor (CUDA) cannot lower it on a slice of them.
    token = torch.arange(tokens, device=bounds.device, dtype=bounds.dtype)
    example = torch.searchsorted(bounds, token, right=True) - 1
    slots = example * longest + token - bounds[example]
    layout = (slots, bounds.numel() - 1, longest)
    if not compiling:
        _last[0], _last[1] = bounds, layout  # holding the tensor keeps its id unique
    return layout


def _to_examples(states, slots, examples: int, longest: int):
    """[1, heads, tokens, d] of a packed row -> [examples, heads, longest, d], zeros after each example."""
    heads, dim = states.shape[1], states.shape[-1]
    rows = states.new_zeros(examples * longest, heads, dim).index_copy(0, slots, states[0].transpose(0, 1))
    return rows.view(examples, longest, heads, dim).transpose(1, 2)


def use_packed_attention(model) -> None:
    """Switch ``model`` (a transformers model) to ``packed_sdpa`` (registered once).

    transformers builds no attention mask for an attention function it does not know, so a model
    switched over must only see padding-free batches (packed rows, or rows without padding): what
    TRL's padding-free collator gives training and its evaluation. A padded batch would attend to
    its padding.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, packed_sdpa)
    model.set_attn_implementation(ATTENTION_NAME)
