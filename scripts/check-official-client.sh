#!/usr/bin/env bash
# Fidelity checks against the official Python SDK (lark-oapi 1.7.5): creates .venv-check/
# if needed, installs the SDK, then runs examples/official_client_check.rs (the sandbox
# against the SDK's long-connection client) and examples/official_push_check.rs (the event
# gateway's forwarded requests taken by webhook receivers built on the SDK's
# EventDispatcherHandler), then examples/sidecar_client_check.rs (a second, independent
# client of the sidecar door: scripts/sidecar_client_check.py, standard library only, run
# by the venv's interpreter). Exits non-zero if any check fails.
# Environment: PYTHON (interpreter used to create the venv, default python3),
# VENV (venv directory, default .venv-check), CHECK_TIMEOUT_SECS (per wait, default 30),
# CHECK_KEEPALIVE_SECS (hold time for the websockets keepalive check, default 25; 0 skips).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-check}"
PYTHON="${PYTHON:-python3}"
SDK_VERSION="1.7.5"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("lark-oapi"))' 2>/dev/null || true)"
if [ "$installed" != "$SDK_VERSION" ]; then
    echo "installing lark-oapi==$SDK_VERSION into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "lark-oapi==$SDK_VERSION"
fi

cargo build --quiet --example official_client_check --example official_push_check \
    --example sidecar_client_check
cargo run --quiet --example official_client_check -- \
    --python "$VENV/bin/python" --timeout-secs "${CHECK_TIMEOUT_SECS:-30}" \
    --keepalive-secs "${CHECK_KEEPALIVE_SECS:-25}"
cargo run --quiet --example official_push_check -- \
    --python "$VENV/bin/python" --timeout-secs "${CHECK_TIMEOUT_SECS:-30}"
exec cargo run --quiet --example sidecar_client_check -- \
    --python "$VENV/bin/python" --timeout-secs "${CHECK_TIMEOUT_SECS:-30}"
