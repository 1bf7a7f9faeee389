#!/usr/bin/env bash
# What tests/test_lab2_paged_attention_browser.py needs: Playwright for Python (pinned in pyproject's `test` extra)
# and Debian's Chromium at /usr/bin/chromium. Never `playwright install`: it downloads a browser build,
# which a closed network cannot fetch; the test drives the distribution's Chromium instead.
#
#   bash tests/install_browser.sh [--background] [PYTHON]      (default: .venv/bin/python)
#
# --background (`make test`): Chromium's apt-get install runs while the tests start, its output in
# logs/browser-install.log and its exit status in logs/browser-install.exit when it ends; the
# browser test waits for it (a fresh machine spends a minute or more downloading it otherwise idle).
#
# Idempotent and quick when both are there. Exits 0 without Chromium only when it cannot be
# installed here (not root, or no apt-get): the test then skips, naming the command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
BACKGROUND=0
if [ "${1:-}" = "--background" ]; then BACKGROUND=1; shift; fi
PY=${1:-${PY:-.venv/bin/python}}
CHROMIUM=${WORKBOOK_CHROMIUM:-/usr/bin/chromium}  # the variables: for tests/test_lab2_paged_attention_browser.py
LOG_DIR=${WORKBOOK_BROWSER_LOG_DIR:-logs}
LOG=$LOG_DIR/browser-install.log
EXIT_FILE=$LOG_DIR/browser-install.exit

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

install_chromium() {
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; then
        echo "[browser] apt-get install chromium failed: the browser test will fail until $CHROMIUM exists" >&2
        return 1
    fi
    test -x "$CHROMIUM" || { echo "[browser] apt-get installed chromium but $CHROMIUM is missing" >&2; return 1; }
    echo "[browser] $("$CHROMIUM" --version 2>/dev/null)"
}

if [ "$BACKGROUND" = 1 ]; then
    mkdir -p "$LOG_DIR"
    rm -f "$EXIT_FILE"
    echo "[browser] installing Debian's chromium in the background (apt-get; $LOG) while the tests start"
    # Its own session: a Ctrl-C of make test does not leave dpkg half-way.
    setsid bash -c "$(declare -f install_chromium); CHROMIUM=$CHROMIUM; status=0; install_chromium || status=\$?; echo \$status > $EXIT_FILE" \
        > "$LOG" 2>&1 < /dev/null &
    exit 0
fi
echo "[browser] installing Debian's chromium (apt-get, ~1 min)"
install_chromium
