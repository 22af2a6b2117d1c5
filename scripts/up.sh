#!/usr/bin/env bash
# Brings the whole system up locally (README's first command): host packages, Redis + PostgreSQL, npm deps,
# migrations, build, then the API and one worker for this host in the background. Idempotent: what already
# runs is left running.  `scripts/up.sh stop` stops the API and worker (services: scripts/services.sh stop).
# `scripts/up.sh purge` undoes everything it made: the API and worker stopped, this host wiped (every
# container and template destroyed, the storage pool released, the cgroup parent and the data root
# removed: `npm run runtime -- wipe --yes`), Redis and PostgreSQL stopped and their data, the admin key
# and the logs (.berth, or BERTH_STATE_DIR) deleted. The next `up` starts from nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh
# Its run files, logs and the admin key live with the local services' state (scripts/services.sh).
STATE=${BERTH_STATE_DIR:-$PWD/.berth}
RUN=$STATE/run
LOGS=$STATE/logs
# The runtime's settings as the worker reads them (five lines: data root, cgroup parent, bridge, storage
# driver, host netns), for `purge`'s wipe of this host.
RUNTIME_CONFIG_JS="const r = require(process.argv[1]).loadConfig().runtime;
for (const v of [r.dataRoot, r.cgroupParent, r.network.bridge, r.storageDriver, r.network.hostNetns ?? '']) console.log(v);"
mkdir -p "$RUN" "$LOGS"
# Local mode: the admin key the API creates on its first start lands here (0600).
export ADMIN_KEY_FILE=${ADMIN_KEY_FILE:-$STATE/admin.key}

# The API's or the worker's pid file, if its process is still that program (not a reused pid).
running() { pid_alive_as "$RUN/$1.pid" "apps/$1/src/main.js"; }

# SIGTERM, then as long as the worker's shutdown grace (its running jobs finish or go back to the queue)
# and a margin; only then SIGKILL (its jobs run again once their locks lapse). The pid file goes only with
# the process: a second `up` must not start a second worker beside one still finishing its jobs.
stop_one() {
  if running "$1"; then
    local pid waits
    pid=$(cat "$RUN/$1.pid")
    waits=$(((${SHUTDOWN_GRACE_MS:-30000} / 1000 + 15) * 10))
    kill -TERM "$pid"
    for _ in $(seq 1 "$waits"); do running "$1" || break; sleep 0.1; done
    if running "$1"; then
      echo "up: $1 (pid $pid) did not stop within $((waits / 10)) s: killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do running "$1" || break; sleep 0.1; done
    fi
    if running "$1"; then echo "up: $1 (pid $pid) is still running after SIGKILL" >&2; exit 1; fi
    echo "up: $1 stopped" >&2
  fi
  rm -f "$RUN/$1.pid"
}

if [ "${1:-}" = stop ]; then
  stop_one worker
  stop_one api
  exit 0
fi

if [ "${1:-}" = purge ]; then
  stop_one worker
  stop_one api
  # The host as the worker was started with (recorded by the last `up`), else as the configuration says now.
  if [ -s "$RUN/runtime" ]; then
    mapfile -t rt <"$RUN/runtime"
  elif [ -d node_modules ]; then
    # (The database's address is not needed: a stand-in when its password file is already gone.)
    mapfile -t rt < <(DATABASE_URL=${DATABASE_URL:-postgres://unused@127.0.0.1/unused} \
      node -r ts-node/register/transpile-only -r tsconfig-paths/register -e "$RUNTIME_CONFIG_JS" ./libs/config/src)
  else
    echo "up: no node_modules and no record of the last up: cannot wipe the host (npm ci first)" >&2
    exit 1
  fi
  [ "${#rt[@]}" -eq 5 ] || { echo "up: cannot read the runtime's configuration" >&2; exit 1; }
  args=(--data-root "${rt[0]}" --cgroup-parent "${rt[1]}" --bridge "${rt[2]}" --storage "${rt[3]}")
  [ -n "${rt[4]}" ] && args+=(--host-netns "${rt[4]}")
  npm run -s runtime -- "${args[@]}" wipe --yes
  bash scripts/services.sh purge
  echo "up: purged (the next \`npm run up\` starts from nothing)" >&2
  exit 0
fi

bash scripts/services.sh ensure
ensure_node_modules
npm run -s migrate -- up
# Rebuild when any source is newer than the last build.
if [ ! -f dist/.built ] || [ -n "$(find apps libs -name '*.ts' -newer dist/.built -print -quit)" ]; then
  npx nest build api
  npx nest build worker
  touch dist/.built
fi

# A larger young generation (V8's default semi-space is 16 MiB): both processes make much short-lived
# garbage per request and per job; with 32 MiB semi-spaces they collect it less often (≈ 5 % more jobs/s
# in the pipeline bench, docs/benchmarks.md), for at most 32 MiB more memory each (two semi-spaces).
# Same flag in package.json's start:* scripts.
NODE_FLAGS=(--max-semi-space-size=32)

start_one() {
  local name=$1 entry=$2
  if running "$name"; then
    echo "up: $name already running (pid $(cat "$RUN/$name.pid"))" >&2
    return 0
  fi
  setsid node "${NODE_FLAGS[@]}" "$entry" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  echo "up: $name started (pid $!, log $LOGS/$name.log)" >&2
}
start_one api dist/apps/api/apps/api/src/main.js
# What `purge` wipes: the host of the worker started now (one already running keeps its record).
if ! running worker || [ ! -s "$RUN/runtime" ]; then
  node -e "$RUNTIME_CONFIG_JS" ./dist/apps/api/libs/config/src >"$RUN/runtime.tmp" && mv "$RUN/runtime.tmp" "$RUN/runtime"
fi
start_one worker dist/apps/worker/apps/worker/src/main.js

port=$(node -e "console.log(require('./dist/apps/api/libs/config/src').loadConfig().api.port)")
host_name=$(node -e "console.log(require('./dist/apps/api/libs/config/src').loadConfig().host.name)")
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
  running api || { tail -n 20 "$LOGS/api.log" >&2; echo "up: the API exited" >&2; exit 1; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { echo "up: API not ready, see $LOGS/api.log" >&2; exit 1; }
echo "up: Berth is up: API http://127.0.0.1:$port (docs: /docs), logs in $LOGS/, admin key in $ADMIN_KEY_FILE"
[ -s "$ADMIN_KEY_FILE" ] || { echo "up: no admin key in $ADMIN_KEY_FILE (the database already had keys: set ADMIN_KEY_FILE to yours)" >&2; exit 1; }
# The main job: default template + one running container, through the API.
running worker || { tail -n 20 "$LOGS/worker.log" >&2; echo "up: the worker exited" >&2; exit 1; }
node scripts/main-job.js "http://127.0.0.1:$port" "$ADMIN_KEY_FILE" "${BERTH_DEMO_CONTAINER:-hello}" "$host_name"
