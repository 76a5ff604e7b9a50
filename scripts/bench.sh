#!/usr/bin/env bash
# Benchmarks that compare Dragonfly-rs against a baseline measured in the same run, printed as
# ratios and written as JSON under target/bench/.
#
#   scripts/bench.sh pieces            # peer-to-peer piece throughput on loopback through the real
#                                      # peer service, vs reading the store directly
#   scripts/bench.sh scheduler         # parent selections/s with 10,000 simulated peers (sampled
#                                      # vs a full scan in the same run) and the swarm's memory
#   sudo scripts/bench.sh coldstart    # cold pull + `python3 -V` of a Debian bookworm+python3 image,
#                                      # registry egress limited to 100 Mbit/s: dragonfly (eStargz,
#                                      # lazy) vs containerd's overlayfs; then warm sequential read of
#                                      # a large file through our mount vs overlayfs
#
# Uses release builds. The Debian rootfs (debootstrap) is cached in $BENCH_DIR/cache.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_DIR=$PWD
BENCH_DIR=${BENCH_DIR:-/var/tmp/dragonfly-bench}
export TB_DIR=$BENCH_DIR/run
# shellcheck source=lib/testbed.sh
. scripts/lib/testbed.sh
OUT_DIR=$REPO_DIR/target/bench
PORT=${BENCH_REGISTRY_PORT:-5101}
REG=127.0.0.1:$PORT
RATE=${BENCH_RATE:-100mbit}
LARGE_MIB=${BENCH_LARGE_MIB:-256}

[ "${1:-}" = scheduler ] || [ "${1:-}" = pieces ] || [ "$(id -u)" -eq 0 ] || { echo "run as root: sudo scripts/bench.sh $*" >&2; exit 1; }

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc -l; }

limit_registry() {
  tc qdisc del dev lo root 2>/dev/null || true
  tc qdisc add dev lo root handle 1: htb default 20
  tc class add dev lo parent 1: classid 1:10 htb rate "$RATE" ceil "$RATE"
  tc class add dev lo parent 1: classid 1:20 htb rate 100gbit
  tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport "$PORT" 0xffff flowid 1:10
}
unlimit() { tc qdisc del dev lo root 2>/dev/null || true; }

cleanup() { unlimit; tb_stop_all; }

prepare() {
  apt_missing=()
  for p in debootstrap bc; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || apt_missing+=("$p"); done
  [ ${#apt_missing[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}"
  scripts/install-deps.sh
  echo "== release build"
  cargo build --release --bins --quiet
  BIN=$REPO_DIR/target/release/dragonfly-snapshotter
  mkdir -p "$BENCH_DIR/cache" "$OUT_DIR"
  if [ ! -x "$BENCH_DIR/cache/rootfs-python3/usr/bin/python3" ]; then
    echo "== debootstrap bookworm + python3 (cached afterwards)"
    rm -rf "$BENCH_DIR/cache/rootfs-python3"
    debootstrap --variant=minbase --include=python3 bookworm "$BENCH_DIR/cache/rootfs-python3" http://deb.debian.org/debian >/dev/null
  fi
  [ -d "$TB_DIR" ] && tb_stop_all
  rm -rf "$TB_DIR"; mkdir -p "$TB_DIR"
  trap cleanup EXIT
}

# Fresh containerd (+ fresh daemon for dragonfly) so nothing is cached; returns seconds.
coldstart_overlayfs() { # ref
  tb_start_containerd ctd-overlay
  local c="ctr -a $TB_DIR/ctd-overlay.sock -n tb" t0 t1
  t0=$(now)
  $c image pull --plain-http --snapshotter overlayfs "$1" >/dev/null
  $c run --rm --snapshotter overlayfs "$1" cold-ovl python3 -V >&2
  t1=$(now)
  tb_stop ctd-overlay
  elapsed "$t0" "$t1"
}

coldstart_dragonfly() { # ref
  tb_start_dragonfly df-cold "$BIN"
  tb_start_containerd ctd-df "$TB_DIR/df-cold.sock"
  local c="ctr -a $TB_DIR/ctd-df.sock -n tb" t0 t1
  t0=$(now)
  ctr-remote -a "$TB_DIR/ctd-df.sock" -n tb image rpull --plain-http --snapshotter dragonfly "$1" >/dev/null
  $c run --rm --snapshotter dragonfly "$1" cold-df python3 -V >&2
  t1=$(now)
  tb_stop ctd-df; tb_stop df-cold; tb_unmount_all
  elapsed "$t0" "$t1"
}

# MB/s of reading $2 inside a running container of $1 (through /proc/PID/root).
read_rate() { # sock snapshotter ref path drop(0|1)
  local sock=$1 sn=$2 ref=$3 path=$4 drop=$5 c="ctr -a $1 -n tb" id="rd-$RANDOM" pid t0 t1 bytes
  $c run -d --snapshotter "$sn" "$ref" "$id" sleep 600 >/dev/null
  pid=$($c task ls | awk -v i="$id" '$1==i {print $2}')
  cat "/proc/$pid/root$path" > /dev/null   # first read: makes the data local
  sync; [ "$drop" = 1 ] && echo 3 > /proc/sys/vm/drop_caches
  bytes=$(stat -c %s "/proc/$pid/root$path")
  t0=$(now); cat "/proc/$pid/root$path" > /dev/null; t1=$(now)
  $c task kill -s KILL "$id" >/dev/null 2>&1 || true
  sleep 0.5; $c container rm "$id" >/dev/null 2>&1 || $c task rm -f "$id" >/dev/null 2>&1 || true
  $c container rm "$id" >/dev/null 2>&1 || true
  echo "$bytes / $(elapsed "$t0" "$t1") / 1000000" | bc -l
}

coldstart() {
  prepare
  tb_start_registry registry "$REG"
  echo "== images"
  tb_push_rootfs "$BENCH_DIR/cache/rootfs-python3" "$TB_DIR/oci" python "$REG/bench/python:gzip" /usr/bin/python3
  tb_convert_estargz "$REG/bench/python:gzip" "$REG/bench/python:estargz"
  local big=$TB_DIR/rootfs-large
  mkdir -p "$big/bin" "$big/data"
  cp /bin/busybox "$big/bin/busybox"; ln -s busybox "$big/bin/sleep"; ln -s busybox "$big/bin/sh"
  head -c $((LARGE_MIB << 20)) /dev/urandom > "$big/data/large.bin"
  tb_push_rootfs "$big" "$TB_DIR/oci" large "$REG/bench/large:gzip" /bin/sh
  tb_convert_estargz "$REG/bench/large:gzip" "$REG/bench/large:estargz"
  rm -rf "$big"
  local image_bytes
  image_bytes=$(skopeo inspect --raw --tls-verify=false "docker://$REG/bench/python:gzip" | python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))')

  echo "== cold start, registry egress limited to $RATE"
  limit_registry
  local t_ovl t_df
  t_ovl=$(coldstart_overlayfs "$REG/bench/python:gzip")
  t_df=$(coldstart_dragonfly "$REG/bench/python:estargz")
  unlimit

  echo "== warm sequential read of a ${LARGE_MIB} MiB file"
  tb_start_dragonfly df-warm "$BIN" "prefetch: {background: false}"
  tb_start_containerd ctd-warm "$TB_DIR/df-warm.sock"
  local sock=$TB_DIR/ctd-warm.sock
  ctr -a "$sock" -n tb image pull --plain-http --snapshotter overlayfs "$REG/bench/large:gzip" >/dev/null
  ctr-remote -a "$sock" -n tb image rpull --plain-http --snapshotter dragonfly "$REG/bench/large:estargz" >/dev/null
  local ovl_cached df_cached ovl_cold df_cold
  ovl_cached=$(read_rate "$sock" overlayfs "$REG/bench/large:gzip" /data/large.bin 0)
  df_cached=$(read_rate "$sock" dragonfly "$REG/bench/large:estargz" /data/large.bin 0)
  ovl_cold=$(read_rate "$sock" overlayfs "$REG/bench/large:gzip" /data/large.bin 1)
  df_cold=$(read_rate "$sock" dragonfly "$REG/bench/large:estargz" /data/large.bin 1)

  python3 - "$OUT_DIR/coldstart.json" <<PY
import json, sys
r = {
  "bench": "coldstart",
  "registry_rate": "$RATE",
  "image": "debian bookworm minbase + python3",
  "image_compressed_bytes": $image_bytes,
  "coldstart_overlayfs_seconds": $t_ovl,
  "coldstart_dragonfly_seconds": $t_df,
  "coldstart_speedup": $t_ovl / $t_df,
  "large_file_mib": $LARGE_MIB,
  "warm_read_page_cache_mbps": {"overlayfs": $ovl_cached, "dragonfly": $df_cached, "ratio": $df_cached / $ovl_cached},
  "warm_read_dropped_caches_mbps": {"overlayfs": $ovl_cold, "dragonfly": $df_cold, "ratio": $df_cold / $ovl_cold},
}
json.dump(r, open(sys.argv[1], "w"), indent=2)
print(json.dumps(r, indent=2))
PY
  printf '\ncold pull + python3 -V: overlayfs %.2fs, dragonfly %.2fs => %.1fx faster (target >= 10x)\n' "$t_ovl" "$t_df" "$(echo "$t_ovl / $t_df" | bc -l)"
  printf 'warm sequential read (page cache kept): dragonfly %.0f MB/s vs overlayfs %.0f MB/s => %.0f%% (target >= 80%%)\n' "$df_cached" "$ovl_cached" "$(echo "100 * $df_cached / $ovl_cached" | bc -l)"
  printf 'warm sequential read (caches dropped):  dragonfly %.0f MB/s vs overlayfs %.0f MB/s => %.0f%%\n' "$df_cold" "$ovl_cold" "$(echo "100 * $df_cold / $ovl_cold" | bc -l)"
  echo "written: $OUT_DIR/coldstart.json"
}

scheduler_bench() {
  mkdir -p "$OUT_DIR"
  cargo run --release --quiet -p dragonfly-scheduler --example selection_bench -- "$OUT_DIR/scheduler.json"
  echo "written: $OUT_DIR/scheduler.json"
}

pieces_bench() {
  mkdir -p "$OUT_DIR"
  cargo run --release --quiet -p dragonfly-snapshotter --example piece_bench -- "$OUT_DIR/pieces.json"
  echo "written: $OUT_DIR/pieces.json"
}

case "${1:-}" in
  coldstart) coldstart ;;
  scheduler) scheduler_bench ;;
  pieces) pieces_bench ;;
  *) echo "usage: scripts/bench.sh coldstart|scheduler|pieces" >&2; exit 2 ;;
esac
