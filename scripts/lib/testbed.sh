# Shell helpers shared by quickstart.sh and bench.sh: start a registry, containerd instances and
# our daemon under a work directory, build and convert images. Source it; it defines functions
# only. Every started process's pid goes to $TB_DIR/<name>.pid so tb_stop_all can end it.

: "${TB_DIR:?TB_DIR must be set before sourcing testbed.sh}"

tb_wait_for() { # path what
  for _ in $(seq 1 200); do [ -e "$1" ] && return 0; sleep 0.1; done
  echo "$2 did not start; see $TB_DIR/*.log" >&2
  return 1
}

tb_start_registry() { # name addr
  local name=$1 addr=$2
  cat > "$TB_DIR/$name.yml" <<YAML
version: 0.1
log: {level: info}
storage: {filesystem: {rootdirectory: $TB_DIR/$name-data}, delete: {enabled: true}}
http: {addr: $addr}
YAML
  docker-registry serve "$TB_DIR/$name.yml" > "$TB_DIR/$name.log" 2>&1 &
  echo $! > "$TB_DIR/$name.pid"
  for _ in $(seq 1 100); do curl -fs "http://$addr/v2/" >/dev/null && return 0; sleep 0.1; done
  echo "registry $name did not start; see $TB_DIR/$name.log" >&2
  return 1
}

tb_start_containerd() { # name [dragonfly-socket]
  local name=$1 df_sock=${2:-}
  {
    echo "version = 2"
    echo "root = \"$TB_DIR/$name/root\""
    echo "state = \"$TB_DIR/$name/state\""
    echo 'disabled_plugins = ["io.containerd.grpc.v1.cri"]'
    echo "[grpc]"
    echo "  address = \"$TB_DIR/$name.sock\""
    echo "[ttrpc]"
    echo "  address = \"$TB_DIR/$name.sock.ttrpc\""
    if [ -n "$df_sock" ]; then
      echo "[proxy_plugins]"
      echo "  [proxy_plugins.dragonfly]"
      echo "    type = \"snapshot\""
      echo "    address = \"$df_sock\""
    fi
  } > "$TB_DIR/$name.toml"
  containerd --config "$TB_DIR/$name.toml" > "$TB_DIR/$name.log" 2>&1 &
  echo $! > "$TB_DIR/$name.pid"
  tb_wait_for "$TB_DIR/$name.sock" "containerd $name"
  for _ in $(seq 1 100); do ctr -a "$TB_DIR/$name.sock" version >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

tb_start_dragonfly() { # name bin [extra yaml lines]
  local name=$1 bin=$2 extra=${3:-}
  local metrics="metrics: {address: null}" log="log: {level: info}"
  case "$extra" in *metrics:*) metrics="" ;; esac
  case "$extra" in *log:*) log="" ;; esac
  cat > "$TB_DIR/$name.yaml" <<YAML
root: $TB_DIR/$name
address: $TB_DIR/$name.sock
$log
$metrics
$extra
YAML
  rm -f "$TB_DIR/$name.sock"
  "$bin" --config "$TB_DIR/$name.yaml" > "$TB_DIR/$name.log" 2>&1 &
  echo $! > "$TB_DIR/$name.pid"
  tb_wait_for "$TB_DIR/$name.sock" "dragonfly-snapshotter $name"
}

tb_stop() { # name
  local pidfile="$TB_DIR/$1.pid"
  if [ -f "$pidfile" ]; then
    local pid; pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

tb_unmount_all() {
  local m
  for m in $( (grep -o " $TB_DIR[^ ]*" /proc/self/mountinfo || true) | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

# Ends the containerd shims of our containerd instances (their -address is under $TB_DIR), by pid.
tb_stop_shims() {
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -q "containerd-shim.* -address $TB_DIR/" \
      && kill -9 "${p#/proc/}" 2>/dev/null || true
  done
}

tb_stop_all() {
  local f
  for f in "$TB_DIR"/*.pid; do
    [ -e "$f" ] || continue
    tb_stop "$(basename "$f" .pid)"
  done
  tb_stop_shims
  sleep 0.5
  tb_unmount_all
}

# Packs a root filesystem directory as a one-layer OCI gzip image and pushes it.
tb_push_rootfs() { # rootfs-dir oci-layout tag ref [cmd...]
  local rootfs=$1 layout=$2 tag=$3 ref=$4; shift 4
  [ -d "$layout" ] || umoci init --layout "$layout" >/dev/null
  umoci new --image "$layout:$tag"
  rm -rf "$TB_DIR/bundle-$tag"
  umoci unpack --image "$layout:$tag" "$TB_DIR/bundle-$tag" >/dev/null
  cp -a "$rootfs/." "$TB_DIR/bundle-$tag/rootfs/"
  umoci repack --image "$layout:$tag" "$TB_DIR/bundle-$tag"
  if [ $# -gt 0 ]; then
    local args=()
    for c in "$@"; do args+=(--config.cmd "$c"); done
    umoci config --image "$layout:$tag" "${args[@]}"
  fi
  rm -rf "$TB_DIR/bundle-$tag"
  skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$tag" "docker://$ref"
}

# Converts a pushed image to eStargz with a throwaway containerd and pushes the result.
tb_convert_estargz() { # src-ref dst-ref [extra ctr-remote convert flags]
  local src=$1 dst=$2; shift 2
  tb_start_containerd tb-builder
  local sock="$TB_DIR/tb-builder.sock"
  ctr -a "$sock" -n tb image pull --plain-http "$src" >/dev/null
  ctr-remote -a "$sock" -n tb image convert --estargz --oci "$@" "$src" "$dst" >/dev/null
  ctr -a "$sock" -n tb image push --plain-http "$dst" >/dev/null
  tb_stop tb-builder
  rm -rf "$TB_DIR/tb-builder"
}

# Bytes of blob bodies the registry sent, from its access log.
tb_registry_blob_bytes() { # name
  grep -o '"GET /v2/[^"]*/blobs/[^"]*" 20[06] [0-9]*' "$TB_DIR/$1.log" | awk '{s+=$NF} END {print s+0}'
}
