# scripts/lib/schemathesis.sh: install schemathesis (the OpenAPI fuzzer scripts/schemathesis runs).
#
# Source it (after scripts/lib/postgres.sh, which defines `log` and `apt_install`), then call
# `install_schemathesis`: it exports VANTAGE_SCHEMATHESIS, the path of the `schemathesis`
# SCHEMATHESIS_VERSION command (the same CLI as `st`), installed from PyPI in a venv under
# VANTAGE_TOOLS_DIR (default ~/.cache/vantage-tools). Debian's Python refuses `pip install`
# outside a venv, so the venv comes from Debian's python3-venv.

SCHEMATHESIS_VERSION=4.32.5

install_schemathesis() {
    local dir="${VANTAGE_TOOLS_DIR:-$HOME/.cache/vantage-tools}/schemathesis-$SCHEMATHESIS_VERSION"
    local bin="$dir/bin/schemathesis"
    if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
        if ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
            apt_install python3-venv
        fi
        log "Installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $dir"
        rm -rf "$dir"
        /usr/bin/python3 -m venv "$dir"
        "$dir/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    fi
    "$bin" --version >&2
    export VANTAGE_SCHEMATHESIS="$bin"
}
