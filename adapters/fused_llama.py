"""The Llama decoder's forward pass over unmerged LoRA adapters, in fewer, larger operations:
``FusedLlama`` fuses a loaded model's projections once, and ``hidden_states`` is the one place the
layer arithmetic is written, shared by the backend's scoring (``adapters.backends``) and its
continuous-batching decoder (``adapters.row_decoding``).

Why a module of its own: both of those run it, each with its own cache and its own way of adding
LoRA terms; written in each (as it was until 2026-11-30), every change to the layer had to be made
twice.
"""

from __future__ import annotations


def additive_mask(allowed, dtype):
    """The additive attention mask for a boolean one: 0 where attending is allowed, the dtype's
    lowest value elsewhere."""
    import torch

    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


class FusedLlama:
    """The forward pass of a Llama-architecture model with unmerged LoRA adapters: the same
    arithmetic as transformers + PEFT, in fewer, larger operations. Scoring runs it through
    ``forward``, the row decoder through ``hidden_states``; it was written for scoring, whose
    measurements follow.

    Why: on a 2-core CPU one ``Runtime.classify`` call (SmolLM2-135M, 50 new tokens) is almost
    all forward pass: 173 ms p50, of which ~20 ms is PEFT's per-layer LoRA path (210 LoRA
    layers, each a Python call plus A, dropout, B, scale and add) and much of the rest is
    small-operation overhead around 210 separate projections. Here, per decoder layer:

    * q/k/v and gate/up are one matmul each (their base weights concatenated), four
      projections per layer instead of seven;
    * an adapter's LoRA is one extra matmul pair per projection group: its A matrices stacked,
      its B matrices (times the LoRA scaling) block-diagonal, added with ``addmm``;
    * attention is SDPA with ``enable_gqa`` (no repeated key/value heads) and the prefix
      keys/values are plain tensors that are read, never copied (the transformers path deep-copies
      a DynamicCache per call).

    Nothing is merged: the base weights stay the base (``adapter=None`` skips the LoRA terms),
    so adapter switching is unchanged, and scores equal the transformers path's (max |diff| of
    log-probabilities 0.0 on the spam prompt; the classify probability is the same float). Measured
    on the 2-core CPU while another job loaded it (so noisy): forward alone, interleaved in one
    process, min 169 -> 149 ms and p25 187 -> 160 ms; whole ``Runtime.classify``, interleaved, min
    173 -> 158 ms; ``bench serve`` p50, runs alternated with the old code, 216/207 -> 154/200 ms.
    Merging each adapter into a copy of the weights measured ~13 ms faster still, but costs 425 MB
    per adapter and a rebuild on every switch, and changes log-probabilities by ~3e-5: not done.

    Memory: the fused weights are not a copy. The base layers' weight parameters are re-pointed
    at row slices of the fused tensor (same values), so the model keeps its size; ``intact``
    notices if something re-binds a parameter later (``.to()``, a reload), and the path is rebuilt.
    Used for float32 and bfloat16 base weights (float16, 4-bit layers, biases, DoRA or other LoRA
    variants, other architectures: the transformers path). Under bf16 base weights PEFT keeps the
    LoRA weights in float32 and adds their term in float32; the fused path does the same, so its
    scores equal PEFT's there too (max |diff| 0.0 on the tiny model; the real spam adapter's
    probabilities agree to 5 decimals). bf16 is what a GPU and a CPU with bf16 instructions serve
    in: on this 2-core CPU, interleaved in one process, one spam classification p50 115 -> 94 ms,
    a batch of 32 1811 -> 1743 ms.
    """

    GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",)),
              ("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",)))

    def __init__(self, llama, layers: list, dtype):
        self.llama = llama  # the *ForCausalLM inside the PEFT wrapper
        self.layers = layers  # per decoder layer: four (fused weight, [modules], [(param, data_ptr)])
        self.dtype = dtype
        self._lora: dict[str, list] = {}  # adapter -> per layer, per group: (A stacked, B^T block) or None
        config = llama.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    @classmethod
    def build(cls, model) -> "FusedLlama | None":
        planned = cls._plan(model)
        if planned is None:
            return None
        llama, plan, dtype = planned
        return cls._fuse(llama, plan, dtype)

    @classmethod
    def applies(cls, model) -> bool:
        """Whether ``build`` would give a fused forward for ``model`` (it checks; nothing is fused)."""
        return cls._plan(model) is not None

    @classmethod
    def _plan(cls, model):
        """(the *ForCausalLM, per layer and group its (modules, base linears), the weights' dtype), or
        None where the model is not one this forward covers."""
        import torch

        try:
            from peft import PeftModel
            from peft.tuners.lora import Linear as LoraLinear
        except ImportError:  # pragma: no cover - peft is a dependency
            return None
        llama = model.base_model.model if isinstance(model, PeftModel) else model
        config = getattr(llama, "config", None)
        if (getattr(config, "model_type", None) != "llama" or getattr(config, "attention_bias", True)
                or getattr(config, "mlp_bias", True) or getattr(config, "hidden_act", None) != "silu"
                or getattr(config, "pretraining_tp", 1) != 1):
            return None
        try:
            decoder = llama.model.layers
        except AttributeError:
            return None
        dtype = None
        plan = []
        for layer in decoder:
            groups = []
            for parent, names in cls.GROUPS:
                modules = [getattr(getattr(layer, parent), name) for name in names]
                bases = []
                for module in modules:
                    if isinstance(module, LoraLinear):
                        if (module.fan_in_fan_out or module.lora_variant or any(module.lora_bias.values())
                                or module.merged):
                            return None
                        base = module.base_layer
                    else:
                        base = module
                    if type(base) is not torch.nn.Linear or base.bias is not None:
                        return None
                    if base.weight.dtype not in (torch.float32, torch.bfloat16):
                        return None
                    dtype = base.weight.dtype
                    bases.append(base)
                groups.append((modules, bases))
            plan.append(groups)
        return llama, plan, dtype

    @classmethod
    def _fuse(cls, llama, plan, dtype) -> "FusedLlama":
        import torch

        layers = []
        with torch.no_grad():
            for groups in plan:
                fused_layer = []
                for modules, bases in groups:
                    if len(bases) == 1:
                        weight = bases[0].weight
                    else:
                        weight = torch.cat([b.weight.detach() for b in bases]).contiguous()
                        at = 0
                        for b in bases:  # the parameter becomes a view of its rows: one copy in memory
                            rows = b.weight.shape[0]
                            b.weight.data = weight[at:at + rows]
                            at += rows
                    fused_layer.append((weight.detach(), modules,
                                        [(b.weight, b.weight.data_ptr()) for b in bases]))
                layers.append(fused_layer)
        return cls(llama, layers, dtype)

    def intact(self) -> bool:
        """Whether every base weight still lives where the fused tensors expect it."""
        return all(param.data_ptr() == ptr for layer in self.layers for _, _, params in layer
                   for param, ptr in params)

    def _lora_terms(self, adapter: str):
        """Per layer and projection group: (stacked A [sum r, in], (scaling * B) block-diagonal,
        transposed [sum r, out]), or None where no projection of the group has ``adapter``."""
        import torch

        if adapter not in self._lora:
            terms = []
            with torch.no_grad():
                for layer in self.layers:
                    per_group = []
                    for weight, modules, _ in layer:
                        a_parts, b_parts = [], []
                        for module in modules:
                            if hasattr(module, "lora_A") and adapter in module.lora_A:
                                a_parts.append(module.lora_A[adapter].weight)
                                b_parts.append(module.lora_B[adapter].weight * module.scaling[adapter])
                            else:  # no LoRA here: no rows of A, an empty column block of B
                                out_features = module.weight.shape[0] if not hasattr(module, "base_layer") \
                                    else module.base_layer.weight.shape[0]
                                a_parts.append(weight.new_zeros((0, weight.shape[1])))
                                b_parts.append(weight.new_zeros((out_features, 0)))
                        if all(a.shape[0] == 0 for a in a_parts):
                            per_group.append(None)
                        else:
                            per_group.append((torch.cat(a_parts).contiguous(),
                                              torch.block_diag(*b_parts).t().contiguous()))
                    terms.append(per_group)
            self._lora[adapter] = terms
        return self._lora[adapter]

    def weight(self, layer: int, group: int):
        """The fused base weight of projection group ``group`` (0 q/k/v, 1 o, 2 gate/up, 3 down) of
        decoder layer ``layer``."""
        return self.layers[layer][group][0]

    def attention(self, q, k, v, scale: float, mask=None, is_causal: bool = False):
        """SDPA over grouped key/value heads: [batch, heads, tokens, head dim]."""
        import torch.nn.functional as F

        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=self.kv_heads != self.heads)

    def hidden_states(self, input_ids, position_ids, project, attend):
        """The decoder layers' output [batch, tokens, hidden], before the final norm: the one place
        the Llama layer arithmetic is written, for scoring (``forward``) and for row decoding
        (``adapters.row_decoding``). What those do differently is passed in:

        * ``project(x, layer, group)``: ``x @ weight(layer, group).T`` plus the caller's LoRA term;
        * ``attend(layer, q, k, v, scale)``: attention of ``q`` over the caller's keys/values, given
          these tokens' own ``k`` and ``v`` ([batch, kv heads, tokens, head dim], rotary applied),
          which the caller keeps where it keeps its cache.
        """
        import torch.nn.functional as F
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        inner = self.llama.model
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        hidden = inner.embed_tokens(input_ids)
        cos, sin = inner.rotary_emb(hidden, position_ids)
        batch, length = input_ids.shape
        for i, decoder in enumerate(inner.layers):
            q, k, v = project(decoder.input_layernorm(hidden), i, 0).split(
                [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
            q = q.view(batch, length, heads, head_dim).transpose(1, 2)
            k = k.view(batch, length, kv_heads, head_dim).transpose(1, 2)
            v = v.view(batch, length, kv_heads, head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            attended = attend(i, q, k, v, decoder.self_attn.scaling)
            hidden = hidden + project(attended.transpose(1, 2).reshape(batch, length, heads * head_dim), i, 1)
            gate, up = project(decoder.post_attention_layernorm(hidden), i, 2).chunk(2, dim=-1)
            hidden = hidden + project(F.silu(gate) * up, i, 3)
        return hidden

    def forward(self, adapter: str | None, input_ids, position_ids, mask, past, keep):
        """Final (normed) hidden states at the ``keep`` positions (None when ``keep`` is None) and each layer's
        (key, value) over ``past`` + these tokens. ``mask``: additive [batch, 1, q, past + q]."""
        import torch

        lora = self._lora_terms(adapter) if adapter is not None else None
        kv = []

        def project(x, layer, group):
            return _plus_lora(x, self.weight(layer, group), None if lora is None else lora[layer][group])

        def attend(layer, q, k, v, scale):
            if past is not None:
                k = torch.cat([past[layer][0], k], dim=2)
                v = torch.cat([past[layer][1], v], dim=2)
            kv.append((k, v))
            return self.attention(q, k, v, scale, mask=mask)

        hidden = self.hidden_states(input_ids, position_ids, project, attend)
        if keep is None:
            return None, kv
        return self.llama.model.norm(hidden[:, keep]), kv


def _plus_lora(x, weight, lora):
    """``x @ weight.T`` plus an adapter's term ``(x @ A.T) @ (scaling * B).T`` (``lora`` = (A stacked,
    (scaling * B)^T block-diagonal), None: no term), as PEFT computes ``base(x) + B(A(x)) * scaling``
    with dropout off."""
    import torch
    import torch.nn.functional as F

    y = F.linear(x, weight)
    if lora is None:
        return y
    a, b_t = lora
    flat = y.view(-1, y.shape[-1])
    if a.dtype == y.dtype:
        return torch.addmm(flat, F.linear(x, a).view(-1, a.shape[0]), b_t).view(y.shape)
    # PEFT keeps LoRA weights in float32 under bf16 base weights, computes the LoRA term and
    # the sum in float32, and rounds once to the base's dtype: so does this
    low_rank = F.linear(x.to(a.dtype), a).view(-1, a.shape[0])
    return torch.addmm(flat.to(a.dtype), low_rank, b_t).to(y.dtype).view(y.shape)
