#!/usr/bin/env bash
# Installs, from Debian's apt, the real parts Dragonfly-rs builds with and is tested against:
# containerd (+ctr), runc, fuse3, the CNCF distribution registry, stargz-snapshotter (ctr-remote),
# skopeo, umoci, busybox-static, protoc, iproute2, PostgreSQL (the manager is tested against it),
# Chromium and chromedriver (the console is tested in a browser)
# and the C libraries our crates link; from PyPI, what checks the Kubernetes manifests.
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

# The Kubernetes manifests' offline check (scripts/k8s/validate.py): Helm's Go SDK as a Python
# library (renders and lints the chart; no helm binary), the Kubernetes JSON schemas (bundled),
# PyYAML. Skipped when the pinned versions are there.
py_packages=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.3)
if ! python3 - "${py_packages[@]}" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(any(m.version(p.split("==")[0]) != p.split("==")[1] for p in sys.argv[1:]))
PY
then
  echo "installing (pip): ${py_packages[*]}"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip
  fi
  pip_flags=(--quiet --disable-pip-version-check --root-user-action=ignore)
  # Debian's own python3 takes pip installs only when told (PEP 668).
  if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    pip_flags+=(--break-system-packages)
  fi
  python3 -m pip install "${pip_flags[@]}" "${py_packages[@]}"
fi

modprobe fuse 2>/dev/null || true
modprobe overlay 2>/dev/null || true
[ -e /dev/fuse ] || { echo "install-deps.sh: /dev/fuse is missing; FUSE is required" >&2; exit 1; }
echo "dependencies ready"
