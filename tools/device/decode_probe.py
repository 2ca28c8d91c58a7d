"""Where a decoded token's time goes on the GPU: graph replay alone, the decoder's loop, and the
runtime's stream (streamer thread + detokenization). Run on the device after tools/device/setup.sh:
``python3 tools/device/decode_probe.py``; prints ms per token for each."""

import time

import torch

from adapters.backends import GenerationParams
from adapters.base_models import LoadOptions
from adapters.runtime import Runtime

runtime = Runtime.local(options=LoadOptions(device="cuda"), progress=False)
backend = runtime.backend
messages = [{"role": "user", "content": "What are the symptoms of type 2 diabetes?"}]
prompt = runtime.rendered_prompt(None, messages)
ids = backend.encode(prompt)["input_ids"]
backend.activate(None)
decoder = backend._decoder()
N = 64


def replay_ms(slot) -> float:
    """ms per token of N graph replays after the prompt (GPU time included: synchronized)."""
    slot.prefill(ids)
    slot.start(0, len(ids))
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(N):
        slot.graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / N


with torch.inference_mode():
    decoder.generate(None, ids, N)  # capture
    slot = next(iter(decoder._slots.values()))
    print(f"graph replay only: {replay_ms(slot):.3f} ms/token")
    start = time.perf_counter()
    for _ in range(N):
        slot.graph.replay()
        int(slot._outputs[1])
    print(f"replay + .item(): {(time.perf_counter() - start) * 1000 / N:.3f} ms/token")
    start = time.perf_counter()
    out = decoder.generate(None, ids, N, on_token=lambda t: True)
    print(f"decoder.generate: {(time.perf_counter() - start) * 1000 / len(out):.3f} ms/token "
          f"({len(out)} tokens, incl. prefill)")
    for cudnn in (True, False):
        slot.capture(cudnn=cudnn)
        print(f"replay with cuDNN attention {'on' if cudnn else 'off'} at capture: {replay_ms(slot):.3f} ms/token")
decoder.forget_graphs()
g = runtime.generate(None, messages, temperature=0, max_new_tokens=N)
g.read()
done = time.perf_counter()
n = backend.count_tokens(g.text)
print(f"runtime stream: ttft {(g.first_piece_at - g.started) * 1000:.1f} ms, decode {(done - g.first_piece_at) * 1000 / max(1, n - 1):.3f} ms/token ({n} tokens)")
start = time.perf_counter()
text = backend.complete(None, [prompt], GenerationParams(max_new_tokens=N))[0]
print(f"complete (no streamer): {(time.perf_counter() - start) * 1000 / backend.count_tokens(text):.3f} ms/token")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    slot.graph.replay()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
