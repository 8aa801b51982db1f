#!/usr/bin/env bash
# Makes sure the services the test suite talks to are up: PostgreSQL on
# 127.0.0.1:5432 (trust auth, database `test`), plus the clients the tests
# drive: openssl and curl (EST), mosquitto_pub/mosquitto_sub, Python
# paho-mqtt and the AWS IoT Device SDK for Python (MQTT, shadows). Starts or installs what is missing; fails loudly otherwise.
set -euo pipefail

need_pkgs=()
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v psql >/dev/null || need_pkgs+=(postgresql-client)
command -v mosquitto_pub >/dev/null || need_pkgs+=(mosquitto-clients)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing ${need_pkgs[*]}"
  apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}"
fi

# Python test clients, pinned.
req="$(dirname "$0")/../tests/requirements.txt"
if [ -f "$req" ]; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r "$req"
fi

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q; }
if ! pg_up; then
  echo "PostgreSQL is down; starting it"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
if ! pg_up; then
  echo "FATAL: PostgreSQL is not reachable on 127.0.0.1:5432; the store tests need it" >&2
  exit 1
fi
psql -h 127.0.0.1 -U postgres -d test -qtAc 'SELECT 1' >/dev/null

# Scratch databases of earlier runs (one per store test) are dropped here.
for db in $(psql -h 127.0.0.1 -U postgres -d test -qtAc "SELECT datname FROM pg_database WHERE datname LIKE 'onramp_t_%'"); do
  psql -h 127.0.0.1 -U postgres -d test -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null || true
done
echo "services ready: PostgreSQL $(psql -h 127.0.0.1 -U postgres -d test -qtAc 'SHOW server_version')"
