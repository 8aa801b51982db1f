#!/usr/bin/env bash
# Tests scripts/services.sh on simulated machines: a scratch directory holds a
# fake HOME, venv and PATH whose apt-get, psql, pg_isready, pg_lsclusters,
# pg_ctlcluster, runuser, id and python3 act out a stock Debian machine (no
# PostgreSQL, password authentication on 127.0.0.1, no python3-venv, an
# "externally managed" system Python), this machine (trust authentication),
# and a preset ONRAMP_TEST_DATABASE_URL. Nothing real is installed, started
# or contacted, and no network is used. Exits non-zero when any check fails.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
services="$repo/scripts/services.sh"
top="$(mktemp -d)"
trap 'rm -rf "$top"' EXIT
failures=0
checks=0

# The real tools the script may use, and nothing else from the host.
sys="$top/sys"
mkdir -p "$sys"
for tool in bash env cat sed grep od tr sha256sum cut date mkdir rm chmod touch \
  ls head awk seq sleep mv cp dirname mktemp sort stat; do
  ln -s "$(command -v "$tool")" "$sys/$tool"
done

# --- the simulated tools -------------------------------------------------------
# World state lives in $WORLD: installed/<package>, pg (absent|down|up),
# auth (trust|password), role_<name> (its password), dbs (one name a line).
shims="$top/shims"
mkdir -p "$shims"
shim() { # name body
  printf '#!%s\n%s\n' "$(command -v bash)" "$2" >"$shims/$1"
  chmod +x "$shims/$1"
}
shim log 'echo "$*" >>"$WORLD/log"'
shim id '[ "$1" = -u ] && echo "${SIM_UID:-0}"'
shim sudo 'log "sudo $*"; exec "$@"'
shim runuser 'log "runuser $*"; [ "$1" = -u ] && [ "$2" = postgres ] && [ "$3" = -- ] || exit 2
shift 3; SIM_OS_USER=postgres exec "$@"'
shim apt-get 'log "apt-get $*"
# Downloading a package into the current directory needs no root.
[ "$1" = download ] && { : >"$2_1.0_amd64.deb"; exit 0; }
[ "$(id -u)" = 0 ] || { echo "E: Could not open lock file - are you root?" >&2; exit 100; }
[ "$1" = update ] && exit 0
for p in "$@"; do
  case "$p" in -*|install) continue;; esac
  touch "$WORLD/installed/$p"
  case "$p" in
    postgresql) for t in pg_lsclusters pg_ctlcluster psql pg_isready; do cp "$SHIMS/$t" "$SIMBIN/"; done
      echo down >"$WORLD/pg"; echo password >"$WORLD/auth";
      [ -f "$WORLD/dbs" ] || echo postgres >"$WORLD/dbs";;
    postgresql-client) cp "$SHIMS/psql" "$SHIMS/pg_isready" "$SHIMS/pg_lsclusters" "$SIMBIN/";;
    mosquitto-clients) cp "$SHIMS/mosquitto_pub" "$SHIMS/mosquitto_sub" "$SIMBIN/";;
    python3) cp "$SHIMS/python3" "$SIMBIN/";;
    certmonger) mkdir -p "$SIMBIN/../usr/lib/certmonger" && cp "$SHIMS/scep-submit" "$SIMBIN/../usr/lib/certmonger/";;
  esac
done'
shim pg_isready '[ "$(cat "$WORLD/pg" 2>/dev/null)" = up ]'
shim pg_lsclusters 'case "$(cat "$WORLD/pg" 2>/dev/null)" in
  up) echo "15 main 5432 online postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log";;
  down) echo "15 main 5432 down postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log";;
esac'
shim pg_ctlcluster 'log "pg_ctlcluster $*"
[ "$(id -u)" = 0 ] || exit 1
[ "$*" = "--skip-systemctl-redirect 15 main start" ] && echo up >"$WORLD/pg"'
# psql: -d URL -c SQL over TCP, or SQL on stdin over the socket as postgres.
shim psql 'url=""; cmd=""
while [ $# -gt 0 ]; do case "$1" in -d) url="$2"; shift;; -c) cmd="$2"; shift;; esac; shift; done
[ "$(cat "$WORLD/pg" 2>/dev/null)" = up ] || { echo "psql: error: connection to server failed: Connection refused" >&2; exit 2; }
if [ -z "$url" ] || [ "$url" = postgres ]; then
  [ "${SIM_OS_USER:-}" = postgres ] || { echo "psql: error: FATAL: role \"root\" does not exist" >&2; exit 2; }
  sql="$(cat)"; log "socket-sql $(tr "\n" " " <<<"$sql")"
  pw="$(sed -nE "s/.*ALTER ROLE onramp_test LOGIN CREATEDB PASSWORD .([0-9a-f]+).;.*/\1/p" <<<"$sql")"
  [ -n "$pw" ] && echo "$pw" >"$WORLD/role_onramp_test"
  grep -qx test "$WORLD/dbs" || echo test >>"$WORLD/dbs"
  exit 0
fi
rest="${url#postgres://}"; auth="${rest%%@*}"; user="${auth%%:*}"; db="${rest##*/}"
given=""; [ "$auth" != "$user" ] && given="${auth#*:}"
if [ "$(cat "$WORLD/auth")" = password ]; then
  pf="${PGPASSFILE:-$HOME/.pgpass}"
  if [ -z "$given" ] && [ -f "$pf" ] && [ "$(stat -c %a "$pf")" = 600 ]; then
    given="$(grep "^127.0.0.1:5432:\*:$user:" "$pf" | head -n1 | cut -d: -f5)"
  fi
  want="$(cat "$WORLD/role_$user" 2>/dev/null || true)"
  [ -n "$want" ] && [ "$given" = "$want" ] || { echo "psql: error: FATAL:  password authentication failed for user \"$user\"" >&2; exit 2; }
elif [ -n "${SIM_TRUST_USERS:-}" ] && ! grep -qw "$user" <<<"$SIM_TRUST_USERS"; then
  echo "psql: error: FATAL:  role \"$user\" does not exist" >&2; exit 2
fi
grep -qx "$db" "$WORLD/dbs" || { echo "psql: error: FATAL:  database \"$db\" does not exist" >&2; exit 2; }
log "sql $user $cmd"
case "$cmd" in
  "SELECT 1") echo 1;;
  "SHOW server_version") echo 15.0;;
  "CREATE DATABASE test") echo test >>"$WORLD/dbs";;
  SELECT\ datname*) grep "^onramp_t_" "$WORLD/dbs" || true;;
  DROP\ DATABASE*) name="$(sed -E "s/.*\"(.*)\".*/\1/" <<<"$cmd")"; grep -vx "$name" "$WORLD/dbs" >"$WORLD/dbs.new" || true; mv "$WORLD/dbs.new" "$WORLD/dbs";;
esac'
# The system python3: an "externally managed" interpreter whose venv module
# works only once python3-venv is installed.
shim python3 'log "python3 $*"
case "$1" in
  -c) [ "$2" = "import ensurepip" ] && [ -f "$WORLD/installed/python3-venv" ]; exit;;
  -m) case "$2" in
      pip) echo "error: externally-managed-environment" >&2; log "SYSTEM-PIP"; exit 1;;
      venv) [ -f "$WORLD/installed/python3-venv" ] || { echo "The virtual environment was not created successfully because ensurepip is not available." >&2; exit 1; }
        dir="${*: -1}"; mkdir -p "$dir/bin"; echo "home = /usr/bin" >"$dir/pyvenv.cfg"
        cp "$SHIMS/venv-python" "$dir/bin/python"; exit 0;;
    esac;;
esac
exit 1'
# The venv's python: imports succeed once pip has installed the pins.
shim venv-python 'here="$(cd "$(dirname "$0")/.." && pwd)"
case "$1" in
  -c) case "$2" in
      "import sys") exit 0;;
      "import sys; print(sys.version)") echo "3.11.2 (simulated)"; exit 0;;
      *) [ -f "$here/installed" ]; exit;;
    esac;;
  -m) [ "$2" = pip ] && [ "$3" = install ] || exit 1
    log "venv-pip $*"; touch "$here/installed"; exit 0;;
esac
exit 1'
# dpkg -x DEB DIR: unpacks a simulated prometheus package holding promtool.
shim dpkg 'log "dpkg $*"
[ "$1" = -x ] && [ -f "$2" ] || exit 2
mkdir -p "$3/usr/bin" && printf "#!/bin/sh\nexit 0\n" >"$3/usr/bin/promtool" && chmod +x "$3/usr/bin/promtool"'
for t in openssl curl mosquitto_pub mosquitto_sub promtool scep-submit; do shim "$t" 'exit 0'; done

# A fresh machine: HOME, world and PATH in their own directory. Arguments
# name the shims present before anything is installed.
new_machine() {
  m="$top/m$((++machines))"
  mkdir -p "$m/home" "$m/world/installed" "$m/bin"
  : >"$m/world/log"
  for t in "$@"; do
    case "$t" in
      scep-submit) mkdir -p "$m/usr/lib/certmonger" && cp "$shims/$t" "$m/usr/lib/certmonger/";;
      *) cp "$shims/$t" "$m/bin/";;
    esac
  done
  cp "$shims/log" "$shims/id" "$shims/apt-get" "$shims/dpkg" "$shims/runuser" "$m/bin/"
  echo postgres >"$m/world/dbs"
  WORLD="$m/world"
}
machines=0

# Runs services.sh on the current machine; sets rc, out, err.
run() {
  set +e
  out="$(env -i HOME="$m/home" PATH="$m/bin:$sys" WORLD="$WORLD" SHIMS="$shims" SIMBIN="$m/bin" \
    ONRAMP_TEST_VENV="$m/venv" ONRAMP_TEST_TOOLS="$m/tools" ONRAMP_CERTMONGER_DIRS="$m/usr/lib/certmonger" ${SIM_UID:+SIM_UID=$SIM_UID} ${SIM_TRUST_USERS:+SIM_TRUST_USERS=$SIM_TRUST_USERS} \
    ${PRESET_URL:+ONRAMP_TEST_DATABASE_URL=$PRESET_URL} \
    bash "$services" "$@" 2>"$m/err")"
  rc=$?
  set -e
  err="$(cat "$m/err")"
  log="$(cat "$WORLD/log")"
  : >"$WORLD/log"
}

check() { # description, then a command that must succeed
  local what="$1"
  shift
  checks=$((checks + 1))
  if ! "$@"; then
    failures=$((failures + 1))
    echo "FAIL [$scenario] $what" >&2
    echo "  rc=$rc" >&2
    sed 's/^/  out: /' <<<"$out" >&2
    sed 's/^/  err: /' <<<"$err" >&2
    sed 's/^/  log: /' <<<"$log" >&2
  fi
}
has() { grep -qF -- "$2" <<<"$1"; }
lacks() { ! grep -qF -- "$2" <<<"$1"; }
ok() { [ "$rc" = 0 ]; }
failed() { [ "$rc" != 0 ]; }

# --- stock Debian: no PostgreSQL, password auth, no python3-venv -----------
scenario="stock Debian"
new_machine python3 openssl curl
run
check "succeeds" ok
check "installs the clients and python3-venv" \
  has "$log" "apt-get install -y -qq mosquitto-clients postgresql-client certmonger python3-venv"
check "installs the PostgreSQL server" has "$log" "apt-get install -y -qq postgresql"
check "starts the cluster" has "$log" "pg_ctlcluster --skip-systemctl-redirect 15 main start"
check "creates the role as the postgres OS user" has "$log" "runuser -u postgres -- psql"
check "the role may create databases" has "$log" "ALTER ROLE onramp_test LOGIN CREATEDB PASSWORD"
check "exports the role's URL, without a password" \
  has "$out" "export ONRAMP_TEST_DATABASE_URL=postgres://onramp_test@127.0.0.1:5432/test"
check "exports the venv's python" has "$out" "export ONRAMP_TEST_PYTHON=$m/venv/bin/python"
check "never pip-installs into the system python" lacks "$log" "SYSTEM-PIP"
check "installs the pins into the venv" has "$log" "venv-pip -m pip install -q --disable-pip-version-check -r $repo/tests/requirements.txt"
password="$(cat "$WORLD/role_onramp_test" 2>/dev/null || echo unset)"
check "keeps the password in ~/.pgpass, mode 600" \
  grep -qx "127.0.0.1:5432:\*:onramp_test:$password" "$m/home/.pgpass"
check "~/.pgpass is 0600" test "$(stat -c %a "$m/home/.pgpass")" = 600
check "the password is not printed" lacks "$out$err" "$password"
check "fetches promtool without root, unpacked in the tools directory" \
  has "$log" "dpkg -x $m/tools/deb/prometheus_1.0_amd64.deb $m/tools"
check "exports the unpacked promtool" has "$out" "export ONRAMP_PROMTOOL=$m/tools/usr/bin/promtool"

scenario="stock Debian, second run"
run
check "succeeds" ok
check "installs nothing, creates no role, reinstalls no pins" \
  test -z "$(grep -E 'apt-get|runuser|venv-pip|pg_ctlcluster' <<<"$log")"
check "finds the role through ~/.pgpass" \
  has "$out" "export ONRAMP_TEST_DATABASE_URL=postgres://onramp_test@127.0.0.1:5432/test"
check "reuses the unpacked promtool" has "$out" "export ONRAMP_PROMTOOL=$m/tools/usr/bin/promtool"

scenario="stock Debian, lost password file"
rm -f "$m/home/.pgpass"
run
check "succeeds" ok
check "sets a new password as the postgres OS user" has "$log" "ALTER ROLE onramp_test"
check "and writes it to ~/.pgpass" \
  grep -qx "127.0.0.1:5432:\*:onramp_test:$(cat "$WORLD/role_onramp_test")" "$m/home/.pgpass"

scenario="stock Debian, changed pins"
mkdir -p "$m/venv"
echo "3.11.2 (changed)" >"$m/venv/.onramp-requirements.sha256"
run
check "reinstalls the pins when the stamp differs" has "$log" "venv-pip"
run
check "and not again" lacks "$log" "venv-pip"
rm -f "$m/venv/installed"
run
check "reinstalls the pins when an import fails" has "$log" "venv-pip"

# --- PostgreSQL installed but stopped ----------------------------------------
scenario="cluster down"
new_machine python3 openssl curl mosquitto_pub mosquitto_sub scep-submit psql pg_isready pg_lsclusters pg_ctlcluster promtool
touch "$WORLD/installed/python3-venv"
echo down >"$WORLD/pg"
echo trust >"$WORLD/auth"
echo test >>"$WORLD/dbs"
run
check "succeeds" ok
check "starts the cluster" has "$log" "pg_ctlcluster --skip-systemctl-redirect 15 main start"
check "installs no package" lacks "$log" "apt-get"
check "uses the trusted default URL" \
  has "$out" "export ONRAMP_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test"
check "creates no role" lacks "$log" "runuser"
check "uses the promtool on PATH" has "$out" "export ONRAMP_PROMTOOL=$m/bin/promtool"

# --- this machine: up, trust authentication, but no database `test` ------
scenario="trust, no test database"
new_machine python3 openssl curl mosquitto_pub mosquitto_sub scep-submit psql pg_isready pg_lsclusters
touch "$WORLD/installed/python3-venv"
echo up >"$WORLD/pg"
echo trust >"$WORLD/auth"
run
check "succeeds" ok
check "creates the database test" has "$log" "sql postgres CREATE DATABASE test"
check "uses the default URL" \
  has "$out" "export ONRAMP_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test"

# --- scratch databases: only stale ones and one's own are dropped ------------
scenario="scratch databases"
now="$(date +%s)"
stale="onramp_t_$((now - 90000))_aaaa1111_0123456789abcdef0123456789abcdef"
other="onramp_t_$((now - 60))_bbbb2222_0123456789abcdef0123456789abcdef"
mine="onramp_t_$((now - 30))_cccc3333_0123456789abcdef0123456789abcdef"
legacy="onramp_t_0123456789abcdef0123456789abcdef"
printf '%s\n' "$stale" "$other" "$mine" "$legacy" app >>"$WORLD/dbs"
run
check "succeeds" ok
check "drops the run older than a day" lacks "$(cat "$WORLD/dbs")" "$stale"
check "keeps another current run's database" has "$(cat "$WORLD/dbs")" "$other"
check "keeps this run's database" has "$(cat "$WORLD/dbs")" "$mine"
check "keeps unknown names" has "$(cat "$WORLD/dbs")" "$legacy"
run --drop-run "$((now - 30))_cccc3333"
check "--drop-run succeeds" ok
check "--drop-run drops its own run's database" lacks "$(cat "$WORLD/dbs")" "$mine"
check "--drop-run leaves another run's database" has "$(cat "$WORLD/dbs")" "$other"
check "--drop-run leaves other databases" has "$(cat "$WORLD/dbs")" "app"
run --drop-run "x; DROP"
check "--drop-run refuses a malformed run id" failed

# --- a preset ONRAMP_TEST_DATABASE_URL is checked, never altered -------------
scenario="preset URL, unreachable"
new_machine python3 openssl curl mosquitto_pub mosquitto_sub scep-submit psql pg_isready pg_lsclusters pg_ctlcluster
touch "$WORLD/installed/python3-venv"
echo down >"$WORLD/pg"
echo password >"$WORLD/auth"
PRESET_URL="postgres://ci:hunter2@127.0.0.1:5432/test"
run
check "fails" failed
check "names the variable and the way out" has "$err" "unset ONRAMP_TEST_DATABASE_URL"
check "shows the URL without its password" has "$err" "postgres://ci:***@127.0.0.1:5432/test"
check "never shows the password" lacks "$out$err" "hunter2"
check "starts and installs nothing" test -z "$(grep -E 'apt-get|pg_ctlcluster|runuser' <<<"$log")"

scenario="preset URL, reachable"
echo up >"$WORLD/pg"
echo hunter2 >"$WORLD/role_ci"
echo test >>"$WORLD/dbs"
run
check "succeeds" ok
check "does not re-export it" lacks "$out" "ONRAMP_TEST_DATABASE_URL"
check "creates no role" lacks "$log" "runuser"
PRESET_URL=""

# --- not root, no sudo: packages missing ------------------------------------
scenario="no root"
new_machine python3 openssl curl
SIM_UID=1000
run
SIM_UID=""
check "fails" failed
check "says root or sudo is needed, naming the packages" \
  has "$err" "needs root (or sudo) to run: env DEBIAN_FRONTEND=noninteractive apt-get update"
check "names the packages" has "$err" "installing mosquitto-clients postgresql-client certmonger python3-venv"

# --- password auth where even the new role is refused (pg_hba rejects) -------
scenario="role refused"
new_machine python3 openssl curl mosquitto_pub mosquitto_sub scep-submit psql pg_isready pg_lsclusters
touch "$WORLD/installed/python3-venv"
echo up >"$WORLD/pg"
echo password >"$WORLD/auth"
echo test >>"$WORLD/dbs"
# The socket step "succeeds" but records no password, as if pg_hba said reject.
sed 's/\[ -n "\$pw" \] && echo "\$pw" >"\$WORLD\/role_onramp_test"/:/' "$shims/psql" >"$m/bin/psql"
check "the simulated rejection is in place" lacks "$(cat "$m/bin/psql")" 'role_onramp_test'
run
check "fails" failed
check "points at pg_hba.conf" has "$err" "pg_hba.conf"

echo "test-setup: $checks checks, $failures failed" >&2
[ "$failures" = 0 ]
