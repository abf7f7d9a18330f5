#!/usr/bin/env bash
# One entry point for a fresh checkout: creates .venv from constraints.txt (once, and again when
# constraints.txt or pyproject.toml change), then runs what was asked.
#   bash dev.sh demo        the offline demo (`rnnkit demo`)
#   bash dev.sh test        the test suite
#   bash dev.sh bench ...   the benchmark suite (`python -m benchmarks ...`)
#   bash dev.sh rnnkit ...  any rnnkit command
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
stamp=.venv/.rnnkit-setup
want=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "dev.sh: setting up .venv (torch CPU wheel and pinned dependencies)..." >&2
    "$PY" -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
    echo "$want" > "$stamp"
fi
if [ -z "${RNNKIT_DATA:-}" ] && [ -d ../shared/data ]; then
    export RNNKIT_DATA="$(cd ../shared/data && pwd)"
fi
cmd=${1:-test}
shift || true
case "$cmd" in
    demo) exec .venv/bin/rnnkit demo "$@" ;;
    test) exec .venv/bin/python -m pytest "$@" ;;
    bench) exec .venv/bin/python -m benchmarks "$@" ;;
    rnnkit) exec .venv/bin/rnnkit "$@" ;;
    *) echo "dev.sh: unknown command '$cmd' (expected demo, test, bench or rnnkit)" >&2; exit 2 ;;
esac
