#!/usr/bin/env bash
# Data-parallel training on a Cloud TPU VM (a single host or a pod slice): runs the same
# command on every worker; jax.distributed.initialize() finds the others through the TPU
# metadata.
#   launch/tpu_vm.sh TPU_NAME ZONE FLAGFILE WORKDIR [more srlm flags...]
# Each worker needs srlm in ~/srlm and a TPU jaxlib (once, see launch/README.md). WORKDIR
# must be a filesystem path shared by all workers (e.g. a Filestore mount).
set -euo pipefail
TPU_NAME=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE FLAGFILE WORKDIR [flags...]}
ZONE=${2:?usage: launch/tpu_vm.sh TPU_NAME ZONE FLAGFILE WORKDIR [flags...]}
FLAGFILE=${3:?usage: launch/tpu_vm.sh TPU_NAME ZONE FLAGFILE WORKDIR [flags...]}
WORKDIR=${4:?usage: launch/tpu_vm.sh TPU_NAME ZONE FLAGFILE WORKDIR [flags...]}
shift 4
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd ~/srlm && SRLM_DISTRIBUTED=1 python3 -m srlm.main --flagfile=$FLAGFILE \
    --workdir=$WORKDIR $*"
