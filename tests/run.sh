#!/usr/bin/env bash
# The project's test command (README.md): formatting, lints, unit and end-to-end tests
# against the real binaries, and the py-consul client check.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# End-to-end tests start the real `cairn` binary, so build it first.
cargo build --workspace --bins

# Most end-to-end tests spend their time waiting on timers (TTLs, lock-delays), so run
# more of them at once than there are cores.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads 6
else
  cargo test --workspace --no-fail-fast -- --test-threads 6
fi

# py-consul, an independent Consul client from PyPI, against the real binary.
venv=target/py-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "py-consul==1.8.0"
"$venv/bin/python" tests/py/py_consul_check.py target/debug/cairn
