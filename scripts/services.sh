#!/usr/bin/env bash
# Makes sure everything the test suite talks to is present, installing what
# is missing from the Debian/Ubuntu archive, and prints the environment the
# tests read as `export` lines on stdout (progress goes to stderr):
#
#   eval "$(scripts/services.sh)"     # what scripts/test does
#   scripts/services.sh --drop-run RUN_ID   # drop one run's scratch databases
#
# - openssl and curl (EST), mosquitto_pub/mosquitto_sub (MQTT), certmonger's
#   scep-submit (SCEP);
# - PostgreSQL: ONRAMP_TEST_DATABASE_URL when set (checked, never altered);
#   otherwise the local server on 127.0.0.1:5432, installed and started when
#   missing, with the database `test` and a role that may create the tests'
#   scratch databases (its password goes to ~/.pgpass, never to the output);
# - the Python test clients of tests/requirements.txt (pinned) in a project
#   virtual environment, .venv/ or ONRAMP_TEST_VENV; the system Python is
#   never pip-installed into.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
pg_host=127.0.0.1
pg_port=5432
pg_role=onramp_test
default_url="postgres://postgres@$pg_host:$pg_port/test"
role_url="postgres://$pg_role@$pg_host:$pg_port/test"

say() { echo "services: $*" >&2; }
die() {
  echo "services: FATAL: $*" >&2
  exit 1
}
# A database URL with its password masked.
redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "this needs root (or sudo) to run: $*"
  fi
}

# The postgres OS user, which Debian's packages let into the server over the
# local socket whatever the TCP authentication says.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  elif command -v sudo >/dev/null; then
    (cd / && sudo -u postgres -- "$@")
  else
    die "this needs root (or sudo) to run as the postgres user: $*"
  fi
}

apt_install() {
  say "installing $* (apt-get)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
    die "apt-get update failed; install $* yourself"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 ||
    die "apt-get install $* failed; install them yourself"
}

# Whether `psql` gets into the server at URL without prompting.
can_connect() { PGCONNECT_TIMEOUT=5 psql -w -X -q -t -A -d "$1" -c 'SELECT 1' >/dev/null 2>&1 </dev/null; }
sql() { PGCONNECT_TIMEOUT=5 psql -w -X -q -t -A -d "$1" -c "$2" </dev/null; }

# Scratch databases are `onramp_t_<unix seconds>_<tag>_<uuid>` (see
# crates/onramp-store/src/testing.rs). Drops those for which `keep` says no.
drop_scratch() { # url predicate
  local url="$1" predicate="$2" db
  for db in $(sql "$url" "SELECT datname FROM pg_database WHERE datname LIKE 'onramp\_t\_%'"); do
    if "$predicate" "$db"; then
      sql "$url" "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 ||
        say "could not drop $db (another role's?)"
    fi
  done
}
now="$(date +%s)"
# Another run's database is left alone unless that run began over a day ago.
is_stale() {
  [[ "$1" =~ ^onramp_t_([0-9]+)_[a-z0-9]+_[0-9a-f]+$ ]] && ((BASH_REMATCH[1] < now - 86400))
}
is_own() { [[ "$1" == "onramp_t_${run_id}_"* ]]; }

if [ "${1:-}" = --drop-run ]; then
  run_id="${2:-}"
  [[ "$run_id" =~ ^[0-9]+_[a-z0-9]+$ ]] || die "--drop-run wants a run id like 1765000000_ab12cd34"
  drop_scratch "${ONRAMP_TEST_DATABASE_URL:-$default_url}" is_own
  exit 0
fi

# --- Debian packages -------------------------------------------------------
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
{ command -v mosquitto_pub && command -v mosquitto_sub; } >/dev/null || need+=(mosquitto-clients)
{ command -v psql && command -v pg_isready; } >/dev/null || need+=(postgresql-client)
# certmonger's SCEP helper: a SCEP client Onramp did not write (tests/scep).
scep_submit_found=false
for dir in ${ONRAMP_CERTMONGER_DIRS:-/usr/lib/certmonger /usr/libexec/certmonger}; do
  [ -x "$dir/scep-submit" ] && scep_submit_found=true
done
$scep_submit_found || need+=(certmonger)
if ! command -v python3 >/dev/null; then
  need+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  # Debian and Ubuntu split `python3 -m venv`'s pip bootstrap into python3-venv.
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi

# --- Python test clients in the project's virtual environment --------------
venv="${ONRAMP_TEST_VENV:-$repo/.venv}"
req="$repo/tests/requirements.txt"
py="$venv/bin/python"
if ! "$py" -c 'import sys' >/dev/null 2>&1; then
  say "creating the Python virtual environment $venv"
  clear=()
  # A venv whose interpreter is gone (Python upgraded) is rebuilt in place.
  if [ -f "$venv/pyvenv.cfg" ]; then clear=(--clear); fi
  python3 -m venv "${clear[@]}" "$venv" >&2 || die "python3 -m venv $venv failed"
fi
# Reinstall only when the pins or the interpreter changed, or an import fails.
want="$({ cat "$req"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
stamp="$venv/.onramp-requirements.sha256"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] ||
  ! "$py" -c 'import paho.mqtt.client, awsiot.iotshadow' >/dev/null 2>&1; then
  say "installing the Python test clients into $venv ($(tr '\n' ' ' <"$req"))"
  "$py" -m pip install -q --disable-pip-version-check -r "$req" >&2 ||
    die "pip could not install tests/requirements.txt into $venv"
  echo "$want" >"$stamp"
fi

# --- PostgreSQL --------------------------------------------------------------
if [ -n "${ONRAMP_TEST_DATABASE_URL:-}" ]; then
  # Someone else's server: check it, change nothing.
  url="$ONRAMP_TEST_DATABASE_URL"
  if ! can_connect "$url"; then
    why="$(sql "$url" 'SELECT 1' 2>&1 >/dev/null | head -n 3 || true)"
    die "ONRAMP_TEST_DATABASE_URL=$(redact "$url") is not usable: ${why}
  Fix that server or unset ONRAMP_TEST_DATABASE_URL to have this script set up the local PostgreSQL."
  fi
  export_url=false
else
  export_url=true
  if ! pg_isready -h "$pg_host" -p "$pg_port" -q; then
    clusters="$(pg_lsclusters -h 2>/dev/null || true)"
    if [ -z "$clusters" ]; then
      apt_install postgresql
      clusters="$(pg_lsclusters -h 2>/dev/null || true)"
    fi
    [ -n "$clusters" ] || die "PostgreSQL is installed but has no cluster: create one with
  pg_createcluster <version> main --start"
    # The cluster on our port, else the first one.
    cluster="$(awk -v p="$pg_port" '$3 == p {print $1, $2; exit}' <<<"$clusters")"
    [ -n "$cluster" ] || cluster="$(awk '{print $1, $2; exit}' <<<"$clusters")"
    say "starting PostgreSQL cluster $cluster"
    # shellcheck disable=SC2086 # "version name"
    as_root pg_ctlcluster --skip-systemctl-redirect $cluster start >&2 || true
    for _ in $(seq 1 30); do
      pg_isready -h "$pg_host" -p "$pg_port" -q && break
      sleep 1
    done
    pg_isready -h "$pg_host" -p "$pg_port" -q ||
      die "PostgreSQL cluster $cluster does not answer on $pg_host:$pg_port; see pg_lsclusters and its log"
  fi
  if can_connect "$default_url"; then
    url="$default_url"
  elif can_connect "postgres://postgres@$pg_host:$pg_port/postgres"; then
    say "creating the database test"
    sql "postgres://postgres@$pg_host:$pg_port/postgres" 'CREATE DATABASE test' >/dev/null
    url="$default_url"
  elif can_connect "$role_url"; then
    url="$role_url"
  else
    # Password authentication on 127.0.0.1 (stock Debian): make a role that
    # may create databases, with a random password kept in ~/.pgpass, where
    # psql and the tests' driver both look.
    say "creating the PostgreSQL role $pg_role and database test"
    password="$(od -An -tx1 -N18 /dev/urandom | tr -d ' \n')"
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL ||
SELECT format('CREATE ROLE %I', '$pg_role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$pg_role') \gexec
ALTER ROLE $pg_role LOGIN CREATEDB PASSWORD '$password';
SELECT 'CREATE DATABASE test OWNER $pg_role'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'test') \gexec
SQL
      die "could not create the role $pg_role as the postgres user"
    pgpass="${PGPASSFILE:-$HOME/.pgpass}"
    touch "$pgpass"
    chmod 600 "$pgpass"
    others="$(grep -v "^$pg_host:$pg_port:\*:$pg_role:" "$pgpass" || true)"
    { [ -z "$others" ] || echo "$others"; echo "$pg_host:$pg_port:*:$pg_role:$password"; } >"$pgpass"
    url="$role_url"
    can_connect "$url" || die "PostgreSQL still refuses $url: check pg_hba.conf allows
  password (scram-sha-256 or md5) logins from $pg_host for $pg_role"
  fi
fi

drop_scratch "$url" is_stale

# promtool checks deploy/prometheus/onramp-alerts.yml. Debian ships it only
# inside the whole Prometheus server package, so the package is downloaded
# and unpacked under target/ rather than installed as a running service.
promtool=""
if command -v promtool >/dev/null; then
  promtool="$(command -v promtool)"
else
  tools="${ONRAMP_TEST_TOOLS:-$repo/target/test-tools}"
  if [ ! -x "$tools/usr/bin/promtool" ] && command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
    say "fetching promtool (Debian package prometheus, unpacked under target/test-tools)"
    mkdir -p "$tools/deb"
    if (cd "$tools/deb" && apt-get download prometheus >&2 2>/dev/null ||
      { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && apt-get download prometheus >&2; }); then
      dpkg -x "$tools"/deb/prometheus_*.deb "$tools" >&2 || say "could not unpack prometheus"
    else
      say "prometheus package not available: the alert-rule check will be skipped"
    fi
  fi
  [ -x "$tools/usr/bin/promtool" ] && promtool="$tools/usr/bin/promtool"
fi
say "ready: PostgreSQL $(sql "$url" 'SHOW server_version') at $(redact "$url"); Python clients in $venv"
if $export_url; then printf 'export ONRAMP_TEST_DATABASE_URL=%q\n' "$url"; fi
printf 'export ONRAMP_TEST_PYTHON=%q\n' "$py"
if [ -n "$promtool" ] && [ -z "${ONRAMP_PROMTOOL:-}" ]; then printf 'export ONRAMP_PROMTOOL=%q\n' "$promtool"; fi
