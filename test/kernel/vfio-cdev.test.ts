// B. The edu PCI device (1234:11e8) through its VFIO cdev on the real kernel: finding it in
// sysfs, binding it to an iommufd, GET_HW_INFO, attaching it to an IOAS and to HWPTs (attach
// again = replace), detaching, device and region info, region access (config space and BAR0
// MMIO), reset, and device features. Virtio-iommu boot.
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/kernel/errors.js';
import type { DeviceHandle, IommufdHandle } from '../../src/kernel/types.js';
import { U64_MAX } from '../../src/kernel/validate.js';
import * as uapi from '../../src/uapi/index.js';
import { HostIommuInfo } from '../../src/vfio/host-iommu-info.js';
import { edu, onVirtioIommu } from './harness/guest-env.js';
import { expectKernelError, expectRefused, flushCoverage, kernel, MiB, perTestCleanup } from './support/kernel.js';

const { track } = perTestCleanup();
afterAll(() => flushCoverage('vfio-cdev.test.ts'));

const groupNumber = () => Number(edu.group.replace('/dev/vfio/', ''));
/** edu's IOVA ranges behind virtio-iommu: everything but the MSI window (its reserved region). */
const EDU_RANGES = [{ start: 0n, last: 0xfedf_ffffn }, { start: 0xfef0_0000n, last: U64_MAX }];
/** What is left of an IOAS holding a virtio-iommu domain that was never attached (6.12). */
const COLLAPSED = [{ start: 0n, last: 0n }];

/** An iommufd and edu's cdev, bound. */
function bound(): { fd: IommufdHandle; device: DeviceHandle; devId: number } {
  const fd = track(kernel().openIommufd());
  const device = track(kernel().openDevice(edu.cdev));
  const devId = device.bindIommufd(fd);
  return { fd, device, devId };
}

function u16(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint16(offset, true);
}
function u32(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(offset, true);
}
function le32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value >>> 0, true);
  return bytes;
}

describe.runIf(onVirtioIommu)('VFIO cdev: finding edu in sysfs', () => {
  it('by PCI address (long and short form), by sysfs path and by cdev path', () => {
    const k = kernel();
    const byAddress = k.locateDevice(edu.bdf);
    expect(byAddress).toEqual({
      name: edu.bdf,
      sysfsPath: realpathSync(`/sys/bus/pci/devices/${edu.bdf}`),
      pciAddress: edu.bdf,
      cdevPath: edu.cdev,
      groupId: groupNumber(),
      mdev: false,
      driver: 'vfio-pci',
    });
    expect(k.locateDevice(edu.bdf.replace(/^0000:/, ''))).toEqual(byAddress);
    expect(k.locateDevice(`/sys/bus/pci/devices/${edu.bdf}`)).toEqual(byAddress);
    expect(k.locateDevice(byAddress.sysfsPath!)).toEqual(byAddress);
    expect(k.locateDevice(edu.cdev)).toEqual(byAddress);
    expect(k.listDevices().map((d) => d.name)).toContain(edu.bdf);
  });

  it('an unknown device is an InvalidArgumentError that says what is allowed', () => {
    const error = expectRefused(() => kernel().locateDevice('0000:00:1e.7'), 'device');
    expect(error.message).toMatch(/was not found: give a PCI address/);
    expectRefused(() => kernel().locateDevice('/dev/vfio/devices/vfio99'), 'device');
    expectRefused(() => kernel().locateDevice('eth0'), 'device');
  });
});

describe.runIf(onVirtioIommu)('VFIO cdev: bind', () => {
  it('binds to an iommufd and reports the device ID; binding twice is EINVAL', () => {
    const { fd, device, devId } = bound();
    expect(device.kind).toBe('cdev');
    expect(device.devId).toBe(devId);
    expect(devId).toBeGreaterThan(0);
    expectKernelError(() => device.bindIommufd(fd), 'VFIO_DEVICE_BIND_IOMMUFD', 'EINVAL');
  });

  it('a second open of the cdev cannot bind while the first is bound (EINVAL: one user per cdev)', () => {
    const { fd } = bound();
    const second = track(kernel().openDevice(edu.cdev));
    expectKernelError(() => second.bindIommufd(fd), 'VFIO_DEVICE_BIND_IOMMUFD', 'EINVAL');
  });

  it('a device not bound yet answers every other ioctl with EINVAL', () => {
    const device = track(kernel().openDevice(edu.cdev));
    expect(device.devId).toBeUndefined();
    expectKernelError(() => device.getInfo(), 'VFIO_DEVICE_GET_INFO', 'EINVAL');
    expectKernelError(() => device.attachPt(1), 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'EINVAL');
  });

  it('a closed handle refuses calls before any ioctl', () => {
    const device = kernel().openDevice(edu.cdev);
    device.close();
    expect(device.closed).toBe(true);
    expectRefused(() => device.getInfo(), 'device');
    device.close(); // idempotent
  });
});

describe.runIf(onVirtioIommu)('VFIO cdev: GET_HW_INFO', () => {
  it('virtio-iommu has no hw_info op: type NONE, no data, no capabilities', () => {
    const { fd, devId } = bound();
    const info = fd.getHwInfo(devId);
    expect(info).toEqual({ type: uapi.IOMMU_HW_INFO_TYPE_NONE, capabilities: 0n, maxPasidLog2: 0, data: new Uint8Array(0) });
    const host = new HostIommuInfo(info);
    expect({ type: host.type, dirtyTracking: host.dirtyTracking, vtd: host.vtd }).toEqual({ type: 'none', dirtyTracking: false, vtd: undefined });
  });
});

describe.runIf(onVirtioIommu)('VFIO cdev: attach, replace, detach', () => {
  it('attaches to an IOAS (the kernel makes an auto HWPT), then to a HWPT, then to another IOAS, and detaches', () => {
    const { fd, device, devId } = bound();
    const ioas = fd.ioasAlloc();
    const auto = device.attachPt(ioas);
    expect(auto).not.toBe(ioas);
    expect(fd.ioasIovaRanges(ioas)).toEqual({ ranges: EDU_RANGES, alignment: 4096n });

    // replace: attach again, without a detach, to a HWPT allocated for edu
    const hwpt = fd.hwptAlloc({ devId, ptId: ioas });
    expect(fd.ioasIovaRanges(ioas).ranges).toEqual(COLLAPSED);
    expect(device.attachPt(hwpt)).toBe(hwpt);
    expectKernelError(() => fd.destroy(hwpt), 'IOMMU_DESTROY', 'EBUSY');

    // and again, to another IOAS: a new auto HWPT there; the first HWPT is free
    const other = fd.ioasAlloc();
    const auto2 = device.attachPt(other);
    expect([ioas, other, hwpt]).not.toContain(auto2);
    expect(fd.ioasIovaRanges(other).ranges).toEqual(COLLAPSED);
    fd.destroy(hwpt);
    expect(fd.ioasIovaRanges(ioas).ranges).toEqual([{ start: 0n, last: U64_MAX }]);

    device.detachPt();
    expect(fd.ioasIovaRanges(other).ranges).toEqual([{ start: 0n, last: U64_MAX }]);
    // the IOAS is free again
    fd.destroy(other);
  });

  it('virtio-iommu on 6.12: a HWPT allocated before its first attach has no aperture yet, so it claims all IOVAs but 0', () => {
    // viommu_domain_finalise() sets a domain's geometry at its first attach. IOMMU_HWPT_ALLOC
    // (and the auto domain a replace allocates) add the domain to the IOAS before that, with
    // aperture [0, 0]: iopt_table_add_domain() reserves [1, ULONG_MAX]. Kernels from 6.13 on
    // set the geometry at allocation (virtio-iommu's domain_alloc_paging).
    const { fd, device, devId } = bound();
    const ioas = fd.ioasAlloc();
    const memory = kernel().allocateHostMemory(4096n);
    try {
      fd.ioasMap({ ioasId: ioas, memory, length: 4096n, iova: MiB });
      // the kernel's own auto domain attaches first, then reserves: fine
      device.attachPt(ioas);
      expect(fd.ioasIovaRanges(ioas).ranges).toEqual(EDU_RANGES);
      // a HWPT for edu would reserve the IOVA that is mapped: refused
      expectKernelError(() => fd.hwptAlloc({ devId, ptId: ioas }), 'IOMMU_HWPT_ALLOC', 'EADDRINUSE');
      device.detachPt();
      fd.ioasUnmapAll(ioas);
      const hwpt = fd.hwptAlloc({ devId, ptId: ioas });
      expect(fd.ioasIovaRanges(ioas).ranges).toEqual(COLLAPSED);
      expectKernelError(() => fd.ioasMap({ ioasId: ioas, memory, length: 4096n, iova: MiB }), 'IOMMU_IOAS_MAP', 'EINVAL');
      // attaching does not give the IOVAs back while the HWPT lives
      device.attachPt(hwpt);
      expect(fd.ioasIovaRanges(ioas).ranges).toEqual(COLLAPSED);
      device.detachPt();
      fd.destroy(hwpt);
      expect(fd.ioasIovaRanges(ioas).ranges).toEqual([{ start: 0n, last: U64_MAX }]);
    } finally {
      device.close();
      fd.close();
      memory.release();
    }
  });

  it('edu cannot get a dirty-tracking HWPT (EOPNOTSUPP), attach to an unknown ID (ENOENT) or to a mock HWPT (EINVAL)', () => {
    const { fd, device, devId } = bound();
    const ioas = fd.ioasAlloc();
    expectKernelError(() => fd.hwptAlloc({ devId, ptId: ioas, flags: uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING }), 'IOMMU_HWPT_ALLOC', 'EOPNOTSUPP');
    expectKernelError(() => device.attachPt(0x7fff_fff0), 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'ENOENT');
    // a HWPT of another IOMMU driver: the kernel's first attach checks the domain's owner
    const mockIoas = fd.ioasAlloc();
    const mock = track(fd.test!.mockDomain(mockIoas));
    const mockHwpt = (mock as unknown as { initialHwptId: number }).initialHwptId;
    const error = expectKernelError(() => device.attachPt(mockHwpt), 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'EINVAL');
    expect(error.objects).toEqual({ device: edu.bdf, dev_id: devId, pt_id: mockHwpt });
    // still usable: attach to its own IOAS
    device.attachPt(ioas);
    device.detachPt();
  });
});

describe.runIf(onVirtioIommu)('VFIO cdev: device and region info', () => {
  it('is a PCI device with 9 regions and a reset', () => {
    const { device } = bound();
    const info = device.getInfo();
    expect(info.flags & uapi.VFIO_DEVICE_FLAGS_PCI).toBe(uapi.VFIO_DEVICE_FLAGS_PCI);
    // Alone behind boot.sh's pcie-root-port, edu has the bus reset method (pci_parent_bus_reset).
    expect(info.flags & uapi.VFIO_DEVICE_FLAGS_RESET).toBe(uapi.VFIO_DEVICE_FLAGS_RESET);
    expect(info.numRegions).toBe(uapi.VFIO_PCI_NUM_REGIONS);
    expect(info.numRegions).toBe(9);
    expect(info.numIrqs).toBe(5); // INTx, MSI, MSI-X, ERR, REQ
  });

  it('BAR0 is 1 MiB of MMIO, BARs 1-5 and the ROM are empty, config space is 256 bytes, VGA is absent', () => {
    const { device } = bound();
    const READ = uapi.VFIO_REGION_INFO_FLAG_READ;
    const WRITE = uapi.VFIO_REGION_INFO_FLAG_WRITE;
    const MMAP = uapi.VFIO_REGION_INFO_FLAG_MMAP;
    const bar0 = device.getRegionInfo(0);
    expect(bar0).toMatchObject({ index: 0, size: MiB, flags: READ | WRITE | MMAP });
    for (let index = 1; index <= uapi.VFIO_PCI_ROM_REGION_INDEX; index++) expect(device.getRegionInfo(index).size).toBe(0n);
    const config = device.getRegionInfo(uapi.VFIO_PCI_CONFIG_REGION_INDEX);
    expect(config).toMatchObject({ index: 7, size: 256n, flags: READ | WRITE });
    // each region sits at index << 40 in the device fd
    expect(config.offset).toBe(7n << 40n);
    expectKernelError(() => device.getRegionInfo(uapi.VFIO_PCI_VGA_REGION_INDEX), 'VFIO_DEVICE_GET_REGION_INFO', 'EINVAL');
    expectKernelError(() => device.getRegionInfo(9), 'VFIO_DEVICE_GET_REGION_INFO', 'EINVAL');
  });

  it('reads config space and BAR0 registers, and round-trips MMIO writes', async () => {
    const { device } = bound();
    const config = device.regionRead(uapi.VFIO_PCI_CONFIG_REGION_INDEX, 0n, 64);
    expect(u16(config, 0)).toBe(0x1234);
    expect(u16(config, 2)).toBe(0x11e8);
    expect(config[8]).toBe(0x10); // revision
    expect(u16(config, 0x0a)).toBe(0x00ff); // class code: PCI_CLASS_OTHERS
    // BAR0 0x00: identification 0x010000ed (major 1, minor 0, 0xed)
    expect(u32(device.regionRead(0, 0n, 4), 0)).toBe(0x010000ed);
    // 0x04: liveness check, reads back the inverse of what was written
    device.regionWrite(0, 4n, le32(0x1234_5678));
    expect(u32(device.regionRead(0, 4n, 4), 0)).toBe(~0x1234_5678 >>> 0);
    // 0x08: factorial, computed by a device thread while 0x20 bit 0 is set
    device.regionWrite(0, 8n, le32(10));
    for (let i = 0; i < 500 && (u32(device.regionRead(0, 0x20n, 4), 0) & 1) === 1; i++) await new Promise((r) => setTimeout(r, 10));
    expect(u32(device.regionRead(0, 8n, 4), 0)).toBe(3628800);
    // past the region's end: refused by the library
    expect(() => device.regionRead(uapi.VFIO_PCI_CONFIG_REGION_INDEX, 250n, 8)).toThrow(InvalidArgumentError);
  });

  it('VFIO_DEVICE_RESET: edu has no FLR or PM reset, but alone on a bridge\'s bus it resets through a secondary bus reset', () => {
    const { device } = bound();
    expect(device.getInfo().flags & uapi.VFIO_DEVICE_FLAGS_RESET).toBe(uapi.VFIO_DEVICE_FLAGS_RESET);
    // pci_reset_function picks the bus method; the device answers on BAR0 afterwards
    device.reset();
    expect(u32(device.regionRead(0, 0n, 4), 0)).toBe(0x010000ed);
    const methods = readFileSync(`/sys/bus/pci/devices/${edu.bdf}/reset_method`, 'utf8').trim().split(/\s+/);
    expect(methods).toEqual(['bus']);
  });
});

describe.runIf(onVirtioIommu)('VFIO cdev: device features', () => {
  it('edu has neither migration nor DMA logging: PROBE says no, and START/STOP/REPORT are ENOTTY', () => {
    const { device } = bound();
    expect(device.featureProbe(uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START)).toBe(false);
    expect(device.featureProbe(uapi.VFIO_DEVICE_FEATURE_MIGRATION)).toBe(false);
    // vfio-pci gives every device LOW_POWER_ENTRY (3), a SET-only feature: PROBE alone finds it
    expect(device.featureProbe(3)).toBe(true);
    expectKernelError(() => device.dmaLoggingStart(4096n, [{ iova: 0n, length: MiB }]), 'VFIO_DEVICE_FEATURE', 'ENOTTY');
    expectKernelError(() => device.dmaLoggingStop(), 'VFIO_DEVICE_FEATURE', 'ENOTTY');
    expectKernelError(
      () => device.dmaLoggingReport({ iova: 0n, length: MiB, pageSize: 4096n, bitmap: new Uint8Array(32) }),
      'VFIO_DEVICE_FEATURE', 'ENOTTY',
    );
  });

  it('the library refuses malformed DMA logging requests before any ioctl', () => {
    const { device } = bound();
    expectRefused(() => device.dmaLoggingStart(4096n, []), 'ranges');
    expectRefused(() => device.dmaLoggingStart(3000n, [{ iova: 0n, length: MiB }]), 'pageSize');
    const many = Array.from({ length: 257 }, (_, i) => ({ iova: BigInt(i) * MiB, length: 4096n }));
    expectRefused(() => device.dmaLoggingStart(4096n, many), 'ranges');
    expectRefused(() => device.dmaLoggingReport({ iova: 0n, length: MiB, pageSize: 4096n, bitmap: new Uint8Array(8) }), 'report.bitmap');
  });
});

describe.runIf(onVirtioIommu)('VFIO cdev: the guest', () => {
  it('edu is the only device on vfio-pci and its cdev node exists', () => {
    expect(existsSync(edu.cdev)).toBe(true);
    expect(kernel().listDevices().filter((d) => d.driver === 'vfio-pci').map((d) => d.name)).toEqual([edu.bdf]);
  });
});
