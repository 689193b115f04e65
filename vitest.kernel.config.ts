// The real-kernel suite: run inside the QEMU guest by test/kernel/harness/guest-init.sh, once per
// boot (virtio-iommu, then emulated VT-d). Tests share /dev/iommu, the edu device and the
// IOMMUFD_TEST mock state, so everything runs in one fork, one file at a time.
//
// Both boots run this whole suite; a test picks its boot(s) from VFIO_IOMMUFD_VIOMMU=virtio|intel,
// set by the guest init (helpers in test/kernel/harness/guest-env.ts):
//   describe.runIf(onVirtioIommu)(...)   VFIO on edu + the IOMMUFD_TEST mock devices
//   describe.runIf(onIntelIommu)(...)    emulated VT-d with interrupt remapping
//   describe.runIf(inKernelGuest)(...)   both boots
// Outside the guest every kernel test skips. The harness fails a test that was skipped in every boot.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  // The guest's root is the host's / over read-only 9p; /tmp is a tmpfs there.
  cacheDir: process.env.VFIO_IOMMUFD_VITEST_CACHE_DIR ?? '/tmp/vfio-iommufd-vitest-cache',
  test: {
    include: ['test/kernel/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 1,
    fileParallelism: false,
    // TCG guest: everything is ~10x slower than on the host.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
    passWithNoTests: true,
  },
});
