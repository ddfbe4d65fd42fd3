#!/usr/bin/env bash
# Set up everything the test suite needs and run it:
#   bash deploy/dev-test.sh [pytest arguments]
# Installs (as root, with apt-get) DCMTK, Orthanc, dicom3tools and PostgreSQL when
# missing, starts PostgreSQL if it is not running, creates .venv with the project and
# its dev/train/postgres extras (torch pinned to the CPU build 2.13.0), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

packages=(dcmtk orthanc dicom3tools postgresql)
missing=()
for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "dev-test: error: missing Debian packages ${missing[*]}; run as root or install them." >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [[ " ${missing[*]} " == *" postgresql "* ]]; then
        # A PostgreSQL this script just installed is a throw-away test server: let
        # local connections in without a password, as the tests expect.
        for hba in /etc/postgresql/*/main/pg_hba.conf; do
            sed -i -E 's/^(local|host)(\s.*\s)(peer|scram-sha-256|md5)\s*$/\1\2trust/' "$hba"
        done
        for version in $(ls /etc/postgresql); do
            pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
        done
    fi
fi

# PostgreSQL: the tests need a server on 127.0.0.1:5432 with trust auth for 'postgres'.
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if [ "$(id -u)" -eq 0 ] && command -v pg_ctlcluster >/dev/null; then
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    fi
fi
pg_isready -h 127.0.0.1 -p 5432 || {
    echo "dev-test: error: PostgreSQL is not reachable on 127.0.0.1:5432." >&2
    exit 2
}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The CPU build of torch first, pinned, so nothing pulls a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev,train,postgres]"

exec .venv/bin/python -m pytest "$@"
