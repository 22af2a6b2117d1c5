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
