#!/usr/bin/env bash
# What the next GPU run measures for the precision policy, the deterministic mode, the loop and
# the scan's unroll factor (README, "Precision, determinism, compilation"; docs/speed.md), in one
# command with a budget of about 7 minutes (each stage under its own time limit, so one that
# hangs costs only its share; the logs and JSONs go to $OUT, default benchmarks/results/):
#
#   bash benchmarks/gpu_check.sh            # on the GPU node, srlm installed, PTB prepared
#   SMOKE=1 bash benchmarks/gpu_check.sh    # a rehearsal on a CPU: small tests and estimates;
#                                           # the step stages stay at PTB sizes (about 1 s a
#                                           # step here) and may reach their time limits
#
# Stages: the numerical tests at the suite's HIGHEST with deterministic ops
# (SRLM_TEST_DETERMINISTIC=1) and without; the SRI step at T = 22 at DEFAULT and HIGHEST, with
# unroll factors 1, 2, 4 and 8, and under deterministic ops; TF32's effect on srlm's figures
# (benchmarks/precision.py); the loop against the isolated step (benchmarks/epoch.py on a
# millisecond model).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export SRLM_RESULTS_DIR=$OUT
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  STEP="--lengths=12 --repeats=2"
  PRECISION="--sentences=2 --samples=2 --ais_steps=5 --ais_chains=2"
  TESTS="tests/objectives_test.py"
  LOOP="--budget_s=50 --log_every=5 --repeats=3 --flags=--flagfile=launch/ptb_tiny.flags,--config.model.embed_dim=32,--config.model.hidden_dim=32,--config.data.vocab_size=500,--config.data.max_train_sentences=320"
else
  STEP="--lengths=22 --repeats=20"
  PRECISION=""
  TESTS="tests/objectives_test.py tests/langevin_test.py tests/models_test.py tests/ais_test.py
         tests/runtime_test.py tests/train_test.py"
  LOOP="--budget_s=50 --log_every=25 --flags=--flagfile=launch/ptb_tiny.flags,--config.model.embed_dim=32,--config.model.hidden_dim=32,--config.data.vocab_size=500,--config.data.max_train_sentences=3200"
fi

stage() {  # stage NAME SECONDS COMMAND...: runs it under a time limit, logged to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/gpu_check_$name.log" 2>&1
  local code=$?
  echo "gpu_check: $name exit $code in $((SECONDS - start)) s (limit $limit s; $OUT/gpu_check_$name.log)"
}

python -c "import jax; print(jax.__version__, jax.devices())" > "$OUT/gpu_check_env.log" 2>&1
command -v nvidia-smi > /dev/null && nvidia-smi >> "$OUT/gpu_check_env.log" 2>&1
# shellcheck disable=SC2086
stage tests_deterministic 150 env SRLM_TEST_DETERMINISTIC=1 python -m pytest -q -x -p no:cacheprovider \
  -k "not sigterm and not kill and not notebook" $TESTS
# shellcheck disable=SC2086
stage tests 120 python -m pytest -q -p no:cacheprovider -k "restart or fused or padding or accumulated or converges" $TESTS
for precision in default highest; do
  # shellcheck disable=SC2086
  stage "step_$precision" 45 python benchmarks/train_step.py $STEP --matmul_precision=$precision
done
for unroll in 2 4 8; do
  # shellcheck disable=SC2086
  stage "step_unroll$unroll" 40 python benchmarks/train_step.py $STEP --scan_unroll=$unroll
done
# shellcheck disable=SC2086
stage step_deterministic 45 env XLA_FLAGS=--xla_gpu_deterministic_ops=true \
  python benchmarks/train_step.py $STEP --matmul_precision=highest
# shellcheck disable=SC2086
stage precision 60 python benchmarks/precision.py $PRECISION
# shellcheck disable=SC2086
stage loop 60 python benchmarks/epoch.py $LOOP
grep -h "s/step\|ratio\|passed\|failed\|tf32\|own_nll\|ais_nll\|train_step" "$OUT"/gpu_check_*.log
