// Objects, IDs and reference counts (drivers/iommu/iommufd/main.c iommufd_object_remove):
// ENOENT for an unknown ID, EBUSY while anything holds the object, IDs reused lowest first,
// automatic HWPTs that live exactly as long as their devices.
import { describe, expect, it } from 'vitest';
import { ContractFixture, expectKernelError, type ContractTarget } from './context.js';

export function defineObjectsContract(target: ContractTarget): void {
  describe('objects and IDs', () => {
    const t = new ContractFixture(target);

    it('IDs start at 1 and IOMMU_DESTROY frees an ID for reuse, lowest first (xa_alloc)', () => {
      const iommufd = t.iommufd();
      expect([iommufd.ioasAlloc(), iommufd.ioasAlloc(), iommufd.ioasAlloc()]).toEqual([1, 2, 3]);
      iommufd.destroy(2);
      iommufd.destroy(1);
      expect(iommufd.ioasAlloc()).toBe(1);
      expect(iommufd.ioasAlloc()).toBe(2);
      expect(iommufd.ioasAlloc()).toBe(4);
    });

    it('IOMMU_DESTROY of an unknown ID, or of one already destroyed, fails with ENOENT', () => {
      const iommufd = t.iommufd();
      expectKernelError(() => iommufd.destroy(77), 'IOMMU_DESTROY', 'ENOENT');
      const ioas = iommufd.ioasAlloc();
      iommufd.destroy(ioas);
      expectKernelError(() => iommufd.destroy(ioas), 'IOMMU_DESTROY', 'ENOENT');
    });

    it('an ID of another object type is ENOENT (an IOAS ID given as a HWPT, a HWPT ID given as an IOAS)', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      const hwpt = mock.attachPt(ioas);
      expectKernelError(() => iommufd.hwptSetDirtyTracking(ioas, true), 'IOMMU_HWPT_SET_DIRTY_TRACKING', 'ENOENT');
      expectKernelError(() => iommufd.ioasIovaRanges(hwpt), 'IOMMU_IOAS_IOVA_RANGES', 'ENOENT');
      expectKernelError(() => iommufd.getHwInfo(ioas), 'IOMMU_GET_HW_INFO', 'ENOENT');
    });

    it('IOMMU_DESTROY of an IOAS a HWPT was allocated on fails with EBUSY until the HWPT goes', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      const hwpt = iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas });
      mock.close();
      expectKernelError(() => iommufd.destroy(ioas), 'IOMMU_DESTROY', 'EBUSY');
      iommufd.destroy(hwpt);
      iommufd.destroy(ioas);
    });

    it('IOMMU_DESTROY of an attached HWPT fails with EBUSY, and succeeds once no device uses it', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const first = t.mock(iommufd, ioas);
      const hwpt = iommufd.hwptAlloc({ devId: first.devId!, ptId: ioas });
      const second = t.mock(iommufd, hwpt);
      expectKernelError(() => iommufd.destroy(hwpt), 'IOMMU_DESTROY', 'EBUSY');
      second.close();
      iommufd.destroy(hwpt);
    });

    it('IOMMU_DESTROY of a bound device ID fails with EBUSY (its driver holds it)', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      expectKernelError(() => iommufd.destroy(mock.devId!), 'IOMMU_DESTROY', 'EBUSY');
    });

    it('devices attached to the same IOAS share its automatic HWPT, which goes with its last device', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const first = t.mock(iommufd, ioas);
      const second = t.mock(iommufd, ioas);
      // Replacing onto the IOAS a device is already on reports the automatic HWPT in use.
      const automatic = first.attachPt(ioas);
      expect(automatic).not.toBe(ioas);
      expect(second.attachPt(ioas)).toBe(automatic);
      expectKernelError(() => iommufd.destroy(automatic), 'IOMMU_DESTROY', 'EBUSY');
      first.close();
      expectKernelError(() => iommufd.destroy(automatic), 'IOMMU_DESTROY', 'EBUSY');
      second.close();
      expectKernelError(() => iommufd.destroy(automatic), 'IOMMU_DESTROY', 'ENOENT');
      iommufd.destroy(ioas);
    });

    it('a manually allocated HWPT outlives its devices until IOMMU_DESTROY', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const first = t.mock(iommufd, ioas);
      const hwpt = iommufd.hwptAlloc({ devId: first.devId!, ptId: ioas });
      const second = t.mock(iommufd, hwpt);
      second.close();
      first.close();
      iommufd.destroy(hwpt);
      iommufd.destroy(ioas);
    });

    it('IDs of objects a failed call created are freed (the failed MOCK_DOMAIN reserved, then released, its IDs)', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const dirtyMock = t.mock(iommufd, ioas);
      const dirtyHwpt = iommufd.hwptAlloc({ devId: dirtyMock.devId!, ptId: ioas, flags: 2 });
      const before = iommufd.ioasAlloc();
      iommufd.destroy(before);
      expectKernelError(() => t.testOps(iommufd).mockDomain(dirtyHwpt, { noDirty: true }), 'IOMMU_TEST_CMD', 'EINVAL');
      expect(iommufd.ioasAlloc()).toBe(before);
    });
  });
}
