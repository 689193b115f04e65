#!/usr/bin/env bash
# Prints the path of drivers/vfio/vfio_main.c of Debian's linux-source-6.12, extracted once into
# a cache outside the repo (the state-machine test reads vfio_mig_get_next_state from it; kernel
# source is never committed). Installs the package as test/uapi/kernel-headers.sh does.
#   VFIO_IOMMUFD_HEADERS_CACHE  cache root (default ~/.cache/vfio-iommufd/headers)
set -euo pipefail
cache=${VFIO_IOMMUFD_HEADERS_CACHE:-$HOME/.cache/vfio-iommufd/headers}
tarball=/usr/src/linux-source-6.12.tar.xz
if [[ ! -f $tarball ]]; then
  if [[ ${CI:-} == true || ${VFIO_IOMMUFD_INSTALL:-} == 1 ]]; then
    echo "kernel-source: installing linux-source-6.12" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 && apt-get install -y -q --no-install-recommends linux-source-6.12 xz-utils >&2
  else
    echo "kernel-source: $tarball is missing; run: apt-get install linux-source-6.12 (or set VFIO_IOMMUFD_INSTALL=1)" >&2
    exit 2
  fi
fi
version=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || stat -c %Y "$tarball")
file=$cache/$version-source/drivers/vfio/vfio_main.c
if [[ ! -f $file ]]; then
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/.source.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  tar -xJf "$tarball" -C "$work" linux-source-6.12/drivers/vfio/vfio_main.c
  mkdir -p "$(dirname "$file")"
  mv "$work/linux-source-6.12/drivers/vfio/vfio_main.c" "$file"
fi
echo "$file"
