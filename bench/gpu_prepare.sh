#!/usr/bin/env bash
# Fills the two ignored folders bench/gpu_check.sh needs on a GPU machine without network:
#   .gpu_data/cifar10, .gpu_data/mnist   the CIFAR-10 and MNIST slices (copied from ../shared/data,
#                                        or DATA=/folder holding cifar10/ and mnist/)
#   .whl/                                wheels of the packages such a machine may lack (fpdf2 for
#                                        the report, and its defusedxml), for CPython 3.12
# Run it here, once, from anywhere: bash bench/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
for d in cifar10/cifar-10-batches-py mnist/MNIST/raw; do
  if [ ! -d "$DATA/$d" ]; then
    echo "error: $DATA/$d not found; run with DATA=/folder-holding-cifar10-and-mnist bash bench/gpu_prepare.sh" >&2
    exit 2
  fi
done
mkdir -p .gpu_data
rm -rf .gpu_data/cifar10 .gpu_data/mnist
cp -r "$DATA/cifar10" "$DATA/mnist" .gpu_data/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl fpdf2==2.8.9 defusedxml==0.7.1
du -sh .gpu_data .whl
