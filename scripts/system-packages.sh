#!/usr/bin/env bash
# Install the real servers that integration tests run against (Debian packages):
#   prometheus              -> prometheus, promtool
#   prometheus-alertmanager -> prometheus-alertmanager (Alertmanager)
#   kubectl                 -> kubectl (`kubectl kustomize` renders deploy/kustomize)
# Without root or apt, say what is missing: tests that need a package skip with
# its name, except under CI=true, where a missing package fails the run.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 \
  || missing+=(prometheus-alertmanager)
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
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
