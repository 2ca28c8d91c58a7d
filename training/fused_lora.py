"""Fewer, larger operations for LoRA training of a Llama-architecture model.

Why: on the H100 a training step of the 135M base is bound by the CPU that launches its kernels,
not by the GPU (~67,000 operations a step, the GPU busy ~21% of it:
benchmarks/results/train-cuda-profile.txt). Most of them are PEFT's per-module LoRA path, run for
seven projections in each of 30 layers, each with its own base matmul, A and B matmuls, casts,
scaling and add, forward and backward.

The projections that read the same input are computed together: q, k and v of an attention layer,
gate and up of an MLP (o and down alone, which still saves PEFT's per-call Python). Per group, one
matmul over the base weights concatenated (the base weight parameters become views of the
concatenated tensor: no copy in memory), one over the adapters' A matrices stacked, one over their B
matrices (times the LoRA scaling) as one block-diagonal matrix.
The LoRA parameters stay PEFT's own, so the optimizer, checkpoints, ``save_pretrained`` and loading
the best checkpoint are untouched; the math is PEFT's (base(x) + scaling * B(A(x)), dropout off).

How: the PEFT ``lora.Linear`` modules keep their names and parameters; each gets an instance
``forward``. The group's first projection (q_proj, gate_proj) computes the whole group and returns its
own slice; the others (k_proj, v_proj, up_proj), called next on the same input tensor as
transformers' Llama does, return theirs. A call that does not fit this pattern (another input, the
adapter disabled or switched, a merged layer) runs PEFT's own forward, so nothing is ever wrong, only
unfused. Applied only where it is exact: plain LoRA (no DoRA or other variants, no LoRA dropout, no
bias), one active adapter, unquantized ``nn.Linear`` base layers. A test checks loss and gradients
against PEFT's own path.
"""

from __future__ import annotations

GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",)),
          ("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",)))


class _FusedGroup:
    """Projections of one layer that read the same input, computed as one."""

    def __init__(self, modules: list, adapter: str):
        import torch

        self.modules = modules
        self.adapter = adapter
        self.widths = [m.base_layer.weight.shape[0] for m in modules]
        with torch.no_grad():
            self.weight = (torch.cat([m.base_layer.weight.detach() for m in modules]).contiguous()
                           if len(modules) > 1 else modules[0].base_layer.weight.detach())
            at = 0
            for m, rows in zip(modules, self.widths):  # each base weight becomes a view of its rows
                m.base_layer.weight.data = self.weight[at:at + rows]
                at += rows
        self._pointers = [m.base_layer.weight.data_ptr() for m in modules]
        self._input = None  # the input the stashed outputs were computed from
        self._outputs: list = []

    def applies(self) -> bool:
        """Whether PEFT's own forward would do plain, active LoRA with this adapter on every module,
        over base weights that still live in the fused tensor (not moved or reloaded since)."""
        import torch

        # torch.compile cannot guard on data pointers; a compiled layer is compiled after fusing
        moved = not torch.compiler.is_compiling() and any(
            m.base_layer.weight.data_ptr() != ptr for m, ptr in zip(self.modules, self._pointers))
        return not moved and all(not m.disable_adapters and not m.merged and m.active_adapters == [self.adapter]
                                 for m in self.modules)

    def compute(self, x):
        """Every module's output for ``x``: base(x) + scaling * B(A(x)), for the group at once."""
        import torch
        import torch.nn.functional as F

        a_parts = [m.lora_A[self.adapter].weight for m in self.modules]
        b_parts = [m.lora_B[self.adapter].weight * m.scaling[self.adapter] for m in self.modules]
        a = torch.cat(a_parts) if len(a_parts) > 1 else a_parts[0]
        b = torch.block_diag(*b_parts) if len(b_parts) > 1 else b_parts[0]
        base = F.linear(x, self.weight)
        lora_input = x if torch.is_autocast_enabled(x.device.type) else x.to(a.dtype)  # as PEFT casts
        out = base + F.linear(F.linear(lora_input, a), b).to(base.dtype)
        return list(out.split(self.widths, dim=-1))

    def forward_of(self, index: int):
        """The ``forward`` for module ``index`` of the group."""
        module = self.modules[index]
        plain = type(module).forward.__get__(module)  # PEFT's own

        def forward(x, *args, **kwargs):
            if args or kwargs or not self.applies():
                return plain(x, *args, **kwargs)
            if index == 0:
                self._input, self._outputs = x, self.compute(x)
            elif self._input is not x or self._outputs[index] is None:
                return plain(x)
            out, self._outputs[index] = self._outputs[index], None
            if all(o is None for o in self._outputs):
                self._input = None  # let the activations go once every module has taken its part
            return out

        return forward


def fuse_lora_projections(model) -> int:
    """Give the LoRA projections of ``model`` (a PEFT model of a Llama-architecture base) their
    grouped forward; the number of groups fused (0: the model does not qualify, nothing changed)."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(model, PeftModel):
        return 0
    adapters = list(model.active_adapters)
    if len(adapters) != 1 or getattr(model.config, "model_type", None) != "llama":
        return 0
    adapter = adapters[0]
    try:
        layers = model.base_model.model.model.layers
    except AttributeError:
        return 0
    groups = []
    for layer in layers:
        for parent, names in GROUPS:
            modules = [getattr(getattr(layer, parent, None), name, None) for name in names]
            if all(_plain_lora(m, adapter, LoraLinear, torch) for m in modules):
                groups.append(modules)
    for modules in groups:
        group = _FusedGroup(modules, adapter)
        for index, module in enumerate(modules):
            module.forward = group.forward_of(index)
    return len(groups)


def _plain_lora(module, adapter: str, lora_linear, torch) -> bool:
    """A PEFT LoRA linear layer whose forward is exactly base(x) + scaling * B(A(x)) for ``adapter``."""
    if type(module) is not lora_linear or adapter not in module.lora_A or module.merged:
        return False
    base = module.base_layer
    return (type(base) is torch.nn.Linear and base.bias is None and not module.fan_in_fan_out
            and adapter not in module.lora_variant and not module.lora_bias.get(adapter, False)
            and isinstance(module.lora_dropout[adapter], torch.nn.Identity)
            and module.lora_B[adapter].bias is None and "forward" not in vars(module))
