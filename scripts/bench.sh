#!/usr/bin/env bash
# `npm run bench`: Berth against LXC on this machine, side by side, in one run (bench/runtime.bench.ts).
# Installs what is missing (host packages and the native helper through services.sh, LXC here), runs the
# bench's own self-checks, then the benchmark; results go to bench/results/runtime-<date>.json and
# bench/results/latest-runtime.json, and a markdown table to stdout.
#
# Everything the bench creates lives under $BENCH_DIR (default /var/tmp/berth-bench), the cgroup parent
# `berth-bench` and LXC containers named `berth-bench-*`. It is removed at the end, after an interruption,
# and before a run (leftovers of a crashed one). Knobs: BENCH_RUNS, BENCH_LXC_STOP_RUNS, BENCH_BURST,
# BENCH_LXC_BURST, BENCH_IDLE (see bench/runtime.bench.ts).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

export BENCH_DIR=${BENCH_DIR:-/var/tmp/berth-bench}
CGROUP_PARENT=berth-bench
LXC_PREFIX=berth-bench-

say() { printf 'bench: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || {
  say "must run as root (containers, cgroups, loop devices)"
  exit 1
}
case "$BENCH_DIR" in
  /*/*) ;;
  *)
    say "BENCH_DIR must be an absolute path at least two levels deep, not $BENCH_DIR"
    exit 1
    ;;
esac

# Removes whatever a run (even a killed one) can leave: LXC containers under the bench's LXC paths and
# their cgroups, processes and groups under the bench's cgroup parent, mounts under BENCH_DIR and the loop
# devices of its images, then BENCH_DIR itself. Touches nothing with other names.
cleanup_host() {
  local p n root d img
  for p in "$BENCH_DIR/lxc-btrfs" "$BENCH_DIR/lxc-dir"; do
    [ -d "$p" ] && command -v lxc-ls >/dev/null || continue
    for n in $(lxc-ls -P "$p" -1 2>/dev/null); do
      lxc-stop -P "$p" -n "$n" -k >/dev/null 2>&1 || true
      lxc-destroy -P "$p" -n "$n" -f >/dev/null 2>&1 || true
    done
  done
  for root in /sys/fs/cgroup/*; do
    for d in "$root/$CGROUP_PARENT" "$root/$CGROUP_PARENT-pipeline"; do
      [ -d "$d" ] || continue
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    done
  done
  for root in /sys/fs/cgroup/*; do
    for d in "$root/$CGROUP_PARENT" "$root/$CGROUP_PARENT-pipeline" "$root"/lxc.payload."$LXC_PREFIX"* \
      "$root"/lxc.monitor."$LXC_PREFIX"* "$root/lxc.pivot"; do
      [ -d "$d" ] || continue
      # a group whose processes are still exiting refuses rmdir for a moment
      for _ in 1 2 3 4 5; do
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null && break
        sleep 0.2
      done
    done
  done
  if [ -d "$BENCH_DIR" ]; then
    awk -v d="$BENCH_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
    for img in "$BENCH_DIR"/*.img "$BENCH_DIR"/berth-*/storage/btrfs/pool.img; do
      [ -f "$img" ] || continue
      losetup -j "$img" | cut -d: -f1 | while read -r dev; do losetup -d "$dev" 2>/dev/null || true; done
    done
    rm -rf "$BENCH_DIR"
  fi
  # Queues of a pipeline bench that was killed (the database is recreated by the next run).
  if command -v redis-cli >/dev/null; then
    redis-cli -p "${BERTH_REDIS_PORT:-6380}" --scan --pattern 'bench-pipeline-*' 2>/dev/null |
      xargs -r redis-cli -p "${BERTH_REDIS_PORT:-6380}" DEL >/dev/null 2>&1 || true
  fi
}

bash scripts/services.sh ensure
if ! command -v lxc-start >/dev/null; then
  say "installing lxc (the peer runtime)"
  export DEBIAN_FRONTEND=noninteractive
  # Debian's lxc ships lxc-net on (USE_LXC_BRIDGE="true"): on a systemd host its service would turn on IP
  # forwarding and NAT (MASQUERADE) towards the machine's interfaces, now and at every boot. The bench's
  # containers have no network (lxc.net.0.type = empty): the bridge stays off, our file kept by dpkg.
  if [ ! -e /etc/default/lxc-net ]; then
    mkdir -p /etc/default
    printf '# Berth bench: no lxcbr0, no IP forwarding, no NAT (scripts/bench.sh)\nUSE_LXC_BRIDGE="false"\n' \
      >/etc/default/lxc-net
  fi
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold install -y -qq \
    --no-install-recommends lxc >/dev/null
fi
ensure_node_modules

cleanup_host
trap cleanup_host EXIT
trap 'exit 130' INT TERM HUP

# Compiled, as production runs the API and the worker (`npm run build`, node dist/…): from the sources
# through ts-node every process would also carry ts-node's side effects (it loads node:repl, which loads
# node:domain, and from then on every EventEmitter of the process pays for domains: 10-20 % more Node time
# per PostgreSQL query on this VM), the code under test's and its peers' alike.
say "compiling the benches (dist/bench)"
npx nest build bench >/dev/null
# The API's and the worker's production flag (scripts/up.sh); the bench's worker processes, Berth's and
# the raw BullMQ peer's alike, inherit it (bench/pipeline/system.ts).
node=(node --max-semi-space-size=32)
# The harness's own logic (percentiles, tables, result files) first: a wrong table is worse than none.
npx jest --selectProjects unit --testPathPatterns 'bench/lib' --silent >/dev/null 2>&1 || {
  npx jest --selectProjects unit --testPathPatterns 'bench/lib' >&2
  say "self-checks of bench/lib failed"
  exit 1
}
"${node[@]}" dist/bench/bench/runtime.bench.js
"${node[@]}" dist/bench/bench/pipeline.bench.js
