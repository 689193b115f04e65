#!/usr/bin/env bash
# Build (once) the guest kernel and the kernel's iommufd selftests into the cache; print the
# cache entry's path on stdout.
#
# Cache entry: $VFIO_IOMMUFD_KERNEL_CACHE/<key>/ with bzImage, config, selftests/{iommufd,iommufd_fail_nth},
# build-info. <key> = sha256 of (the resulting .config, the kernel source package and version,
# the selftest compat header, the cache format). The entry is assembled in a staging dir and
# renamed into place, so an interrupted build is never taken as cached; the object dir
# (.work-<key>) survives an interruption so a rerun continues where it stopped.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

"$HARNESS_DIR/deps.sh" build
ver=$(source_version)
[ -n "$ver" ] || die $EXIT_SETUP "$KERNEL_SOURCE_PACKAGE is not installed"
tarball=$(dpkg -L "$KERNEL_SOURCE_PACKAGE" | grep -E '/usr/src/.*\.tar\.(xz|bz2|gz)$' | head -n1)
[ -f "$tarball" ] || die $EXIT_SETUP "no source tarball in $KERNEL_SOURCE_PACKAGE"
mkdir -p "$CACHE_ROOT/src" "$CACHE_ROOT/.tmp"

# 1. Pristine source tree, unpacked once per package version (never built in: builds use O=).
srcroot=$CACHE_ROOT/src/$KERNEL_SOURCE_PACKAGE-$ver
if [ ! -d "$srcroot" ]; then
  exec 8>"$CACHE_ROOT/.lock-src"; flock 8
  if [ ! -d "$srcroot" ]; then
    stage=$(mktemp -d "$CACHE_ROOT/src/.unpack-XXXXXX")
    run_logged "$stage.log" "unpacking $(basename "$tarball") ($ver)" tar -C "$stage" -xf "$tarball" || die $EXIT_SETUP "unpack failed"
    mv "$stage" "$srcroot"; rm -f "$stage.log"
  fi
  exec 8>&-
fi
src=$(find "$srcroot" -mindepth 1 -maxdepth 1 -type d | head -n1)
[ -f "$src/Makefile" ] || die $EXIT_SETUP "no kernel source in $srcroot"

# 2. Configure in a scratch dir and derive the key from the result.
cfgdir=$(mktemp -d "$CACHE_ROOT/.tmp/config-XXXXXX")
trap 'rm -rf "$cfgdir"' EXIT
"$HARNESS_DIR/kernel-config.sh" "$src" "$cfgdir" || die $EXIT_SETUP "kernel configuration failed"
key=$( { echo "format=$HARNESS_CACHE_FORMAT"; echo "package=$KERNEL_SOURCE_PACKAGE version=$ver";
         echo "--- .config"; cat "$cfgdir/.config"; echo "--- compat header"; cat "$COMPAT_HEADER"; } \
       | sha256sum | cut -c1-16)
entry=$CACHE_ROOT/$key
if [ -f "$entry/bzImage" ]; then
  log "kernel cached: $entry"
  echo "$entry"; exit 0
fi

exec 9>"$CACHE_ROOT/.lock-$key"
if ! flock -n 9; then log "another build of $key is running; waiting for it"; flock 9; fi
if [ -f "$entry/bzImage" ]; then log "kernel cached: $entry"; echo "$entry"; exit 0; fi

# 3. Build. The object dir is keyed too; make is incremental, so a rerun resumes.
work=$CACHE_ROOT/.work-$key
mkdir -p "$work"
obj=$work/obj
mkdir -p "$obj"
if ! cmp -s "$cfgdir/.config" "$obj/.config"; then cp "$cfgdir/.config" "$obj/.config"; fi
log "building kernel $KERNEL_SOURCE_PACKAGE $ver (key $key) with -j$JOBS in $work; ~18 min on 2 cores, once per machine; log: $work/build-kernel.log"
t=$(date +%s)
run_logged "$work/build-kernel.log" "kernel build" make -C "$src" O="$obj" -j"$JOBS" bzImage \
  || die $EXIT_SETUP "kernel build failed; see $work/build-kernel.log"
kernel_s=$(( $(date +%s) - t ))

# 4. The kernel's own iommufd selftests, against this tree's uapi headers, with the compat header
#    (the Debian 6.12 tree carries selftest sources backported from >= 6.15).
t=$(date +%s)
stdir=$work/selftests
mkdir -p "$stdir"
run_logged "$work/build-selftest.log" "iommufd selftest build" bash -c '
  set -e
  make -C "$1" O="$2" headers_install
  make -C "$1/tools/testing/selftests/iommu" OUTPUT="$3" KHDR_INCLUDES="-isystem $2/usr/include" \
       USERCFLAGS="-include $4" -j"$5"' _ "$src" "$obj" "$stdir" "$COMPAT_HEADER" "$JOBS" \
  || die $EXIT_SETUP "selftest build failed; see $work/build-selftest.log"
selftest_s=$(( $(date +%s) - t ))
for b in iommufd iommufd_fail_nth; do [ -x "$stdir/$b" ] || die $EXIT_SETUP "selftest build produced no $b"; done

# 5. Assemble the entry and rename it into place.
stage=$(mktemp -d "$CACHE_ROOT/.tmp/entry-$key-XXXXXX")
mkdir -p "$stage/selftests"
cp "$obj/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$obj/.config" "$stage/config"
cp "$stdir/iommufd" "$stdir/iommufd_fail_nth" "$stage/selftests/"
cp "$COMPAT_HEADER" "$work/build-kernel.log" "$work/build-selftest.log" "$stage/"
cat > "$stage/build-info" <<INFO
key=$key
package=$KERNEL_SOURCE_PACKAGE
version=$ver
kernelrelease=$(make -s -C "$src" O="$obj" kernelrelease 2>/dev/null)
built=$(date -u +%FT%TZ)
host=$(uname -n)
jobs=$JOBS
kernel_build_s=$kernel_s
selftest_build_s=$selftest_s
INFO
chmod -R a+rX "$stage"
mv -T "$stage" "$entry"
[ "${VFIO_IOMMUFD_KEEP_OBJ:-0}" = 1 ] || rm -rf "$work"
log "kernel built and cached: $entry (kernel ${kernel_s}s, selftests ${selftest_s}s)"
echo "$entry"
