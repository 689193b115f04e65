// What the harness's guest init tells the kernel tests, through environment variables.
// Outside the guest (a plain `vitest run` on a developer's host) `inKernelGuest` is false,
// so kernel tests can `describe.runIf(inKernelGuest)` and skip. Both boots run the whole kernel
// suite; a test that runs in neither boot fails the harness.

export type Viommu = 'virtio' | 'intel';

function viommuFromEnv(): Viommu | undefined {
  const v = process.env.VFIO_IOMMUFD_VIOMMU;
  return v === 'virtio' || v === 'intel' ? v : undefined;
}

/** Which vIOMMU this boot has; undefined outside the harness's guest. */
export const viommu: Viommu | undefined = viommuFromEnv();
/** True inside the harness's guest (either boot). */
export const inKernelGuest: boolean = viommu !== undefined;
/** True in the virtio-iommu boot: VFIO on edu and the IOMMUFD_TEST mock devices. */
export const onVirtioIommu: boolean = viommu === 'virtio';
/** True in the intel-iommu (emulated VT-d, interrupt remapping) boot. */
export const onIntelIommu: boolean = viommu === 'intel';

/** True inside the guest when this boot is one of `boots`: `describe.runIf(onBoot('intel'))`. */
export function onBoot(...boots: Viommu[]): boolean {
  return viommu !== undefined && boots.includes(viommu);
}

/** The QEMU edu device (1234:11e8), bound to vfio-pci by the guest init. */
export const edu = {
  /** PCI address, e.g. 0000:00:03.0 */
  bdf: process.env.VFIO_IOMMUFD_EDU_BDF ?? '',
  /** VFIO cdev, e.g. /dev/vfio/devices/vfio0 */
  cdev: process.env.VFIO_IOMMUFD_EDU_CDEV ?? '',
  /** legacy VFIO group node, e.g. /dev/vfio/1 */
  group: process.env.VFIO_IOMMUFD_EDU_GROUP ?? '',
  /** The bridge above edu, e.g. 0000:00:01.0 (boot.sh's pcie-root-port); '' on a root bus. */
  bridge: process.env.VFIO_IOMMUFD_EDU_BRIDGE ?? '',
};
