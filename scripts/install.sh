#!/usr/bin/env bash
# `make install`: .venv/ with the pinned runtime dependencies and the native core (the
# development tools come with `make install-dev`, which test and lint need), one line per
# stage (with its time) so a first run never sits silent for minutes.
#
#   scripts/install.sh PYTHON VENV
#
# The native core (Rust, built by maturin with cargo) compiles in the background while pip
# downloads and installs the Python dependencies: the one is CPU, the other mostly network
# and disk, so together they take about as long as the longer of the two.
set -euo pipefail

PYTHON=${1:?usage: scripts/install.sh PYTHON VENV}
VENV=${2:?usage: scripts/install.sh PYTHON VENV}
BIN=$VENV/bin
cd "$(dirname "${BASH_SOURCE[0]}")/.."

began=$SECONDS
stage_began=$SECONDS
stage() {  # stage N/M "what": closes the previous stage with its time, opens the next
  local now=$SECONDS
  [[ -n ${current:-} ]] && printf '    [%s] took %d s\n' "$current" $((now - stage_began))
  current=$1
  stage_began=$now
  printf '==> [%s] %s\n' "$1" "$2"
}

stage 1/4 "creating $VENV with $("$PYTHON" --version 2>&1) and upgrading pip"
"$PYTHON" -m venv "$VENV"
"$BIN/python" -m pip install --quiet --upgrade pip

scripts/devnull.sh  # cargo reads /dev/null as a source file; see the script
native_log=$VENV/native-build.log
wheels=$VENV/native-wheel
rm -rf "$wheels" "$native_log.seconds"
stage 2/4 "building the native core (Rust: cargo --release, ~1-2 min) in the background; log: $native_log"
(
  start=$SECONDS
  "$BIN/python" -m pip wheel --no-deps --wheel-dir "$wheels" ./native >"$native_log" 2>&1
  echo $((SECONDS - start)) >"$native_log.seconds"
) &
native=$!
trap 'kill $native 2>/dev/null || true' EXIT

stage 3/4 "installing the pinned Python dependencies meanwhile (pip: ~100 packages, ~250 MB of wheels on a first run)"
# no -q: pip says what it downloads and installs. --no-compile: pip would compile file by
# file on one core; scripts/bytecode.sh does it on every core while cargo may still build
"$BIN/python" -m pip install --no-compile -c constraints.txt -e .
scripts/bytecode.sh "$BIN/python" &
bytecode=$!

stage 4/4 "installing the native core (waiting for cargo if it is still building)"
if ! wait $native; then
  trap - EXIT
  tail -n 40 "$native_log" >&2
  echo "make install: the native core did not build (above: the end of $native_log);" \
    "it needs Rust's cargo on PATH (https://rustup.rs)" >&2
  exit 1
fi
trap - EXIT
wait $bytecode
printf '    the native core built in %s s (in parallel with stage 3)\n' "$(cat "$native_log.seconds")"
"$BIN/python" -m pip install --quiet --no-deps --force-reinstall "$wheels"/skewless_native-*.whl
printf '    [%s] took %d s\n' "$current" $((SECONDS - stage_began))
# CPU of every stage (children): far less than the wall time means a busy machine or network
times >"$VENV/.install-times"
read -r cpu_user cpu_sys < <(tail -n 1 "$VENV/.install-times")
printf '==> %s ready in %d s (CPU: %s user, %s sys)\n' "$VENV" $((SECONDS - began)) "$cpu_user" \
  "$cpu_sys"
