#!/usr/bin/env bash
# Installs what the integration tests need, once, into $TIERFS_TOOLS
# (default ~/.cache/tierfs-tools): the s3s-fs S3 server, and a Python venv with
# safetensors, numpy and the moto S3 server (for keys s3s-fs cannot hold).
# System packages (fuse3, attr, python3-venv, clang ...) come from the README's first
# command (or .ci/run); without getfattr and setfattr (attr) it stops here and says so.
set -euo pipefail
tools="${TIERFS_TOOLS:-$HOME/.cache/tierfs-tools}"
mkdir -p "$tools/bin"

for tool in getfattr:attr setfattr:attr; do
    command -v "${tool%%:*}" >/dev/null || { echo "setup: ${tool%%:*} not found; install the ${tool#*:} package (see the README's first command)" >&2; exit 1; }
done

if [ ! -x "$tools/bin/s3s-fs" ]; then
    echo "setup: installing s3s-fs 0.17.0 into $tools"
    CARGO_TARGET_DIR="$tools/s3s-build" cargo install s3s-fs --version 0.17.0 \
        --features binary --locked --ignore-rust-version --root "$tools" --quiet
    rm -rf "$tools/s3s-build"
fi

if [ ! -x "$tools/venv/bin/python" ] || ! "$tools/venv/bin/python" -c 'import safetensors, numpy, moto, boto3' 2>/dev/null; then
    echo "setup: creating the Python venv in $tools/venv"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet 'safetensors==0.8.0' 'numpy>=1.26,<3' 'moto[server]==5.2.5'
fi

# pjdfstest, the POSIX suite, from its source next to the checkout when there is
# one (CI has it; a fresh clone does not, and its test then skips and says so).
pjd_src=$(ls "$(dirname "$0")"/../../shared/third_party/pjdfstest-*.tar.gz 2>/dev/null | head -1 || true)
if [ -n "$pjd_src" ] && [ ! -x "$tools/pjdfstest/pjdfstest" ]; then
    if command -v autoreconf >/dev/null && command -v cc >/dev/null; then
        echo "setup: building pjdfstest from $pjd_src"
        rm -rf "$tools/pjdfstest"
        tar xzf "$pjd_src" -C "$tools"
        (cd "$tools/pjdfstest" && autoreconf -ifs >/dev/null 2>&1 && ./configure >/dev/null && make pjdfstest >/dev/null)
    else
        echo "setup: warning: autoconf or a C compiler is missing; pjdfstest is not built" >&2
    fi
fi

command -v fusermount3 >/dev/null || echo "setup: warning: fusermount3 not found; install fuse3" >&2
echo "setup: tools ready in $tools"
