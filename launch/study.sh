#!/usr/bin/env bash
# The methods side by side on one budget (benchmarks/study.py says what is run):
#   launch/study.sh --scale=small   # a PTB slice on a CPU, a few hours on 2 cores
#   launch/study.sh --scale=small --budget=4   # 4x the training sentences, same epochs
#   launch/study.sh --scale=paper   # the full PTB study, for a GPU
# Extra flags pass through (--workdir=DIR, --only=sri,vae). Needs TFDS_DATA_DIR or the default
# ~/tensorflow_datasets for the prepared corpus, as every srlm run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/study.py "$@"
