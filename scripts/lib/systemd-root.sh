# scripts/lib/systemd-root.sh: a minimal Debian 12 root with systemd, for testing install.sh's
# systemd path inside systemd-nspawn (systemd is not PID 1 on the test machines).
#
# Source it (after scripts/lib/postgres.sh, for `log` and `apt_install`), then call
# `ensure_systemd_root`: it installs debootstrap and systemd-container when missing, builds
# the root once into ${VANTAGE_CACHE_DIR:-~/.cache/vantage-image}/systemd-root (rebuilt
# whenever it is incomplete) and exports VANTAGE_SYSTEMD_ROOT. Tests boot it with
# `--volatile=overlay`, so it is never modified.

ensure_systemd_root() {
    local missing=() root
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    root=${VANTAGE_CACHE_DIR:-$HOME/.cache/vantage-image}/systemd-root
    if [ ! -f "$root/.complete" ]; then
        log "Building a Debian 12 root with systemd for the install tests (debootstrap)"
        rm -rf "$root"
        mkdir -p "$(dirname "$root")"
        debootstrap --variant=minbase \
            --include=systemd,systemd-sysv,dbus,openssl,ca-certificates,curl,iproute2,procps \
            bookworm "$root" http://deb.debian.org/debian >/dev/null
        touch "$root/.complete"
    fi
    export VANTAGE_SYSTEMD_ROOT=$root
}
