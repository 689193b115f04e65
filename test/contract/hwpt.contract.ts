// HWPT allocation and device compatibility (drivers/iommu/iommufd/{hw_pagetable,device}.c):
// DIRTY_TRACKING needs the IOMMU's capability (EOPNOTSUPP), a device without it cannot join a
// dirty HWPT (EINVAL), automatic domains skip incompatible HWPTs, mdevs attach to an IOAS only.
import { describe, expect, it } from 'vitest';
import { IOMMU_HWPT_ALLOC_DIRTY_TRACKING, IOMMU_HWPT_DATA_NONE } from '../../src/uapi/index.js';
import { ContractFixture, expectKernelError, type ContractTarget } from './context.js';

export function defineHwptContract(target: ContractTarget): void {
  describe('HWPT allocation and attach', () => {
    const t = new ContractFixture(target);

    it('HWPT_ALLOC with DIRTY_TRACKING for a device whose IOMMU cannot track fails with EOPNOTSUPP', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas, { noDirty: true });
      expectKernelError(() => iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING }), 'IOMMU_HWPT_ALLOC', 'EOPNOTSUPP');
      iommufd.destroy(iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas }));
    });

    it('a device without dirty tracking cannot attach to, or replace onto, a dirty HWPT: EINVAL', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const dirty = t.mock(iommufd, ioas);
      const hwpt = iommufd.hwptAlloc({ devId: dirty.devId!, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
      expectKernelError(() => t.mock(iommufd, hwpt, { noDirty: true }), 'IOMMU_TEST_CMD', 'EINVAL');
      const plain = t.mock(iommufd, ioas, { noDirty: true });
      expectKernelError(() => plain.attachPt(hwpt), 'IOMMU_TEST_CMD', 'EINVAL');
      expect(dirty.attachPt(hwpt)).toBe(hwpt);
    });

    it('HWPT_ALLOC: an unknown device is ENOENT, an unknown or non-IOAS pt_id is EINVAL', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      expectKernelError(() => iommufd.hwptAlloc({ devId: 99, ptId: ioas }), 'IOMMU_HWPT_ALLOC', 'ENOENT');
      expectKernelError(() => iommufd.hwptAlloc({ devId: mock.devId!, ptId: 99 }), 'IOMMU_HWPT_ALLOC', 'EINVAL');
      expectKernelError(() => iommufd.hwptAlloc({ devId: mock.devId!, ptId: mock.devId! }), 'IOMMU_HWPT_ALLOC', 'EINVAL');
    });

    it('HWPT_ALLOC: an unknown flag is EOPNOTSUPP; data without a data type is EINVAL', () => {
      const iommufd = t.iommufd({ validateArguments: false });
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      expectKernelError(() => iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas, flags: 1 << 7 }), 'IOMMU_HWPT_ALLOC', 'EOPNOTSUPP');
      expectKernelError(
        () => iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas, dataType: IOMMU_HWPT_DATA_NONE, data: new Uint8Array(8) }),
        'IOMMU_HWPT_ALLOC',
        'EINVAL',
      );
    });

    it('replacing onto a manual HWPT leaves the automatic one to its other device, then destroys it', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const first = t.mock(iommufd, ioas);
      const second = t.mock(iommufd, ioas);
      const automatic = first.attachPt(ioas);
      const manual = iommufd.hwptAlloc({ devId: first.devId!, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
      expect(first.attachPt(manual)).toBe(manual);
      expectKernelError(() => iommufd.destroy(automatic), 'IOMMU_DESTROY', 'EBUSY');
      expect(second.attachPt(manual)).toBe(manual);
      expectKernelError(() => iommufd.destroy(automatic), 'IOMMU_DESTROY', 'ENOENT');
      // Back to the IOAS: a new automatic HWPT (the manual one is not automatic, so never reused).
      const again = first.attachPt(ioas);
      expect(again).not.toBe(manual);
    });

    it('a device attaching to an IOAS skips an automatic HWPT of another IOMMU and gets its own', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      const mockHwpt = mock.attachPt(ioas);
      const device = t.device(t.env.plainDevice);
      device.bindIommufd(iommufd);
      const own = device.attachPt(ioas);
      expect(own).not.toBe(mockHwpt);
      expect(own).not.toBe(ioas);
      device.detachPt();
      expectKernelError(() => iommufd.destroy(own), 'IOMMU_DESTROY', 'ENOENT');
    });

    it('a device cannot attach to a HWPT another IOMMU driver allocated: EINVAL', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      const mockHwpt = iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas });
      const device = t.device(t.env.plainDevice);
      device.bindIommufd(iommufd);
      expectKernelError(() => device.attachPt(mockHwpt), 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'EINVAL');
      device.attachPt(ioas);
    });

    it('an mdev binds as an access: it attaches to an IOAS, not to a HWPT (ENOENT), and is no iommufd device', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      const hwpt = mock.attachPt(ioas);
      // The real kernel's mdev: the mtty migration source of the virtio boot.
      const mdev = t.device(t.env.sim ? t.sim.mdevDevice : t.env.migration!.source);
      const accessId = mdev.bindIommufd(iommufd);
      expectKernelError(() => mdev.attachPt(hwpt), 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'ENOENT');
      expect(mdev.attachPt(ioas)).toBe(ioas);
      expectKernelError(() => iommufd.getHwInfo(accessId), 'IOMMU_GET_HW_INFO', 'ENOENT');
      expectKernelError(() => iommufd.hwptAlloc({ devId: accessId, ptId: ioas }), 'IOMMU_HWPT_ALLOC', 'ENOENT');
      // The access pins pages: the IOAS alignment rises to PAGE_SIZE; the IOAS is held (EBUSY).
      expect(iommufd.ioasIovaRanges(ioas).alignment).toBe(4096n);
      expectKernelError(() => iommufd.destroy(ioas), 'IOMMU_DESTROY', 'EBUSY');
      mdev.detachPt();
      expect(iommufd.ioasIovaRanges(ioas).alignment).toBe(2048n);
    });
  });
}
