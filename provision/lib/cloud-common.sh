# provision/lib/cloud-common.sh: shared helpers for provision/cloud. Owns error reporting
# (with every API token scrubbed), loading the token, the dependency and API-URL checks,
# the private work directory, table output, and api_request: the one function that talks
# HTTP and the only place the API token is used. Sourced by provision/cloud, never run on
# its own.
# shellcheck shell=bash
# shellcheck disable=SC2034 # the globals here are shared with provision/cloud and the adapters

PROG=${PROG:-provision/cloud}
USER_AGENT="vantage-provision-cloud/1"
# The bounds on every loop that follows a provider's pagination.
MAX_PAGES=1000

# Set by the provider adapter (provision/lib/cloud-<provider>.sh).
PROVIDER=""
PROVIDER_NAME=""
TOKEN_VAR=""
BASE_URL=""
ERROR_JQ=""

# The API token: read from the environment once, never exported to a child process, never
# printed. SCRUB holds every token value found in the environment so that no message can
# echo one back, even before the provider is known.
TOKEN=""
SCRUB=()

DRY_RUN=0
WORK=""
HTTP_STATUS=""
# Appended to a fatal error (e.g. which instances a failed create already made).
ON_FAIL_HINT=""

# scrub TEXT: TEXT with every known token value replaced by <redacted>.
scrub() {
    local text=$1 secret
    for secret in "${SCRUB[@]+"${SCRUB[@]}"}"; do
        text=${text//"$secret"/<redacted>}
    done
    printf '%s' "$text"
}

# die MESSAGE: a runtime failure (exit 1).
die() {
    local msg="$PROG: error: $*"
    if [ -n "$ON_FAIL_HINT" ]; then
        msg+=$'\n'"$PROG: $ON_FAIL_HINT"
    fi
    printf '%s\n' "$(scrub "$msg")" >&2
    exit 1
}

# usage_error MESSAGE: bad invocation or input, detected before anything is sent (exit 2).
usage_error() {
    printf '%s: %s\n' "$PROG" "$(scrub "$*")" >&2
    printf "Run '%s --help' for usage.\n" "$PROG" >&2
    exit 2
}

note() {
    printf '%s\n' "$(scrub "$*")" >&2
}

# collect_secrets: remember every provider token in the environment (for scrub) and stop
# exporting them, so that no child process (curl, jq) inherits one in its environment.
collect_secrets() {
    local var value
    for var in VULTR_API_KEY DIGITALOCEAN_TOKEN HCLOUD_TOKEN; do
        value=${!var-}
        # (A value this short is no real token; scrubbing it would garble every message.)
        if [ "${#value}" -ge 6 ]; then
            SCRUB+=("$value")
        fi
        export -n "${var?}" 2>/dev/null || true
    done
}

# load_token: the provider's token from its environment variable. Under --dry-run a missing
# token is fine: nothing is sent and the header is printed redacted anyway.
load_token() {
    TOKEN=${!TOKEN_VAR-}
    if [ -z "$TOKEN" ]; then
        if [ "$DRY_RUN" = 1 ]; then
            return 0
        fi
        usage_error "$TOKEN_VAR is not set: export your $PROVIDER_NAME API token in $TOKEN_VAR (tokens are read only from the environment, never from the command line)"
    fi
    # The token goes into a curl config line between double quotes; refuse anything that
    # could break out of it. Real provider tokens are letters, digits and a few symbols.
    if ! [[ $TOKEN =~ ^[A-Za-z0-9._~+/=:-]+$ ]]; then
        usage_error "$TOKEN_VAR holds characters that no $PROVIDER_NAME token has (quotes, spaces, backslashes or control characters); check its value"
    fi
}

# require_commands CMD...: fail up front, with the Debian package to install, when a tool
# the script needs is missing.
require_commands() {
    local missing=() packages=() cmd pkg
    for cmd in "$@"; do
        if ! command -v "$cmd" >/dev/null 2>&1; then
            missing+=("$cmd")
            case $cmd in
                curl) pkg=curl ;;
                jq) pkg=jq ;;
                cmp) pkg=diffutils ;;
                *) pkg=coreutils ;;
            esac
            packages+=("$pkg")
        fi
    done
    if [ ${#missing[@]} -ne 0 ]; then
        printf '%s: error: missing required command(s): %s (on Debian: apt-get install %s)\n' \
            "$PROG" "${missing[*]}" "${packages[*]}" >&2
        exit 1
    fi
}

# make_workdir: a private (0700) directory for request bodies and responses, removed on exit.
make_workdir() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/vantage-cloud.XXXXXXXX") ||
        die "cannot create a temporary directory under ${TMPDIR:-/tmp}"
    chmod 700 "$WORK"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

cleanup() {
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        rm -rf -- "$WORK"
    fi
}

# check_base_url URL: https, or plain http only to a loopback address (the test fakes), so
# that the token never crosses a network in clear text.
check_base_url() {
    local url=$1
    if [[ $url =~ ^https://[A-Za-z0-9.:-]+(/[A-Za-z0-9._~/-]*)?$ ]]; then
        return 0
    fi
    if [[ $url =~ ^http://(127\.[0-9]+\.[0-9]+\.[0-9]+|localhost|\[::1\])(:[0-9]+)?(/[A-Za-z0-9._~/-]*)?$ ]]; then
        return 0
    fi
    usage_error "the $PROVIDER_NAME API URL must be https:// (plain http:// only to a loopback address): $url"
}

# uri TEXT: TEXT percent-encoded for a query string.
uri() {
    jq -rn --arg v "$1" '$v | @uri'
}

# api_request METHOD URL [BODY_FILE]
# Sends one request with the bearer token, or only prints it under --dry-run. Leaves the
# HTTP status in HTTP_STATUS and the body in "$WORK/response"; any answer other than 2xx is
# fatal and reported with the status and the provider's own error message. The token
# reaches curl only through a config read from curl's standard input (a pipe from the
# printf builtin), never through an argument; no message here can contain it.
api_request() {
    local method=$1 url=$2 body=${3:-}
    if [ "$DRY_RUN" = 1 ]; then
        print_request "$method" "$url" "$body"
        HTTP_STATUS=""
        return 0
    fi
    local args=(
        --silent --show-error
        --proto '=https,http'
        --connect-timeout 10 --max-time 120
        --request "$method"
        --output "$WORK/response"
        --write-out '%{http_code}'
        --header 'Accept: application/json'
        --header "User-Agent: $USER_AGENT"
        --header 'Expect:'
        --config -
    )
    if [ -n "$body" ]; then
        args+=(--header 'Content-Type: application/json' --data-binary "@$body")
    fi
    : >"$WORK/response"
    local rc=0
    HTTP_STATUS=$(printf 'header = "Authorization: Bearer %s"\n' "$TOKEN" |
        curl "${args[@]}" --url "$url" 2>"$WORK/curl-stderr") || rc=$?
    if [ "$rc" -ne 0 ]; then
        die "cannot reach the $PROVIDER_NAME API ($method $url): $(printable <"$WORK/curl-stderr" | head -c 300)"
    fi
    case $HTTP_STATUS in
        2??) return 0 ;;
    esac
    die "$PROVIDER_NAME API refused $method $url: HTTP $HTTP_STATUS: $(error_message)"
}

# error_message: the provider's error message from "$WORK/response", or the start of the
# body when it is not the provider's JSON error shape.
error_message() {
    local msg=""
    if [ -s "$WORK/response" ]; then
        msg=$(jq -r "$ERROR_JQ" "$WORK/response" 2>/dev/null || true)
        if [ -z "$msg" ]; then
            msg=$(head -c 300 "$WORK/response")
        fi
    fi
    msg=$(printf '%s' "$msg" | printable | head -c 500)
    if [ -z "$msg" ]; then
        msg="(no error message in the response)"
    fi
    printf '%s' "$msg"
}

# printable: stdin with control characters turned into spaces (no terminal escapes from a
# provider's answer reach the user's terminal).
printable() {
    tr '\000-\037\177' ' '
}

# response_json: fail unless "$WORK/response" is JSON.
response_json() {
    jq -e . "$WORK/response" >/dev/null 2>&1 ||
        die "$PROVIDER_NAME API answered HTTP $HTTP_STATUS with something that is not JSON: $(head -c 200 "$WORK/response" | printable)"
}

# print_request METHOD URL [BODY_FILE]: the request as it would be sent, token redacted.
print_request() {
    local method=$1 url=$2 body=$3
    printf '%s %s\n' "$method" "$url"
    printf 'Authorization: Bearer <redacted>\n'
    printf 'Accept: application/json\n'
    printf 'User-Agent: %s\n' "$USER_AGENT"
    if [ -n "$body" ]; then
        printf 'Content-Type: application/json\n\n'
        # user_data carries the enrollment token (vantage cloud-init): never printed.
        jq '(.. | objects | select(has("user_data")) | .user_data) |= "<redacted: \(length) characters of user-data>"' "$body"
    fi
    printf '\n'
}

# print_table FILE: tab-separated rows (the first one the header) as aligned columns.
print_table() {
    local file=$1 line i out cell
    local -a widths=() fields=()
    while IFS= read -r line; do
        IFS=$'\t' read -r -a fields <<<"$line"
        for i in "${!fields[@]}"; do
            if [ "${#fields[i]}" -gt "${widths[i]:-0}" ]; then
                widths[i]=${#fields[i]}
            fi
        done
    done <"$file"
    while IFS= read -r line; do
        IFS=$'\t' read -r -a fields <<<"$line"
        out=""
        for i in "${!fields[@]}"; do
            printf -v cell '%-*s' "${widths[i]}" "${fields[i]}"
            out+="$cell  "
        done
        out=${out%"${out##*[! ]}"}
        printf '%s\n' "$out"
    done <"$file"
}

# random_suffix: six hex digits for instance names (providers want unique names).
random_suffix() {
    od -An -N3 -tx1 /dev/urandom | tr -d ' \n'
}

# jq definitions for table rows: `[...] | cells` gives one tab-separated line, "-" for an
# empty field, no tabs or newlines inside a field.
JQ_CELLS='def cells: map(if . == null or . == "" then "-" else (tostring | gsub("[\t\n\r]"; " ")) end) | @tsv;'
