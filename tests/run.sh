#!/usr/bin/env bash
# Runs the whole test suite: unit and property tests, engine tests, and the
# integration tests that mount for real (needs root or fusermount3, and /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
export TIERFS_TOOLS="${TIERFS_TOOLS:-$HOME/.cache/tierfs-tools}"
TIERFS_BENCH_MB="${TIERFS_BENCH_MB:-64}" cargo test --workspace --all-targets --all-features --no-fail-fast -- --test-threads "${TIERFS_TEST_THREADS:-4}"
