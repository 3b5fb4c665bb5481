#!/usr/bin/env bash
# Installs what the `qemu` provider and `hal image build` need on a Debian host (as root, or
# with sudo). Idempotent: installs nothing that is already there.
#
#   qemu-system-x86, qemu-utils   the VMs and their qcow2 overlays
#   debootstrap                   the golden image's Debian rootfs
#   busybox-static                the guest initramfs (Debian's kernel has virtio/ext4 as modules)
#   gcc, libc6-dev                the guest's small static exec helper (hal-exec)
#   e2fsprogs, openssh-client     the image's ext4 disk; ssh to the guest over virtio-serial
#
# The guest kernel is not installed on the host: `hal image build` takes the package that
# linux-image-amd64 points at with `apt-get download` and unpacks only what it needs, so apt's
# package lists must exist (an `apt-get update` is run when they do not).
set -euo pipefail

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
for pair in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils debootstrap:debootstrap \
            gcc:gcc mkfs.ext4:e2fsprogs ssh:openssh-client ssh-keygen:openssh-client; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "${pair%%:*}" \
    >/dev/null 2>&1 || need+=("${pair#*:}")
done
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
dpkg -s libc6-dev >/dev/null 2>&1 || need+=(libc6-dev)
updated=""
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup-qemu: apt-get install ${need[*]}"
  $sudo apt-get update -q >/dev/null
  updated=1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    "${need[@]}" >/dev/null
fi
if [ -z "$updated" ] && ! apt-cache depends linux-image-amd64 2>/dev/null | grep -q "Depends: linux-image-[0-9]"; then
  echo "setup-qemu: apt-get update (the image build looks up the kernel package)"
  $sudo apt-get update -q >/dev/null
fi
