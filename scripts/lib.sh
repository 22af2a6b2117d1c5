# Shared by the project's scripts: installs npm packages only when the lockfile changed since the last install.
ensure_node_modules() {
  local stamp=node_modules/.berth-lock.sha want
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "deps: npm ci" >&2
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" >"$stamp"
  fi
}

# Whether the pid in file $1 is a live process whose command line contains $2: after a reboot (or a crash)
# the number in a pid file may belong to any other process, which must be neither trusted nor signalled.
pid_alive_as() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}
