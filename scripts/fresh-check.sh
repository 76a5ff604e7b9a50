#!/usr/bin/env bash
# Proves the README's commands on a clean Debian bookworm root, so a missing install step
# cannot hide behind packages this machine got by hand.
#
#   scripts/fresh-check.sh           # install-deps + build + the quickstart, in a fresh root
#   scripts/fresh-check.sh --full    # ... and then the whole test suite (scripts/test.sh)
#
# What it does, as root:
#  1. Builds a minimal Debian bookworm root with debootstrap (variant minbase plus what a fresh
#     machine of ours has: gcc, libc6-dev, git, python3) from the mirror in this machine's apt
#     sources, and caches it as a tarball under /var/tmp. Every run starts from that tarball.
#  2. Copies in a clean clone of HEAD (uncommitted changes are not part of the check), this
#     machine's apt sources, and its pip settings and extra CA certificates (the egress
#     proxy's); bind-mounts the Rust toolchain (~/.rustup, ~/.cargo/bin, read-only)
#     and the cargo registry cache (so crates are not downloaded again); cargo-nextest too.
#  3. Inside that root: scripts/install-deps.sh, then
#     `cargo build --workspace --bins --locked` with a target dir of its own (fresh each run, so
#     no build-script output from this machine is reused), then `scripts/quickstart.sh` and
#     `scripts/quickstart.sh stop` on ports and addresses of their own (with --full also
#     `scripts/test.sh`).
#
# What it cannot prove: the root shares this machine's kernel (and its fuse and overlay
# support), its network namespace, cgroups, /dev and /sys; there is no systemd; the Rust
# toolchain is this machine's (bind-mounted, not installed by rustup); packages come from this
# machine's mirror at today's versions. A failure here is real; a pass says nothing about
# another kernel or an init system.
#
# FRESH_DIR (default /var/tmp/dragonfly-fresh) holds the root and the logs; the tarball is
# /var/tmp/dragonfly-fresh-bookworm.tar. FRESH_KEEP=1 leaves the root in place afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_DIR=$PWD
FRESH_DIR=${FRESH_DIR:-/var/tmp/dragonfly-fresh}
TARBALL=${FRESH_TARBALL:-/var/tmp/dragonfly-fresh-bookworm.tar}
ROOT=$FRESH_DIR/root
FULL=0
[ "${1:-}" = --full ] && FULL=1

[ "$(id -u)" -eq 0 ] || { echo "fresh-check.sh: run as root" >&2; exit 1; }
RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_DIR=${CARGO_HOME:-$HOME/.cargo}
[ -d "$RUSTUP_DIR/toolchains" ] || { echo "fresh-check.sh: no Rust toolchain in $RUSTUP_DIR" >&2; exit 1; }

# The mirror of this machine's apt sources (deb822 or one-line format).
apt_mirror() {
  local m
  m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

build_tarball() {
  command -v debootstrap >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
  }
  local tmp mirror
  mirror=$(apt_mirror)
  tmp=$(mktemp -d /var/tmp/dragonfly-debootstrap.XXXXXX)
  echo "== debootstrap bookworm from $mirror (cached as $TARBALL afterwards)"
  debootstrap --variant=minbase --include=gcc,libc6-dev,git,python3 bookworm "$tmp" "$mirror" \
    > "$FRESH_DIR/debootstrap.log" 2>&1 || {
    tail -20 "$FRESH_DIR/debootstrap.log" >&2
    rm -rf "$tmp"
    exit 1
  }
  tar -C "$tmp" -cf "$TARBALL.part" .
  mv "$TARBALL.part" "$TARBALL"
  rm -rf "$tmp"
}

# Mount points under $ROOT, deepest first.
our_mounts() {
  awk -v r="$ROOT" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo | sort -r
}

# Ends every process whose root directory is our root (by pid), then unmounts.
cleanup() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && kill -9 "${p#/proc/}" 2>/dev/null || true
  done
  sleep 0.5
  local m
  for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  if [ "${FRESH_KEEP:-0}" != 1 ] && [ -z "$(our_mounts)" ]; then rm -rf "$ROOT"; fi
}

bind() { # src dst [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  [ "${3:-}" = ro ] && mount -o remount,bind,ro "$2"
  return 0
}

mkdir -p "$FRESH_DIR"
[ -f "$TARBALL" ] || build_tarball
if [ -n "$(our_mounts)" ]; then cleanup; fi
rm -rf "$ROOT"
mkdir -p "$ROOT"
trap cleanup EXIT
echo "== fresh root from $TARBALL"
tar -C "$ROOT" -xf "$TARBALL"
# `/` of a real machine is 0755 (mkdir and mktemp made it 0700: no other user could reach
# /bin/sh, so the postgres user's initdb failed).
chmod 755 "$ROOT"

echo "== clean clone of HEAD ($(git rev-parse --short HEAD))"
git clone --quiet --no-hardlinks "$REPO_DIR" "$ROOT/work/dragonfly-rs"
git -C "$ROOT/work/dragonfly-rs" checkout --quiet --detach "$(git rev-parse HEAD)"
rm -f "$ROOT/etc/apt/sources.list"
cp /etc/apt/sources.list.d/*.sources "$ROOT/etc/apt/sources.list.d/" 2>/dev/null \
  || cp /etc/apt/sources.list "$ROOT/etc/apt/sources.list"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# A machine of ours reaches PyPI through the sandbox's egress proxy: the proxy's CA is in its
# trust store (/usr/local/share/ca-certificates) and /etc/pip.conf points pip at that store.
# The root gets the same (ca-certificates, which install-deps installs, folds the CA in).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates" "$ROOT/etc/ssl/certs"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  [ -e "$ROOT/etc/ssl/certs/ca-certificates.crt" ] || cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"

# The root must be a mount point, as / is on a real machine: runc makes the container's root
# mount a slave of it, which fails with EINVAL on a plain directory.
mount --bind "$ROOT" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys"
mount --make-rslave "$ROOT/sys"
mount --rbind /dev "$ROOT/dev"
mount --make-rslave "$ROOT/dev"
mkdir -p "$ROOT/run" "$ROOT/tmp"
mount -t tmpfs tmpfs "$ROOT/run"
bind "$RUSTUP_DIR" "$ROOT/root/.rustup" ro
bind "$CARGO_DIR/bin" "$ROOT/root/.cargo/bin" ro
mkdir -p "$CARGO_DIR/registry"
bind "$CARGO_DIR/registry" "$ROOT/root/.cargo/registry"
# cargo-nextest comes with the toolchain on our machines (wherever it is installed here).
if nextest=$(command -v cargo-nextest); then
  touch "$ROOT/usr/local/bin/cargo-nextest"
  mount --bind "$nextest" "$ROOT/usr/local/bin/cargo-nextest"
fi

# The steps run inside the root: the README's two commands as a new user types them (as root,
# no sudo), with the quickstart on its own ports so it cannot meet one running on this machine.
cat > "$ROOT/work/fresh-steps.sh" <<'STEPS'
set -euo pipefail
export HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export CARGO_TARGET_DIR=/var/tmp/fresh-target CARGO_TERM_COLOR=never
cd /work/dragonfly-rs
echo "== [fresh root] scripts/install-deps.sh"
scripts/install-deps.sh
echo "== [fresh root] cargo build --workspace --bins --locked"
cargo build --workspace --bins --locked
echo "== [fresh root] scripts/quickstart.sh"
export QS_DIR=/var/tmp/fresh-quickstart QS_PORT_BASE=47100 QS_IP_BASE=127.0.3
scripts/quickstart.sh
scripts/quickstart.sh stop
if [ "$FRESH_FULL" = 1 ]; then
  echo "== [fresh root] scripts/test.sh"
  scripts/test.sh
fi
echo "== [fresh root] all steps passed"
STEPS

echo "== running the README's commands inside the fresh root (log: $FRESH_DIR/steps.log)"
start=$(date +%s)
if FRESH_FULL=$FULL chroot "$ROOT" /usr/bin/env -i FRESH_FULL=$FULL TERM=dumb bash /work/fresh-steps.sh 2>&1 \
  | tee "$FRESH_DIR/steps.log"; then
  echo "fresh-check: PASSED in $(( $(date +%s) - start )) s (HEAD $(git rev-parse --short HEAD), full=$FULL)"
else
  echo "fresh-check: FAILED after $(( $(date +%s) - start )) s; see $FRESH_DIR/steps.log" >&2
  exit 1
fi
