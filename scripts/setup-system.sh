#!/usr/bin/env bash
# System packages the project needs, from Debian/Ubuntu when we can (root + apt-get):
#   always:     dataset-fashion-mnist  (the full 60k/10k Fashion-MNIST, the default data)
#   --browser:  chromium chromium-driver (the test that opens report.html in a real browser)
# Elsewhere it says what is missing and how to get it; the commands that need a missing
# piece stop with a one-line message of their own.
set -euo pipefail
want_browser=0
[ "${1:-}" = "--browser" ] && want_browser=1
fmnist=/usr/share/datasets/fashion-mnist
have_data() { [ -f "$fmnist/train-images-idx3-ubyte.gz" ] && [ -f "$fmnist/t10k-labels-idx1-ubyte.gz" ]; }
have_browser() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
missing=()
have_data || missing+=(dataset-fashion-mnist)
[ $want_browser = 1 ] && ! have_browser && missing+=(chromium chromium-driver)
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${missing[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
have_data || echo "Fashion-MNIST not found in $fmnist: install the Debian/Ubuntu package dataset-fashion-mnist, or run classrobust with --download." >&2
[ $want_browser = 1 ] && ! have_browser && echo "chromium/chromedriver not found: the browser test of the report will fail (Debian packages chromium, chromium-driver)." >&2
exit 0
