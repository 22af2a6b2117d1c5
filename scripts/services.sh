#!/usr/bin/env bash
# Local services for Berth: installs what is missing (Debian/Ubuntu, as root) and runs a project-local Redis
# and PostgreSQL on loopback, with their data under .berth/ in the checkout.
#
#   scripts/services.sh ensure   install packages, build the native helper, start Redis + PostgreSQL (idempotent)
#   scripts/services.sh status   say what runs where
#   scripts/services.sh stop     stop the project-local Redis + PostgreSQL
#   scripts/services.sh purge    stop them and delete their data (the PostgreSQL cluster wherever .berth/
#                                links it, Redis's dir) and the state dir itself (.berth: admin key, logs)
#
# When REDIS_URL / DATABASE_URL are set, that service is used as it is: nothing is installed or started
# for it, only checked for reachability.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/lib.sh"
STATE=${BERTH_STATE_DIR:-$ROOT/.berth}
REDIS_PORT=${BERTH_REDIS_PORT:-6380}
PG_PORT=${BERTH_PG_PORT:-5433}
PG_DATA=$STATE/postgres
PG_RUN=$STATE/postgres-run
[ -L "$PG_RUN" ] && PG_RUN=$(readlink -f "$PG_RUN")
# The postgres user cannot follow a link that lives under a directory it cannot enter (a checkout under
# /root): its commands get the cluster's real path.
[ -L "$PG_DATA" ] && PG_DATA=$(readlink -f "$PG_DATA")
REDIS_DIR=$STATE/redis

# Host packages Berth needs: services, the kernel tools the runtime drives, and a C compiler for the helper.
PACKAGES=(redis-server postgresql btrfs-progs busybox-static iproute2 nftables util-linux kmod e2fsprogs tar
  zstd xz-utils gcc libc6-dev musl-tools procps iputils-ping curl)

say() { printf 'services: %s\n' "$*" >&2; }
die() {
  printf 'services: error: %s\n' "$*" >&2
  exit 1
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)"
  echo "$d"
}

# From /: the postgres user may not enter the current directory (a checkout under /root).
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ -f /etc/debian_version ] || die "missing packages (${missing[*]}) and this is not Debian/Ubuntu: install them by hand"
  [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}): run this script as root to install them"
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh VM's unattended-upgrades may hold dpkg's lock for minutes: wait for it rather than fail.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  # The packages' own start scripts cannot start services here (no systemd): we start our own instances.
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

redis_ping() { redis-cli -p "$REDIS_PORT" -h 127.0.0.1 ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  if [ -n "${REDIS_URL:-}" ]; then
    say "REDIS_URL is set: using it, not starting a local Redis"
    return 0
  fi
  if pid_alive_as "$REDIS_DIR/redis.pid" redis-server && redis_ping; then
    return 0
  fi
  port_busy "$REDIS_PORT" && die "port $REDIS_PORT is taken by another program: set BERTH_REDIS_PORT or REDIS_URL"
  command -v redis-server >/dev/null || die "redis-server is not installed: run this script as root"
  mkdir -p "$REDIS_DIR"
  # AOF for durability of queued jobs; noeviction because BullMQ must never lose keys to eviction.
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
    --appendonly yes --maxmemory-policy noeviction --dir "$REDIS_DIR" \
    --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" --save ''
  for _ in $(seq 1 50); do
    redis_ping && { say "redis up on 127.0.0.1:$REDIS_PORT"; return 0; }
    sleep 0.1
  done
  die "redis did not start: see $REDIS_DIR/redis.log"
}

pg_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    say "DATABASE_URL is set: using it, not starting a local PostgreSQL"
    return 0
  fi
  local bin
  bin=$(pg_bin)
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    [ "$(id -u)" -eq 0 ] || die "no local PostgreSQL cluster yet: run this script as root once to create it"
    mkdir -p "$STATE"
    # No cluster behind .berth/postgres (a new checkout, or an initdb that failed): made again.
    rm -rf "$STATE/postgres"
    PG_DATA=$STATE/postgres
    if ! runuser -u postgres -- test -x "$STATE"; then
      # PostgreSQL runs as the postgres user, which cannot reach a checkout under e.g. /root: keep the
      # cluster in a postgres-reachable place, named after this checkout, and link it from .berth/.
      local real
      real=/var/lib/postgresql/berth-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
      if [ -f "$real/PG_VERSION" ]; then
        # The cluster of an earlier checkout at this path (a new clone where the old one was): its admin key
        # went with that checkout, so this one starts its own cluster; the old one is kept aside (initdb
        # would refuse its directory).
        as_postgres "$bin/pg_ctl" -D "$real" status >/dev/null 2>&1 &&
          die "$real, the PostgreSQL cluster of an earlier checkout at this path, is running: stop it (pg_ctl -D $real stop, as postgres)"
        local aside
        aside=$real.old-$(date +%Y%m%d%H%M%S)
        mv "$real" "$aside"
        say "kept the PostgreSQL cluster of an earlier checkout at this path aside in $aside"
      else
        rm -rf "$real" # an initdb of ours that did not finish
      fi
      mkdir -p "$real"
      ln -sfn "$real" "$STATE/postgres"
      PG_DATA=$real
      PG_RUN=$real-run
      ln -sfn "$PG_RUN" "$STATE/postgres-run"
    fi
  fi
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    say "creating PostgreSQL cluster in $PG_DATA"
    # Made aside and renamed into place once configured: initdb writes PG_VERSION early, and a cluster
    # killed half-made (no port, no pg_hba.conf: it would start on 5432 with `trust`) must never look made.
    local fresh=$PG_DATA.init
    rm -rf "$fresh"
    mkdir -p "$fresh" "$PG_RUN"
    chown postgres:postgres "$fresh" "$PG_RUN"
    chmod 700 "$fresh"
    as_postgres "$bin/initdb" -D "$fresh" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    {
      echo "listen_addresses = '127.0.0.1'"
      echo "port = $PG_PORT"
      echo "unix_socket_directories = '$PG_RUN'"
      echo "max_connections = 200"
      echo "fsync = on"
    } >>"$fresh/postgresql.conf"
    # Loopback only, password auth for the app role; the postgres superuser only as the postgres OS user
    # over the socket (peer: `trust` let any local user in as superuser).
    printf '%s\n' 'local all postgres peer' 'host  all all 127.0.0.1/32 scram-sha-256' >"$fresh/pg_hba.conf"
    chown postgres:postgres "$fresh/pg_hba.conf"
    rm -rf "$PG_DATA"
    mv "$fresh" "$PG_DATA"
  fi
  # Clusters made before: trust → peer (read when the server starts or reloads, below).
  if grep -q '^local all postgres trust$' "$PG_DATA/pg_hba.conf"; then
    sed -i 's/^local all postgres trust$/local all postgres peer/' "$PG_DATA/pg_hba.conf"
    if as_postgres "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
      as_postgres "$bin/pg_ctl" -D "$PG_DATA" reload >/dev/null
    fi
  fi
  mkdir -p "$PG_RUN"
  chown postgres:postgres "$PG_RUN"
  if ! as_postgres "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    port_busy "$PG_PORT" && die "port $PG_PORT is taken by another program: set BERTH_PG_PORT or DATABASE_URL"
    as_postgres "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 start >/dev/null ||
      die "PostgreSQL did not start: see $PG_DATA/server.log"
    say "postgres up on 127.0.0.1:$PG_PORT"
  fi
  local psql=("$bin/psql" -h "$PG_RUN" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
  if [ "$(as_postgres "${psql[@]}" -c "select 1 from pg_roles where rolname='berth'")" != 1 ]; then
    as_postgres "${psql[@]}" -c "create role berth login createdb"
  fi
  # The app role's password: random, made once, readable by root only (.berth/pg-password, which the
  # config's default DATABASE_URL reads); set at every ensure, so a cluster made with the old fixed
  # password gets it too. Handed to psql on its standard input, never on a command line (ps shows those).
  local pwfile=$STATE/pg-password
  if [ ! -s "$pwfile" ]; then
    (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$pwfile.tmp") && mv "$pwfile.tmp" "$pwfile"
  fi
  chmod 600 "$pwfile"
  local pw
  pw=$(cat "$pwfile")
  [[ $pw =~ ^[A-Za-z0-9]+$ ]] || die "$pwfile must hold letters and digits only (delete it: a new one is made)"
  printf "ALTER ROLE berth PASSWORD '%s';\n" "$pw" | as_postgres "${psql[@]}" -f -
  if [ "$(as_postgres "${psql[@]}" -c "select 1 from pg_database where datname='berth'")" != 1 ]; then
    as_postgres "${psql[@]}" -c "create database berth owner berth"
  fi
}

build_native() {
  if [ -x "$ROOT/scripts/build-native.sh" ] || [ -f "$ROOT/scripts/build-native.sh" ]; then
    bash "$ROOT/scripts/build-native.sh"
  fi
}

stop_all() {
  # (A pid file left by a reboot may name another program now: only redis-server is stopped.)
  if pid_alive_as "$REDIS_DIR/redis.pid" redis-server; then
    redis-cli -p "$REDIS_PORT" -h 127.0.0.1 shutdown >/dev/null 2>&1 || kill "$(cat "$REDIS_DIR/redis.pid")"
    say "redis stopped"
  fi
  if [ -f "$PG_DATA/PG_VERSION" ] && as_postgres "$(pg_bin)/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    as_postgres "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
    say "postgres stopped"
  fi
}

status() {
  if [ -n "${REDIS_URL:-}" ]; then echo "redis: external ($REDIS_URL)"
  elif redis_ping; then echo "redis: running on 127.0.0.1:$REDIS_PORT (data $REDIS_DIR)"
  else echo "redis: stopped"; fi
  if [ -n "${DATABASE_URL:-}" ]; then echo "postgres: external"
  elif pg_ready 2>/dev/null; then echo "postgres: running on 127.0.0.1:$PG_PORT (data $PG_DATA)"
  else echo "postgres: stopped"; fi
}

case "${1:-}" in
  ensure)
    # One ensure at a time (a test run and a bench started together): apt, initdb and the starts would race.
    # The lock is flock's own (-o): the daemons this starts must not inherit it, or it would never go.
    if [ -z "${BERTH_ENSURE_LOCKED:-}" ]; then
      mkdir -p "$STATE"
      BERTH_ENSURE_LOCKED=1 exec flock -o "$STATE/.ensure.lock" bash "${BASH_SOURCE[0]}" ensure
    fi
    install_packages
    # overlayfs is a module on stock Debian kernels: loaded now, so the runtime and its kernel tests find it
    # (built in on some kernels; nothing to do there, and no error where modules cannot be loaded).
    if [ "$(id -u)" -eq 0 ] && ! grep -qw overlay /proc/filesystems; then modprobe overlay 2>/dev/null || true; fi
    ensure_redis
    ensure_postgres
    build_native
    ;;
  stop) stop_all ;;
  status) status ;;
  purge)
    # BERTH_STATE_DIR is deleted whole: only a path that cannot be a system directory.
    case "$STATE" in
      /*/*) ;;
      *) die "refusing to purge the state dir $STATE (an absolute path at least two levels deep)" ;;
    esac
    # The API and the worker of `npm run up` keep their pid files here: deleted under them, nothing could
    # stop them any more (`npm run up -- purge` stops them first).
    for name in api worker; do
      if pid_alive_as "$STATE/run/$name.pid" "apps/$name/src/main.js"; then
        die "the $name of \`npm run up\` is running: \`npm run up -- purge\` stops it and purges"
      fi
    done
    stop_all
    # The cluster of a checkout under e.g. /root lives in /var/lib/postgresql/berth-<hash> (linked from
    # .berth/): deleted with the links, or the next `ensure` would keep it aside as an earlier checkout's.
    for d in "$PG_DATA" "$PG_RUN"; do
      case "$d" in
        "$STATE"/* | /var/lib/postgresql/berth-*) rm -rf "$d" ;;
      esac
    done
    rm -rf "$STATE"
    say "deleted $STATE and the services' data"
    ;;
  *)
    echo "usage: $0 ensure|status|stop|purge" >&2
    exit 2
    ;;
esac
