#!/usr/bin/env bash
# Build .device/, what a lent GPU machine needs to run tools/device/check.sh:
#   .device/wheels/  hnn-bridge itself and the dependencies that the machine's image lacks
#                    (SpikingJelly, snnTorch, mlxtend, loguru), as Python 3.12 wheels;
#   .device/data/    a stratified CIFAR-10 subset (ImageFolder JPEGs) from --data-dir,
#                    since ../shared does not travel to that machine.
# The machine has no network; everything it needs must travel in the working tree
# (64 MiB in all; this bundle is about 9 MB).
#
#   bash tools/device/bundle.sh [DATA_DIR] [TRAIN_PER_CLASS] [TEST_PER_CLASS]
#
# then, with the device tool: run(command="bash tools/device/check.sh",
# carry=[".device"], timeout_s=480).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA_DIR=${1:-../shared/datasets}
TRAIN_PER_CLASS=${2:-600}
TEST_PER_CLASS=${3:-100}
# the interpreter whose pip downloads and builds: $PYTHON, else the active virtual
# environment's, else python3 (it needs pip and setuptools >= 77)
PY=${PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}
PY=${PY:-python3}

rm -rf .device
mkdir -p .device/wheels .device/data
# Versions: the ones pyproject.toml allows and CI installs; the image has torch, numpy,
# scipy, pandas, scikit-learn, matplotlib, cupy, h5py, tqdm and the rest.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    -d .device/wheels spikingjelly==2.0.0 snntorch==1.0.0 mlxtend==0.25.0 loguru==0.7.3
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .device/wheels .

src="$DATA_DIR/cifar10-jpeg"
[ -d "$src/train" ] && [ -d "$src/test" ] || { echo "no CIFAR-10 tree at $src/{train,test}" >&2; exit 1; }
for split in train test; do
    n=$TRAIN_PER_CLASS; [ "$split" = test ] && n=$TEST_PER_CLASS
    for cls in "$src/$split"/*/; do
        name=$(basename "$cls")
        mkdir -p ".device/data/cifar10-jpeg/$split/$name"
        files=("$cls"*.jpg)  # sorted by the glob
        cp -t ".device/data/cifar10-jpeg/$split/$name" "${files[@]:0:$n}"
    done
done
echo "bundle: $(du -sh --apparent-size .device | cut -f1) in .device ($(ls .device/wheels | wc -l) wheels," \
     "$(find .device/data -name '*.jpg' | wc -l) CIFAR-10 images)"
