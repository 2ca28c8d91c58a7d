"""How far bf16 arithmetic alone moves the spam few-shot baseline on the GPU: the same 618 test
prompts scored on the transformers + PEFT forward and on the fused one, at batch sizes 16 and 256;
decisions that differ, and how many probabilities sit near the 0.5 argmax boundary. Run on the
device after tools/device/setup.sh: ``python3 tools/device/fewshot_noise.py OUT.json``."""

import json
import sys

from adapters.base_models import LoadOptions
from adapters.environment import environment
from adapters.runtime import Runtime
from training.data import load_splits

runtime = Runtime.local(options=LoadOptions(device="cuda"), only=["spam"], progress=False)
spec = runtime.spec("spam")
test = load_splits(spec).test
texts, truth = [ex.input for ex in test], [ex.target for ex in test]
shots = runtime.few_shot_examples("spam")
runtime.classify("spam", texts[:16], base=True, examples=shots)  # builds the fused path
fused = runtime.backend._fused
runs = {}
for forward in ("peft", "fused"):
    for batch in (16, 256):
        runtime.backend._fused = fused if forward == "fused" else None
        out = runtime.classify("spam", texts, base=True, examples=shots, batch_size=batch)
        runs[f"{forward}_batch{batch}"] = [r.probs["spam"] for r in out]
reference = runs["peft_batch16"]
report = {**environment("cuda"), "command": " ".join(["python3", *sys.argv]), "examples": len(texts),
          "near_boundary": {f"|p-0.5|<{d}": sum(abs(p - 0.5) < d for p in reference) for d in (0.001, 0.01, 0.05)},
          "runs": {name: {"accuracy": sum((p >= 0.5) == (t == "spam") for p, t in zip(probs, truth)) / len(truth),
                          "decisions_differing_from_peft_batch16": sum((p >= 0.5) != (q >= 0.5)
                                                                       for p, q in zip(probs, reference)),
                          "max_abs_p_diff": max(abs(p - q) for p, q in zip(probs, reference))}
                   for name, probs in runs.items()}}
print(json.dumps(report, indent=1))
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=1)
