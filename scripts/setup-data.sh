#!/usr/bin/env bash
# Make the default data (Fashion-MNIST, full 60k/10k) available offline.
# Debian/Ubuntu ship the original IDX files in the package dataset-fashion-mnist;
# install it when we can (root + apt-get). Otherwise say how to get the data.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
have() { [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; }
have && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian package dataset-fashion-mnist ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi
if ! have; then
  echo "Fashion-MNIST not found in $dir: install the Debian/Ubuntu package dataset-fashion-mnist," >&2
  echo "or run classrobust with --download (fetches it with torchvision into the data directory)." >&2
fi
