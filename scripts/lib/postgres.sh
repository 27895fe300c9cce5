# scripts/lib/postgres.sh: install (when missing) and start a throwaway PostgreSQL cluster.
#
# Source it, then call `start_postgres`: it exports VANTAGE_TEST_PG_URL for a trust-auth
# cluster on a free loopback port in a temporary directory (fsync off unless PG_FSYNC=on),
# and stops and removes the
# cluster when the calling shell exits.

log() { printf '==> %s\n' "$*" >&2; }

apt_install() {
    log "Installing $* from Debian"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for a dpkg lock held by another install rather than fail.
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$@"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_postgres() {
    local initdb_bin
    initdb_bin=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -z "$initdb_bin" ] || ! command -v psql >/dev/null; then
        apt_install postgresql postgresql-client
        initdb_bin=$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1)
    fi
    PG_BIN=$(dirname "$initdb_bin")
    PG_DIR=$(mktemp -d /tmp/vantage-pg.XXXXXX)
    local port
    port=$(free_port)
    chmod 755 "$PG_DIR"
    trap stop_postgres EXIT
    log "Starting a throwaway PostgreSQL ($("$PG_BIN/postgres" --version)) on 127.0.0.1:$port"
    run_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U vantage --auth=trust -E UTF8 >/dev/null
    run_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
        -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=${PG_FSYNC:-off}" start >/dev/null
    export VANTAGE_TEST_PG_URL="postgres://vantage@127.0.0.1:$port/postgres"
}

# PostgreSQL refuses to run as root: run it as the postgres user then.
run_pg() {
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown -R postgres "$PG_DIR"
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

stop_postgres() {
    [ -n "${PG_DIR:-}" ] || return 0
    run_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
}
