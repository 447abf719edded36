#!/usr/bin/env bash
# "No one waits behind a long prompt" (BENCHMARKS.md): `tome bench serve --workload mixed`
# against three servers, one after the other on this machine, each stopped (its leftover
# processes killed) before the next starts:
#   before  tome serve at BEFORE_COMMIT (the scheduler before prefill sharing), from a
#           temporary git worktree;
#   after   tome serve from this tree;
#   vllm    vLLM-CPU from VLLM_PYTHON's environment on the same weights as an HF folder
#           (HF_DIR, bfloat16), with priority scheduling and its long-prefill cap.
# Both tome servers get two keys, of a pro (priority 0) and a free (priority 10) tier with
# no limits; vLLM reads the same priorities from the request body.
#
# Usage: bash bench/mixed_workload.sh OUT.md
#   VLLM_PYTHON=/path/to/venv/bin/python (unset: vLLM is skipped), HF_DIR=/tmp/smol-hf,
#   BEFORE_COMMIT=2ed2ca6, STEPS="before after vllm", SERVE_ARGS="--prefill-min-share 0.05"
#   (extra flags for the "after" server, to compare settings)
set -euo pipefail
OUT=${1:?usage: bench/mixed_workload.sh OUT.md}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BEFORE_COMMIT=${BEFORE_COMMIT:-2ed2ca6}
HF_DIR=${HF_DIR:-/tmp/smol-hf}
STEPS=${STEPS:-before after vllm}
PORT=8131
WORK=$(mktemp -d)
WORKLOAD=(--workload mixed --num-long-prompts 2 --long-prompt-len 5000 --num-prompts 20
  --prompt-len 8 --output-len 16 --request-rate 1 --short-delay 1)

cat > "$WORK/tiers.toml" <<EOF
database_url = "sqlite:///$WORK/DB.sqlite"
[tiers.pro]
priority = 0
[tiers.free]
priority = 10
EOF

wait_ready() {
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && return 0
    sleep 1
  done
  echo "the server did not come up" >&2
  return 1
}

stop() {
  kill "$1" 2> /dev/null || true
  wait "$1" 2> /dev/null || true
  # vLLM's engine core outlives its API process.
  pkill -f "vllm.entrypoints|EngineCore|app\(\) serve" 2> /dev/null || true
  sleep 3
}

bench() {
  echo "## $1 ($(lscpu | grep 'Model name' | sed 's/ \+/ /g'))" >> "$OUT"
  (cd "$ROOT" && python -c "from tome.cli import app; app()" bench serve \
    --base-url "http://127.0.0.1:$PORT/v1" --model smol "${@:2}" "${WORKLOAD[@]}" --markdown "$OUT")
}

run_tome() {  # $1: label, $2: source tree
  local db="$WORK/$1" config="$WORK/$1.toml"
  sed "s#DB#$1#" "$WORK/tiers.toml" > "$config"
  local tome=(env PYTHONPATH="$2" python -c "from tome.cli import app; app()")
  local pro free
  pro=$("${tome[@]}" keys create --tier pro --config "$config" | tail -1)
  free=$("${tome[@]}" keys create --tier free --config "$config" | tail -1)
  (cd "$2" && exec "${tome[@]}" serve --port "$PORT" --config "$config" --served-model-name smol \
    --log-level warning "${@:3}" > "$WORK/$1.log" 2>&1) &
  local pid=$!
  wait_ready
  bench "$1: tome serve at $(git -C "$2" rev-parse --short HEAD) ${*:3}" --api-key "$free" --pro-api-key "$pro"
  stop "$pid"
}

for step in $STEPS; do
  case $step in
    before)
      git -C "$ROOT" worktree add -f "$WORK/before" "$BEFORE_COMMIT" > /dev/null
      run_tome before "$WORK/before"
      git -C "$ROOT" worktree remove --force "$WORK/before"
      ;;
    # shellcheck disable=SC2086 # SERVE_ARGS is a list of flags
    after) run_tome after "$ROOT" ${SERVE_ARGS:-} ;;
    vllm)
      [ -n "${VLLM_PYTHON:-}" ] || { echo "VLLM_PYTHON unset: vLLM skipped"; continue; }
      (cd "$WORK" && exec "$VLLM_PYTHON" -m vllm.entrypoints.openai.api_server --model "$HF_DIR" \
        --served-model-name smol --dtype bfloat16 --port "$PORT" --scheduling-policy priority \
        --long-prefill-token-threshold 512 > "$WORK/vllm.log" 2>&1) &
      pid=$!
      wait_ready
      bench "vllm: vLLM-CPU $("$VLLM_PYTHON" -c 'import vllm; print(vllm.__version__)'), bf16, priority scheduling, long-prefill-token-threshold 512"
      stop "$pid"
      ;;
  esac
done
echo "logs in $WORK"
