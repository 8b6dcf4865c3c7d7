#!/usr/bin/env bash
# Set up everything the tests need (venv, Python packages, Debian chromium for the
# browser test) and run the whole suite. Safe to run again: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt

# The end-to-end test drives Debian's Chromium (no browser download is possible offline).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi

# Two test processes (pytest-xdist), each test file whole in one of them (module fixtures such
# as the browser test's server stay shared): the browser walk waits on the browser while the
# other process trains, so the suite takes about two thirds of the time on 2 cores.
# HOTDOG_TEST_PROCESSES=0 runs everything in this one process.
exec .venv/bin/python -m pytest -n "${HOTDOG_TEST_PROCESSES:-2}" --dist loadfile "$@"
