#!/usr/bin/env bash
# Rewrite constraints.txt: the exact versions that `make test` installs and passes with.
#
# The README's commands install through this file (pip -c), so a new release of any
# dependency cannot change what a fresh machine gets until someone runs this script on
# purpose, runs `make test`, and commits the diff.  Resolves in a throw-away venv with the
# extras the Makefile installs (test, broker).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
"$tmp/venv/bin/python" -m pip install --quiet '.[test,broker]'
{
  echo "# Tested versions of every dependency (scripts/lock-dependencies.sh writes this file)."
  echo "# Installed with pip -c by the Makefile and deploy/Dockerfile; update deliberately."
  "$tmp/venv/bin/python" -m pip freeze --exclude gpuslo | LC_ALL=C sort -f
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins)"
