#!/usr/bin/env bash
# Installs the Linux 6.12 uAPI headers (Debian's linux-source-6.12, `make headers_install`) into
# a cache outside the repo and prints the include directory. Idempotent: a second run only prints.
#   VFIO_IOMMUFD_HEADERS_CACHE  cache root (default ~/.cache/vfio-iommufd/headers)
#   CI=true or VFIO_IOMMUFD_INSTALL=1  may apt-get install linux-source-6.12 when it is missing
set -euo pipefail
cache=${VFIO_IOMMUFD_HEADERS_CACHE:-$HOME/.cache/vfio-iommufd/headers}
tarball=/usr/src/linux-source-6.12.tar.xz
if [[ ! -f $tarball ]]; then
  if [[ ${CI:-} == true || ${VFIO_IOMMUFD_INSTALL:-} == 1 ]]; then
    echo "kernel-headers: installing linux-source-6.12 and build tools" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 && apt-get install -y -q --no-install-recommends linux-source-6.12 xz-utils make gcc rsync >&2
  else
    echo "kernel-headers: $tarball is missing; run: apt-get install linux-source-6.12 (or set VFIO_IOMMUFD_INSTALL=1)" >&2
    exit 2
  fi
fi
version=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || stat -c %Y "$tarball")
dest=$cache/$version
if [[ ! -f $dest/.complete ]]; then
  echo "kernel-headers: make headers_install for linux-source-6.12 $version into $dest" >&2
  work=$(mktemp -d "$cache.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$cache"; mktemp -d "$cache/../headers.tmp.XXXXXX"; })
  trap 'rm -rf "$work"' EXIT
  tar -xJf "$tarball" -C "$work"
  make -s -C "$work/linux-source-6.12" headers_install INSTALL_HDR_PATH="$work/out" ARCH=x86_64 >&2
  # iommufd_test.h is not a uAPI header; the harness and the conformance test need it too.
  cp "$work/linux-source-6.12/drivers/iommu/iommufd/iommufd_test.h" "$work/out/include/linux/iommufd_test.h"
  mkdir -p "$cache"
  rm -rf "$dest"
  mv "$work/out" "$dest"
  touch "$dest/.complete"
fi
echo "$dest/include"
