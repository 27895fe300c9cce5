#!/bin/sh
# install.sh: verify, install, enroll and start the Vantage agent on one Linux node; or remove it.
#
# Usage:
#   install.sh --artifacts DIR|URL --server-url URL [--ca-file FILE] [--pubkey FILE]
#              [--token-file FILE] [--labels k=v,k=v] [--arch ARCH] [--no-start]
#   install.sh --uninstall [--purge]
#
# Nothing is installed before the signature checks out: the script fetches SHA256SUMS,
# SHA256SUMS.sig and this node's tarball from --artifacts (a directory, or an https URL such
# as the control plane's /dist), checks the ed25519 signature over SHA256SUMS with the release
# public key (--pubkey, else the key built into this script), checks the tarball's SHA-256,
# and only then installs:
#   /usr/local/bin/vantage-agent       the static binary
#   /etc/vantage/agent.toml, ca.pem    config (0640 root:vantage-agent) and the pinned CA
#   /var/lib/vantage-agent             identity and spool (the service user's state dir)
#   vantage-agent.service              under systemd; /etc/init.d/vantage-agent otherwise
# The enrollment token comes from VANTAGE_ENROLLMENT_TOKEN or --token-file, never from the
# command line (it would show in the process list), and is removed from the config once the
# agent has enrolled. Running it again is safe: an enrolled node keeps its identity and needs
# no token. Needs: sh, tar, gzip, sha256sum, openssl >= 3.0 (ed25519), curl for https URLs,
# useradd or adduser.
set -eu
# Files holding the token are private from the moment they exist; modes are set explicitly.
umask 077

PUBKEY_PEM='@RELEASE_PUBKEY@'
PREFIX=/usr/local/bin
CONF_DIR=/etc/vantage
STATE_DIR=/var/lib/vantage-agent
SERVICE_USER=vantage-agent
UNIT=/etc/systemd/system/vantage-agent.service
INITD=/etc/init.d/vantage-agent

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*" >&2; }

artifacts='' server_url='' ca_file='' pubkey='' token_file='' labels='' arch='' start=1
uninstall=0 purge=0
while [ $# -gt 0 ]; do
    case $1 in
        --artifacts) artifacts=${2:?--artifacts needs a value}; shift 2 ;;
        --server-url) server_url=${2:?--server-url needs a value}; shift 2 ;;
        --ca-file) ca_file=${2:?--ca-file needs a value}; shift 2 ;;
        --pubkey) pubkey=${2:?--pubkey needs a value}; shift 2 ;;
        --token-file) token_file=${2:?--token-file needs a value}; shift 2 ;;
        --labels) labels=${2:?--labels needs a value}; shift 2 ;;
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --no-start) start=0; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        --token|--token=*) die "the token is not taken on the command line: set VANTAGE_ENROLLMENT_TOKEN or use --token-file" ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run as root"
have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

stop_service() {
    if have_systemd && [ -f "$UNIT" ]; then
        systemctl stop vantage-agent 2>/dev/null || true
    fi
    if [ -x "$INITD" ]; then
        "$INITD" stop >/dev/null 2>&1 || true
    fi
}

if [ "$uninstall" = 1 ]; then
    stop_service
    if have_systemd && [ -f "$UNIT" ]; then
        systemctl disable vantage-agent 2>/dev/null || true
    fi
    if [ -e "$INITD" ] && command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d -f vantage-agent remove >/dev/null 2>&1 || true
    fi
    rm -f "$UNIT" "$INITD" "$PREFIX/vantage-agent" /run/vantage-agent.pid /var/log/vantage-agent.log
    have_systemd && systemctl daemon-reload 2>/dev/null || true
    rm -rf "$CONF_DIR"
    if [ "$purge" = 1 ]; then
        rm -rf "$STATE_DIR"
        if id "$SERVICE_USER" >/dev/null 2>&1; then
            userdel "$SERVICE_USER" 2>/dev/null || deluser "$SERVICE_USER" 2>/dev/null || true
        fi
        say "removed the agent, its config, its state and its user"
    else
        say "removed the agent and its config; kept its identity in $STATE_DIR (--purge removes it)"
    fi
    exit 0
fi

[ -n "$artifacts" ] || die "--artifacts DIR|URL is required"
[ -n "$server_url" ] || die "--server-url is required"
case $server_url in https://*) ;; *) die "--server-url must be an https:// URL" ;; esac
case $server_url in
    *[!]A-Za-z0-9.:/_[-]*) die "--server-url may hold only a host, a port and a path" ;;
esac
[ -z "$ca_file" ] || [ -r "$ca_file" ] || die "cannot read the CA file $ca_file"
[ -n "$ca_file" ] || [ -f "$CONF_DIR/ca.pem" ] \
    || die "no CA to pin: pass --ca-file (the control plane's ca.pem)"
# Labels: k=v pairs, keys as the API allows them, values without quotes or backslashes.
if [ -n "$labels" ]; then
    set -f
    for pair in $(printf '%s' "$labels" | tr ',' ' '); do
        case $pair in
            *=*) ;;
            *) die "label $pair is not key=value" ;;
        esac
        case ${pair%%=*} in
            ''|*[!a-z0-9._-]*) die "label key ${pair%%=*} may hold only a-z 0-9 . _ -" ;;
        esac
        case ${pair#*=} in
            *[\"\\]*) die "label value of ${pair%%=*} may not hold quotes or backslashes" ;;
        esac
    done
    set +f
fi

# --- architecture -------------------------------------------------------------------------
host_arch() {
    case $(uname -m) in
        x86_64|amd64) echo x86_64 ;;
        aarch64|arm64|armv8*) echo aarch64 ;;
        armv7*|armhf) echo armv7 ;;
        *) echo "unsupported:$(uname -m)" ;;
    esac
}
this_arch=$(host_arch)
case $this_arch in
    unsupported:*) die "unsupported architecture ${this_arch#unsupported:} (supported: x86_64, aarch64, armv7)" ;;
esac
if [ -z "$arch" ]; then
    arch=$this_arch
elif [ "$arch" != "$this_arch" ]; then
    die "wrong architecture: this node is $this_arch, --arch asks for $arch"
fi

# --- fetch and verify, before anything is installed ---------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch() { # NAME -> $work/NAME
    case $artifacts in
        https://*)
            command -v curl >/dev/null 2>&1 || die "curl is needed to fetch from $artifacts"
            if [ -n "$ca_file" ]; then
                curl -fsS --proto =https --cacert "$ca_file" -o "$work/$1" "$artifacts/$1" \
                    || die "cannot fetch $artifacts/$1"
            else
                curl -fsS --proto =https -o "$work/$1" "$artifacts/$1" || die "cannot fetch $artifacts/$1"
            fi
            ;;
        http://*) die "refusing plain-http artifacts $artifacts: use https or a directory" ;;
        *) [ -f "$artifacts/$1" ] || die "missing $artifacts/$1"; cp "$artifacts/$1" "$work/$1" ;;
    esac
}
command -v openssl >/dev/null 2>&1 || die "openssl (>= 3.0, for ed25519) is needed to verify the release"
case $(openssl version 2>/dev/null) in
    "OpenSSL "[3-9].*|"OpenSSL "[1-9][0-9].*) ;;
    *) die "openssl 3.0 or newer is needed to verify the release's ed25519 signature (found: $(openssl version 2>/dev/null))" ;;
esac
fetch SHA256SUMS
fetch SHA256SUMS.sig
if [ -n "$pubkey" ]; then
    [ -r "$pubkey" ] || die "cannot read the public key $pubkey"
    cp "$pubkey" "$work/release.pub"
else
    case $PUBKEY_PEM in *BEGIN*) ;; *) die "this install.sh has no built-in release key: pass --pubkey" ;; esac
    printf '%s\n' "$PUBKEY_PEM" >"$work/release.pub"
fi
openssl pkeyutl -verify -pubin -inkey "$work/release.pub" -rawin -in "$work/SHA256SUMS" \
    -sigfile "$work/SHA256SUMS.sig" >/dev/null 2>&1 \
    || die "bad signature: SHA256SUMS is not signed by the release key; nothing was installed"
tarball=$(awk -v a="$arch" '$2 ~ "^vantage-agent-.*-" a "-linux\\.tar\\.gz$" { print $2 }' "$work/SHA256SUMS" | tail -n1)
[ -n "$tarball" ] || die "the release has no agent for $arch"
fetch "$tarball"
# Compared by hand rather than `sha256sum -c`, whose flags differ between GNU and busybox.
want=$(awk -v f="$tarball" '$2 == f { print $1 }' "$work/SHA256SUMS")
have=$(sha256sum "$work/$tarball" | awk '{ print $1 }')
[ -n "$want" ] && [ "$want" = "$have" ] || die "checksum mismatch for $tarball; nothing was installed"
mkdir "$work/x"
tar -xzf "$work/$tarball" -C "$work/x"
pkg=$(find "$work/x" -mindepth 1 -maxdepth 1 -type d | head -n1)
[ -x "$pkg/vantage-agent" ] || die "$tarball holds no vantage-agent binary"
say "verified $tarball"

# --- token ----------------------------------------------------------------------------------
token=${VANTAGE_ENROLLMENT_TOKEN:-}
if [ -n "$token_file" ]; then
    [ -r "$token_file" ] || die "cannot read the token file $token_file"
    token=$(sed -n 's/^VANTAGE_ENROLLMENT_TOKEN=//p; /=/!p' "$token_file" | head -n1 | tr -d ' \r\n')
fi
enrolled=0
[ -f "$STATE_DIR/identity.json" ] && enrolled=1
[ "$enrolled" = 1 ] || [ -n "$token" ] \
    || die "not enrolled yet and no token: set VANTAGE_ENROLLMENT_TOKEN or pass --token-file"

# --- user, binary, config -----------------------------------------------------------------
created_user=0
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    created_user=1
    if command -v useradd >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$SERVICE_USER" 2>/dev/null \
            || useradd --system --no-create-home --home-dir "$STATE_DIR" --shell /bin/false "$SERVICE_USER"
    elif command -v adduser >/dev/null 2>&1; then
        # busybox: a group of its own, or the user would land in nogroup.
        addgroup -S "$SERVICE_USER" 2>/dev/null || true
        adduser -S -D -H -G "$SERVICE_USER" -h "$STATE_DIR" -s /bin/false "$SERVICE_USER"
    else
        die "neither useradd nor adduser exists to create the $SERVICE_USER user"
    fi
fi
group=$(id -gn "$SERVICE_USER")
fresh=1
[ -e "$PREFIX/vantage-agent" ] && fresh=0
stop_service
mkdir -p "$PREFIX" "$CONF_DIR" "$STATE_DIR"
chmod 0755 "$CONF_DIR"
install -m 0755 "$pkg/vantage-agent" "$PREFIX/vantage-agent.new"
mv -f "$PREFIX/vantage-agent.new" "$PREFIX/vantage-agent"
chown "$SERVICE_USER:$group" "$STATE_DIR"
chmod 0700 "$STATE_DIR"
if [ -n "$ca_file" ]; then
    install -m 0644 "$ca_file" "$CONF_DIR/ca.pem.new" && mv -f "$CONF_DIR/ca.pem.new" "$CONF_DIR/ca.pem"
fi
[ -f "$CONF_DIR/ca.pem" ] || die "no CA to pin: pass --ca-file (the control plane's ca.pem)"

write_config() { # with or without the token line
    {
        echo "# Vantage agent config, written by install.sh; keys in the agent's docs."
        echo "server_url = \"$server_url\""
        echo "ca_file = \"$CONF_DIR/ca.pem\""
        echo "state_dir = \"$STATE_DIR\""
        [ -z "$1" ] || printf 'enrollment_token = "%s"\n' "$1"
        if [ -n "$labels" ]; then
            echo "[labels]"
            printf '%s\n' "$labels" | tr ',' '\n' | while IFS='=' read -r key value; do
                [ -n "$key" ] || continue
                printf '%s = "%s"\n' "$key" "$value"
            done
        fi
    } >"$CONF_DIR/agent.toml.new"
    chown "root:$group" "$CONF_DIR/agent.toml.new"
    chmod 0640 "$CONF_DIR/agent.toml.new"
    mv -f "$CONF_DIR/agent.toml.new" "$CONF_DIR/agent.toml"
}

# util-linux setpriv (busybox's applet cannot change user).
full_setpriv() { setpriv --version 2>/dev/null | grep -q util-linux; }

as_service_user() {
    if full_setpriv; then
        setpriv --reuid "$SERVICE_USER" --regid "$group" --clear-groups "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$SERVICE_USER" -- "$@"
    else
        su -s /bin/sh "$SERVICE_USER" -c "$*"
    fi
}

if [ "$enrolled" = 0 ]; then
    write_config "$token"
    say "enrolling with $server_url"
    if ! out=$(as_service_user "$PREFIX/vantage-agent" --config "$CONF_DIR/agent.toml" enroll 2>"$work/enroll.err"); then
        out=$(grep -v ' INFO ' "$work/enroll.err" | tail -n 5)
        if [ "$fresh" = 1 ]; then
            # Leave a node that was not installed before as it was.
            rm -rf "$PREFIX/vantage-agent" "$CONF_DIR" "$STATE_DIR"
            if [ "$created_user" = 1 ]; then
                userdel "$SERVICE_USER" 2>/dev/null || deluser "$SERVICE_USER" 2>/dev/null || true
            fi
        else
            write_config ""
        fi
        die "enrollment failed, nothing was started: $out"
    fi
    say "enrolled as agent $out"
fi
write_config ""

# --- service --------------------------------------------------------------------------------
if have_systemd; then
    install -m 0644 "$pkg/vantage-agent.service" "$UNIT"
    systemctl daemon-reload
    if [ "$start" = 1 ]; then
        systemctl enable vantage-agent >/dev/null 2>&1
        systemctl restart vantage-agent
        say "started vantage-agent.service"
    fi
else
    install -m 0755 "$pkg/vantage-agent.init" "$INITD"
    # sysvinit registers it; elsewhere (busybox init, OpenRC's local.d) start it from the
    # boot scripts, as image/README.md says.
    if command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d vantage-agent defaults >/dev/null 2>&1 || true
    fi
    if [ "$start" = 1 ]; then
        "$INITD" restart
        say "started $INITD (no systemd on this node)"
    fi
fi
say "done: vantage-agent $("$PREFIX/vantage-agent" --version | awk '{print $2}') for $arch"
