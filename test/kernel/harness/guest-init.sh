#!/bin/bash
# PID 1 of the harness's QEMU guest (kernel argument init=<this file>).
# Root is the host's / over read-only 9p. The runner's per-boot results folder is the writable 9p
# share "results"; the runner puts guest-config.sh there (the settings for this boot) and reads
# back: guest.log, steps.txt (step rc seconds), selftest-*.tap, vitest.json, vitest.log, dmesg.txt,
# and done (written last). Progress lines on the console start with "[guest ".
# PID 1 must never exit (the kernel would panic): no set -e; every path ends in power-off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp/home LANG=C.UTF-8 TERM=dumb NO_COLOR=1 CI=true

up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v t0="$1" '{ printf "%.1f", $1 - t0 }' /proc/uptime; }
OUT=/run/results
say() { local m="[guest $(up)s] $*"; echo "$m" >/dev/console; [ -w "$OUT" ] && echo "$m" >>"$OUT/guest.log"; }
power_off() {
  say "power off"
  sync; umount "$OUT" 2>/dev/null
  echo o >/proc/sysrq-trigger
  sleep 10
  echo b >/proc/sysrq-trigger
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tmpfs -o mode=755,size=64m tmpfs /run
mkdir -p $OUT
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results $OUT; then
  echo "[guest $(up)s] cannot mount the results share" >/dev/console; power_off
fi
: >"$OUT/guest.log"; : >"$OUT/steps.txt"
if [ ! -r "$OUT/guest-config.sh" ]; then say "no guest-config.sh in the results share"; power_off; fi
# shellcheck disable=SC1091
. "$OUT/guest-config.sh"
: "${VFIO_IOMMUFD_VIOMMU:?}" "${VFIO_IOMMUFD_REPO:?}" "${VFIO_IOMMUFD_NODE:?}"
export VFIO_IOMMUFD_VIOMMU
say "boot $VFIO_IOMMUFD_VIOMMU: kernel $(uname -r), init at $(up)s, steps: $GUEST_STEPS"

# A tmpfs covers /tmp; keep the host's paths below /tmp (repo, node, selftests) reachable.
keep=()
for p in "$VFIO_IOMMUFD_REPO" "$(dirname "$VFIO_IOMMUFD_NODE")" "${SELFTESTS_DIR:-}"; do
  case "$p" in /tmp/*) keep+=("$p") ;; esac
done
i=0
for p in "${keep[@]}"; do mkdir -p /run/keep/$i; mount --bind "$p" /run/keep/$i; i=$((i + 1)); done
mount -t tmpfs -o size=${GUEST_TMP_SIZE:-512m} tmpfs /tmp
i=0
for p in "${keep[@]}"; do mkdir -p "$p"; mount --bind /run/keep/$i "$p"; i=$((i + 1)); done
mkdir -p /dev/shm /tmp/home && mount -t tmpfs tmpfs /dev/shm
# The loopback interface: tests migrate between two processes over 127.0.0.1 (no other network).
ip link set lo up 2>/dev/null || echo "[guest $(up)s] could not bring lo up (no ip?)" >/dev/console
# the iommufd selftest maps MAP_HUGETLB buffers (up to 2 x 128 MiB in the dirty-tracking tests)
echo "${GUEST_HUGEPAGES:-160}" >/proc/sys/vm/nr_hugepages
export PATH="$(dirname "$VFIO_IOMMUFD_NODE"):$PATH"


# edu (1234:11e8) on vfio-pci; tell the tests where it is.
edu_bdf=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ]; then edu_bdf=$(basename "$d"); fi
done
if [ -n "$edu_bdf" ]; then
  # (with virtio-iommu, ACPI VIOT gives edu its IOMMU group only when a driver binds)
  echo 1234 11e8 >/sys/bus/pci/drivers/vfio-pci/new_id
  for _ in $(seq 100); do [ -d /sys/bus/pci/devices/$edu_bdf/vfio-dev ] && break; sleep 0.1; done
  [ -d /sys/bus/pci/devices/$edu_bdf/vfio-dev ] || say "edu $edu_bdf did not bind to vfio-pci (no IOMMU group?)"
  export VFIO_IOMMUFD_EDU_BDF=$edu_bdf
  export VFIO_IOMMUFD_EDU_CDEV=/dev/vfio/devices/$(ls /sys/bus/pci/devices/$edu_bdf/vfio-dev 2>/dev/null | head -n1)
  export VFIO_IOMMUFD_EDU_GROUP=/dev/vfio/$(basename "$(readlink /sys/bus/pci/devices/$edu_bdf/iommu_group)")
  # The bridge above edu (boot.sh puts it behind a pcie-root-port), empty on a root bus.
  edu_parent=$(basename "$(dirname "$(readlink -f /sys/bus/pci/devices/$edu_bdf)")")
  case $edu_parent in pci*) edu_parent= ;; esac
  export VFIO_IOMMUFD_EDU_BRIDGE=$edu_parent
  say "edu $edu_bdf on $(basename "$(readlink /sys/bus/pci/devices/$edu_bdf/driver)" 2>/dev/null): cdev $VFIO_IOMMUFD_EDU_CDEV group $VFIO_IOMMUFD_EDU_GROUP bridge ${edu_parent:-none (root bus)}"
else
  say "no edu device"
fi
# mtty (samples/vfio-mdev, built in): two mtty-2 mdevs (migration source and destination) and one
# mtty-1 (a destination of the wrong type), in the virtio boot.
mtty_types=/sys/devices/virtual/mtty/mtty/mdev_supported_types
if [ "$VFIO_IOMMUFD_VIOMMU" = virtio ] && [ -d $mtty_types ]; then
  mtty_ok=1
  for spec in SOURCE:mtty-2:8a2b6c1e-0d3f-4c5a-9e71-000000000001 DESTINATION:mtty-2:8a2b6c1e-0d3f-4c5a-9e71-000000000002 \
              OTHER:mtty-1:8a2b6c1e-0d3f-4c5a-9e71-000000000003; do
    IFS=: read -r role type uuid <<<"$spec"
    if echo "$uuid" >"$mtty_types/$type/create" && [ -d /sys/bus/mdev/devices/$uuid/vfio-dev ]; then
      export VFIO_IOMMUFD_MTTY_$role=$uuid
    else
      mtty_ok=0
    fi
  done
  say "mtty: $( [ $mtty_ok = 1 ] && echo created || echo FAILED to create) source ${VFIO_IOMMUFD_MTTY_SOURCE:-none} destination ${VFIO_IOMMUFD_MTTY_DESTINATION:-none} (mtty-2), other ${VFIO_IOMMUFD_MTTY_OTHER:-none} (mtty-1); $(cat $mtty_types/mtty-2/available_instances) mtty-2 left"
elif [ "$VFIO_IOMMUFD_VIOMMU" = virtio ]; then
  say "no mtty ($mtty_types missing)"
fi
env | grep -E '^VFIO_IOMMUFD_' | sort >"$OUT/guest-env.txt"
{
  echo "kernel: $(uname -a)"
  echo "cmdline: $(cat /proc/cmdline)"
  echo "memory: $(grep MemTotal /proc/meminfo)"
  echo "hugepages: $(cat /proc/sys/vm/nr_hugepages)"
  echo "iommus: $(ls /sys/class/iommu 2>/dev/null | tr '\n' ' ')"
  echo "iommu groups: $(ls /sys/kernel/iommu_groups | wc -l)"
  for d in /sys/bus/pci/devices/*; do
    echo "pci $(basename "$d") $(cat "$d/vendor"):$(cat "$d/device") group=$(basename "$(readlink "$d/iommu_group")" 2>/dev/null)"
  done
} >>"$OUT/guest.log" 2>&1

# run_step NAME TIMEOUT_S OUTFILE CMD...: run with a timeout, output to OUTFILE, a progress line
# every minute (TAP results so far), "NAME rc seconds" appended to steps.txt.
run_step() {
  local name=$1 limit=$2 file=$3; shift 3
  local t0 pid rc n
  t0=$(up)
  say "$name: start (timeout ${limit}s)"
  timeout -k 10 "$limit" "$@" >"$file" 2>&1 </dev/null &
  pid=$!
  while kill -0 $pid 2>/dev/null; do
    for _ in $(seq 60); do kill -0 $pid 2>/dev/null || break; sleep 1; done
    if kill -0 $pid 2>/dev/null; then
      n=$(grep -cE '^(ok|not ok) ' "$file")
      say "$name: $(since "$t0")s, $n results so far, $(grep -cE '^not ok ' "$file") not ok"
    fi
  done
  wait $pid; rc=$?
  local secs; secs=$(since "$t0")
  echo "$name $rc $secs" >>"$OUT/steps.txt"
  say "$name: rc=$rc in ${secs}s$( [ "$rc" = 124 ] && echo ' (TIMED OUT)')$(grep -E '^# Totals' "$file" | sed 's/^#/,/')"
}

if [ "${GUEST_SHELL:-0}" = 1 ]; then
  say "shell (exit to power off); results share at $OUT"
  setsid -c bash -l </dev/console >/dev/console 2>&1
  power_off
fi

for step in ${GUEST_STEPS//,/ }; do
  case $step in
    selftest)
      (cd /tmp && run_step selftest "${SELFTEST_TIMEOUT:-1500}" "$OUT/selftest-iommufd.tap" "$SELFTESTS_DIR/iommufd") ;;
    failnth)
      (cd /tmp && run_step failnth "${FAILNTH_TIMEOUT:-600}" "$OUT/selftest-iommufd_fail_nth.tap" "$SELFTESTS_DIR/iommufd_fail_nth") ;;
    suite)
      # shellcheck disable=SC2086
      (cd "$VFIO_IOMMUFD_REPO" && run_step suite "${SUITE_TIMEOUT:-1500}" "$OUT/vitest.log" \
        "$VFIO_IOMMUFD_NODE" node_modules/vitest/vitest.mjs run --config "${VITEST_CONFIG:-vitest.kernel.config.ts}" \
        --configLoader=runner --reporter=default --reporter=json \
        --outputFile.json="$OUT/vitest.json" ${VITEST_ARGS:-}) ;;
    *) say "unknown step $step"; echo "$step 127 0" >>"$OUT/steps.txt" ;;
  esac
done

dmesg >"$OUT/dmesg.txt" 2>&1
say "all steps done"
echo "uptime $(up)" >"$OUT/done"
power_off
