#!/usr/bin/env bash
# scripts/lib/zabbix-selftest.sh: proves the Zabbix fixture of scripts/lib/zabbix.sh end to end.
#
#   bash scripts/lib/zabbix-selftest.sh
#
# Starts PostgreSQL and Zabbix, then, through the JSON-RPC API with curl and jq, does what a
# test will do: imports provision/zabbix/vantage_webhook_media_type.yaml under a unique name,
# points it at a local HTTPS listener (its own CA appended to VANTAGE_TEST_ZABBIX_CA_BUNDLE),
# gives a new user a media of that type, creates a host group, a host with a trapper item, a
# High trigger and an action limited to that host, then sends values with zabbix_sender and
# checks the listener got exactly one "problem" POST and one "resolved" POST with the bearer
# token and the documented JSON. Done twice (two listeners, two CAs, the second appended after
# the first delivery), then once against a listener whose CA is never appended (to learn
# whether the webhook verifies TLS at all). Each round also polls the listener with an HTTP
# agent item that verifies the peer, which shows whether zabbix_server's libcurl trusts the
# appended CA. Shows event.get (eventid_from), problem.get and history.get.
# ZBX_SELFTEST_TRACE=FILE records every JSON-RPC request body sent (auth token redacted).
# Prints PASS/FAIL per check; exits 1 on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/postgres.sh
. scripts/lib/zabbix.sh

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); printf 'PASS: %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL: %s\n' "$*"; }
info() { printf '      %s\n' "$*"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
all_set() { local v; for v in "$@"; do [ -n "$v" ] && [ "$v" != null ] || return 1; done; }
# jq_ok INPUT JQ_ARGS...: jq -e on INPUT, output discarded.
jq_ok() { local input=$1; shift; jq -e "$@" <<<"$input" >/dev/null 2>&1; }
now() { date +%s.%N; }
secs() { python3 -c 'import sys; print("%.2f" % (float(sys.argv[2]) - float(sys.argv[1])))' "$1" "$2"; }

for tool in jq openssl curl python3; do
    command -v "$tool" >/dev/null || apt_install "$tool"
done

T_TOTAL=$(now)
start_postgres
T_ZBX=$(now)
start_zabbix
START_SECONDS=$(secs "$T_ZBX" "$(now)")

ST_DIR=$(mktemp -d /tmp/vantage-zabbix-selftest.XXXXXX)
LISTENER_PIDS=()
selftest_cleanup() {
    local pid
    for pid in "${LISTENER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$ST_DIR"
}
eval "set -- $(trap -p EXIT)"
# shellcheck disable=SC2064
trap "selftest_cleanup; ${3:-}" EXIT

TRACE=${ZBX_SELFTEST_TRACE:-}
[ -z "$TRACE" ] || : >"$TRACE"
AUTH=''

# api METHOD PARAMS_JSON: prints .result; on an error prints it and returns 1.
api() {
    local body answer
    body=$(jq -cn --arg m "$1" --argjson p "$2" --arg a "$AUTH" \
        '{jsonrpc: "2.0", method: $m, params: $p, id: 1} + (if $a == "" then {} else {auth: $a} end)')
    if [ -n "$TRACE" ]; then
        jq -c --arg a "$AUTH" 'if .auth then .auth = "<token from user.login>" else . end
            | if .method == "configuration.import" then .params.source = "<the YAML text>" else . end
            | if .params.passwd then .params.passwd = "<password>" else . end
            | if .params.password and .method != "user.login" then .params.password = "<password>" else . end' \
            <<<"$body" >>"$TRACE"
    fi
    answer=$(curl -sS --max-time 60 -H 'Content-Type: application/json-rpc' --data-binary "$body" \
        "$VANTAGE_TEST_ZABBIX_API_URL")
    if jq -e 'has("error")' <<<"$answer" >/dev/null; then
        printf 'API %s failed: %s\n' "$1" "$(jq -c .error <<<"$answer")" >&2
        return 1
    fi
    jq -c .result <<<"$answer"
}

# The HTTPS listener: records every POST (time, path, headers, body) as one JSON line.
cat >"$ST_DIR/listener.py" <<'EOF'
import http.server, json, ssl, sys, time, threading

port, cert, key, record, name = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
lock = threading.Lock()
count = [0]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body, ctype="application/json"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.answer(200, "ok " + name, "text/plain")

    def do_POST(self):
        t = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode("utf-8", "replace")
        with lock:
            count[0] += 1
            n = count[0]
            with open(record, "a") as f:
                f.write(json.dumps({"t": t, "path": self.path, "headers": dict(self.headers.items()),
                                    "body": body}) + "\n")
        self.answer(200, json.dumps({"incident_id": "%s-%d" % (name, n),
                                     "incident_url": "https://vantage.test/incidents/%s-%d" % (name, n)}))

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
EOF

# new_listener N: a CA, a server certificate (SAN IP:127.0.0.1, DNS:localhost), a listener.
# Sets L_PORT, L_CA, L_RECORD.
new_listener() {
    local n=$1 d="$ST_DIR/l$1"
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/ca.key" \
        -out "$d/ca.pem" -days 2 -subj "/CN=Vantage selftest CA $n $$" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/srv.key" \
        -out "$d/srv.csr" -subj /CN=localhost 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$d/ext"
    openssl x509 -req -in "$d/srv.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -out "$d/srv.pem" -days 2 -extfile "$d/ext" 2>/dev/null
    L_PORT=$(free_port)
    L_CA=$d/ca.pem
    L_RECORD=$d/posts.jsonl
    : >"$L_RECORD"
    python3 "$d/../listener.py" "$L_PORT" "$d/srv.pem" "$d/srv.key" "$L_RECORD" "l$n" 2>"$d/listener.err" &
    LISTENER_PIDS+=("$!")
    local i
    for i in $(seq 1 50); do
        curl -s --cacert "$L_CA" "https://127.0.0.1:$L_PORT/health" >/dev/null && return 0
        sleep 0.1
    done
    echo "listener $n did not start" >&2
    cat "$d/listener.err" >&2
    return 1
}

# send VALUE: zabbix_sender until the server accepts it (the item reaches the server's
# configuration cache within CacheUpdateFrequency). Sets SENT_AT to the accepted send's start.
send_value() {
    local out i
    for i in $(seq 1 40); do
        SENT_AT=$(now)
        out=$(zabbix_sender -z "${VANTAGE_TEST_ZABBIX_TRAPPER%:*}" -p "${VANTAGE_TEST_ZABBIX_TRAPPER#*:}" \
            -s "$HOST" -k vantage.test -o "$1" 2>&1) || true
        if grep -q 'processed: 1;' <<<"$out"; then
            SEND_TRIES=$i
            return 0
        fi
        sleep 0.25
    done
    printf '%s\n' "$out" >&2
    return 1
}

# wait_post STATUS TIMEOUT: waits for a POST whose body has event.status STATUS; sets POST to
# that record and POST_AT to its arrival time.
wait_post() {
    local deadline i
    deadline=$(( $(date +%s) + $2 ))
    while [ "$(date +%s)" -le "$deadline" ]; do
        POST=$(jq -c --arg s "$1" 'select((.body | fromjson? | .event.status) == $s)' "$L_RECORD" | head -n1)
        if [ -n "$POST" ]; then
            POST_AT=$(jq -r .t <<<"$POST")
            return 0
        fi
        sleep 0.1
    done
    return 1
}

RUN_ID=$$-$(date +%s)
ROLE_ID='' USRGRP_ID=''
LATENCIES=()

# round N TRUSTED(yes|no)
round() {
    local n=$1 trusted=$2
    local name="Vantage selftest $RUN_ID-$n" token="vantage-selftest-token-$RUN_ID-$n"
    echo "--- Round $n: listener with its own CA, CA appended to the bundle: $trusted"
    new_listener "$n"
    local url="https://127.0.0.1:$L_PORT/api/v1/integrations/zabbix"
    if [ "$trusted" = yes ]; then
        cat "$L_CA" >>"$VANTAGE_TEST_ZABBIX_CA_BUNDLE"
        info "appended CA $n to $VANTAGE_TEST_ZABBIX_CA_BUNDLE"
    fi

    # The media type, under a unique name.
    local yaml
    yaml=$(sed "s/^      name: Vantage\$/      name: '$name'/" provision/zabbix/vantage_webhook_media_type.yaml)
    [ "$(grep -c "name: '$name'" <<<"$yaml")" = 1 ] || { fail "renaming the media type in the YAML"; return 1; }
    api configuration.import "$(jq -cn --arg s "$yaml" \
        '{format: "yaml", rules: {mediaTypes: {createMissing: true, updateExisting: false}}, source: $s}')" >/dev/null
    local mt mtid
    mt=$(api mediatype.get "$(jq -cn --arg n "$name" '{output: "extend", filter: {name: $n}}')")
    mtid=$(jq -r '.[0].mediatypeid // empty' <<<"$mt")
    check "round $n: configuration.import created media type \"$name\" (id ${mtid:-none})" [ -n "$mtid" ]
    [ -n "$mtid" ] || return 1
    local nparams
    nparams=$(jq '.[0].parameters | length' <<<"$mt")
    api mediatype.update "$(jq -c --arg url "$url" --arg tok "$token" '.[0] | {mediatypeid, status: "0",
        parameters: [.parameters[] | if .name == "vantage_endpoint" then .value = $url
                                     elif .name == "vantage_token" then .value = $tok else . end]}' <<<"$mt")" >/dev/null
    mt=$(api mediatype.get "$(jq -cn --arg id "$mtid" '{output: "extend", mediatypeids: [$id]}')")
    check "round $n: mediatype.update set vantage_endpoint, vantage_token, status enabled" \
        jq_ok "$mt" --arg url "$url" --arg tok "$token" --argjson np "$nparams" '.[0] | .status == "0"
            and ([.parameters[] | select(.name == "vantage_endpoint") | .value] == [$url])
            and ([.parameters[] | select(.name == "vantage_token") | .value] == [$tok])
            and (.parameters | length) == $np and $np > 30'

    # A user with a media of that type, a host group, a host.
    local groupid userid hostid actionid itemid httpitemid triggerid
    groupid=$(api hostgroup.create "$(jq -cn --arg n "$name" '{name: $n}')" | jq -r '.groupids[0]')
    userid=$(api user.create "$(jq -cn --arg u "vantage-selftest-$RUN_ID-$n" --arg p "Vt!$RUN_ID-$n-pw" \
        --arg r "$ROLE_ID" --arg g "$USRGRP_ID" --arg m "$mtid" --arg s "vantage-team-$n" \
        '{username: $u, passwd: $p, roleid: $r, usrgrps: [{usrgrpid: $g}],
          medias: [{mediatypeid: $m, sendto: $s, active: 0, severity: 63, period: "1-7,00:00-24:00"}]}')" \
        | jq -r '.userids[0]')
    HOST="vantage-selftest-$RUN_ID-$n"
    hostid=$(api host.create "$(jq -cn --arg h "$HOST" --arg g "$groupid" '{host: $h, groups: [{groupid: $g}]}')" \
        | jq -r '.hostids[0]')
    check "round $n: hostgroup $groupid, user $userid (with a Vantage media), host $hostid created" \
        all_set "$groupid" "$userid" "$hostid"

    # The action first, so it is in the configuration cache before the item is.
    local op
    op=$(jq -cn --arg m "$mtid" --arg u "$userid" \
        '{operationtype: 0, opmessage: {default_msg: 1, mediatypeid: $m}, opmessage_usr: [{userid: $u}]}')
    actionid=$(api action.create "$(jq -cn --arg n "$name" --arg h "$hostid" --argjson op "$op" \
        '{name: $n, eventsource: 0, status: 0, esc_period: "1h",
          filter: {evaltype: 0, conditions: [{conditiontype: 1, operator: 0, value: $h}]},
          operations: [$op + {esc_step_from: 1, esc_step_to: 1}],
          recovery_operations: [$op], update_operations: [$op]}')" | jq -r '.actionids[0]')
    itemid=$(api item.create "$(jq -cn --arg h "$hostid" \
        '{name: "Vantage test value", key_: "vantage.test", hostid: $h, type: 2, value_type: 3}')" \
        | jq -r '.itemids[0]')
    triggerid=$(api trigger.create "$(jq -cn --arg h "$HOST" \
        '{description: "Vantage selftest value is high", expression: ("last(/" + $h + "/vantage.test)>5"),
          priority: 4}')" | jq -r '.triggerids[0]')
    # An HTTP agent item that verifies the listener's certificate: does the server's libcurl
    # trust the CA in the bundle?
    httpitemid=$(api item.create "$(jq -cn --arg h "$hostid" --arg u "https://127.0.0.1:$L_PORT/health" \
        '{name: "Vantage CA check", key_: "vantage.ca.check", hostid: $h, type: 19, value_type: 4,
          url: $u, verify_peer: 1, verify_host: 1, delay: "2s", timeout: "3s"}')" | jq -r '.itemids[0]')
    check "round $n: action $actionid, trapper item $itemid, trigger $triggerid, HTTP agent item $httpitemid created" \
        all_set "$actionid" "$itemid" "$triggerid" "$httpitemid"

    # Problem.
    send_value 10 || { fail "round $n: zabbix_sender -o 10 was never processed"; return 1; }
    info "zabbix_sender -o 10 processed (attempt $SEND_TRIES)"
    local problem_sent=$SENT_AT problem_post='' problem_latency='' wait_s=60
    [ "$trusted" = yes ] || wait_s=45
    if wait_post problem "$wait_s"; then
        problem_post=$POST
        problem_latency=$(secs "$problem_sent" "$POST_AT")
        info "problem POST arrived ${problem_latency} s after zabbix_sender"
    fi
    if [ "$trusted" = no ]; then
        if [ -n "$problem_post" ]; then
            info "FINDING: the webhook POSTed to a listener whose CA is NOT in the bundle:"
            info "this Zabbix's HttpRequest does not verify the peer (upstream's httprequest.c sets CURLOPT_SSL_VERIFYPEER 0)."
            UNTRUSTED_WEBHOOK=delivered
        else
            info "FINDING: the webhook did not reach the untrusted listener within ${wait_s} s"
            UNTRUSTED_WEBHOOK=refused
        fi
    else
        check "round $n: listener got a POST with event.status \"problem\"" [ -n "$problem_post" ]
        [ -z "$problem_latency" ] || LATENCIES+=("problem $problem_latency")
    fi

    # The problem seen by a poller, while it is open.
    local problems events eventid
    problems=$(api problem.get "$(jq -cn --arg h "$hostid" '{output: "extend", hostids: [$h], selectTags: "extend"}')")
    eventid=$(jq -r '.[0].eventid // empty' <<<"$problems")
    check "round $n: problem.get returns the open problem (eventid ${eventid:-none}, severity 4, objectid = trigger)" \
        jq_ok "$problems" --arg t "$triggerid" 'length == 1 and .[0].severity == "4" and .[0].objectid == $t and .[0].r_eventid == "0"'
    [ "$n" != 1 ] || info "problem.get: $(jq -c '.[0] | {eventid, objectid, clock, name, severity, r_eventid, acknowledged, tags}' <<<"$problems")"

    if [ -n "$problem_post" ] && [ "$trusted" = yes ]; then
        local body
        body=$(jq -r .body <<<"$problem_post")
        check "round $n: problem POST path /api/v1/integrations/zabbix, Authorization \"Bearer <token>\", JSON content type" \
            jq_ok "$problem_post" --arg tok "$token" '.path == "/api/v1/integrations/zabbix" and .headers.Authorization == ("Bearer " + $tok)
                and .headers["Content-Type"] == "application/json"'
        check "round $n: problem body is the documented JSON (v 1, event id/value/severity, trigger, host, alert, recovery null)" \
            jq_ok "$body" --arg e "$eventid" --arg t "$triggerid" --arg h "$HOST" --arg s "vantage-team-$n" '
                .v == 1 and .source == "zabbix" and .event.id == $e and .event.value == 1
                and .event.status == "problem" and .event.zabbix_status == "PROBLEM"
                and .event.severity == "High" and .event.nseverity == 4 and .event.source == 0
                and .event.name == "Vantage selftest value is high" and (.event.timestamp | type) != "string"
                and (.event.date | test("^[0-9]{4}[.][0-9]{2}[.][0-9]{2}$")) and (.event.time | test("^[0-9]{2}:[0-9]{2}:[0-9]{2}$"))
                and .event.acknowledged == false and (.event.tags | type) == "array"
                and .trigger.id == $t and .trigger.value == 1 and .recovery == null and .update == null
                and .host.host == $h and .host.name == $h and .alert.sendto == $s
                and (.alert.subject | startswith("Problem: "))'
        if jq -e '.event.timestamp == null' <<<"$body" >/dev/null; then
            TIMESTAMP_NULL=yes
            [ "$n" != 1 ] || info "FINDING: event.timestamp is null: zabbix_server 6.0.14 has no {EVENT.TIMESTAMP} macro (nor {EVENT.RECOVERY.TIMESTAMP}); event.date/time are set"
        fi
        [ "$n" != 1 ] || { info "problem POST headers: $(jq -c '.headers | .Authorization = "Bearer <token>"' <<<"$problem_post")"; info "problem POST body: $body"; }
    fi

    # Round 2 also acknowledges the problem with a message: the update operation POSTs.
    local expected='["problem", "resolved"]'
    if [ "$n" = 2 ] && [ -n "$eventid" ]; then
        expected='["problem", "resolved", "update"]'
        local ack_at
        ack_at=$(now)
        api event.acknowledge "$(jq -cn --arg e "$eventid" '{eventids: [$e], action: 6, message: "Looking at it"}')" >/dev/null
        if wait_post update 60; then
            info "update POST arrived $(secs "$ack_at" "$POST_AT") s after event.acknowledge"
            LATENCIES+=("update $(secs "$ack_at" "$POST_AT")")
            check "round $n: event.acknowledge (action 6, message) POSTed event.status \"update\" with the message and user" \
                jq_ok "$POST" --arg e "$eventid" '(.body | fromjson) as $b | $b.event.id == $e and $b.event.value == 1
                    and $b.update.message == "Looking at it" and ($b.update.action | test("acknowledged"))
                    and ($b.update.user | length) > 0 and $b.recovery == null'
            info "update POST body: $(jq -c '.body | fromjson | {event: {id: .event.id, status: .event.status, acknowledged: .event.acknowledged}, update, alert: {subject: .alert.subject}}' <<<"$POST")"
        else
            fail "round $n: no update POST after event.acknowledge"
        fi
    fi

    # Recovery.
    send_value 1 || { fail "round $n: zabbix_sender -o 1 was never processed"; return 1; }
    local resolve_sent=$SENT_AT resolved_post='' resolve_latency=''
    if wait_post resolved "$wait_s"; then
        resolved_post=$POST
        resolve_latency=$(secs "$resolve_sent" "$POST_AT")
        info "resolved POST arrived ${resolve_latency} s after zabbix_sender"
    fi
    if [ "$trusted" = yes ]; then
        check "round $n: listener got a POST with event.status \"resolved\"" [ -n "$resolved_post" ]
        [ -z "$resolve_latency" ] || LATENCIES+=("resolved $resolve_latency")
        if [ -n "$resolved_post" ]; then
            local rbody
            rbody=$(jq -r .body <<<"$resolved_post")
            check "round $n: resolved body: same event id, value 0, recovery {id, value 0, timestamp}, Bearer token" \
                jq_ok "$resolved_post" --arg e "$eventid" --arg tok "$token" '(.body | fromjson) as $b | .headers.Authorization == ("Bearer " + $tok)
                    and $b.event.id == $e and $b.event.value == 0 and $b.event.status == "resolved"
                    and $b.event.zabbix_status == "RESOLVED" and $b.recovery != null and ($b.recovery.id | length) > 0
                    and $b.recovery.value == 0 and ($b.recovery.timestamp | type) != "string"
                    and ($b.recovery.time | test("^[0-9]{2}:[0-9]{2}:[0-9]{2}$"))
                    and $b.trigger.value == 0 and ($b.alert.subject | startswith("Resolved in "))'
            [ "$n" != 1 ] || info "resolved POST body: $rbody"
        fi
        # No duplicates: wait a little longer, then count.
        sleep 5
        check "round $n: exactly one POST of each of $expected (no duplicates after 5 s more)" \
            jq_ok "$(cat "$L_RECORD")" -s --argjson x "$expected" '[.[] | .body | fromjson | .event.status] | sort == $x'
    fi

    # The poller's view: events from the problem's id on, problems (recent), history.
    local recovery_id
    events=$(api event.get "$(jq -cn --arg h "$hostid" --arg e "$eventid" \
        '{output: "extend", source: 0, object: 0, hostids: [$h], eventid_from: $e,
          sortfield: ["eventid"], sortorder: "ASC", selectTags: "extend"}')")
    recovery_id=$(jq -r '.[0].r_eventid // empty' <<<"$events")
    check "round $n: event.get eventid_from $eventid returns the problem (value 1, r_eventid $recovery_id) then its recovery (value 0)" \
        jq_ok "$events" --arg e "$eventid" 'length == 2 and .[0].eventid == $e and .[0].value == "1" and .[0].severity == "4"
            and .[1].value == "0" and .[1].eventid == .[0].r_eventid'
    [ "$n" != 1 ] || info "event.get: $(jq -c '[.[] | {eventid, value, clock, name, severity, r_eventid, c_eventid, tags}]' <<<"$events")"
    problems=$(api problem.get "$(jq -cn --arg h "$hostid" '{output: "extend", hostids: [$h], recent: true}')")
    check "round $n: problem.get recent:true shows the problem resolved (r_eventid $recovery_id)" \
        jq_ok "$problems" --arg r "$recovery_id" 'length == 1 and .[0].r_eventid == $r and $r != "0"'
    local history
    history=$(api history.get "$(jq -cn --arg i "$itemid" \
        '{output: "extend", history: 3, itemids: [$i], sortfield: "clock", sortorder: "ASC"}')")
    check "round $n: history.get (history 3) returns the sent values 10 then 1" \
        jq_ok "$history" '[.[].value] == ["10", "1"]'
    [ "$n" != 1 ] || info "history.get: $history"
    if [ "$trusted" = yes ] && [ -n "$problem_post" ]; then
        info "event tags from the webhook's answer (process_tags): $(jq -c '[.[0].tags[] | select(.tag | startswith("__vantage"))]' <<<"$events")"
    fi

    # The HTTP agent item that verifies the peer.
    local item i
    for i in $(seq 1 30); do
        item=$(api item.get "$(jq -cn --arg i "$httpitemid" '{output: ["state", "error", "lastvalue", "lastclock"], itemids: [$i]}')")
        if jq -e '.[0].lastvalue != "" or .[0].state == "1"' <<<"$item" >/dev/null; then break; fi
        sleep 1
    done
    if [ "$trusted" = yes ]; then
        check "round $n: HTTP agent item (verify_peer 1) read the listener: server's libcurl trusts the appended CA" \
            jq_ok "$item" --arg v "ok l$n" '.[0].state == "0" and .[0].lastvalue == $v'
    else
        check "round $n: HTTP agent item (verify_peer 1) refused the listener whose CA is not in the bundle" \
            jq_ok "$item" '.[0].state == "1" and (.[0].error | test("certificate|SSL"; "i"))'
    fi
    info "HTTP agent item: $(jq -c '.[0]' <<<"$item")"
}

echo "--- Zabbix $(api apiinfo.version '{}' | jq -r .) up in $START_SECONDS s: API $VANTAGE_TEST_ZABBIX_API_URL, trapper $VANTAGE_TEST_ZABBIX_TRAPPER"
AUTH=$(api user.login '{"username":"Admin","password":"zabbix"}' | jq -r .)
check "user.login as Admin returned a session token" [ -n "$AUTH" ]
ROLE_ID=$(api role.get '{"output":["roleid","name"],"filter":{"name":"Super admin role"}}' | jq -r '.[0].roleid')
USRGRP_ID=$(api usergroup.get '{"output":["usrgrpid","name"],"filter":{"name":"Zabbix administrators"}}' | jq -r '.[0].usrgrpid')
info "Super admin role: $ROLE_ID, Zabbix administrators group: $USRGRP_ID"

UNTRUSTED_WEBHOOK=''
TIMESTAMP_NULL=no
round 1 yes || fail "round 1 stopped early"
round 2 yes || fail "round 2 stopped early"
round 3 no || fail "round 3 stopped early"

echo "--- Summary"
info "Zabbix start (start_zabbix): $START_SECONDS s; whole selftest: $(secs "$T_TOTAL" "$(now)") s"
info "sender -> webhook POST latencies (s): ${LATENCIES[*]:-none}"
info "webhook to a listener whose CA is not in the bundle: ${UNTRUSTED_WEBHOOK:-unknown}"
info "event.timestamp / recovery.timestamp null in the POSTs ({EVENT.TIMESTAMP} unknown to this server): $TIMESTAMP_NULL"
if grep -q 'Vantage webhook\] failed' "$VANTAGE_TEST_ZABBIX_SERVER_LOG"; then
    info "server log has webhook failures:"
    grep 'Vantage webhook\] failed' "$VANTAGE_TEST_ZABBIX_SERVER_LOG" | tail -n 5 | sed 's/^/        /'
fi
echo "$PASSED passed, $FAILED failed"
if [ "$FAILED" = 0 ]; then
    echo "SELFTEST PASSED"
else
    echo "SELFTEST FAILED"
    exit 1
fi
