#!/usr/bin/env bash
# npm run test:kernel -- the real-kernel harness, end to end:
#   1. installs what is missing (apt): qemu-system-x86, the kernel build packages, linux-source-6.12
#   2. builds the guest kernel and the kernel's iommufd selftests once per machine (cached by config
#      hash), unless VFIO_IOMMUFD_KERNEL names an image
#   3. builds the project (npm run build)
#   4. boots the guest twice under QEMU/TCG:
#        virtio: virtio-iommu + edu on vfio-pci + IOMMUFD_TEST mocks: iommufd selftest,
#                iommufd_fail_nth, then the project's kernel suite (vitest.kernel.config.ts)
#        intel:  emulated VT-d with interrupt remapping: the kernel suite's VT-d tests
#   5. prints the totals per boot and exits non-zero if anything failed.
# Knobs: see `run.sh --help` and test/kernel/harness/README.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  sed -n '/^## Knobs/,/^## /p' "$HARNESS_DIR/README.md" | sed '$d' >&2
  exit 0
fi
[ $# = 0 ] || die $EXIT_USAGE "run.sh takes no arguments; settings are environment variables (run.sh --help)"

boots=${VFIO_IOMMUFD_BOOTS:-virtio,intel}
for b in ${boots//,/ }; do
  case $b in virtio | intel) ;; *) die $EXIT_USAGE "VFIO_IOMMUFD_BOOTS: unknown boot '$b' (virtio, intel)" ;; esac
done
shell_boot=${VFIO_IOMMUFD_GUEST_SHELL:-}
case $shell_boot in '' | virtio | intel) ;; *) die $EXIT_USAGE "VFIO_IOMMUFD_GUEST_SHELL must be virtio or intel" ;; esac

# 1 + 2: packages, kernel, selftests
if [ -n "${VFIO_IOMMUFD_KERNEL:-}" ]; then
  "$HARNESS_DIR/deps.sh" boot
  kernel=$(readlink -f "$VFIO_IOMMUFD_KERNEL")
  [ -r "$kernel" ] || die $EXIT_USAGE "VFIO_IOMMUFD_KERNEL=$VFIO_IOMMUFD_KERNEL: no such file"
  selftests=${VFIO_IOMMUFD_SELFTEST_DIR:-}
  log "kernel: $kernel (VFIO_IOMMUFD_KERNEL)"
else
  "$HARNESS_DIR/deps.sh" all
  entry=$("$HARNESS_DIR/build-kernel.sh")
  kernel=$entry/bzImage
  selftests=${VFIO_IOMMUFD_SELFTEST_DIR:-$entry/selftests}
  log "kernel: $kernel ($(grep -E '^(version|kernelrelease)=' "$entry/build-info" | paste -sd' '))"
fi
if [ "${VFIO_IOMMUFD_SKIP_SELFTESTS:-0}" = 1 ]; then
  selftests=
elif [ -n "$selftests" ]; then
  for b in iommufd iommufd_fail_nth; do [ -x "$selftests/$b" ] || die $EXIT_USAGE "no executable $selftests/$b"; done
  selftests=$(readlink -f "$selftests")
else
  log "no selftest binaries for this kernel (set VFIO_IOMMUFD_SELFTEST_DIR): selftests are not run"
fi

# 3: the project
node=$(readlink -f "$(command -v node)") || die $EXIT_SETUP "no node in PATH"
[ -f "$REPO_DIR/node_modules/vitest/vitest.mjs" ] || die $EXIT_SETUP "no node_modules/vitest in $REPO_DIR (run npm ci)"
results=${VFIO_IOMMUFD_RESULTS:-$CACHE_ROOT/runs/$(date -u +%Y%m%dT%H%M%SZ)-$$}
mkdir -p "$results"
results=$(readlink -f "$results")
[ -z "${VFIO_IOMMUFD_RESULTS:-}" ] && ln -sfn "$results" "$CACHE_ROOT/runs/latest"
if [ "${VFIO_IOMMUFD_SKIP_PROJECT_BUILD:-0}" != 1 ]; then
  (cd "$REPO_DIR" && run_logged "$results/project-build.log" "npm run build" npm run build) \
    || die $EXIT_SETUP "npm run build failed (log: $results/project-build.log)"
fi

export VFIO_IOMMUFD_NODE=$node
export SELFTESTS_DIR=$selftests
export SELFTEST_TIMEOUT=${VFIO_IOMMUFD_SELFTEST_TIMEOUT:-1500}
export FAILNTH_TIMEOUT=${VFIO_IOMMUFD_FAILNTH_TIMEOUT:-600}
export SUITE_TIMEOUT=${VFIO_IOMMUFD_SUITE_TIMEOUT:-1500}
export VITEST_CONFIG=${VFIO_IOMMUFD_VITEST_CONFIG:-vitest.kernel.config.ts}
export VITEST_ARGS=${VFIO_IOMMUFD_VITEST_ARGS:-}
export GUEST_HUGEPAGES=${VFIO_IOMMUFD_GUEST_HUGEPAGES:-160}

if [ -n "$shell_boot" ]; then
  export GUEST_SHELL=1 GUEST_STEPS=
  exec "$HARNESS_DIR/boot.sh" "$shell_boot" "$kernel" "$results/$shell_boot"
fi

# 4: the boots
boot_list=()
for b in ${boots//,/ }; do
  steps=suite
  if [ "$b" = virtio ] && [ -n "$selftests" ]; then steps=selftest,failnth,suite; fi
  boot_list+=("$b")
  GUEST_STEPS=$steps "$HARNESS_DIR/boot.sh" "$b" "$kernel" "$results/$b" || true
done

# 5: the verdict
report_args=(--baseline "${VFIO_IOMMUFD_SELFTEST_BASELINE_DIR:-$HARNESS_DIR/baseline}")
[ -n "$selftests" ] || report_args+=(--no-selftests)
log "results:"
"$node" "$HARNESS_DIR/report.mjs" "$results" "${boot_list[@]}" "${report_args[@]}"
