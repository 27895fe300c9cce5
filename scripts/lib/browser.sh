# scripts/lib/browser.sh: install (when missing) headless Chromium, Node and the browser-test driver.
#
# Source it, then call `ensure_browser`: it installs Debian's chromium, nodejs, npm and
# fonts-dejavu-core when missing (never a browser download of playwright's own), runs
# `npm ci` in tests/browser when its node_modules is missing or older than package-lock.json,
# and exports VANTAGE_CHROMIUM (the chromium binary) and VANTAGE_BROWSER_DIR (tests/browser,
# absolute). Tests then run `node "$VANTAGE_BROWSER_DIR/run.mjs" steps.json`.

declare -F log >/dev/null || log() { printf '==> %s\n' "$*" >&2; }

VANTAGE_BROWSER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../tests/browser" && pwd)

# apt-get install with one retry of `apt-get update` (a mirror can be mid-sync).
browser_apt_install() {
    log "Installing $* from Debian"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    if ! "${apt[@]}" update -q; then
        log "apt-get update failed; retrying once"
        sleep 5
        "${apt[@]}" update -q
    fi
    "${apt[@]}" install -y -q --no-install-recommends "$@"
}

ensure_browser() {
    local missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    # A Node from elsewhere (with its own npm) counts: Debian's npm would conflict with it.
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    dpkg-query -W -f='${Status}' fonts-dejavu-core 2>/dev/null | grep -q 'install ok installed' ||
        missing+=(fonts-dejavu-core)
    [ ${#missing[@]} -eq 0 ] || browser_apt_install "${missing[@]}"

    local dir=$VANTAGE_BROWSER_DIR
    if [ ! -d "$dir/node_modules/playwright-core" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
        log "Installing the browser-test driver's packages (npm ci in tests/browser, node $(node --version))"
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2)
        touch "$dir/node_modules"
    fi
    export VANTAGE_CHROMIUM=/usr/bin/chromium
    export VANTAGE_BROWSER_DIR
}
