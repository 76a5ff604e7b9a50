#!/usr/bin/env bash
# Quickstart: the whole Dragonfly-rs system on one machine, and what it does.
#
#   scripts/quickstart.sh        # as root (a non-root user: sudo scripts/quickstart.sh)
#   scripts/quickstart.sh stop   # ends every process it started (by pid), removes its mounts
#
# Under $QS_DIR (default /var/tmp/dragonfly-quickstart) it starts:
#   - a registry (docker-registry) on 127.0.0.1:5000,
#   - dragonfly-manager (SQLite) with HTTP on 127.0.0.1:8080 and gRPC on 127.0.0.1:65003,
#   - dragonfly-scheduler on 127.0.0.1:8002, registered with the manager,
#   - a seed peer (dragonfly-snapshotter --seed-peer) on 127.0.0.21,
#   - two nodes on 127.0.0.22 and 127.0.0.23, each its own dragonfly-snapshotter and its own
#     containerd, joined to the cluster through the manager (p2p.manager; they ask it for their
#     schedulers).
# It builds two images (busybox + a 48 MiB file): one plain gzip, one converted to eStargz;
# creates a personal access token; preheats the gzip image with the Open API (the README's curl
# request); then pulls and runs both images on node 1, then on node 2, and prints per node and
# image where the layer bytes came from and how long pull + run took.
#
# QS_PORT_BASE=N moves every TCP port to N..N+6, QS_IP_BASE=A.B.C the nodes to A.B.C.21-23
# (for a second copy beside a running one); QS_BIN_DIR=DIR uses built binaries from DIR and
# skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_DIR=$PWD
export TB_DIR=${QS_DIR:-/var/tmp/dragonfly-quickstart}
# shellcheck source=lib/testbed.sh
. scripts/lib/testbed.sh

if [ -n "${QS_PORT_BASE:-}" ]; then
  b=$QS_PORT_BASE
  REG_PORT=$b MGR_HTTP=$((b + 1)) MGR_GRPC=$((b + 2)) SCHED_PORT=$((b + 3))
  SCHED_METRICS=$((b + 4)) NODE_METRICS=$((b + 5)) PEER_PORT=$((b + 6))
else
  REG_PORT=5000 MGR_HTTP=8080 MGR_GRPC=65003 SCHED_PORT=8002
  SCHED_METRICS=8000 NODE_METRICS=9250 PEER_PORT=4000
fi
IPB=${QS_IP_BASE:-127.0.0}
REG=127.0.0.1:$REG_PORT
MANAGER=http://127.0.0.1:$MGR_HTTP
GZIP_IMAGE=$REG/demo/app:gzip
ESGZ_IMAGE=$REG/demo/app:estargz
NODES=(node1 node2)

if [ "${1:-}" = stop ]; then
  tb_stop_all
  echo "stopped; state left in $TB_DIR (rm -rf it to start from scratch)"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "run as root (a non-root user: sudo scripts/quickstart.sh)" >&2; exit 1; }

json() { # python expression over the JSON document `d` read from stdin
  python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"
}

node_ip() { # node1 -> 127.0.0.22
  case $1 in seed) echo "$IPB.21" ;; node1) echo "$IPB.22" ;; node2) echo "$IPB.23" ;; esac
}

# Sum of a daemon metric's samples (lines starting with $2 and containing $3).
metric() { # node name [filter]
  curl -fs "http://$(node_ip "$1"):$NODE_METRICS/metrics" \
    | awk -v n="$2" -v f="${3:-}" 'index($0, n) == 1 && index($0, f) > 0 {s += $NF} END {printf "%d", s}'
}

build() {
  if [ -n "${QS_BIN_DIR:-}" ]; then
    BIN_DIR=$QS_BIN_DIR
  else
    echo "== building (cargo build --workspace --bins --locked)"
    cargo build --workspace --bins --locked --quiet
    BIN_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug
  fi
  for b in dragonfly-snapshotter dragonfly-scheduler dragonfly-manager dfctl; do
    [ -x "$BIN_DIR/$b" ] || { echo "quickstart: $BIN_DIR/$b is missing" >&2; exit 1; }
  done
}

start_manager() {
  ROOT_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  mkdir -p "$TB_DIR/manager"
  cat > "$TB_DIR/manager.yaml" <<YAML
data_dir: $TB_DIR/manager
http: {listen: "127.0.0.1:$MGR_HTTP"}
grpc: {listen: "127.0.0.1:$MGR_GRPC", keepalive_interval_secs: 2}
auth: {root_password: "$ROOT_PASSWORD"}
# The registry runs on loopback; preheat URLs may point there only when allow-listed.
jobs: {allowed_networks: ["127.0.0.0/8"]}
YAML
  "$BIN_DIR/dragonfly-manager" --config "$TB_DIR/manager.yaml" > "$TB_DIR/manager.log" 2>&1 &
  echo $! > "$TB_DIR/manager.pid"
  for _ in $(seq 1 100); do curl -fs "$MANAGER/healthy" >/dev/null && return 0; sleep 0.1; done
  echo "the manager did not start; see $TB_DIR/manager.log" >&2
  return 1
}

start_scheduler() {
  cat > "$TB_DIR/scheduler.yaml" <<YAML
address: "127.0.0.1:$SCHED_PORT"
metrics: {address: "127.0.0.1:$SCHED_METRICS"}
scheduling: {keepalive_interval_secs: 2}
manager: {address: "127.0.0.1:$MGR_GRPC", advertise_ip: 127.0.0.1}
YAML
  "$BIN_DIR/dragonfly-scheduler" --config "$TB_DIR/scheduler.yaml" > "$TB_DIR/scheduler.log" 2>&1 &
  echo $! > "$TB_DIR/scheduler.pid"
}

start_peer() { # name seed(true|false)
  local name=$1 ip; ip=$(node_ip "$1")
  tb_start_dragonfly "$name" "$BIN_DIR/dragonfly-snapshotter" "metrics: {address: \"$ip:$NODE_METRICS\"}
p2p: {manager: \"127.0.0.1:$MGR_GRPC\", listen: \"$ip:$PEER_PORT\", advertise_ip: $ip, host_id: $name, seed_peer: $2}"
}

# Signs in as root and creates a personal access token with the `job` scope.
create_token() {
  local session
  session=$(curl -fsS "$MANAGER/api/v1/users/signin" -H 'Content-Type: application/json' \
    -d "{\"name\":\"root\",\"password\":\"$ROOT_PASSWORD\"}" | json 'd["token"]')
  SESSION=$session
  TOKEN=$(curl -fsS "$MANAGER/api/v1/personal-access-tokens" -H "Authorization: Bearer $session" \
    -H 'Content-Type: application/json' -d '{"name":"quickstart","scopes":["job"]}' | json 'd["token"]')
}

# Waits until the manager lists an active scheduler and seed peer, and the scheduler has heard
# from all three peers (they learn its address from the manager, then announce themselves).
wait_cluster() {
  local kind hosts
  for kind in schedulers seed-peers; do
    for _ in $(seq 1 150); do
      curl -fs "$MANAGER/api/v1/$kind" -H "Authorization: Bearer $SESSION" \
        | json 'any(m["state"] == "active" for m in d)' | grep -q True && continue 2
      sleep 0.2
    done
    echo "the manager lists no active $kind; see $TB_DIR/*.log" >&2
    return 1
  done
  for _ in $(seq 1 150); do
    hosts=$(curl -fs "http://127.0.0.1:$SCHED_METRICS/metrics" | awk '$1 == "dragonfly_scheduler_hosts" {print $2}')
    [ "${hosts:-0}" -ge 3 ] && return 0
    sleep 0.2
  done
  echo "the scheduler knows ${hosts:-0} of 3 peers after 30 s; see $TB_DIR/*.log" >&2
  return 1
}

build_images() {
  local rootfs=$TB_DIR/rootfs
  mkdir -p "$rootfs/bin" "$rootfs/data"
  cp /bin/busybox "$rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do [ -e "$rootfs/bin/$a" ] || ln -s busybox "$rootfs/bin/$a"; done
  head -c 50331648 /dev/urandom > "$rootfs/data/blob.bin"
  echo "hello from Dragonfly-rs" > "$rootfs/hello.txt"
  tb_push_rootfs "$rootfs" "$TB_DIR/oci" app "$GZIP_IMAGE" /bin/cat /hello.txt
  tb_convert_estargz "$GZIP_IMAGE" "$ESGZ_IMAGE"
  rm -rf "$rootfs" "$TB_DIR/oci"
}

# The README's Open API request, then polling the job until it ends.
preheat() { # image-ref
  local repo=${1#"$REG"/} job id state
  repo=${repo%:*}
  job=$(curl -fsS -X POST "$MANAGER/oapi/v1/jobs" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' \
    -d "{\"type\":\"preheat\",\"args\":{\"type\":\"image\",\"url\":\"http://$REG/v2/$repo/manifests/${1##*:}\"}}")
  id=$(echo "$job" | json 'd["id"]')
  for _ in $(seq 1 600); do
    job=$(curl -fsS "$MANAGER/oapi/v1/jobs/$id" -H "Authorization: Bearer $TOKEN")
    state=$(echo "$job" | json 'd["state"]')
    case $state in
      SUCCESS) echo "   job $id: SUCCESS"; return 0 ;;
      FAILURE) echo "   job $id: FAILURE: $(echo "$job" | json 'd.get("log", "")')" >&2; return 1 ;;
    esac
    sleep 0.5
  done
  echo "   job $id still $state after 5 minutes" >&2
  return 1
}

# Pulls (with layer labels, so the daemon fetches layers through the swarm) and runs an image
# on a node; prints where its layer bytes came from and how long pull + run took.
pull_and_run() { # node image-ref
  local node=$1 image=$2 sock="$TB_DIR/$1-containerd.sock" peers0 reg0 t0 t1 out
  peers0=$(metric "$node" dragonfly_snapshotter_p2p_bytes_total 'source="peer"')
  reg0=$(metric "$node" dragonfly_snapshotter_origin_fetch_bytes_total 'origin="registry"')
  t0=$(date +%s.%N)
  ctr-remote -a "$sock" image rpull --plain-http --snapshotter dragonfly "$image" > "$TB_DIR/$node-pull.log" 2>&1 \
    || { cat "$TB_DIR/$node-pull.log" >&2; return 1; }
  out=$(ctr -a "$sock" run --rm --snapshotter dragonfly "$image" "qs-$node-${image##*:}")
  t1=$(date +%s.%N)
  RESULTS+=("$(printf '%s %s  from peers: %d B  from the registry: %d B  start: %.2f s' "$node" "$image" \
    $(( $(metric "$node" dragonfly_snapshotter_p2p_bytes_total 'source="peer"') - peers0 )) \
    $(( $(metric "$node" dragonfly_snapshotter_origin_fetch_bytes_total 'origin="registry"') - reg0 )) \
    "$(echo "$t1 - $t0" | python3 -c 'print(eval(input()))')")")
  echo "   $node ran $image: $out"
}

started=$(date +%s)
scripts/install-deps.sh
build
[ -d "$TB_DIR" ] && tb_stop_all
rm -rf "$TB_DIR"
mkdir -p "$TB_DIR"

echo "== registry on $REG"
tb_start_registry registry "$REG"
echo "== images: $GZIP_IMAGE and $ESGZ_IMAGE (busybox + a 48 MiB file)"
build_images
echo "== manager on $MANAGER, scheduler on 127.0.0.1:$SCHED_PORT, seed peer on $(node_ip seed)"
start_manager
start_scheduler
start_peer seed true
for n in "${NODES[@]}"; do
  echo "== $n on $(node_ip "$n"): dragonfly-snapshotter + containerd"
  start_peer "$n" false
  tb_start_containerd "$n-containerd" "$TB_DIR/$n.sock"
done
create_token
wait_cluster
registry_before=$(tb_registry_blob_bytes registry)
echo "== preheat $GZIP_IMAGE through the Open API (POST /oapi/v1/jobs)"
preheat "$GZIP_IMAGE"

RESULTS=()
for n in "${NODES[@]}"; do
  for image in "$GZIP_IMAGE" "$ESGZ_IMAGE"; do
    pull_and_run "$n" "$image"
  done
done

echo
echo "== where the layer bytes came from (pull + run of each image, per node; $GZIP_IMAGE was preheated)"
printf '%s\n' "${RESULTS[@]}"
echo "the registry sent $(( $(tb_registry_blob_bytes registry) - registry_before )) B of blobs in all since the preheat began (to the seed peer)"
echo
echo "Console:        $MANAGER/   (user root, password $ROOT_PASSWORD)"
echo "Open API token: $TOKEN   (scope job)"
echo
echo "Use it by hand:"
echo "  ctr -a $TB_DIR/node1-containerd.sock run --rm -t --snapshotter dragonfly $ESGZ_IMAGE sh1 sh"
echo "  ctr-remote -a $TB_DIR/node2-containerd.sock image rpull --plain-http --snapshotter dragonfly $REG/REPO:TAG"
echo "  $BIN_DIR/dfctl --socket $TB_DIR/node2.sock image pull --containerd $TB_DIR/node2-containerd.sock $GZIP_IMAGE"
echo "  curl -X POST $MANAGER/oapi/v1/jobs -H 'Authorization: Bearer $TOKEN' -H 'Content-Type: application/json' \\"
echo "    -d '{\"type\":\"preheat\",\"args\":{\"type\":\"image\",\"url\":\"http://$REG/v2/demo/app/manifests/estargz\"}}'"
echo "  $BIN_DIR/dfctl --manager $MANAGER --token $TOKEN jobs"
echo "  curl -s $(node_ip node2):$NODE_METRICS/metrics | grep dragonfly_snapshotter_p2p"
echo "  logs: $TB_DIR/*.log"
echo "  stop: scripts/quickstart.sh stop"
echo "quickstart finished in $(( $(date +%s) - started )) s"
