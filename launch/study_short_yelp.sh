#!/usr/bin/env bash
# Semi-supervised short-Yelp: SRI as the authors ran it against the VAE baselines' features
# (benchmarks/study_short_yelp.py says what is run and how each scale departs from the
# protocol):
#   launch/study_short_yelp.sh --scale=small   # a CPU-sized version
#   launch/study_short_yelp.sh --scale=paper   # the flagfiles as they are, for a GPU
# Extra flags pass through (--workdir=DIR, --only=sri,vae, --source_dir=...).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/study_short_yelp.py "$@"
