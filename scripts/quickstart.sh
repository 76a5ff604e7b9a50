#!/usr/bin/env bash
# Quickstart: a local Dragonfly-rs node on this machine, with a demo lazy pull.
#
#   sudo scripts/quickstart.sh        # install deps, build, start everything, demo pull + run
#   sudo scripts/quickstart.sh stop   # stop what it started and unmount
#
# Under $QS_DIR (default /var/tmp/dragonfly-quickstart) it starts a registry on 127.0.0.1:5000,
# our daemon (dragonfly-snapshotter) and a containerd with our proxy plugin; builds a sample
# image (busybox + a 48 MiB data layer), converts it to eStargz, pushes it, pulls it lazily with
# `ctr-remote image rpull --snapshotter dragonfly` and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_DIR=$PWD
export TB_DIR=${QS_DIR:-/var/tmp/dragonfly-quickstart}
# shellcheck source=lib/testbed.sh
. scripts/lib/testbed.sh
REG=127.0.0.1:${QS_REGISTRY_PORT:-5000}
IMAGE=$REG/demo/hello:estargz
CTR="ctr -a $TB_DIR/containerd.sock -n tb"

if [ "${1:-}" = "stop" ]; then
  tb_stop_all
  echo "stopped; state left in $TB_DIR (rm -rf it to start from scratch)"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo scripts/quickstart.sh" >&2; exit 1; }
scripts/install-deps.sh
echo "== building"
cargo build --bins --quiet
BIN=$REPO_DIR/target/debug/dragonfly-snapshotter

[ -d "$TB_DIR" ] && tb_stop_all
rm -rf "$TB_DIR"
mkdir -p "$TB_DIR"

echo "== registry on $REG"
tb_start_registry registry "$REG"

echo "== demo image: busybox + a 48 MiB data layer, converted to eStargz"
rootfs=$TB_DIR/rootfs
mkdir -p "$rootfs/bin" "$rootfs/data"
cp /bin/busybox "$rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ -e "$rootfs/bin/$a" ] || ln -s busybox "$rootfs/bin/$a"; done
head -c 50331648 /dev/urandom > "$rootfs/data/blob.bin"
echo "hello from a lazily pulled layer" > "$rootfs/hello.txt"
tb_push_rootfs "$rootfs" "$TB_DIR/oci" gzip "$REG/demo/hello:gzip" /bin/cat /hello.txt
tb_convert_estargz "$REG/demo/hello:gzip" "$IMAGE"
rm -rf "$rootfs"

echo "== dragonfly-snapshotter and containerd"
# The demo turns the background fill off so you can see what a lazy pull fetches; by default
# the daemon fetches the rest of each layer in the background (prefetch.background).
tb_start_dragonfly dragonfly "$BIN" "metrics: {address: 127.0.0.1:9250}
prefetch: {background: false}"
tb_start_containerd containerd "$TB_DIR/dragonfly.sock"

before=$(tb_registry_blob_bytes registry)
echo "== lazy pull: ctr-remote image rpull --snapshotter dragonfly $IMAGE"
time ctr-remote -a "$TB_DIR/containerd.sock" -n tb image rpull --plain-http --snapshotter dragonfly "$IMAGE"
after_pull=$(( $(tb_registry_blob_bytes registry) - before ))
echo "== run: ctr run --rm --snapshotter dragonfly $IMAGE demo"
$CTR run --rm --snapshotter dragonfly "$IMAGE" demo
fetched=$(( $(tb_registry_blob_bytes registry) - before ))
size=$($CTR image ls | awk -v i="$IMAGE" '$1==i {print $4, $5}')
echo
echo "Pulled and ran $IMAGE lazily:"
echo "  image size (compressed):           $size"
echo "  blob bytes sent for the pull:      $after_pull (manifest, config, footers and TOCs)"
echo "  blob bytes sent after the run:     $fetched (plus the chunks of the files the container read)"
echo "  daemon metrics:                    curl -s 127.0.0.1:9250/metrics | grep dragonfly"
echo
echo "Use it by hand:"
echo "  $CTR run --rm -t --snapshotter dragonfly $IMAGE sh1 sh"
echo "  ctr-remote -a $TB_DIR/containerd.sock -n tb image rpull --plain-http --snapshotter dragonfly $REG/REPO:TAG"
echo "  logs: $TB_DIR/{dragonfly,containerd,registry}.log"
echo "  stop: sudo scripts/quickstart.sh stop"
