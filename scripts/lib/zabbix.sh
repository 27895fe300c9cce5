# scripts/lib/zabbix.sh: install (when missing) and start a throwaway Zabbix 6.0 server with
# its JSON-RPC API, on the PostgreSQL cluster of scripts/lib/postgres.sh.
#
# Source it after postgres.sh; call `start_postgres`, then `start_zabbix`. It creates the
# database `zabbix` in the cluster of VANTAGE_TEST_PG_URL, loads Debian's schema, images and
# data, and runs, as the unprivileged `zabbix` user and on free loopback ports:
#   - zabbix_server (foreground, trapper on 127.0.0.1, config cache refreshed every second),
#     in its own mount namespace where VANTAGE_TEST_ZABBIX_CA_BUNDLE is bind-mounted over
#     /etc/ssl/certs/ca-certificates.crt;
#   - php-fpm, in its own mount namespace where a temporary directory holding the frontend's
#     zabbix.conf.php is bind-mounted over /etc/zabbix (Debian's frontend reads only
#     /etc/zabbix/zabbix.conf.php, so no system file is written);
#   - nginx, serving /usr/share/zabbix (the API is /api_jsonrpc.php).
# It exports
#   VANTAGE_TEST_ZABBIX_API_URL    http://127.0.0.1:PORT/api_jsonrpc.php
#   VANTAGE_TEST_ZABBIX_USER       Admin
#   VANTAGE_TEST_ZABBIX_PASSWORD   zabbix
#   VANTAGE_TEST_ZABBIX_TRAPPER    127.0.0.1:PORT (zabbix_sender -z 127.0.0.1 -p PORT)
#   VANTAGE_TEST_ZABBIX_CA_BUNDLE  a PEM file, first a copy of the system bundle: append a CA
#                                  to it (never replace the file: the bind mount holds its
#                                  inode) and zabbix_server's libcurl trusts it from its next
#                                  connection on (seen with HTTP agent items, verify_peer 1).
#                                  Webhooks do not need it: Zabbix 6.0's HttpRequest does not
#                                  verify certificates at all (a webhook POSTs to any CA).
#   VANTAGE_TEST_ZABBIX_SERVER_LOG the server's log (webhook errors land there)
# and chains its cleanup before the EXIT trap already set (postgres.sh's stop_postgres):
# on exit the Zabbix processes are stopped, then PostgreSQL, and the temporary files removed.
# Needs root (mount namespaces, package installs); the daemons themselves run as `zabbix`.
# The first load of Debian's data takes ~15-20 s; it is then cached as a dump (zbx_load_db).
# Debian 12 has no zabbix-sender package: zabbix_sender comes with zabbix-agent.

ZBX_DB_NAME=${ZBX_DB_NAME:-zabbix}

zbx_log() { printf '==> %s\n' "$*" >&2; }

zbx_die() {
    printf 'zabbix.sh: %s\n' "$*" >&2
    return 1
}

# A free loopback port in 20000-32767: zabbix_server refuses a ListenPort above 32767,
# and the kernel's ephemeral range (what free_port returns) starts at 32768.
zbx_free_low_port() {
    python3 - <<'EOF'
import random, socket
for _ in range(500):
    port = random.randint(20000, 32767)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port in 20000-32767")
EOF
}

zbx_php_fpm_bin() { { ls /usr/sbin/php-fpm* 2>/dev/null || true; } | sort -V | tail -n1; }

# Stop (and, under systemd, disable) system services that a package's postinst may have
# started or enabled: the tests run their own processes.
zbx_quiet_system_services() {
    local svc
    for svc in zabbix-server zabbix-agent nginx $(cd /etc/init.d 2>/dev/null && ls -d php*-fpm 2>/dev/null); do
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
            if systemctl list-unit-files "$svc.service" >/dev/null 2>&1; then
                systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
            fi
        elif [ -x "/etc/init.d/$svc" ]; then
            if "/etc/init.d/$svc" status >/dev/null 2>&1; then
                zbx_log "Stopping the system service $svc that the package started"
                "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
            fi
            update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    done
}

ensure_zabbix() {
    local missing=() fpm
    fpm=$(zbx_php_fpm_bin)
    # php-fpm first: listed after zabbix-frontend-php, apt satisfies `php` with Apache's module.
    [ -n "$fpm" ] || missing+=(php-fpm)
    ls /etc/php/*/mods-available/pgsql.ini >/dev/null 2>&1 || missing+=(php-pgsql)
    { [ -x /usr/sbin/zabbix_server ] && [ -f /usr/share/zabbix-server-pgsql/schema.sql.gz ]; } \
        || missing+=(zabbix-server-pgsql)
    [ -f /usr/share/zabbix/api_jsonrpc.php ] || missing+=(zabbix-frontend-php)
    [ -x /usr/sbin/nginx ] || missing+=(nginx)
    command -v zabbix_sender >/dev/null || missing+=(zabbix-agent)
    command -v jq >/dev/null || missing+=(jq)
    command -v curl >/dev/null || missing+=(curl)
    command -v psql >/dev/null || missing+=(postgresql-client)
    { command -v unshare >/dev/null && command -v setpriv >/dev/null; } || missing+=(util-linux)
    [ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
    [ ${#missing[@]} -gt 0 ] || return 0

    [ "$(id -u)" = 0 ] || zbx_die "installing ${missing[*]} needs root" || return 1
    # Keep the postinsts from starting system services (zabbix-agent's starts its agent).
    local created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    local rc=0
    apt_install "${missing[@]}" || rc=$?
    [ "$created_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || return "$rc"
    zbx_quiet_system_services
}

# Run "$@" as the zabbix user in a new session (so the whole process group can be stopped),
# optionally in a private mount namespace with bind mounts SRC:DST given in ZBX_BINDS.
zbx_spawn() {
    local name=$1
    shift
    local script='set -e
while [ "$1" != -- ]; do mount --bind "${1%%:*}" "${1#*:}"; shift; done
shift
exec setpriv --reuid=zabbix --regid=zabbix --init-groups -- "$@"'
    # shellcheck disable=SC2086
    setsid unshare -m --propagation private -- sh -c "$script" sh ${ZBX_BINDS:-} -- "$@" \
        >>"$ZBX_DIR/$name.out" 2>&1 </dev/null &
    ZBX_PIDS+=("$!")
}

# Create the database and load Debian's schema, images and data. Debian's data.sql is
# ~150,000 single-row INSERTs (20 s here); a pg_dump of the freshly loaded database restores
# in ~1 s, so the first load is dumped to a cache keyed by the package and PostgreSQL versions
# (ZBX_DB_CACHE_DIR, default /var/cache/vantage-test; ZBX_DB_CACHE_DIR= disables it).
zbx_load_db() {
    local db_url=$1 cache_dir=${ZBX_DB_CACHE_DIR-/var/cache/vantage-test} cache='' key f
    psql -q -X -v ON_ERROR_STOP=1 "$VANTAGE_TEST_PG_URL" -c "CREATE DATABASE $ZBX_DB_NAME" >/dev/null
    if [ -n "$cache_dir" ]; then
        key="$(dpkg-query -W -f '${Version}' zabbix-server-pgsql 2>/dev/null || echo unknown)-pg$(psql -X -A -t "$VANTAGE_TEST_PG_URL" -c 'SHOW server_version_num')"
        cache="$cache_dir/zabbix-db-${key//[^A-Za-z0-9._-]/_}.sql.gz"
    fi
    if [ -n "$cache" ] && [ -s "$cache" ] && gzip -t "$cache" 2>/dev/null; then
        zbx_log "Loading the Zabbix database from $cache"
        zcat "$cache" | psql -q -X -v ON_ERROR_STOP=1 "$db_url" >/dev/null
        return 0
    fi
    zbx_log "Loading Debian's Zabbix schema, images and data into database $ZBX_DB_NAME (~20 s, cached after)"
    for f in schema images data; do
        zcat "/usr/share/zabbix-server-pgsql/$f.sql.gz"
    done | psql -q -X -v ON_ERROR_STOP=1 "$db_url" >/dev/null
    if [ -n "$cache" ] && mkdir -p "$cache_dir" 2>/dev/null; then
        local tmp
        tmp=$(mktemp "$cache.XXXXXX") || return 0
        if pg_dump --no-owner --no-privileges "$db_url" | gzip -1 >"$tmp"; then
            chmod 644 "$tmp"
            mv -f "$tmp" "$cache"
        else
            rm -f "$tmp"
        fi
    fi
}

zbx_api() {
    # zbx_api METHOD PARAMS_JSON [AUTH]: prints the whole JSON-RPC answer.
    local body
    body=$(jq -cn --arg m "$1" --argjson p "$2" --arg a "${3:-}" \
        '{jsonrpc: "2.0", method: $m, params: $p, id: 1} + (if $a == "" then {} else {auth: $a} end)')
    curl -sS --max-time 30 -H 'Content-Type: application/json-rpc' --data-binary "$body" \
        "$VANTAGE_TEST_ZABBIX_API_URL"
}

start_zabbix() {
    [ -z "${ZBX_DIR:-}" ] || return 0
    [ -n "${VANTAGE_TEST_PG_URL:-}" ] || zbx_die "call start_postgres first" || return 1
    [ "$(id -u)" = 0 ] || zbx_die "start_zabbix needs root (mount namespaces)" || return 1
    ensure_zabbix
    local t0=$SECONDS
    ZBX_PIDS=()
    ZBX_DIR=$(mktemp -d /tmp/vantage-zabbix.XXXXXX)
    chmod 755 "$ZBX_DIR"
    # Chain before the EXIT trap already set (stop_postgres): Zabbix stops first.
    local prev=''
    eval "set -- $(trap -p EXIT)"
    [ $# -lt 3 ] || prev=$3
    if [ -n "$prev" ]; then
        # shellcheck disable=SC2064
        trap "stop_zabbix; $prev" EXIT
    else
        trap stop_zabbix EXIT
    fi

    # postgres://USER@HOST:PORT/DB
    local pg_rest pg_user pg_host pg_port
    pg_rest=${VANTAGE_TEST_PG_URL#postgres://}
    pg_user=${pg_rest%%@*}
    pg_rest=${pg_rest#*@}
    pg_host=${pg_rest%%:*}
    pg_rest=${pg_rest#*:}
    pg_port=${pg_rest%%/*}
    local db_url="postgres://$pg_user@$pg_host:$pg_port/$ZBX_DB_NAME"

    local web_port trapper_port fpm
    web_port=$(free_port)
    fpm=$(zbx_php_fpm_bin)
    mkdir -p "$ZBX_DIR/etc-zabbix" "$ZBX_DIR/nginx" "$ZBX_DIR/scripts"

    # The CA bundle the server's libcurl reads (Debian's libcurl3-gnutls reads the directory
    # /etc/ssl/certs, which holds ca-certificates.crt).
    export VANTAGE_TEST_ZABBIX_CA_BUNDLE=$ZBX_DIR/ca-bundle.pem
    cat /etc/ssl/certs/ca-certificates.crt >"$VANTAGE_TEST_ZABBIX_CA_BUNDLE"
    chmod 644 "$VANTAGE_TEST_ZABBIX_CA_BUNDLE"

    cat >"$ZBX_DIR/php-fpm.conf" <<EOF
[global]
pid = $ZBX_DIR/php-fpm.pid
error_log = $ZBX_DIR/php-fpm.log
daemonize = no

[zabbix]
listen = $ZBX_DIR/php-fpm.sock
pm = dynamic
pm.max_children = 8
pm.start_servers = 2
pm.min_spare_servers = 1
pm.max_spare_servers = 4
catch_workers_output = yes
php_admin_value[error_log] = $ZBX_DIR/php-errors.log
php_admin_value[log_errors] = on
php_admin_value[date.timezone] = UTC
php_admin_value[memory_limit] = 256M
php_admin_value[post_max_size] = 16M
php_admin_value[upload_max_filesize] = 2M
php_admin_value[max_execution_time] = 300
php_admin_value[max_input_time] = 300
php_admin_value[session.save_path] = $ZBX_DIR
EOF

    cat >"$ZBX_DIR/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $ZBX_DIR/nginx.pid;
error_log $ZBX_DIR/nginx-error.log warn;
events { worker_connections 512; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path $ZBX_DIR/nginx/client_body;
    proxy_temp_path $ZBX_DIR/nginx/proxy;
    fastcgi_temp_path $ZBX_DIR/nginx/fastcgi;
    uwsgi_temp_path $ZBX_DIR/nginx/uwsgi;
    scgi_temp_path $ZBX_DIR/nginx/scgi;
    server {
        listen 127.0.0.1:$web_port;
        root /usr/share/zabbix;
        index index.php;
        client_max_body_size 16m;
        location / { try_files \$uri \$uri/ =404; }
        location ~ [^/]\.php(/|\$) {
            fastcgi_split_path_info ^(.+?\.php)(/.*)\$;
            try_files \$fastcgi_script_name =404;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
            fastcgi_read_timeout 300;
            fastcgi_pass unix:$ZBX_DIR/php-fpm.sock;
        }
    }
}
EOF

    chown -R zabbix:zabbix "$ZBX_DIR"
    chown root:root "$VANTAGE_TEST_ZABBIX_CA_BUNDLE"

    # The web side needs no database to start: start it while the schema loads.
    ZBX_BINDS="$ZBX_DIR/etc-zabbix:/etc/zabbix" zbx_spawn php-fpm "$fpm" -F -y "$ZBX_DIR/php-fpm.conf"
    ZBX_BINDS='' zbx_spawn nginx /usr/sbin/nginx -p "$ZBX_DIR/nginx" -c "$ZBX_DIR/nginx.conf" \
        -e "$ZBX_DIR/nginx-error.log"

    zbx_load_db "$db_url"
    # Debian's data has one monitored host, "Zabbix server", polling an agent on
    # 127.0.0.1:10050 (a system agent or nothing): disable it, the tests bring their own hosts.
    psql -q -X -v ON_ERROR_STOP=1 "$db_url" -c "UPDATE hosts SET status = 1 WHERE host = 'Zabbix server'" >/dev/null

    for _ in 1 2 3; do
        trapper_port=$(zbx_free_low_port)
        cat >"$ZBX_DIR/zabbix_server.conf" <<EOF
LogType=file
LogFile=$ZBX_DIR/zabbix_server.log
LogFileSize=0
DebugLevel=3
PidFile=$ZBX_DIR/zabbix_server.pid
SocketDir=$ZBX_DIR
TmpDir=$ZBX_DIR
DBHost=$pg_host
DBPort=$pg_port
DBName=$ZBX_DB_NAME
DBUser=$pg_user
AllowUnsupportedDBVersions=1
ListenIP=127.0.0.1
ListenPort=$trapper_port
CacheUpdateFrequency=1
HousekeepingFrequency=0
StartPollers=2
StartPollersUnreachable=1
StartHistoryPollers=1
StartPreprocessors=2
StartTrappers=5
StartPingers=0
StartDiscoverers=0
StartHTTPPollers=0
StartTimers=1
StartEscalators=2
StartAlerters=8
StartDBSyncers=2
StartLLDProcessors=1
StartProxyPollers=0
StartODBCPollers=0
StartReportWriters=0
Timeout=5
AlertScriptsPath=$ZBX_DIR/scripts
ExternalScripts=$ZBX_DIR/scripts
StatsAllowedIP=127.0.0.1
User=zabbix
AllowRoot=0
EOF
        chown zabbix:zabbix "$ZBX_DIR/zabbix_server.conf"
        : >"$ZBX_DIR/zabbix_server.log"
        chown zabbix:zabbix "$ZBX_DIR/zabbix_server.log"
        ZBX_BINDS="$VANTAGE_TEST_ZABBIX_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt" \
            zbx_spawn zabbix_server /usr/sbin/zabbix_server -f -c "$ZBX_DIR/zabbix_server.conf"
        ZBX_SERVER_PID=${ZBX_PIDS[-1]}
        # Started when the trapper port answers and the trappers and alerters have logged their start.
        local ok=0
        for _ in $(seq 1 300); do
            if ! kill -0 "$ZBX_SERVER_PID" 2>/dev/null; then
                break
            fi
            if grep -q 'started \[alerter #' "$ZBX_DIR/zabbix_server.log" 2>/dev/null \
                && grep -q 'started \[trapper #' "$ZBX_DIR/zabbix_server.log" 2>/dev/null \
                && (exec 3<>"/dev/tcp/127.0.0.1/$trapper_port") 2>/dev/null; then
                ok=1
                break
            fi
            sleep 0.1
        done
        [ "$ok" = 0 ] || break
        if grep -qiE 'listener failed|cannot bind|Address already in use' "$ZBX_DIR/zabbix_server.log"; then
            zbx_log "Trapper port $trapper_port was taken; trying another"
            zbx_stop_pid "$ZBX_SERVER_PID"
            continue
        fi
        tail -n 30 "$ZBX_DIR/zabbix_server.log" "$ZBX_DIR/zabbix_server.out" >&2 || true
        zbx_die "zabbix_server did not start"
        return 1
    done
    [ "$ok" = 1 ] || zbx_die "zabbix_server did not start (port collisions)" || return 1

    cat >"$ZBX_DIR/etc-zabbix/zabbix.conf.php" <<EOF
<?php
// Written by scripts/lib/zabbix.sh; php-fpm sees this directory as /etc/zabbix.
\$DB['TYPE']           = 'POSTGRESQL';
\$DB['SERVER']         = '$pg_host';
\$DB['PORT']           = '$pg_port';
\$DB['DATABASE']       = '$ZBX_DB_NAME';
\$DB['USER']           = '$pg_user';
\$DB['PASSWORD']       = '';
\$DB['SCHEMA']         = '';
\$DB['ENCRYPTION']     = false;
\$DB['KEY_FILE']       = '';
\$DB['CERT_FILE']      = '';
\$DB['CA_FILE']        = '';
\$DB['VERIFY_HOST']    = false;
\$DB['CIPHER_LIST']    = '';
\$DB['VAULT_URL']      = '';
\$DB['VAULT_DB_PATH']  = '';
\$DB['VAULT_TOKEN']    = '';
\$DB['DOUBLE_IEEE754'] = true;
\$ZBX_SERVER           = '127.0.0.1';
\$ZBX_SERVER_PORT      = '$trapper_port';
\$ZBX_SERVER_NAME      = 'vantage-test';
\$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;
EOF
    chown -R zabbix:zabbix "$ZBX_DIR/etc-zabbix"

    export VANTAGE_TEST_ZABBIX_API_URL="http://127.0.0.1:$web_port/api_jsonrpc.php"
    export VANTAGE_TEST_ZABBIX_USER=Admin
    export VANTAGE_TEST_ZABBIX_PASSWORD=zabbix
    export VANTAGE_TEST_ZABBIX_TRAPPER="127.0.0.1:$trapper_port"
    export VANTAGE_TEST_ZABBIX_SERVER_LOG=$ZBX_DIR/zabbix_server.log

    # The API answers apiinfo.version and a login (which reads the database).
    local version='' answer=''
    for _ in $(seq 1 100); do
        answer=$(zbx_api apiinfo.version '{}' 2>/dev/null) || answer=''
        version=$(jq -r '.result // empty' <<<"$answer" 2>/dev/null) || version=''
        [ -z "$version" ] || break
        sleep 0.1
    done
    if [ -z "$version" ]; then
        printf '%s\n' "$answer" >&2
        tail -n 20 "$ZBX_DIR"/*.log "$ZBX_DIR"/*.out >&2 2>/dev/null || true
        zbx_die "the Zabbix API did not answer apiinfo.version"
        return 1
    fi
    answer=$(zbx_api user.login '{"username":"Admin","password":"zabbix"}')
    if [ -z "$(jq -r '.result // empty' <<<"$answer")" ]; then
        printf '%s\n' "$answer" >&2
        zbx_die "user.login failed on the fresh Zabbix"
        return 1
    fi
    zbx_log "Zabbix $version started in $((SECONDS - t0)) s: API $VANTAGE_TEST_ZABBIX_API_URL, trapper $VANTAGE_TEST_ZABBIX_TRAPPER"
}

# Stop one process group (its leader is PID) gracefully, then for good.
zbx_stop_pid() {
    local pid=$1
    kill -TERM -- "-$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_zabbix() {
    [ -n "${ZBX_DIR:-}" ] || return 0
    local pid
    # Stop the server first (it uses the database), then the web side.
    if [ -n "${ZBX_SERVER_PID:-}" ]; then
        zbx_stop_pid "$ZBX_SERVER_PID"
    fi
    for pid in "${ZBX_PIDS[@]}"; do
        zbx_stop_pid "$pid"
    done
    rm -rf "$ZBX_DIR"
    ZBX_DIR=
}
