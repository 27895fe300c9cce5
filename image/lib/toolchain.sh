# image/lib/toolchain.sh: the cross toolchains for the static agent, installed when missing.
#
# Source it after scripts/lib/postgres.sh (for `log` and `apt_install`). `ensure_toolchain
# ARCH` installs what ARCH needs from Debian (nothing for x86_64, which uses rustup's std);
# `agent_build ARCH TARGET_ROOT` builds a static, stripped agent with the `agent-release`
# profile and prints the binary's path. Routes (DESIGN.md "Cross-compiling"):
#   x86_64   rustup's std, +crt-static, non-PIE (static-pie's relocations cost ~250 KB;
#            the aarch64 and armv7 routes are non-PIE too)
#   aarch64  Debian's rustc-web with libstd-rust-web-dev:arm64 and gcc-aarch64-linux-gnu
#   armv7    Debian's rustc-web with rust-web-src, -Zbuild-std (the armhf std package does
#            not match rustc-web), gcc-arm-linux-gnueabihf

triple_of() {
    case $1 in
        x86_64) echo x86_64-unknown-linux-gnu ;;
        aarch64) echo aarch64-unknown-linux-gnu ;;
        armv7) echo armv7-unknown-linux-gnueabihf ;;
        *) echo "unknown arch $1 (x86_64, aarch64, armv7)" >&2; return 2 ;;
    esac
}

# The qemu-user runner for ARCH's binaries on this host (empty when they run natively).
runner_of() {
    case $1 in
        x86_64) echo "" ;;
        aarch64) echo qemu-aarch64-static ;;
        armv7) echo qemu-arm-static ;;
    esac
}

ensure_toolchain() {
    local arch=$1 missing=()
    case $arch in
        x86_64) return 0 ;;
        aarch64)
            if ! dpkg --print-foreign-architectures | grep -qx arm64; then
                log "Adding the arm64 package architecture"
                dpkg --add-architecture arm64
            fi
            for pkg in rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu \
                libc6-dev-arm64-cross qemu-user-static; do
                dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
            done
            ;;
        armv7)
            for pkg in rustc-web rust-web-src gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
                qemu-user-static; do
                dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
            done
            ;;
    esac
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# Builds the agent for ARCH under TARGET_ROOT; prints the binary path on stdout.
agent_build() {
    local arch=$1 target_root=$2 triple
    triple=$(triple_of "$arch")
    local -a env_vars=(RUSTFLAGS="-C target-feature=+crt-static")
    local -a extra=()
    local target_dir=$target_root/rustup
    case $arch in
        x86_64)
            env_vars=(RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static")
            ;;
        aarch64)
            target_dir=$target_root/debian
            env_vars+=(RUSTC=/usr/bin/rustc
                CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
                CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
                AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar)
            ;;
        armv7)
            target_dir=$target_root/debian
            env_vars+=(RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
                CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
                CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
                AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar)
            extra=(-Zbuild-std=std,panic_abort)
            ;;
    esac
    env "${env_vars[@]}" cargo build --locked --profile agent-release -p vantage-agent \
        --target "$triple" --target-dir "$target_dir" "${extra[@]}" >&2
    echo "$target_dir/$triple/agent-release/vantage-agent"
}
