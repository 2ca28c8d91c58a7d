"""Shared fixtures: a tiny random Llama-architecture model built here (no download), a copy of the
real adapter catalogue to train into, and a tiny LoRA trainer for "train three steps" tests."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

# Unit tests behave the same on every CPU: float32 weights unless a test asks for another dtype
# (the default "auto" is bf16 on CPUs with bf16 instructions; the browser test runs that default).
os.environ.setdefault("ADAPTERLAB_DTYPE", "float32")
# ... and on the CPU, on a GPU machine too: their tolerances, timings and thread checks are a CPU's.
# The GPU paths are checked on the GPU by tools/device/ scripts (DEVELOPERS.md).
os.environ.setdefault("ADAPTERLAB_DEVICE", "cpu")

from adapters.catalog import CATALOG_DIR

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
CORPUS = [
    "ham spam not spam message hello win prize call now free cash meet dinner lecture notes",
    "cancer_type stage gene_mutation biomarker treatment response metastasis_site null",
    '{"cancer_type": "melanoma", "stage": "IV", "response": null}',
    "What are the symptoms of diabetes? Thirst, hunger and blurred vision.",
    "You are an SMS spam filter. Message: Reply with one word.",
] * 20


def build_tiny_model(directory: Path) -> Path:
    """Save a 2-layer random Llama with a byte-level BPE tokenizer and a ChatML template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", bos_token=None)
    tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, tie_word_embeddings=True,
        initializer_range=0.3)  # large enough that logits can become confident
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-base"))


def copy_spec(spec: Path, target_dir: Path) -> None:
    """Copy an adapter.yaml for the tests' small data sets, which are two templates per label: the
    near-duplicate grouping of the real specs would put each template, i.e. half a label, into one
    split (tests/test_data.py tests that grouping)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    text = re.sub(r", near_duplicates: [0-9.]+", "", spec.read_text())
    (target_dir / "adapter.yaml").write_text(text)


@pytest.fixture()
def catalog(tmp_path) -> Path:
    """A writable copy of the real catalogue's specs (no weights)."""
    for spec in CATALOG_DIR.glob("*/adapter.yaml"):
        copy_spec(spec, tmp_path / "catalog" / spec.parent.name)
    return tmp_path / "catalog"


def train_tiny_lora(base_dir: Path, spec, examples: list[tuple[str, str]], out_dir: Path,
                    steps: int = 40, lr: float = 3e-3, seed: int = 0) -> Path:
    """Train a LoRA adapter on (input, target) pairs with the runtime's own prompt rendering.

    A deliberately small loop for unit tests only; the training package trains real adapters.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.prompts import render_example, task_messages

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                                             task_type="CAUSAL_LM"))
    batch = []
    for text, target in examples:
        prompt, completion = render_example(tokenizer, task_messages(spec, text), target)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        batch.append((p + c, [-100] * len(p) + c))
    width = max(len(ids) for ids, _ in batch)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture()
def no_hub(monkeypatch):
    """The Hub's host refuses connections: a port on this machine that nothing listens on."""
    from huggingface_hub import constants

    from adapters import hub

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.unreachable_reason.cache_clear()
    yield port
    hub.unreachable_reason.cache_clear()
