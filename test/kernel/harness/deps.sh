#!/usr/bin/env bash
# Install, through apt, whatever the harness needs and is missing.
#   deps.sh [build|boot|all]   (default all)
# `build`: the kernel build packages and the kernel source; `boot`: QEMU.
# VFIO_IOMMUFD_NO_APT=1: never install; fail listing what is missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

want=()
case "${1:-all}" in
  build) want=(build-essential flex bison bc libelf-dev libssl-dev cpio rsync "$KERNEL_SOURCE_PACKAGE") ;;
  boot) want=(qemu-system-x86) ;;
  all) want=(build-essential flex bison bc libelf-dev libssl-dev cpio rsync "$KERNEL_SOURCE_PACKAGE" qemu-system-x86) ;;
  *) die $EXIT_USAGE "deps.sh: unknown set '$1' (build|boot|all)" ;;
esac

command -v dpkg-query >/dev/null && command -v apt-get >/dev/null \
  || die $EXIT_SETUP "this harness installs with apt/dpkg (Debian, Ubuntu); install ${want[*]} yourself and set VFIO_IOMMUFD_KERNEL"
missing=()
for p in "${want[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done
[ ${#missing[@]} = 0 ] && exit 0

[ "${VFIO_IOMMUFD_NO_APT:-0}" = 1 ] && die $EXIT_SETUP "missing packages: ${missing[*]} (VFIO_IOMMUFD_NO_APT=1, not installing)"
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || die $EXIT_SETUP "missing packages: ${missing[*]}; not root and no sudo"
  sudo=(sudo -n)
fi
log "installing missing packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# apt may be busy (another install, unattended upgrades): wait for its lock up to 10 min.
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
"${sudo[@]}" apt-get "${apt_opts[@]}" update -q </dev/null >&2 || die $EXIT_SETUP "apt-get update failed"
"${sudo[@]}" apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null >&2 \
  || die $EXIT_SETUP "apt-get install ${missing[*]} failed"
log "packages installed"
