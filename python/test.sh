#!/usr/bin/env bash
# The Python tests: builds the wheel from this checkout with the dev profile (reusing the
# dependencies `cargo test` compiled into target/), installs it into a virtual environment of
# its own (target/pyenv, with python/requirements-test.txt), and runs pytest on python/tests
# (Spark in local[2] mode and Ray with 2 workers included; Spark needs Java 17).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
venv=target/pyenv
if [ ! -x "$venv/bin/python" ] || ! cmp -s python/requirements-test.txt "$venv/.requirements"; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r python/requirements-test.txt
  cp python/requirements-test.txt "$venv/.requirements"
fi
# The CLI the tests compare with: the one `cargo test` builds (building it here with other
# features would rebuild it, and `cargo test` after again).
[ -x target/debug/lifelong ] || cargo test --locked --features nvrtc --no-run
# The wheel (abi3: one file for CPython >= 3.10).
rm -rf target/wheels
"$venv/bin/maturin" build --locked --profile dev -m python/Cargo.toml -i "$venv/bin/python" -o target/wheels --quiet
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps target/wheels/lifelong-*.whl
cd python/tests
exec ../../"$venv"/bin/python -m pytest -q -p no:cacheprovider "$@"
