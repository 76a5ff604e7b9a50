#!/usr/bin/env bash
# Installs, from Debian's apt, the real parts Dragonfly-rs builds with and is tested against:
# containerd (+ctr), runc, fuse3, the CNCF distribution registry, stargz-snapshotter (ctr-remote),
# skopeo, umoci, busybox-static, protoc, iproute2, PostgreSQL (the manager is tested against it),
# Chromium and chromedriver (the console is tested in a browser)
# and the C libraries our crates link.
# Idempotent: installs only what is missing. Needs root.
set -euo pipefail

packages=(
  containerd runc fuse3 docker-registry stargz-snapshotter skopeo umoci busybox-static
  protobuf-compiler libprotobuf-dev iproute2 libssl-dev pkg-config ca-certificates curl attr postgresql
  chromium chromium-driver golang-go golang-github-containerd-containerd-dev
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (sudo scripts/install-deps.sh)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The distro containerd service must not hold /run/containerd while tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet containerd 2>/dev/null; then
  echo "note: the system containerd service is running; tests use their own instances"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps.sh: cargo (Rust stable) is required; install it with rustup" >&2
  exit 1
fi

modprobe fuse 2>/dev/null || true
modprobe overlay 2>/dev/null || true
[ -e /dev/fuse ] || { echo "install-deps.sh: /dev/fuse is missing; FUSE is required" >&2; exit 1; }
echo "dependencies ready"
