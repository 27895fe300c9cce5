#!/usr/bin/env bash
# image/edge/run-qemu.sh — owns booting an edge image under qemu by hand (UEFI, console on
# this terminal; leave with Ctrl-a x). The same machine the boot test (tests/e2e/edge_image.rs)
# uses: TCG, 1 vCPU, 512 MiB, virtio disk/NIC/RNG, user-mode networking (the host's loopback
# is 10.0.2.2 in the guest), a fresh copy of the firmware's variable store.
#
# Usage: image/edge/run-qemu.sh IMAGE [--arch x86_64|aarch64] [--kvm]
# The arch defaults to the one in the image's file name. The image is booted in place (it is
# written to: the state partition keeps the agent's identity).
set -euo pipefail

image=${1:?usage: run-qemu.sh IMAGE [--arch x86_64|aarch64] [--kvm]}
shift
arch="" accel=tcg
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=${2:?}; shift 2 ;;
        # /dev/kvm on the project's build machines is nested and fails: TCG is the default.
        --kvm) accel=kvm; shift ;;
        *) echo "run-qemu.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$arch" ]; then
    case "$image" in
        *-x86_64.img) arch=x86_64 ;;
        *-aarch64.img) arch=aarch64 ;;
        *) echo "run-qemu.sh: cannot tell the arch from $image: pass --arch" >&2; exit 2 ;;
    esac
fi
case "$arch" in
    x86_64)
        qemu=(qemu-system-x86_64 -machine q35)
        code=/usr/share/OVMF/OVMF_CODE_4M.fd vars=/usr/share/OVMF/OVMF_VARS_4M.fd ;;
    aarch64)
        qemu=(qemu-system-aarch64 -machine virt -cpu cortex-a57)
        [ "$accel" = kvm ] && qemu=(qemu-system-aarch64 -machine virt -cpu host)
        code=/usr/share/AAVMF/AAVMF_CODE.fd vars=/usr/share/AAVMF/AAVMF_VARS.fd ;;
    *) echo "run-qemu.sh: --arch must be x86_64 or aarch64" >&2; exit 2 ;;
esac
[ -e "$code" ] || { echo "run-qemu.sh: $code is missing: run image/edge/deps.sh" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$vars" "$work/vars.fd"
"${qemu[@]}" -accel "$accel" -smp 1 -m 512 -nodefaults -display none -no-reboot \
    -drive "if=pflash,format=raw,unit=0,readonly=on,file=$code" \
    -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd" \
    -drive "file=$image,format=raw,if=none,id=disk0" \
    -device virtio-blk-pci,drive=disk0,bootindex=0 \
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0 \
    -device virtio-rng-pci \
    -serial mon:stdio
