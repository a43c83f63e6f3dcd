#!/usr/bin/env bash
# An offline bundle of srlm for a node without internet (an air-gapped cluster, a container
# that brings its own JAX). Build it where pip can reach its index, with the Python version
# and platform of the node (inside the node's image if you can), and a Python that has srlm's
# requirements (the one you develop with: it prepares the corpora):
#
#   bash launch/bundle.sh OUT                 # everything srlm needs
#   bash launch/bundle.sh OUT image-pip.txt   # only what the image lacks
#
# image-pip.txt is the image's `python -m pip list --format=freeze`: its packages are kept at
# the image's versions (its JAX included) and left out of the bundle. PYTHON picks the
# interpreter (default python3), EXTRAS the extras (e.g. EXTRAS="[cuda13]").
#
# OUT then holds wheels/ (srlm's and every requirement's; sdists such as promise built into
# wheels), tensorflow_datasets/ (PTB prepared as ArrayRecord), launch/ (the flagfiles) and
# install.sh. On the node:
#
#   bash OUT/install.sh [PYTHON]              # pip install --no-index from OUT/wheels
#   export TFDS_DATA_DIR=OUT/tensorflow_datasets
#   cd OUT && python -m srlm.main --flagfile=launch/ptb_tiny.flags --workdir=/tmp/ptb_tiny
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash launch/bundle.sh OUT [IMAGE_PIP_FREEZE]" >&2
  exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1/wheels"
OUT=$(cd "$1" && pwd)
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-}
CONSTRAINTS=()
if [ $# -eq 2 ]; then
  [ -r "$2" ] || { echo "bundle: cannot read the image's package list $2" >&2; exit 2; }
  # name==version lines, less srlm itself (an editable or older srlm in the image).
  grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' "$2" | grep -viE '^srlm==' > "$OUT/image_constraints.txt" || true
  CONSTRAINTS=(--constraint "$OUT/image_constraints.txt")
fi

echo "bundle: wheels for $("$PYTHON" --version) into $OUT/wheels"
"$PYTHON" -m pip wheel --quiet --wheel-dir "$OUT/wheels" "${CONSTRAINTS[@]}" "$REPO$EXTRAS"

if [ $# -eq 2 ]; then  # the image has these: their wheels stay out of the bundle
  "$PYTHON" - "$OUT/wheels" "$OUT/image_constraints.txt" <<'EOF'
import os, re, sys
normal = lambda name: re.sub(r"[-_.]+", "_", name).lower()
have = {normal(line.split("==")[0]) for line in open(sys.argv[2]) if "==" in line}
for wheel in os.listdir(sys.argv[1]):
  if normal(wheel.split("-")[0]) in have:
    os.remove(os.path.join(sys.argv[1], wheel))
EOF
fi

echo "bundle: PTB prepared into $OUT/tensorflow_datasets"
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c "
import sys
from srlm.config import DataConfig
from srlm.data import pipeline
pipeline.load_corpus(DataConfig(dir=sys.argv[1]))" "$OUT/tensorflow_datasets" > /dev/null

mkdir -p "$OUT/launch"
cp "$REPO"/launch/*.flags "$OUT/launch/"
cat > "$OUT/install.sh" <<EOF
#!/usr/bin/env bash
# Installs srlm from this bundle, with no network: bash install.sh [PYTHON]
set -euo pipefail
here=\$(cd "\$(dirname "\$0")" && pwd)
"\${1:-python3}" -m pip install --no-index --find-links "\$here/wheels" "srlm$EXTRAS"
echo "srlm installed; before running: export TFDS_DATA_DIR=\$here/tensorflow_datasets"
EOF
echo "bundle: $(ls "$OUT/wheels" | wc -l) wheels, $(du -sh "$OUT" | cut -f1); on the node: bash $OUT/install.sh"
