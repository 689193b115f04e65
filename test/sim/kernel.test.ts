// The simulator's own controls and the rules only it can show: the object table and leak check,
// file descriptors, fault injection and tracing, argument validation before any ioctl, DMA paths,
// iommu groups shared by several devices, and type1's whole-word bitmap writes.
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, KernelError } from '../../src/kernel/errors.js';
import { simulatedKernel, SimulatedMockDevice } from '../../src/kernel/sim/index.js';
import {
  IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
  MOCK_APERTURE_START,
  VFIO_TYPE1v2_IOMMU,
} from '../../src/uapi/index.js';
import { expectInvalidArgument, expectKernelError, setBitIndexes } from '../contract/context.js';

const KIB = 1024n;
const MIB = 1024n * KIB;
const GIB = 1024n * MIB;

function kernelWithDevices() {
  return simulatedKernel({
    devices: [
      { name: 'nic0', iommuDirtyTracking: true },
      { name: 'nic1', iommuDirtyTracking: true, groupId: 50 },
      { name: 'nic2', iommuDirtyTracking: true, groupId: 50 },
      { name: 'mdev0', mdev: true },
      { name: 'old0', legacyOnly: true },
    ],
  });
}

describe('object table and leaks', () => {
  it('lists live objects with their users, and assertClean names what is left', () => {
    const kernel = kernelWithDevices();
    const iommufd = kernel.openIommufd();
    const ioas = iommufd.ioasAlloc();
    const device = kernel.openDevice('nic0');
    const devId = device.bindIommufd(iommufd);
    const hwpt = device.attachPt(ioas);
    const memory = kernel.allocateHostMemory(MIB);
    iommufd.ioasMap({ ioasId: ioas, memory, length: MIB, iova: GIB });
    const table = kernel.objects();
    expect(table.openFds).toBe(2);
    expect(table.iommufds[0]!.objects.map(({ id, type, users }) => ({ id, type, users }))).toEqual([
      { id: ioas, type: 'ioas', users: 2 },
      { id: devId, type: 'device', users: 3 },
      { id: hwpt, type: 'hwpt_paging', users: 2 },
    ]);
    expect(table.iommufds[0]!.objects[0]!.details).toMatchObject({ mappings: 1, mappedBytes: MIB, hwpts: [hwpt] });
    expect(table.deviceFiles).toEqual([{ fd: 4, name: 'nic0', kind: 'cdev', devId, attached: true }]);
    expect(() => kernel.assertClean()).toThrow(/2 open fd\(s\).*iommufd fd 3.*device nic0.*still mapped 1 time/);
    expect(() => memory.release()).toThrow(InvalidArgumentError);
    device.close();
    iommufd.close();
    expect(() => kernel.assertClean()).toThrow(/not released/);
    kernel.assertClean({ allowHostMemory: true });
    memory.release();
    kernel.assertClean();
  });

  it('file descriptors are the lowest free from 3, as open(2) gives them', () => {
    const kernel = kernelWithDevices();
    const a = kernel.openIommufd();
    const b = kernel.openLegacyContainer();
    const c = kernel.openDevice('nic0');
    expect([a.fd, b.fd]).toEqual([3, 4]);
    b.close();
    const d = kernel.openIommufd();
    expect(d.fd).toBe(4);
    for (const handle of [a, c, d]) handle.close();
    kernel.assertClean();
  });

  it('an iommufd closed under a bound device lives on until the device goes; the closed handle refuses calls', () => {
    const kernel = kernelWithDevices();
    const iommufd = kernel.openIommufd();
    const ioas = iommufd.ioasAlloc();
    const device = kernel.openDevice('nic0');
    device.bindIommufd(iommufd);
    device.attachPt(ioas);
    iommufd.close();
    expect(iommufd.closed).toBe(true);
    expectInvalidArgument(() => iommufd.ioasAlloc(), 'iommufd');
    expect(kernel.objects().iommufds).toEqual([expect.objectContaining({ fdClosed: true })]);
    device.close();
    kernel.assertClean();
  });

  it('closing an iommufd destroys its mock devices with it', () => {
    const kernel = simulatedKernel();
    const iommufd = kernel.openIommufd();
    const mock = iommufd.test!.mockDomain(iommufd.ioasAlloc());
    expect(kernel.objects().mockDevices).toEqual(['iommufd_mock0']);
    iommufd.close();
    expect(kernel.objects().mockDevices).toEqual([]);
    // As on linux: closing the handle afterwards is refused, the iommufd being closed.
    expectInvalidArgument(() => mock.close(), 'iommufd');
    expect(mock.closed).toBe(true);
    kernel.assertClean();
  });

  it('a kernel without CONFIG_IOMMUFD_TEST has no test ops', () => {
    const kernel = simulatedKernel({ iommufdTest: false });
    const iommufd = kernel.openIommufd();
    expect(iommufd.test).toBeUndefined();
    iommufd.close();
  });
});

describe('fault injection and tracing', () => {
  it('failNext fails the next matching ioctl before it changes anything', () => {
    const kernel = kernelWithDevices();
    const iommufd = kernel.openIommufd();
    const ioas = iommufd.ioasAlloc();
    const device = kernel.openDevice('nic0');
    const devId = device.bindIommufd(iommufd);
    kernel.failNext('IOMMU_HWPT_ALLOC', 'ENOMEM');
    const before = kernel.objects();
    const error = expectKernelError(() => iommufd.hwptAlloc({ devId, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING }), 'IOMMU_HWPT_ALLOC', 'ENOMEM');
    expect(error.objects).toEqual({ dev_id: devId, pt_id: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
    expect(error.message).toBe(`IOMMU_HWPT_ALLOC(dev_id ${devId}, pt_id ${ioas}, flags 2) failed: Cannot allocate memory`);
    expect(kernel.objects()).toEqual(before);
    const hwpt = iommufd.hwptAlloc({ devId, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
    iommufd.destroy(hwpt);
    device.close();
    iommufd.close();
    kernel.assertClean();
  });

  it('after, times and objects select which calls fail; failWhen decides per call', () => {
    const kernel = kernelWithDevices();
    const iommufd = kernel.openIommufd();
    kernel.failNext('IOMMU_IOAS_ALLOC', 'EIO', { after: 1, times: 2 });
    expect(iommufd.ioasAlloc()).toBe(1);
    expectKernelError(() => iommufd.ioasAlloc(), 'IOMMU_IOAS_ALLOC', 'EIO');
    expectKernelError(() => iommufd.ioasAlloc(), 'IOMMU_IOAS_ALLOC', 'EIO');
    expect(iommufd.ioasAlloc()).toBe(2);
    kernel.failNext('IOMMU_DESTROY', 'EBUSY', { objects: { id: 2 } });
    iommufd.destroy(1);
    expectKernelError(() => iommufd.destroy(2), 'IOMMU_DESTROY', 'EBUSY');
    expect(kernel.pendingFaults).toBe(0);
    const stop = kernel.failWhen((call) => (call.ioctl === 'open' && call.objects.path === '/dev/iommu' ? 'EACCES' : undefined));
    expectKernelError(() => kernel.openIommufd(), 'open', 'EACCES');
    stop();
    kernel.openIommufd().close();
    iommufd.close();
    kernel.assertClean();
  });

  it('failing each ioctl of a multi-step operation in turn proves its unwinding (here: a tiny attach helper)', () => {
    const kernel = kernelWithDevices();
    /** Open, bind, allocate a dirty HWPT, attach; on failure undo what was done, in reverse. */
    const attachDirty = (): void => {
      const iommufd = kernel.openIommufd();
      const undo: (() => void)[] = [() => iommufd.close()];
      try {
        const ioas = iommufd.ioasAlloc();
        const device = kernel.openDevice('nic0');
        undo.push(() => device.close());
        const devId = device.bindIommufd(iommufd);
        const hwpt = iommufd.hwptAlloc({ devId, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
        undo.push(() => iommufd.destroy(hwpt));
        device.attachPt(hwpt);
        undo.push(() => device.detachPt());
        iommufd.hwptSetDirtyTracking(hwpt, true);
      } catch (error) {
        for (const step of undo.reverse()) step();
        throw error;
      }
      for (const step of undo.reverse()) step();
    };
    const trace = kernel.startTrace();
    attachDirty();
    trace.stop();
    expect(trace.summary).toEqual([
      'open', 'IOMMU_IOAS_ALLOC', 'open', 'VFIO_DEVICE_BIND_IOMMUFD', 'IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT',
      'IOMMU_HWPT_SET_DIRTY_TRACKING', 'VFIO_DEVICE_DETACH_IOMMUFD_PT', 'IOMMU_DESTROY',
    ]);
    kernel.assertClean();
    const steps = trace.records.slice(0, 7);
    steps.forEach((step, position) => {
      const after = steps.slice(0, position).filter((earlier) => earlier.ioctl === step.ioctl).length;
      kernel.failNext(step.ioctl, 'EIO', { after });
      expect(attachDirty).toThrow(KernelError);
      kernel.assertClean();
    });
  });

  it('arguments are refused before any ioctl: nothing reaches the kernel', () => {
    const kernel = simulatedKernel();
    const iommufd = kernel.openIommufd();
    const trace = kernel.startTrace();
    expectInvalidArgument(() => iommufd.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length: 12n * KIB, pageSize: 3n * KIB, bitmap: new Uint8Array(1) }), /pageSize/);
    expectInvalidArgument(() => iommufd.destroy(-1), 'id');
    expectInvalidArgument(() => iommufd.ioasMap({ ioasId: 1, memory: kernel.allocateHostMemory(4n * KIB), length: 8n * KIB, iova: 0n }), 'memoryOffset');
    expect(trace.records).toEqual([]);
    trace.stop();
    iommufd.close();
  });
});

describe('host memory', () => {
  it('released memory cannot be mapped: InvalidArgumentError, or EFAULT from the kernel without validation', () => {
    const kernel = simulatedKernel();
    const memory = kernel.allocateHostMemory(4n * KIB);
    memory.release();
    expect(memory.released).toBe(true);
    const checked = kernel.openIommufd();
    expectInvalidArgument(() => checked.ioasMap({ ioasId: checked.ioasAlloc(), memory, length: 4n * KIB, iova: 0n }), 'memory');
    const raw = kernel.openIommufd({ validateArguments: false });
    expectKernelError(() => raw.ioasMap({ ioasId: raw.ioasAlloc(), memory, length: 4n * KIB, iova: 0n }), 'IOMMU_IOAS_MAP', 'EFAULT');
    const other = simulatedKernel().allocateHostMemory(4n * KIB);
    expectInvalidArgument(() => checked.ioasMap({ ioasId: 1, memory: other, length: 4n * KIB, iova: 0n }), 'memory');
    checked.close();
    raw.close();
    kernel.assertClean();
  });

  it('allocations cost no memory: 1 PiB of host memory is just addresses', () => {
    const kernel = simulatedKernel();
    const memory = kernel.allocateHostMemory(1n << 50n);
    expect(memory.bytes).toBeUndefined();
    expect(memory.address % (2n * MIB)).toBe(0n);
    const huge = kernel.allocateHostMemory(GIB, { pageSize: GIB });
    expect(huge.address % GIB).toBe(0n);
    expectInvalidArgument(() => kernel.allocateHostMemory(MIB, { pageSize: 8192n }), 'pageSize');
    memory.release();
    huge.release();
    kernel.assertClean();
  });
});

describe('devices, groups and DMA', () => {
  it('locates devices by name, PCI address, sysfs path and cdev path', () => {
    const kernel = kernelWithDevices();
    const nic = kernel.locateDevice('nic0');
    expect(nic).toEqual({
      name: 'nic0', sysfsPath: '/sys/bus/pci/devices/0000:00:03.0', pciAddress: '0000:00:03.0', cdevPath: '/dev/vfio/devices/vfio0',
      groupId: 100, mdev: false, driver: 'vfio-pci',
    });
    for (const location of ['0000:00:03.0', nic.sysfsPath!, nic.cdevPath!]) expect(kernel.locateDevice(location).name).toBe('nic0');
    expect(kernel.locateDevice('mdev0')).toMatchObject({ mdev: true, pciAddress: undefined, driver: 'vfio_mdev' });
    expect(kernel.listDevices().map((device) => device.name)).toEqual(['nic0', 'nic1', 'nic2', 'mdev0', 'old0']);
    expectInvalidArgument(() => kernel.locateDevice('gpu9'), 'device');
    expectInvalidArgument(() => kernel.openDevice('old0'), 'device');
    expectKernelError(() => kernel.openGroup(999), 'open', 'ENOENT');
  });

  it('a group opens once: a second open fails with EBUSY', () => {
    const kernel = kernelWithDevices();
    const group = kernel.openGroup(50);
    expectKernelError(() => kernel.openGroup(50), 'open', 'EBUSY');
    group.close();
    kernel.openGroup(50).close();
    kernel.assertClean();
  });

  it('devices of one iommu group attach together: another HWPT for the second device is EINVAL', () => {
    const kernel = kernelWithDevices();
    const iommufd = kernel.openIommufd();
    const first = kernel.openDevice('nic1');
    const second = kernel.openDevice('nic2');
    const firstId = first.bindIommufd(iommufd);
    second.bindIommufd(iommufd);
    const a = iommufd.ioasAlloc();
    const b = iommufd.ioasAlloc();
    const hwpt = first.attachPt(a);
    const other = iommufd.hwptAlloc({ devId: firstId, ptId: b });
    expectKernelError(() => second.attachPt(other), 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'EINVAL');
    expect(second.attachPt(hwpt)).toBe(hwpt);
    for (const handle of [first, second, iommufd]) handle.close();
    kernel.assertClean();
  });

  it('a group bound to one iommufd cannot be bound to another (DMA ownership): EBUSY', () => {
    const kernel = kernelWithDevices();
    const one = kernel.openIommufd();
    const two = kernel.openIommufd();
    const first = kernel.openDevice('nic1');
    const second = kernel.openDevice('nic2');
    first.bindIommufd(one);
    expectKernelError(() => second.bindIommufd(two), 'VFIO_DEVICE_BIND_IOMMUFD', 'EBUSY');
    second.bindIommufd(one);
    for (const handle of [first, second, one, two]) handle.close();
    kernel.assertClean();
  });

  it('DMA follows the device: faults unattached, reaches memory through an mdev\'s IOAS (no IOMMU dirty bits), or a mock\'s HWPT', () => {
    const kernel = kernelWithDevices();
    const iommufd = kernel.openIommufd();
    const ioas = iommufd.ioasAlloc();
    const memory = kernel.allocateHostMemory(MIB);
    const mdev = kernel.openDevice('mdev0');
    expect(kernel.dmaWrite('mdev0', GIB, 4n * KIB)).toEqual({ written: 0n, faulted: 4n * KIB });
    mdev.bindIommufd(iommufd);
    mdev.attachPt(ioas);
    iommufd.ioasMap({ ioasId: ioas, memory, length: MIB, iova: GIB });
    expect(kernel.dmaWrite(mdev, GIB + MIB - 2n * KIB, 4n * KIB)).toEqual({ written: 2n * KIB, faulted: 2n * KIB });

    const mockIoas = iommufd.ioasAlloc();
    const mock = iommufd.test!.mockDomain(mockIoas);
    expect(mock).toBeInstanceOf(SimulatedMockDevice);
    const hwpt = iommufd.hwptAlloc({ devId: mock.devId!, ptId: mockIoas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
    mock.attachPt(hwpt);
    iommufd.ioasMap({ ioasId: mockIoas, memory, length: MIB, iova: MOCK_APERTURE_START });
    iommufd.hwptSetDirtyTracking(hwpt, true);
    expect(kernel.dmaWrite(mock, MOCK_APERTURE_START + 4n * KIB, 2n * KIB)).toEqual({ written: 2n * KIB, faulted: 0n });
    const bitmap = new Uint8Array(64);
    iommufd.hwptGetDirtyBitmap({ hwptId: hwpt, iova: MOCK_APERTURE_START, length: MIB, pageSize: 2n * KIB, bitmap });
    expect(setBitIndexes(bitmap)).toEqual([2]);
    for (const handle of [mock, mdev, iommufd]) handle.close();
    memory.release();
    kernel.assertClean();
  });

  it('type1 writes dirty bitmaps in whole u64 words: bits after a mapping in its last word are cleared', () => {
    const kernel = simulatedKernel({ devices: [{ name: 'nic0', groupId: 9 }] });
    const container = kernel.openLegacyContainer();
    const group = kernel.openGroup(9);
    group.setContainer(container);
    container.setIommu(VFIO_TYPE1v2_IOMMU);
    const memory = kernel.allocateHostMemory(64n * KIB);
    container.mapDma({ memory, iova: MIB, size: 16n * KIB });
    container.dirtyPagesStart();
    const bitmap = new Uint8Array(8).fill(0xff);
    container.dirtyPagesGetBitmap({ iova: MIB, length: 32n * KIB, pageSize: 4n * KIB, bitmap });
    // Pages 0-3 mapped (all dirty); 4-63 in the same u64 word were overwritten with zeros.
    expect(setBitIndexes(bitmap)).toEqual([0, 1, 2, 3]);
    // A mapping starting mid-word keeps the bits below it in that word (here the first mapping's).
    container.mapDma({ memory, memoryOffset: 16n * KIB, iova: MIB + 8n * 4n * KIB, size: 8n * KIB });
    bitmap.fill(0);
    bitmap[0] = 0b0010_0000;
    container.dirtyPagesGetBitmap({ iova: MIB, length: 64n * KIB, pageSize: 4n * KIB, bitmap });
    expect(setBitIndexes(bitmap)).toEqual([0, 1, 2, 3, 8, 9]);
    container.dirtyPagesStop();
    group.close();
    container.close();
    memory.release();
    kernel.assertClean();
  });
});

describe('DMA_LOGGING_START range limit follows the kernel page size', () => {
  // LOG_MAX_RANGES = PAGE_SIZE / sizeof(struct vfio_device_feature_dma_logging_range), which is
  // two __aligned_u64 in linux/vfio.h: 16 bytes (gcc-checked against the header in test/uapi).
  const SIZEOF_DMA_LOGGING_RANGE = 16;
  for (const page of [4096, 65536]) {
    it(`with ${page / 1024} KiB pages: ${page / SIZEOF_DMA_LOGGING_RANGE} ranges pass, one more is refused (E2BIG unchecked)`, () => {
      const limit = page / SIZEOF_DMA_LOGGING_RANGE;
      const kernel = simulatedKernel({
        systemPageSize: BigInt(page),
        devices: [{ name: 'gpu0', dmaLogging: { maxRanges: 1 << 20, tooManyRanges: 'reject' } }],
      });
      expect(kernel.systemPageSize).toBe(BigInt(page));
      const ranges = (count: number) => Array.from({ length: count }, (_, index) => ({ iova: BigInt(index) * 64n * KIB, length: 4n * KIB }));
      const checked = kernel.openDevice('gpu0');
      expectInvalidArgument(() => checked.dmaLoggingStart(4n * KIB, ranges(limit + 1)), 'ranges');
      checked.close();
      const iommufd = kernel.openIommufd();
      const device = kernel.openDevice('gpu0', { validateArguments: false });
      device.bindIommufd(iommufd);
      expectKernelError(() => device.dmaLoggingStart(4n * KIB, ranges(limit + 1)), 'VFIO_DEVICE_FEATURE', 'E2BIG');
      device.dmaLoggingStart(4n * KIB, ranges(limit));
      device.dmaLoggingStop();
      device.close();
      iommufd.close();
      kernel.assertClean();
    });
  }

  it('refuses a PAGE_SIZE Linux does not build with', () => {
    expect(() => simulatedKernel({ systemPageSize: 8192n })).toThrow(InvalidArgumentError);
  });
});
