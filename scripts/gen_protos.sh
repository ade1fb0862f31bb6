#!/usr/bin/env bash
# Regenerate serving/_proto/ from protos/ (grpcio-tools). Commit the result:
# tests/serving/test_protogen.py fails when the checked-in code is stale.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m serving.protogen "$@"
