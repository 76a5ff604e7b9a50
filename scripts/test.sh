#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the end-to-end tests against real
# containerd, registry and FUSE. Installs what is missing first. Needs root (mounts, containerd).
#
#   scripts/test.sh                      # everything (as root; a non-root user: sudo scripts/test.sh)
#   scripts/test.sh -E 'package(dragonfly-estargz)'   # extra args go to cargo nextest
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --bins --locked
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/debug"
export DRAGONFLY_SNAPSHOTTER_BIN="$bin_dir/dragonfly-snapshotter"
export DRAGONFLY_SCHEDULER_BIN="$bin_dir/dragonfly-scheduler"
export DFCTL_BIN="$bin_dir/dfctl"
export DRAGONFLY_MANAGER_BIN="$bin_dir/dragonfly-manager"

echo "== kubernetes manifests"
python3 scripts/k8s/validate.py

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  # End-to-end tests each start a containerd, a registry and a daemon: two at a time on 2 cores.
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 2 "$@"
else
  cargo test --workspace --locked --no-fail-fast -- --test-threads 2 "$@"
fi
