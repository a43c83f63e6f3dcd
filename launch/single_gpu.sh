#!/usr/bin/env bash
# Train (or resume) on one GPU of this machine.
#   launch/single_gpu.sh FLAGFILE WORKDIR [more srlm flags...]
#   e.g. GPU=1 launch/single_gpu.sh launch/ptb.flags workdirs/ptb
# Needs JAX with a CUDA plugin: python -m pip install -e ".[cuda13]" (or ".[cuda12]").
set -euo pipefail
FLAGFILE=${1:?usage: launch/single_gpu.sh FLAGFILE WORKDIR [flags...]}
WORKDIR=${2:?usage: launch/single_gpu.sh FLAGFILE WORKDIR [flags...]}
shift 2
# Only the chosen GPU; JAX takes memory as it needs it instead of 75% up front.
export CUDA_VISIBLE_DEVICES=${GPU:-0}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Fail fast, with the install line, when JAX finds no GPU (a CPU-only install).
"${PYTHON:-python}" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' || {
  echo "srlm: JAX finds no GPU here; install srlm with its CUDA extra:" \
    "python -m pip install -e '.[cuda13]' (or '.[cuda12]')" >&2
  exit 2
}
exec "${PYTHON:-python}" -m srlm.main --flagfile="$FLAGFILE" --workdir="$WORKDIR" "$@"
