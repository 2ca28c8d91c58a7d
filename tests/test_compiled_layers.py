"""training.train.compile_decoder_layers: compiled decoder layers (with fused LoRA and packed
attention inside) give the eager loss and gradients for packed batches of any composition, compiled
once rather than once per batch, and a training run with ``training.compile: true`` trains."""

from __future__ import annotations

import json

import pytest

from test_fused_lora import lora_grads, lora_model
from test_packed_attention import loss_and_grads, packed_batch
from test_training import set_training, train_args, write_sms_collection

from adapters.cli import main
from training.fused_lora import fuse_lora_projections
from training.packed_attention import use_packed_attention
from training.train import compile_decoder_layers


@pytest.fixture(autouse=True)
def dynamo_config_restored():
    """compile_decoder_layers sets dynamo's config for the process; give later tests theirs back."""
    import torch

    saved = torch._dynamo.config.specialize_float
    yield
    torch._dynamo.config.specialize_float = saved


def packed_lora_model(tiny_base):
    """The tiny base as training runs it: packed attention, LoRA with non-zero B, fused projections."""
    model = lora_model(tiny_base)
    use_packed_attention(model)
    fuse_lora_projections(model)
    return model


def test_compiled_layers_match_eager_for_any_packed_batch_and_compile_once(tiny_base):
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager, compiled = packed_lora_model(tiny_base), packed_lora_model(tiny_base)
    assert compile_decoder_layers(compiled) == compiled.config.num_hidden_layers
    graphs = []
    for lengths in ([9, 14, 5], [7, 30], [12, 3, 8, 20], [26, 4, 15], [16, 2]):
        batch = packed_batch(lengths, eager.config.vocab_size)
        want_loss, want = loss_and_grads(eager, batch)
        got_loss, got = loss_and_grads(compiled, batch)
        assert abs(got_loss - want_loss) <= 1e-5 * abs(want_loss)
        for name, grad in lora_grads(want).items():
            torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5, msg=name)
        graphs.append(counters["stats"]["unique_graphs"])
    # one graph for every layer (all their inputs require grad), reused by every later batch layout
    # of two or more examples (dynamo specialises a row holding one example: a second graph)
    assert graphs == [1] * len(graphs)


def test_compile_applies_on_a_gpu_only():
    from adapters.spec import TrainingSpec
    from training.train import compiles_layers

    assert compiles_layers(TrainingSpec(compile=True), on_cuda=True)
    assert not compiles_layers(TrainingSpec(compile=True), on_cuda=False)
    assert not compiles_layers(TrainingSpec(compile=False), on_cuda=True)
    assert not compiles_layers(TrainingSpec(compile=True, method="qlora"), on_cuda=True)  # bench qlora's spec


def test_a_training_run_with_compiled_layers_trains_and_evaluates_eagerly(catalog, tiny_base, tmp_path,
                                                                          monkeypatch, capsys):
    import torch
    from torch._dynamo.utils import counters

    import training.train

    torch._dynamo.reset()
    counters.clear()

    compiled = []
    monkeypatch.setattr(training.train, "compiles_layers", lambda t, on_cuda: t.compile)  # as on a GPU
    monkeypatch.setattr(training.train, "compile_decoder_layers",
                        lambda model, compile=training.train.compile_decoder_layers: compiled.append(compile(model)))
    set_training(catalog, "spam", compile="true", learning_rate="5.0e-3", eval_steps="2")
    data = write_sms_collection(tmp_path / "SMSSpamCollection")

    assert main(train_args(catalog, tiny_base, data, tmp_path / "runs", "--max-steps", "3", "--no-eval")) == 0

    result = json.loads((catalog / "spam" / "train_result.json").read_text())
    assert result["steps"] == 3 and (catalog / "spam" / "adapter_model.safetensors").is_file()
    assert compiled and compiled[0] > 0 and result["compiled_layers"] is True
    assert result["best_eval_loss"] is not None  # evaluated during training (step 2)...
    assert counters["stats"]["unique_graphs"] == 1  # ...without compiling the layers for it
    assert "compiling the decoder layers during the first step" in capsys.readouterr().err


def test_compiled_layers_take_the_layers_python_floats_as_constants(tiny_base, monkeypatch):
    """RMSNorm's epsilon and LoRA's scaling are constants of a run: as graph inputs they were 0-d CPU
    tensors, CPU code inside a GPU graph (see compile_decoder_layers)."""
    import torch

    torch._dynamo.reset()
    float_inputs = []

    def capture(gm, example_inputs):
        float_inputs.extend(node.name for node in gm.graph.nodes if node.op == "placeholder"
                            and isinstance(value := node.meta.get("example_value"), torch.Tensor)
                            and value.dim() == 0 and value.dtype == torch.float64)
        return gm.forward

    module_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kwargs: module_compile(self, backend=capture, **kwargs))
    model = packed_lora_model(tiny_base)
    compile_decoder_layers(model)
    loss_and_grads(model, packed_batch([9, 14, 5], model.config.vocab_size))
    assert float_inputs == []
    torch._dynamo.reset()
