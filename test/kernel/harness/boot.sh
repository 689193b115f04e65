#!/usr/bin/env bash
# Boot the test guest once and let guest-init.sh run the steps.
#   boot.sh virtio|intel KERNEL_IMAGE RESULTS_DIR
# virtio: -device virtio-iommu-pci (VFIO on edu + the IOMMUFD_TEST mock devices; no interrupt
#         remapping, so iommufd/type1 allow_unsafe_interrupts=1)
# intel:  -device intel-iommu,intremap=on,caching-mode=on and intel_iommu=on
# Both: q35 with edu alone behind a pcie-root-port, so it has a secondary bus reset (VFIO's PCI
# hot reset, and VFIO_DEVICE_RESET through the bus reset method).
# Settings for the guest come from the environment (set by run.sh): GUEST_STEPS (comma list of
# selftest,failnth,suite), SELFTESTS_DIR, SELFTEST_TIMEOUT, FAILNTH_TIMEOUT, SUITE_TIMEOUT,
# VITEST_CONFIG, VITEST_ARGS, GUEST_SHELL=1 (interactive shell on the console instead of tests).
# The console goes to RESULTS_DIR/console.log; guest progress lines go to stderr.
# Exit: 0 guest finished its steps (test results are judged by report.mjs), 4 it did not.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ $# = 3 ] || die $EXIT_USAGE "usage: boot.sh virtio|intel KERNEL_IMAGE RESULTS_DIR"
boot=$1 kernel=$2 out=$3
case $boot in
  virtio) iommu_dev=(-device virtio-iommu-pci)
          iommu_args="iommufd.allow_unsafe_interrupts=1 vfio_iommu_type1.allow_unsafe_interrupts=1" ;;
  intel)  iommu_dev=(-device intel-iommu,intremap=on,caching-mode=on)
          iommu_args="intel_iommu=on" ;;
  *) die $EXIT_USAGE "boot.sh: unknown boot '$boot' (virtio|intel)" ;;
esac
[ -r "$kernel" ] || die $EXIT_USAGE "no kernel image at $kernel"
qemu=${VFIO_IOMMUFD_QEMU:-qemu-system-x86_64}
command -v "$qemu" >/dev/null || die $EXIT_SETUP "no $qemu (install qemu-system-x86)"
node=${VFIO_IOMMUFD_NODE:-$(readlink -f "$(command -v node)")}
mkdir -p "$out"
rm -f "$out/done" "$out/steps.txt" "$out/vitest.json" "$out"/selftest-*.tap

q() { printf '%s=%q\n' "$1" "$2"; }
{
  echo "# written by boot.sh; sourced by guest-init.sh"
  q VFIO_IOMMUFD_VIOMMU "$boot"
  q VFIO_IOMMUFD_REPO "$REPO_DIR"
  q VFIO_IOMMUFD_NODE "$node"
  q GUEST_STEPS "${GUEST_STEPS:-suite}"
  q SELFTESTS_DIR "${SELFTESTS_DIR:-}"
  q SELFTEST_TIMEOUT "${SELFTEST_TIMEOUT:-1500}"
  q FAILNTH_TIMEOUT "${FAILNTH_TIMEOUT:-600}"
  q SUITE_TIMEOUT "${SUITE_TIMEOUT:-1500}"
  q VITEST_CONFIG "${VITEST_CONFIG:-vitest.kernel.config.ts}"
  q VITEST_ARGS "${VITEST_ARGS:-}"
  q GUEST_HUGEPAGES "${GUEST_HUGEPAGES:-160}"
  q GUEST_SHELL "${GUEST_SHELL:-0}"
} >"$out/guest-config.sh"

# Whole-boot limit: the steps' own limits plus boot and shutdown.
limit=120
for s in ${GUEST_STEPS//,/ }; do
  case $s in
    selftest) limit=$((limit + ${SELFTEST_TIMEOUT:-1500})) ;;
    failnth) limit=$((limit + ${FAILNTH_TIMEOUT:-600})) ;;
    suite) limit=$((limit + ${SUITE_TIMEOUT:-1500})) ;;
  esac
done
limit=${BOOT_TIMEOUT:-$limit}

cmd=("$qemu" -accel tcg,thread=multi -cpu max -machine q35,kernel-irqchip=split
  -m "${VFIO_IOMMUFD_GUEST_MEM:-2G}" -smp 1
  -nodefaults -no-user-config -display none -no-reboot
  "${iommu_dev[@]}" -device pcie-root-port,id=rp0,bus=pcie.0,chassis=1 -device edu,bus=rp0
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
  -virtfs "local,path=$out,mount_tag=results,security_model=none"
  -kernel "$kernel"
  -append "console=ttyS0 quiet root=hostroot rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose ro init=$HARNESS_DIR/guest-init.sh panic=-1 $iommu_args")

if [ "${GUEST_SHELL:-0}" = 1 ]; then
  log "boot $boot: interactive shell on the console (Ctrl-A X quits QEMU)"
  exec "${cmd[@]}" -serial mon:stdio
fi

log "boot $boot: starting QEMU (TCG, 1 vCPU, ${VFIO_IOMMUFD_GUEST_MEM:-2G}; limit ${limit}s; console: $out/console.log)"
t0=$(date +%s.%N)
set +e
timeout -k 15 "$limit" "${cmd[@]}" -serial stdio </dev/null 2>&1 \
  | sed -u 's/\r$//' | tee "$out/console.log" | grep --line-buffered -E '^\[guest |Kernel panic|Oops|BUG:' | sed -u 's/^/  /' >&2
rc=${PIPESTATUS[0]}
set -e
secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
printf 'qemu_rc=%s seconds=%s limit=%s\n' "$rc" "$secs" "$limit" >"$out/qemu.txt"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then log "boot $boot: TIMED OUT after ${secs}s"; exit $EXIT_GUEST; fi
if grep -q 'Kernel panic' "$out/console.log"; then log "boot $boot: KERNEL PANIC after ${secs}s"; exit $EXIT_GUEST; fi
if [ ! -f "$out/done" ]; then log "boot $boot: guest did not finish (qemu rc $rc) after ${secs}s"; exit $EXIT_GUEST; fi
log "boot $boot: guest finished in ${secs}s"
