#!/usr/bin/env bash
# Train (or resume) on one GPU of this machine.
#   launch/single_gpu.sh FLAGFILE WORKDIR [more srlm flags...]
#   e.g. GPU=1 launch/single_gpu.sh launch/ptb.flags workdirs/ptb
# Needs a CUDA build of jaxlib: python -m pip install -U "jax[cuda12]" (same version as jax).
set -euo pipefail
FLAGFILE=${1:?usage: launch/single_gpu.sh FLAGFILE WORKDIR [flags...]}
WORKDIR=${2:?usage: launch/single_gpu.sh FLAGFILE WORKDIR [flags...]}
shift 2
# Only the chosen GPU; JAX takes memory as it needs it instead of 75% up front.
export CUDA_VISIBLE_DEVICES=${GPU:-0}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec "${PYTHON:-python}" -m srlm.main --flagfile="$FLAGFILE" --workdir="$WORKDIR" "$@"
