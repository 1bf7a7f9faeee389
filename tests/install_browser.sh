#!/usr/bin/env bash
# What tests/test_lab2_paged_attention_browser.py needs: Playwright for Python (pinned in pyproject's `test` extra)
# and Debian's Chromium at /usr/bin/chromium. Never `playwright install`: it downloads a browser build,
# which a closed network cannot fetch; the test drives the distribution's Chromium instead.
#
#   bash tests/install_browser.sh [PYTHON]      (default: .venv/bin/python; `make test` runs it)
#
# Idempotent and quick when both are there. Exits 0 without Chromium only when it cannot be
# installed here (not root, or no apt-get): the test then skips, naming the command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PY:-.venv/bin/python}}
CHROMIUM=/usr/bin/chromium

if ! "$PY" -c "import playwright.sync_api" 2>/dev/null; then
    # The exact pin of the test extra, so this and `pip install -e .[test]` never disagree.
    req=$("$PY" -c 'import re, tomllib; t = tomllib.load(open("pyproject.toml", "rb"))
print(next(r for r in t["project"]["optional-dependencies"]["test"] if re.match(r"playwright\b", r)))')
    echo "[browser] installing $req (pyproject's test extra)"
    "$PY" -m pip install -qq --progress-bar off "$req"
fi

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    why=$([ "$(id -u)" -ne 0 ] && echo "not root" || echo "no apt-get")
    echo "[browser] $CHROMIUM is missing and cannot be installed here ($why): the browser test will skip." >&2
    echo "[browser] To run it: sudo apt-get install -y chromium   (or: sudo bash tests/install_browser.sh)" >&2
    exit 0
fi
echo "[browser] installing Debian's chromium (apt-get, ~1 min)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; then
    echo "[browser] apt-get install chromium failed: the browser test will fail until $CHROMIUM exists" >&2
    exit 1
fi
test -x "$CHROMIUM" || { echo "[browser] apt-get installed chromium but $CHROMIUM is missing" >&2; exit 1; }
echo "[browser] $("$CHROMIUM" --version 2>/dev/null)"
