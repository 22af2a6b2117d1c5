#!/usr/bin/env bash
# The full test suite (README's second command): ensures host packages, services and npm deps, then runs
# every jest project (unit, integration, kernel, e2e) and ends with one line: `N passed, N failed[, N skipped]`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

# A setup that fails still ends with the suite's one line (the run failed before any test).
trap 'code=$?; if [ $code -ne 0 ]; then echo "test: setup failed before the tests ran (exit $code)" >&2; echo "0 passed, 1 failed"; fi' EXIT
bash scripts/services.sh ensure
ensure_node_modules
trap - EXIT
mkdir -p .berth
results=.berth/jest-results.json
rm -f "$results"
set +e
# One jest run over all projects, serially: integration tests share one database and kernel tests share
# the host's cgroups, mounts and loop devices.
# --forceExit: a library handle left open (a reconnect timer) must never hang CI after the results are in.
npx jest --ci --runInBand --forceExit --json --outputFile="$results" "$@"
set -e
node test/support/summary.js "$results"
