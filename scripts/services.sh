#!/usr/bin/env bash
# Makes sure Postgres (127.0.0.1:5432, trust auth for local connections) and nats-server
# with JetStream (127.0.0.1:4222) are running: uses what listens there, starts installed
# servers that are stopped, and installs them from Debian's packages when missing (as root).
# Sourced by scripts/test and scripts/run; set HANDOFF_NO_INSTALL=1 to never install.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local port=$1 what=$2
  for _ in $(seq 1 50); do listening "$port" && return 0; sleep 0.2; done
  echo "error: $what did not start listening on 127.0.0.1:$port" >&2
  return 1
}

apt_install() {
  if [ "${HANDOFF_NO_INSTALL:-}" = 1 ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: $1 is not installed. Install it with: sudo apt-get install -y $*" >&2
    return 1
  fi
  echo "installing $* from Debian's packages…" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  listening 5432 && return 0
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql
  fi
  local version
  version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  if command -v pg_ctlcluster >/dev/null && [ "$(id -u)" = 0 ]; then
    [ -d "/etc/postgresql/$version/main" ] || pg_createcluster "$version" main >/dev/null
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    # Tests and the demo connect as `postgres` over 127.0.0.1 without a password.
    if ! grep -q "handoff: trust local" "$hba"; then
      sed -i '1i # handoff: trust local\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster "$version" main restart
  else
    # Not root: a private instance in .data/postgres.
    local dir=".data/postgres" bin="/usr/lib/postgresql/$version/bin"
    [ -d "$dir" ] || "$bin/initdb" -D "$dir" -U postgres --auth=trust >/dev/null
    "$bin/pg_ctl" -D "$dir" -o "-p 5432 -k /tmp -c listen_addresses=127.0.0.1" -l "$dir.log" start >/dev/null
  fi
  wait_for 5432 Postgres
}

ensure_nats() {
  listening 4222 && return 0
  command -v nats-server >/dev/null || apt_install nats-server
  mkdir -p .data/nats
  nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$PWD/.data/nats" >.data/nats.log 2>&1 &
  wait_for 4222 nats-server
}

# The browser test (crates/router/tests/system/browser.rs) drives headless Chromium.
ensure_chromium() {
  command -v chromedriver >/dev/null && return 0
  apt_install chromium chromium-driver
}

ensure_postgres
ensure_nats
[ "${HANDOFF_NO_BROWSER:-}" = 1 ] || ensure_chromium
