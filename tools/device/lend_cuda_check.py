"""Model loans (adapters/model_lock.py) on a GPU, with the GPU image's transformers and PEFT: calls
that borrow the model (a 1-prompt complete, which runs the CUDA-graph decoder, and a 2-prompt one)
during a 2-prompt complete and during a mixed-adapter batch of three streams, each result compared
with the same call alone. A tiny random model (tests/conftest.py) with two random LoRA adapters, in
float32; a forward hook makes each step 10 ms longer so that the borrowers land mid-generation.

The unit tests cover the same on a CPU; on the GPU machine they cannot (there the tiny model runs the
CUDA-graph decoder, whose replays skip the slowing hook). Run from the repository root, with the
wheels of tools/device/setup.sh on PYTHONPATH: ``python3 tools/device/lend_cuda_check.py``; the
result goes to $OUT/lend-cuda-check.json as well."""
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, "tests")

import torch  # noqa: E402
from conftest import build_tiny_model  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from adapters.backends import GenerationParams, LocalBackend  # noqa: E402
from adapters.base_models import LoadOptions  # noqa: E402

LONG = GenerationParams(max_new_tokens=150)
SHORT = GenerationParams(max_new_tokens=6)
STREAMS = (("base", None), ("a", "a"), ("b", "b"))


def tiny_backend(root: Path, device: str = "cuda") -> LocalBackend:
    """The tiny model with two random LoRA adapters, "a" and "b", in float32 (rows_cuda_check uses it too)."""
    base = build_tiny_model(root / "base")
    for seed, name in enumerate(["a", "b"], start=10):
        torch.manual_seed(seed)
        config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
        get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(root / name)
    return LocalBackend.load(str(base), {"a": root / "a", "b": root / "b"},
                             LoadOptions(device=device, dtype="float32"), progress=False)


def borrowers(backend, prompt) -> dict:
    return {"complete 1 (graph decoder)": backend.complete("b", [prompt], SHORT),
            "complete 2": backend.complete("a", [prompt, prompt + "x"], SHORT)}


def borrowed_during(backend, prompt, threads) -> tuple[dict, float, bool]:
    """The borrowers' results half a second into the generation ``threads`` run, how long they took,
    and whether the generation was still going when they returned."""
    time.sleep(0.5)
    started = time.perf_counter()
    got = borrowers(backend, prompt)
    waited = time.perf_counter() - started
    still_going = any(t.is_alive() for t in threads)
    for t in threads:
        t.join()
    return got, round(waited, 3), still_going


def main() -> None:
    backend = tiny_backend(Path(tempfile.mkdtemp()))
    backend.max_stream_batch = 4  # at most 4 rows: here the three streams form one mixed batch
    prompt = backend.render([{"role": "user", "content": "hello"}])
    alone = borrowers(backend, prompt)
    alone_long = backend.complete(None, [prompt, prompt + "y"], LONG)
    alone_streams = {name: "".join(backend.stream(adapter, prompt, LONG)) for name, adapter in STREAMS}
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
              "date": time.strftime("%Y-%m-%d"), "command": "python3 tools/device/lend_cuda_check.py"}
    hook = backend.model.get_base_model().register_forward_pre_hook(lambda *_: time.sleep(0.01))
    try:
        out: dict = {}
        threads = [threading.Thread(target=lambda: out.__setitem__(
            "long", backend.complete(None, [prompt, prompt + "y"], LONG)))]
        threads[0].start()
        got, waited, lent = borrowed_during(backend, prompt, threads)
        report["during complete"] = {"borrowers_same": got == alone, "long_same": out["long"] == alone_long,
                                     "lent": lent, "borrow_s": waited}

        streamed: dict = {}

        def ask(name, adapter):
            streamed[name] = "".join(backend.stream(adapter, prompt, LONG))

        threads = [threading.Thread(target=ask, args=pair) for pair in STREAMS]
        with backend._lock.hold():  # busy: the three streams queue and form one mixed batch
            for t in threads:
                t.start()
            while len(backend._streams._waiting) < len(threads):
                time.sleep(0.01)
        got, waited, lent = borrowed_during(backend, prompt, threads)
        report["during mixed stream batch"] = {"borrowers_same": got == alone, "streams_same": streamed == alone_streams,
                                               "lent": lent, "borrow_s": waited}
    finally:
        hook.remove()
    print(json.dumps(report, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "lend-cuda-check.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
