// VFIO devices through their cdev (drivers/vfio/{device_cdev,vfio_main}.c) and IOMMU_GET_HW_INFO:
// bind once, attach (replace when attached again), detach, close releasing everything, the
// device's regions, and what GET_HW_INFO reports for an IOMMU with and without hw_info.
import { describe, expect, it } from 'vitest';
import {
  IOMMU_HW_CAP_DIRTY_TRACKING,
  IOMMU_HW_INFO_SELFTEST_REGVAL,
  IOMMU_HW_INFO_TYPE_NONE,
  IOMMU_HW_INFO_TYPE_SELFTEST,
  IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_NUM_REGIONS,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  iommu_test_hw_info,
} from '../../src/uapi/index.js';
import { ContractFixture, KIB, MIB, expectKernelError, type ContractTarget } from './context.js';

export function defineDeviceContract(target: ContractTarget): void {
  describe('VFIO device cdev', () => {
    const t = new ContractFixture(target);

    it('BIND_IOMMUFD returns a device ID; binding again fails with EINVAL', () => {
      const iommufd = t.iommufd();
      const device = t.device(t.env.plainDevice);
      expect(device.devId).toBeUndefined();
      const devId = device.bindIommufd(iommufd);
      expect(devId).toBeGreaterThan(0);
      expect(device.devId).toBe(devId);
      expectKernelError(() => device.bindIommufd(iommufd), 'VFIO_DEVICE_BIND_IOMMUFD', 'EINVAL');
    });

    it('before BIND_IOMMUFD every other device ioctl fails with EINVAL', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const device = t.device(t.env.plainDevice);
      expectKernelError(() => device.attachPt(ioas), 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'EINVAL');
      expectKernelError(() => device.getInfo(), 'VFIO_DEVICE_GET_INFO', 'EINVAL');
    });

    it('attaching to an IOAS gives an automatic HWPT that holds the IOAS; detaching destroys it', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const device = t.device(t.env.plainDevice);
      device.bindIommufd(iommufd);
      const hwpt = device.attachPt(ioas);
      expect(hwpt).not.toBe(ioas);
      expectKernelError(() => iommufd.destroy(ioas), 'IOMMU_DESTROY', 'EBUSY');
      expectKernelError(() => iommufd.destroy(hwpt), 'IOMMU_DESTROY', 'EBUSY');
      device.detachPt();
      expectKernelError(() => iommufd.destroy(hwpt), 'IOMMU_DESTROY', 'ENOENT');
      iommufd.destroy(ioas);
      // Detaching a detached device is not an error.
      device.detachPt();
    });

    it('attaching again replaces the page table; the old automatic HWPT goes', () => {
      const iommufd = t.iommufd();
      const first = iommufd.ioasAlloc();
      const second = iommufd.ioasAlloc();
      const device = t.device(t.env.plainDevice);
      device.bindIommufd(iommufd);
      const firstHwpt = device.attachPt(first);
      const secondHwpt = device.attachPt(second);
      expect(secondHwpt).not.toBe(firstHwpt);
      iommufd.destroy(first);
      expectKernelError(() => iommufd.destroy(second), 'IOMMU_DESTROY', 'EBUSY');
    });

    it('closing a bound, attached device releases its HWPT and IOAS', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const device = t.device(t.env.plainDevice);
      device.bindIommufd(iommufd);
      const memory = t.memory(64n * KIB);
      const hwpt = device.attachPt(ioas);
      iommufd.ioasMap({ ioasId: ioas, memory, length: 64n * KIB, iova: MIB });
      device.close();
      expectKernelError(() => iommufd.destroy(hwpt), 'IOMMU_DESTROY', 'ENOENT');
      iommufd.destroy(ioas);
      // The device can be opened and bound again.
      t.device(t.env.plainDevice).bindIommufd(iommufd);
    });

    it('a device with no IOMMU dirty tracking: GET_HW_INFO reports no capability, HWPT_ALLOC with DIRTY_TRACKING is EOPNOTSUPP', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const device = t.device(t.env.plainDevice);
      const devId = device.bindIommufd(iommufd);
      const info = iommufd.getHwInfo(devId);
      expect(info.type).toBe(IOMMU_HW_INFO_TYPE_NONE);
      expect(info.data.byteLength).toBe(0);
      expect(info.capabilities & BigInt(IOMMU_HW_CAP_DIRTY_TRACKING)).toBe(0n);
      expectKernelError(() => iommufd.hwptAlloc({ devId, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING }), 'IOMMU_HWPT_ALLOC', 'EOPNOTSUPP');
    });

    it('device info and regions: a PCI device with BAR0 and a readable config space holding its IDs', () => {
      const iommufd = t.iommufd();
      const device = t.device(t.env.plainDevice);
      device.bindIommufd(iommufd);
      const info = device.getInfo();
      expect(info.flags & VFIO_DEVICE_FLAGS_PCI).toBe(VFIO_DEVICE_FLAGS_PCI);
      expect(info.numRegions).toBe(VFIO_PCI_NUM_REGIONS);
      const config = device.getRegionInfo(VFIO_PCI_CONFIG_REGION_INDEX);
      expect(config.size).toBe(256n);
      expect(config.flags & (VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE)).toBe(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE);
      const bar0 = device.getRegionInfo(VFIO_PCI_BAR0_REGION_INDEX);
      expect(bar0.size).toBe(MIB);
      expect(bar0.offset).not.toBe(config.offset);
      const ids = device.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 0n, 4);
      expect([...ids]).toEqual([0x34, 0x12, 0xe8, 0x11]);
      expectKernelError(() => device.getRegionInfo(VFIO_PCI_NUM_REGIONS + 20), 'VFIO_DEVICE_GET_REGION_INFO', 'EINVAL');
    });

    it('a device without DMA logging: PROBE says no, DMA_LOGGING_START and REPORT fail with ENOTTY', () => {
      const iommufd = t.iommufd();
      const device = t.device(t.env.plainDevice);
      device.bindIommufd(iommufd);
      expect(device.featureProbe(VFIO_DEVICE_FEATURE_DMA_LOGGING_START)).toBe(false);
      expect(device.featureProbe(VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT)).toBe(false);
      expectKernelError(() => device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: MIB }]), 'VFIO_DEVICE_FEATURE', 'ENOTTY');
      expectKernelError(
        () => device.dmaLoggingReport({ iova: 0n, length: MIB, pageSize: 4n * KIB, bitmap: new Uint8Array(32) }),
        'VFIO_DEVICE_FEATURE',
        'ENOTTY',
      );
    });
  });

  describe('IOMMU_GET_HW_INFO', () => {
    const t = new ContractFixture(target);

    it('a mock device reports the selftest type, its register and the dirty capability; NO_DIRTY clears the capability', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const dirty = t.mock(iommufd, ioas);
      const info = iommufd.getHwInfo(dirty.devId!);
      expect(info.type).toBe(IOMMU_HW_INFO_TYPE_SELFTEST);
      expect(info.data.byteLength).toBe(iommu_test_hw_info.size);
      expect(iommu_test_hw_info.readNumber(info.data, 'test_reg')).toBe(IOMMU_HW_INFO_SELFTEST_REGVAL);
      expect(info.capabilities & BigInt(IOMMU_HW_CAP_DIRTY_TRACKING)).toBe(BigInt(IOMMU_HW_CAP_DIRTY_TRACKING));
      const plain = t.mock(iommufd, ioas, { noDirty: true });
      expect(iommufd.getHwInfo(plain.devId!).capabilities & BigInt(IOMMU_HW_CAP_DIRTY_TRACKING)).toBe(0n);
    });

    it('an unknown device ID fails with ENOENT', () => {
      const iommufd = t.iommufd();
      expectKernelError(() => iommufd.getHwInfo(12), 'IOMMU_GET_HW_INFO', 'ENOENT');
    });
  });
}
