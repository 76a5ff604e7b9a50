#!/usr/bin/env bash
# Benchmarks that compare Dragonfly-rs against a baseline measured in the same run, printed as
# ratios and written as JSON under target/bench/.
#
#   sudo scripts/bench.sh swarm        # N nodes (network namespaces, 1 Gbit links, each its own
#                                      # containerd and daemon) + a seed peer pull one image with a
#                                      # 1 GiB layer at once from an origin limited to 100 Mbit/s,
#                                      # vs every node's containerd pulling from the origin directly
#                                      # (BENCH_SWARM_MODE=file: dfctl get of a blob instead;
#                                      # BENCH_SWARM_NODES=8, BENCH_SWARM_MIB=1024;
#                                      # BENCH_SWARM_DIRECT=0 skips the 12-minute baseline;
#                                      # BENCH_SWARM_TLS=1: every member with certificates from one
#                                      # CA, mutual TLS)
#   sudo scripts/bench.sh swarm-tls    # the swarm's P2P pull twice in one run, plain and over
#                                      # mutual TLS: the ratio is what TLS costs a swarm
#   scripts/bench.sh pieces            # peer-to-peer piece throughput on loopback through the real
#                                      # peer port (raw-TCP piece protocol vs gRPC, with and without
#                                      # the receiver's sha256), vs reading the store directly;
#                                      # plain and mutual TLS, with each side's CPU per GB
#   scripts/bench.sh manager           # 1,000 job creations and 10,000 job polls against the manager
#                                      # (SQLite; BENCH_DATABASE_URL=postgres://... for PostgreSQL)
#   scripts/bench.sh scheduler         # parent selections/s with 10,000 simulated peers (sampled
#                                      # vs a full scan in the same run) and the swarm's memory
#   scripts/bench.sh swarm-lazy        # N = 1, 4, 8 nodes (network namespaces, 1 Gbit links) cold-start
#                                      # the same eStargz python image (`python3 -V`) at once, registry
#                                      # egress at 100 Mbit/s, without the swarm and with it (scheduler +
#                                      # seed): each node's start, the slowest, registry and peer bytes
#                                      # (BENCH_LAZY_NODES="1 4 8")
#   sudo scripts/bench.sh fuzz         # the parsers' fuzz targets (footer/TOC/index, image
#                                      # documents, references, manifest responses, the layer
#                                      # unpacker), BENCH_FUZZ_SECS=60 each: cases run, 0 crashes
#   sudo scripts/bench.sh cri          # the python image's cold start through containerd's CRI
#                                      # (PullImage, pod, `python3 -V`), registry egress limited to
#                                      # 100 Mbit/s: dragonfly at the CRI's default annotations
#                                      # (eStargz, found in containerd's content store) vs overlayfs
#   sudo scripts/bench.sh coldstart    # cold pull + `python3 -V` of a Debian bookworm+python3 image,
#                                      # registry egress limited to 100 Mbit/s: dragonfly (eStargz,
#                                      # lazy) vs containerd's overlayfs; then warm sequential read of
#                                      # a large file through our mount vs overlayfs
#
# Uses release builds. The Debian rootfs (debootstrap) is cached in $BENCH_DIR/cache.
# BENCH_LOG_LEVEL sets the namespaced daemons' log filter (default info), e.g.
# `dragonfly_snapshotter::p2p=debug,info` to see where a slow start spent its time.
# BENCH_PERF=1 (swarm-lazy): a system-wide `perf record` of each round's starts, kept beside
# the round's logs as perf.data.
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

[ "${1:-}" = scheduler ] || [ "${1:-}" = pieces ] || [ "${1:-}" = manager ] || [ "$(id -u)" -eq 0 ] || { echo "run as root: sudo scripts/bench.sh $*" >&2; exit 1; }

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

# A Debian bookworm root with python3 (debootstrap, cached in $BENCH_DIR/cache).
python_rootfs() {
  if [ ! -x "$BENCH_DIR/cache/rootfs-python3/usr/bin/python3" ]; then
    echo "== debootstrap bookworm + python3 (cached afterwards)"
    rm -rf "$BENCH_DIR/cache/rootfs-python3"
    mkdir -p "$BENCH_DIR/cache"
    # Every bench that needs the root gets debootstrap here (swarm-lazy does not run prepare).
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    debootstrap --variant=minbase --include=python3 bookworm "$BENCH_DIR/cache/rootfs-python3" http://deb.debian.org/debian >/dev/null
  fi
}

prepare() {
  apt_missing=()
  for p in debootstrap bc; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || apt_missing+=("$p"); done
  [ ${#apt_missing[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}"
  scripts/install-deps.sh
  if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    echo "== release build"
    cargo build --release --bins --quiet
  fi
  BIN=$REPO_DIR/target/release/dragonfly-snapshotter
  mkdir -p "$BENCH_DIR/cache" "$OUT_DIR"
  python_rootfs
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
  $c run --rm --snapshotter overlayfs "$1" cold-ovl /usr/bin/python3 -V >&2
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
  $c run --rm --snapshotter dragonfly "$1" cold-df /usr/bin/python3 -V >&2
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
  push_python
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

# The python image pushed as gzip and eStargz to the bench registry.
push_python() {
  tb_push_rootfs "$BENCH_DIR/cache/rootfs-python3" "$TB_DIR/oci" python "$REG/bench/python:gzip" /usr/bin/python3
  tb_convert_estargz "$REG/bench/python:gzip" "$REG/bench/python:estargz"
}

cri_bench() {
  prepare
  tb_start_registry registry "$REG"
  echo "== images"
  push_python
  [ "${BENCH_SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet -p dragonfly-integration --example cri_bench
  echo "== cold start through the CRI, registry egress limited to $RATE"
  limit_registry
  DRAGONFLY_SNAPSHOTTER_BIN=$BIN "$REPO_DIR/target/release/examples/cri_bench" "$REG" "$OUT_DIR/cri.json"
  unlimit
  echo "written: $OUT_DIR/cri.json"
}

scheduler_bench() {
  mkdir -p "$OUT_DIR"
  cargo run --release --quiet -p dragonfly-scheduler --example selection_bench -- "$OUT_DIR/scheduler.json"
  echo "written: $OUT_DIR/scheduler.json"
}

# ---- swarm: network namespaces, one origin, a scheduler, a seed peer and N nodes ----------
SW_NET=10.77.0
swarm_cleanup() {
  for pid in $(cat "$TB_DIR"/sw-*.pid 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in $(cat "$TB_DIR"/sw-*.pid 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  rm -f "$TB_DIR"/sw-*.pid
  tb_stop_all
  for ns in $(ip netns list 2>/dev/null | awk '/^dfsw/ {print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
  ip link del dfswbr 2>/dev/null || true
}

sw_origin_bytes() { # digest
  { grep -o "\"GET /v2/bench/[a-z]*/blobs/$1[^\"]*\" 20[06] [0-9]*" "$TB_DIR/origin.log" || true; } | awk '{s+=$NF} END {printf "%.0f\n", s}'
}

# With BENCH_SWARM_TLS=1: a certificate for `name` (role, address) from the run's CA, and the
# `security:` line naming it; nothing otherwise.
sw_security() { # name role ip
  [ "${BENCH_SWARM_TLS:-0}" = 1 ] || return 0
  local mgr=$REPO_DIR/target/release/dragonfly-manager
  [ -e "$TB_DIR/ca/ca-key.pem" ] || "$mgr" certs init --dir "$TB_DIR/ca" > /dev/null
  "$mgr" certs issue --ca "$TB_DIR/ca" --role "$2" --id "$1" --ip "$3" --days 2 --out "$TB_DIR/tls/$1" > /dev/null
  echo "security: {ca: $TB_DIR/tls/$1/ca.pem, cert: $TB_DIR/tls/$1/cert.pem, key: $TB_DIR/tls/$1/key.pem}"
}

sw_ns() { # name ip rate
  local ns=$1 ip=$2 rate=$3
  ip netns add "$ns"
  # A previous round's veth can outlive its namespace for a moment.
  ip link del "v$ns" 2>/dev/null || true
  ip link add "v$ns" type veth peer name eth0 netns "$ns"
  ip link set "v$ns" master dfswbr up
  ip netns exec "$ns" ip addr add "$ip/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip route add default via "$SW_NET.1"
  # Egress of this host: the link's bandwidth.
  ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 50ms
}

sw_daemon() { # ns ip name extra-cli [p2p: 1|0]
  local ns=$1 ip=$2 name=$3 extra=${4:-} p2p=${5:-1}
  mkdir -p "$TB_DIR/$name"
  cat > "$TB_DIR/$name.yaml" <<YAML
root: $TB_DIR/$name
address: $TB_DIR/$name.sock
log: {level: "${BENCH_LOG_LEVEL:-info}"}
metrics: {address: "$ip:9250"}
registry: {plain_http: ["$SW_NET.2:5000"]}
YAML
  [ "$p2p" = 1 ] && echo "p2p: {schedulers: [\"$SW_NET.1:8002\"], listen: \"$ip:4000\", advertise_ip: $ip, host_id: $name}" >> "$TB_DIR/$name.yaml"
  if [ "$p2p" = 1 ]; then
    local role=peer
    case " $extra " in *" --seed-peer "*) role=seed ;; esac
    sw_security "$name" "$role" "$ip" >> "$TB_DIR/$name.yaml"
  fi
  # Extra settings for every daemon of a run (experiments), e.g. "prefetch: {background: false}".
  [ -n "${BENCH_DAEMON_YAML:-}" ] && echo "$BENCH_DAEMON_YAML" >> "$TB_DIR/$name.yaml"
  # nsenter, not `ip netns exec`: only the network namespace; the daemon's FUSE mounts must be
  # in the mount namespace containerd and runc see.
  nsenter --net="/run/netns/$ns" "$REPO_DIR/target/release/dragonfly-snapshotter" --config "$TB_DIR/$name.yaml" $extra > "$TB_DIR/$name.log" 2>&1 &
  echo $! > "$TB_DIR/sw-$name.pid"
  tb_wait_for "$TB_DIR/$name.sock" "daemon $name"
}

# The scheduler on the bridge and a seed peer in its own namespace with a `link` link.
sw_scheduler_and_seed() { # link
  sw_security scheduler scheduler "$SW_NET.1" > "$TB_DIR/scheduler.yaml"
  "$REPO_DIR/target/release/dragonfly-scheduler" --config "$TB_DIR/scheduler.yaml" --address "$SW_NET.1:8002" > "$TB_DIR/scheduler.log" 2>&1 &
  echo $! > "$TB_DIR/sw-scheduler.pid"
  sleep 0.5
  sw_ns dfswseed "$SW_NET.9" "$1"
  sw_daemon dfswseed "$SW_NET.9" seed --seed-peer
}

# The bridge and the origin (a real registry) in its own namespace, egress limited to $RATE,
# under a fresh $TB_DIR (`name`).
sw_setup() { # name
  [ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
  scripts/install-deps.sh
  if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    echo "== release build"
    cargo build --release --bins --quiet
  fi
  mkdir -p "$OUT_DIR"
  export TB_DIR=$BENCH_DIR/$1
  swarm_cleanup; rm -rf "$TB_DIR"; mkdir -p "$TB_DIR"
  trap swarm_cleanup EXIT
  ip link add dfswbr type bridge
  ip addr add "$SW_NET.1/24" dev dfswbr
  ip link set dfswbr up
  sw_ns dfsworigin "$SW_NET.2" "$RATE"
  cat > "$TB_DIR/origin.yml" <<YAML
version: 0.1
log: {level: info}
storage: {filesystem: {rootdirectory: $TB_DIR/origin-data}}
http: {addr: $SW_NET.2:5000}
YAML
  ip netns exec dfsworigin docker-registry serve "$TB_DIR/origin.yml" > "$TB_DIR/origin.log" 2>&1 &
  echo $! > "$TB_DIR/sw-origin.pid"
  for _ in $(seq 1 100); do curl -fs "http://$SW_NET.2:5000/v2/" >/dev/null && break; sleep 0.1; done
}

swarm() {
  local nodes=${BENCH_SWARM_NODES:-8} mib=${BENCH_SWARM_MIB:-1024} link=${BENCH_LINK:-1gbit}
  sw_setup swarm
  local mode=${BENCH_SWARM_MODE:-image} digest size url ref="$SW_NET.2:5000/bench/big:1"
  head -c $((mib << 20)) /dev/urandom > "$TB_DIR/blob"
  if [ "$mode" = image ]; then
    echo "== an image with a ${mib} MiB file on the origin"
    local root=$TB_DIR/rootfs
    mkdir -p "$root/bin" "$root/data"
    cp /bin/busybox "$root/bin/busybox"; ln -s busybox "$root/bin/sh"; ln -s busybox "$root/bin/sha256sum"
    mv "$TB_DIR/blob" "$root/data/big.bin"
    tb_push_rootfs "$root" "$TB_DIR/oci" big "$ref" /bin/sh
    local want; want=$(sha256sum "$root/data/big.bin" | cut -d' ' -f1)
    rm -rf "$root" "$TB_DIR/oci"
    # The image's (only) layer is what the nodes share.
    read -r digest size < <(skopeo inspect --raw --tls-verify=false "docker://$ref" | python3 -c 'import json,sys; l=json.load(sys.stdin)["layers"]; print(l[0]["digest"], sum(x["size"] for x in l))')
  else
    echo "== a ${mib} MiB blob on the origin"
    local loc
    digest=sha256:$(sha256sum "$TB_DIR/blob" | cut -d' ' -f1)
    size=$(stat -c %s "$TB_DIR/blob")
    # Upload on the unshaped direction (into the origin namespace).
    loc=$(curl -fsS -X POST -D - -o /dev/null "http://$SW_NET.2:5000/v2/bench/blob/blobs/uploads/" | awk 'tolower($1)=="location:" {print $2}' | tr -d '\r')
    case "$loc" in http*) ;; *) loc="http://$SW_NET.2:5000$loc" ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' -T "$TB_DIR/blob" "$loc&digest=$digest" >/dev/null
    url="http://$SW_NET.2:5000/v2/bench/blob/blobs/$digest"
  fi
  # Scheduler on the bridge; seed peer and nodes in their own namespaces with $link links.
  sw_scheduler_and_seed "$link"
  for i in $(seq 1 "$nodes"); do
    sw_ns "dfswn$i" "$SW_NET.$((10 + i))" "$link"
    sw_daemon "dfswn$i" "$SW_NET.$((10 + i))" "node$i"
    # containerd itself only talks to the daemon's socket (and fetches manifest and config).
    [ "$mode" = image ] && tb_start_containerd "sw-ctd$i" "$TB_DIR/node$i.sock"
  done
  sleep 2

  local before t0 t1 pids=()
  before=$(sw_origin_bytes "$digest")
  rm -f "$TB_DIR"/done-*
  if [ "$mode" = image ]; then
    echo "== P2P: $nodes nodes pull $ref at once with --snapshotter dragonfly (origin egress $RATE, links $link)"
    t0=$(now)
    for i in $(seq 1 "$nodes"); do
      ( ctr-remote -a "$TB_DIR/sw-ctd$i.sock" -n tb image rpull --plain-http --snapshotter dragonfly "$ref" > "$TB_DIR/pull-$i.log" 2>&1 && now > "$TB_DIR/done-$i" ) &
      pids+=($!)
    done
  else
    echo "== P2P: $nodes nodes fetch $url at once with dfctl get (origin egress $RATE, links $link)"
    t0=$(now)
    for i in $(seq 1 "$nodes"); do
      ( "$REPO_DIR/target/release/dfctl" --socket "$TB_DIR/node$i.sock" get --quiet "$url" -O "$TB_DIR/out-$i" --digest "$digest" && now > "$TB_DIR/done-$i" ) &
      pids+=($!)
    done
  fi
  for p in "${pids[@]}"; do wait "$p" || { echo "a node failed; see $TB_DIR/pull-*.log and node*.log" >&2; exit 1; }; done
  t1=$(sort -n "$TB_DIR"/done-* | tail -1)
  local p2p_secs origin_p2p
  p2p_secs=$(elapsed "$t0" "$t1")
  origin_p2p=$(( $(sw_origin_bytes "$digest") - before ))
  # Outside the timing: every node has the right bytes.
  for i in $(seq 1 "$nodes"); do
    if [ "$mode" = image ]; then
      ctr -a "$TB_DIR/sw-ctd$i.sock" -n tb run --rm --snapshotter dragonfly "$ref" "check-$i" /bin/sha256sum /data/big.bin | grep -q "$want" || { echo "node $i: wrong /data/big.bin" >&2; exit 1; }
    else
      cmp -s "$TB_DIR/blob" "$TB_DIR/out-$i" || { echo "node $i wrote wrong bytes" >&2; exit 1; }
    fi
  done

  echo "P2P: last node done after ${p2p_secs}s; origin sent $origin_p2p bytes"
  local direct_secs=0 ideal
  if [ "${BENCH_SWARM_DIRECT:-1}" = 1 ]; then
    echo "== baseline: $nodes nodes fetch it from the origin directly, at once ($mode)"
    rm -f "$TB_DIR"/done-*
    pids=()
    # containerd's own pull and unpack (overlayfs), each node with a fresh containerd.
    if [ "$mode" = image ]; then
      for i in $(seq 1 "$nodes"); do tb_start_containerd "sw-dctd$i"; done
    fi
    t0=$(now)
    for i in $(seq 1 "$nodes"); do
      if [ "$mode" = image ]; then
        ( ctr -a "$TB_DIR/sw-dctd$i.sock" -n tb image pull --plain-http "$ref" > /dev/null && now > "$TB_DIR/done-$i" ) &
      else
        ( ip netns exec "dfswn$i" curl -fsS -o "$TB_DIR/direct-$i" "$url" && now > "$TB_DIR/done-$i" ) &
      fi
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    t1=$(sort -n "$TB_DIR"/done-* | tail -1)
    direct_secs=$(elapsed "$t0" "$t1")
  fi
  ideal=$(python3 -c "r='$RATE'.lower(); m={'kbit':1e3,'mbit':1e6,'gbit':1e9}; u=[k for k in m if r.endswith(k)][0]; print($size*8/(float(r[:-len(u)])*m[u]))")

  local json=${BENCH_SWARM_JSON:-$OUT_DIR/swarm.json}
  python3 - "$json" <<PY
import json, sys
r = {
  "bench": "swarm", "mode": "$mode", "tls": ${BENCH_SWARM_TLS:-0} == 1, "nodes": $nodes, "blob_bytes": $size, "origin_rate": "$RATE", "link_rate": "$link",
  "p2p_last_node_seconds": $p2p_secs, "p2p_origin_bytes": $origin_p2p,
  "p2p_origin_bytes_ratio": $origin_p2p / $size,
  "direct_last_node_seconds": $direct_secs, "direct_origin_bytes": $nodes * $size,
  "ideal_seconds_size_over_origin_rate": $ideal,
  "p2p_last_node_vs_ideal": $p2p_secs / $ideal,
  "speedup_vs_direct": $direct_secs / $p2p_secs,
}
json.dump(r, open(sys.argv[1], "w"), indent=2)
print(json.dumps(r, indent=2))
PY
  printf '\n%s nodes, %s MiB, origin %s: P2P last node %.1fs (%.2fx of size/origin-rate %.1fs; target <= 1.17x), origin sent %.3fx the blob (target <= 1.02x); direct last node %.1fs => %.1fx faster\n' \
    "$nodes" "$mib" "$RATE" "$p2p_secs" "$(echo "$p2p_secs / $ideal" | bc -l)" "$ideal" "$(echo "$origin_p2p / $size" | bc -l)" "$direct_secs" "$(echo "$direct_secs / $p2p_secs" | bc -l)"
  echo "written: $json"
}

# The swarm's P2P pull plain, then over mutual TLS, in one run (no direct baseline): the
# ratios of the last node's time and of the origin's bytes are what TLS costs.
swarm_tls() {
  BENCH_SWARM_DIRECT=0 BENCH_SWARM_TLS=0 BENCH_SWARM_JSON=$OUT_DIR/swarm-plain.json swarm
  BENCH_SKIP_BUILD=1 BENCH_SWARM_DIRECT=0 BENCH_SWARM_TLS=1 BENCH_SWARM_JSON=$OUT_DIR/swarm-tls.json swarm
  python3 - "$OUT_DIR/swarm-plain.json" "$OUT_DIR/swarm-tls.json" "$OUT_DIR/swarm-tls-ratio.json" <<'PY'
import json, sys
plain, tls = (json.load(open(p)) for p in sys.argv[1:3])
r = {
  "bench": "swarm_tls_vs_plain", "nodes": plain["nodes"], "blob_bytes": plain["blob_bytes"],
  "plain_last_node_seconds": plain["p2p_last_node_seconds"], "tls_last_node_seconds": tls["p2p_last_node_seconds"],
  "tls_over_plain_last_node": round(tls["p2p_last_node_seconds"] / plain["p2p_last_node_seconds"], 3),
  "plain_origin_bytes_ratio": plain["p2p_origin_bytes_ratio"], "tls_origin_bytes_ratio": tls["p2p_origin_bytes_ratio"],
}
json.dump(r, open(sys.argv[3], "w"), indent=2)
print(json.dumps(r, indent=2))
print(f"mutual TLS vs plain, same run: last node {r['tls_over_plain_last_node']:.2f}x")
PY
  echo "written: $OUT_DIR/swarm-tls-ratio.json"
}

# ---- swarm-lazy: N nodes cold-start the same eStargz image's command at once ---------------
# Each node its own network namespace (link $BENCH_LINK, 1gbit), daemon and containerd; the
# registry's egress at $RATE. For N in $BENCH_LAZY_NODES (1 4 8): without the swarm (daemons
# with no P2P), then with it (scheduler + seed peer). Every node runs `ctr-remote image rpull`
# then `python3 -V`; its start time is from the common start to its command's end.
sl_metrics() { # nodes p2p dir when: every daemon's /metrics into DIR/NAME.WHEN.metrics
  local i
  for i in $(seq 1 "$1"); do curl -fs "http://$SW_NET.$((10 + i)):9250/metrics" > "$3/node$i.$4.metrics" || true; done
  [ "$2" = 1 ] && { curl -fs "http://$SW_NET.9:9250/metrics" > "$3/seed.$4.metrics" || true; }
  return 0
}

sl_origin_rate() { # rate
  ip netns exec dfsworigin tc qdisc change dev eth0 root tbf rate "$1" burst 256kb latency 50ms
}

sl_cpu() { # nodes: CPU seconds the node daemons had used, summed
  local i t=0 tick
  tick=$(getconf CLK_TCK)
  for i in $(seq 1 "$1"); do
    t=$(( t + $(awk '{print $14 + $15}' "/proc/$(cat "$TB_DIR/sw-node$i.pid")/stat" 2>/dev/null || echo 0) ))
  done
  echo "$t / $tick" | bc -l
}

sl_round() { # mode(direct|swarm|floor) nodes image digest -> writes $TB_DIR/round-MODE-N.json
  local mode=$1 n=$2 image=$3 digest=$4 link=${BENCH_LINK:-1gbit} p2p=0 before t0 i
  [ "$mode" = swarm ] && p2p=1
  # floor: direct with the origin unthrottled, what N starts at once cost on this machine
  # (CPU, disk) when bandwidth is no limit.
  [ "$mode" = floor ] && sl_origin_rate 10gbit
  [ "$p2p" = 1 ] && sw_scheduler_and_seed "$link"
  for i in $(seq 1 "$n"); do
    sw_ns "dfswn$i" "$SW_NET.$((10 + i))" "$link"
    sw_daemon "dfswn$i" "$SW_NET.$((10 + i))" "node$i" "" "$p2p"
    tb_start_containerd "sw-ctd$i" "$TB_DIR/node$i.sock"
  done
  [ "$p2p" = 1 ] && sleep 2
  before=$(sw_origin_bytes "$digest")
  rm -f "$TB_DIR"/done-*
  local keep=$TB_DIR/logs-$mode-$n perf_pid=
  mkdir -p "$keep"
  # BENCH_PERF=1: a system-wide CPU profile of the starts, for `perf report -i $keep/perf.data`.
  if [ "${BENCH_PERF:-0}" = 1 ]; then
    perf record -a -F 997 -o "$keep/perf.data" > "$keep/perf.log" 2>&1 & perf_pid=$!
  fi
  t0=$(now)
  local pids=()
  for i in $(seq 1 "$n"); do
    ( ctr-remote -a "$TB_DIR/sw-ctd$i.sock" -n tb image rpull --plain-http --snapshotter dragonfly "$image" > "$TB_DIR/pull-$i.log" 2>&1 \
        && ctr -a "$TB_DIR/sw-ctd$i.sock" -n tb run --rm --snapshotter dragonfly "$image" "py-$i" /usr/bin/python3 -V >> "$TB_DIR/pull-$i.log" 2>&1 \
        && now > "$TB_DIR/done-$i" ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "node failed ($mode, $n nodes); see $TB_DIR/pull-*.log" >&2; exit 1; }; done
  [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  local origin total last
  origin=$(( $(sw_origin_bytes "$digest") - before ))
  # Kept for reading afterwards: every daemon's metrics at the starts and at the end, its log.
  sl_metrics "$n" "$p2p" "$keep" start
  sl_cpu "$n" > "$keep/cpu-at-starts"
  # The seed's background fill goes on after the starts: registry bytes counted until they stop
  # growing for 3 s (lazy and background fetches together), at most 120 s.
  total=$origin; last=-1
  for _ in $(seq 1 40); do
    [ "$total" = "$last" ] && break
    last=$total; sleep 3
    total=$(( $(sw_origin_bytes "$digest") - before ))
  done
  sl_metrics "$n" "$p2p" "$keep" end
  [ "$mode" = floor ] && sl_origin_rate "$RATE"
  python3 - "$TB_DIR/round-$mode-$n.json" "$t0" "$origin" "$total" "$keep" "$n" "$TB_DIR"/done-* <<'PY'
import json, sys
out, t0, origin, total, keep, n, done = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]), sys.argv[7:]
def metric(path, name):
    for line in open(path):
        if line.startswith("dragonfly_snapshotter_" + name + " "):
            return int(float(line.split()[1]))
    return 0
def nodes(when, name):
    return [metric(f"{keep}/node{i}.{when}.metrics", name) for i in range(1, n + 1)]
def timing(path):
    # Where waited-for reads spent their time: P2P steps (count, seconds) and store steps (seconds).
    t = {}
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return t
    for line in lines:
        if line.startswith("dragonfly_snapshotter_cache_urgent_fetches "):
            t["store_runs"] = int(float(line.split()[1]))
        for kind in ("p2p_demand_seconds_sum", "p2p_demand_seconds_count", "cache_urgent_fetch_seconds"):
            pre = "dragonfly_snapshotter_" + kind + '{step="'
            if line.startswith(pre):
                step, value = line[len(pre):].split('"} ')
                key = ("store_" if kind.startswith("cache") else "p2p_") + step
                t.setdefault(key, [0, 0.0])
                if kind.endswith("_count"):
                    t[key][0] = int(float(value))
                else:
                    t[key][1] = round(float(value), 4)
    return t
starts = sorted(float(open(f).read()) - t0 for f in done)
needed = nodes("start", "chunk_needed_compressed_bytes_total")
urgent = nodes("start", "cache_fetched_urgent_bytes")
cpu = float(open(f"{keep}/cpu-at-starts").read())
json.dump({"starts_seconds": starts, "slowest_seconds": max(starts), "registry_bytes_at_starts": origin,
           "registry_bytes": total, "peer_bytes": sum(nodes("end", 'p2p_bytes_total{source="peer"}')),
           "chunk_needed_bytes_per_node": needed, "urgent_fetched_bytes_per_node": urgent,
           "urgent_vs_needed": max(u / c for u, c in zip(urgent, needed)) if all(needed) else None,
           "node_daemons_cpu_seconds_at_starts": cpu,
           "timing_node1_at_starts": timing(f"{keep}/node1.start.metrics"),
           "timing_seed_at_starts": timing(f"{keep}/seed.start.metrics")},
          open(out, "w"))
PY
  # Everything of this round goes, so the next starts cold.
  for i in $(seq 1 "$n"); do tb_stop "sw-ctd$i"; done
  for f in "$TB_DIR"/sw-*.pid; do
    case $f in *sw-origin.pid) ;; *) [ -e "$f" ] && { kill "$(cat "$f")" 2>/dev/null || true; } ;; esac
  done
  sleep 1
  for f in "$TB_DIR"/sw-*.pid; do
    case $f in *sw-origin.pid) ;; *) [ -e "$f" ] && { kill -9 "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; } ;; esac
  done
  tb_stop_shims
  tb_unmount_all
  for ns in $(ip netns list 2>/dev/null | awk '/^dfswn|^dfswseed/ {print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
  mv "$TB_DIR"/node*.log "$TB_DIR"/pull-*.log "$keep/" 2>/dev/null || true
  [ "$p2p" = 1 ] && mv "$TB_DIR/seed.log" "$TB_DIR/scheduler.log" "$keep/"
  rm -rf "$TB_DIR"/node* "$TB_DIR"/seed* "$TB_DIR"/sw-ctd*
}

swarm_lazy() {
  python_rootfs
  sw_setup swarm-lazy
  local ref="$SW_NET.2:5000/bench/python"
  echo "== the python image on the origin, as gzip and as eStargz"
  tb_push_rootfs "$BENCH_DIR/cache/rootfs-python3" "$TB_DIR/oci" python "$ref:gzip" /usr/bin/python3
  tb_convert_estargz "$ref:gzip" "$ref:estargz"
  rm -rf "$TB_DIR/oci"
  local digest size
  read -r digest size < <(skopeo inspect --raw --tls-verify=false "docker://$ref:estargz" | python3 -c 'import json,sys; l=json.load(sys.stdin)["layers"]; print(l[0]["digest"], l[0]["size"])')
  local n mode
  for n in ${BENCH_LAZY_NODES:-1 4 8}; do
    for mode in direct swarm floor; do
      echo "== $n node(s) at once, $mode"
      sl_round "$mode" "$n" "$ref:estargz" "$digest"
      cat "$TB_DIR/round-$mode-$n.json"; echo
    done
  done
  python3 - "$OUT_DIR/swarm-lazy.json" "$TB_DIR" "$size" "$RATE" "${BENCH_LAZY_NODES:-1 4 8}" <<'PY'
import json, sys
out, d, size, rate, ns = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5].split()
r = {"bench": "swarm-lazy", "layer_bytes": size, "registry_rate": rate, "rounds": {}}
for n in ns:
    for mode in ("direct", "swarm", "floor"):
        r["rounds"][f"{mode}-{n}"] = json.load(open(f"{d}/round-{mode}-{n}.json"))
one = r["rounds"].get("direct-1", {}).get("slowest_seconds")
for k, v in r["rounds"].items():
    if one:
        v["slowest_vs_one_node_direct"] = v["slowest_seconds"] / one
    v["slowest_vs_floor"] = v["slowest_seconds"] / r["rounds"]["floor-" + k.split("-")[1]]["slowest_seconds"]
    v["registry_bytes_vs_layer"] = v["registry_bytes"] / size
json.dump(r, open(out, "w"), indent=2)
print(f"layer: {size} B; registry B: during the starts / with the fills finished; urgent/needed: bytes a node fetched for waiting reads over the compressed bytes of the chunks they needed (worst node); cpu s: CPU the node daemons used until the last start, summed")
print("floor-N: direct, the origin unthrottled: what N starts at once cost this machine without a bandwidth limit")
print(f"{'round':<10} {'slowest s':>9} {'x 1 direct':>10} {'x floor':>7} {'registry B':>21} {'x layer':>7} {'peer B':>10} {'urg/need':>8} {'cpu s':>7}  starts")
for k, v in r["rounds"].items():
    reg = f"{v['registry_bytes_at_starts']}/{v['registry_bytes']}"
    print(f"{k:<10} {v['slowest_seconds']:>9.2f} {v.get('slowest_vs_one_node_direct', 0):>10.2f} {v['slowest_vs_floor']:>7.2f} {reg:>21} {v.get('registry_bytes_vs_layer', 0):>7.3f} {v['peer_bytes']:>10} {v['urgent_vs_needed'] or 0:>8.2f} {v['node_daemons_cpu_seconds_at_starts']:>7.2f}  {', '.join(f'{s:.2f}' for s in v['starts_seconds'])}")
print("targets: swarm-1 <= 1.1x direct-1; swarm-8 slowest <= 1.3x direct-1 (and see x floor); swarm-8 registry <= 1.05x the layer; direct-1 urgent/needed <= 1.2")
PY
  echo "written: $OUT_DIR/swarm-lazy.json"
}

manager_bench() {
  mkdir -p "$OUT_DIR"
  cargo run --release --quiet -p dragonfly-manager --example api_bench -- "$OUT_DIR/manager.json"
  echo "written: $OUT_DIR/manager.json"
}

pieces_bench() {
  mkdir -p "$OUT_DIR"
  # The daemon's default piece length, then 4 MiB pieces.
  cargo run --release --quiet -p dragonfly-snapshotter --example piece_bench -- "$OUT_DIR/pieces.json"
  BENCH_PIECE_LENGTH=4194304 cargo run --release --quiet -p dragonfly-snapshotter --example piece_bench -- "$OUT_DIR/pieces-4mib.json"
  # The same over mutual TLS (cluster credentials), in the same run: the ratios are the cost.
  BENCH_TLS=1 cargo run --release --quiet -p dragonfly-snapshotter --example piece_bench -- "$OUT_DIR/pieces-tls.json"
  python3 - "$OUT_DIR/pieces.json" "$OUT_DIR/pieces-tls.json" "$OUT_DIR/pieces-tls-ratio.json" <<'PY'
import json, sys
plain, tls = (json.load(open(p)) for p in sys.argv[1:3])
keys = ["tcp_transport_only_gbps", "grpc_transport_only_gbps", "best_tcp_verified_gbps", "best_grpc_verified_gbps"]
ratios = {k: round(tls[k] / plain[k], 3) for k in keys}
# Each side's CPU per GB (on a cluster the sides are different machines): TLS over plain.
cpu = {f"{run}_{side}_cpu_per_gb": round(tls[run][f"{side}_cpu_s_per_gb"] / plain[run][f"{side}_cpu_s_per_gb"], 3)
       for run in ("tcp_transport_8_inflight", "tcp_verified_8_inflight") for side in ("sender", "receiver")}
json.dump({"bench": "piece_transfer_tls_vs_plain", "tls_over_plain": ratios, "tls_over_plain_cpu": cpu},
          open(sys.argv[3], "w"), indent=2)
print("mutual TLS vs plain, same run: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
print("CPU per GB, TLS over plain: " + ", ".join(f"{k} {v:.2f}x" for k, v in cpu.items()))
PY
  echo "written: $OUT_DIR/pieces.json $OUT_DIR/pieces-4mib.json $OUT_DIR/pieces-tls.json $OUT_DIR/pieces-tls-ratio.json"
}

# Fuzz targets of the parsers, each for BENCH_FUZZ_SECS seconds (default 60), one after the
# other, in a release build with overflow checks on in the parser crates (an overflow is then a
# crash, as in the debug build of the test suite). A crash fails the run; its input is saved
# under target/fuzz-crashes/ with the seed and case that reproduce it.
fuzz_bench() {
  mkdir -p "$OUT_DIR"
  local secs=${BENCH_FUZZ_SECS:-60} report log failed=()
  report=$(mktemp)
  log=$OUT_DIR/fuzz.log
  : >"$log"
  local cfg=()
  for p in dragonfly-estargz dragonfly-registry dragonfly-snapshotter dragonfly-fuzzkit; do
    cfg+=(--config "profile.release.package.$p.overflow-checks=true")
  done
  # suite: cargo arguments, then the test filter
  local suites=(
    "-p dragonfly-estargz --test fuzz_toc|fuzz_"
    "-p dragonfly-registry --test fuzz_manifest|fuzz_"
    "-p dragonfly-snapshotter --lib|layer::unpack_fuzz"
  )
  echo "== fuzz: ${secs}s per target (release, overflow checks on)"
  for s in "${suites[@]}"; do
    local args=${s%%|*} filter=${s##*|}
    # shellcheck disable=SC2086
    cargo test --release --quiet "${cfg[@]}" $args --no-run 2>&1 | tee -a "$log" >&2
    # shellcheck disable=SC2086
    if ! DRAGONFLY_FUZZ_SECS=$secs DRAGONFLY_FUZZ_REPORT=$report \
      cargo test --release --quiet "${cfg[@]}" $args -- "$filter" --nocapture --test-threads=1 2>&1 |
      tee -a "$log" | grep -E 'fuzz [a-z-]+: |panicked|FAILED|allocation of'; then
      failed+=("$args")
    fi
  done
  python3 - "$report" "$OUT_DIR/fuzz.json" "$secs" "${failed[@]}" <<'PY'
import json, sys
report, out, secs, failed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sorted(set(sys.argv[4:]))
targets = [json.loads(l) for l in open(report) if l.strip()]
r = {
    "seconds_per_target": secs,
    "targets": targets,
    "total_cases": sum(t["cases"] for t in targets),
    "crashes": len(failed),  # suites that crashed (each stops at its first crash)
    "failed_suites": failed,
}
json.dump(r, open(out, "w"), indent=2)
print(f"{'target':<16} {'cases':>12} {'cases/s':>10} {'largest case peak':>18}")
for t in targets:
    peak = f"{t['max_case_peak_bytes'] >> 10} KiB" if t["max_case_peak_bytes"] else "-"
    print(f"{t['target']:<16} {t['cases']:>12} {t['cases'] / max(t['seconds'], 0.1):>10.0f} {peak:>18}")
print(f"total: {r['total_cases']} cases, {r['crashes']} crashes" + (f" (failed: {', '.join(failed)})" if failed else ""))
PY
  rm -f "$report"
  echo "written: $OUT_DIR/fuzz.json (log: $log)"
  [ ${#failed[@]} -eq 0 ]
}

case "${1:-}" in
  coldstart) coldstart ;;
  cri) cri_bench ;;
  scheduler) scheduler_bench ;;
  pieces) pieces_bench ;;
  manager) manager_bench ;;
  swarm) swarm ;;
  swarm-tls) swarm_tls ;;
  swarm-lazy) swarm_lazy ;;
  fuzz) fuzz_bench ;;
  *) echo "usage: scripts/bench.sh coldstart|cri|scheduler|pieces|swarm|swarm-tls|swarm-lazy|manager|fuzz" >&2; exit 2 ;;
esac
