#!/usr/bin/env bash
# Set up a virtual environment and run the node on its embedded default:
# SQLite and the spool under ./var, the bundled model, config/node.toml.
#   bash deploy/dev-run.sh [extra dicom-node serve arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
.venv/bin/dicom-node config check --config config/node.toml
exec .venv/bin/dicom-node serve --config config/node.toml "$@"
