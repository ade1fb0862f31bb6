#!/usr/bin/env bash
# Compiles the virtualenv's modules and the project's own to .pyc, on every core.
#
#   scripts/bytecode.sh PYTHON
#
# Python writes a module's .pyc on its first import, unless PYTHONDONTWRITEBYTECODE is set
# (as in many Docker images and CI machines, and on the machine this project is measured
# on): then every process compiles every module it imports, from source, each time. There,
# importing what `skewless backfill` needs took 3.1 s of CPU per process against 1.0 s with
# the bytecode in place (pyarrow, pandas, numpy, feast; docs/perf-plan.md, "Bytecode").
# Already compiled files are skipped, so running it again after more installs is cheap.
set -euo pipefail
PYTHON=${1:?usage: scripts/bytecode.sh PYTHON}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# -qq: some packages ship files for other Python versions that do not compile; they are
# never imported, so their errors are not ours to print
"$PYTHON" -m compileall -qq -j 0 "$site" features flows serving skewless bench feature_repo ||
  true
