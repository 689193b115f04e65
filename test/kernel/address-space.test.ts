// F. AddressSpace (the hw/vfio layer) on the real kernel: userspace auto domains with the
// kernel's dirty-capable test mocks (two share one dirty HWPT; a mock without dirty tracking is
// refused by it with EINVAL and gets a HWPT of its own), mappings replayed into the IOAS,
// detach order, close() leaving nothing; and edu attached through iommufd and through the legacy
// type1 backend, mapped, DMA'd through, unmapped and detached, on both boots. On virtio-iommu
// (Linux 6.12) a HWPT from IOMMU_HWPT_ALLOC has no aperture before its first attach, so the
// space falls back to the kernel's own auto domain for edu (no dirty tracking is lost by it).
import { afterAll, describe, expect, it } from 'vitest';
import * as uapi from '../../src/uapi/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';
import { edu, inKernelGuest, onIntelIommu, onVirtioIommu } from './harness/guest-env.js';
import { EDU_BUFFER_SIZE, eduCopy, eduDriver, enableBusMaster, pattern } from './support/edu.js';
import { expectKernelErrorAsync, flushCoverage, kernel, MiB, setBit, syscalls } from './support/kernel.js';

const START = uapi.MOCK_APERTURE_START;
afterAll(() => flushCoverage('address-space.test.ts'));

/** The ioctls (with their sub-operation and result) issued while `action` ran. */
async function recorded(action: () => Promise<unknown>): Promise<string[]> {
  const from = syscalls().records.length;
  await action();
  return syscalls().records.slice(from).map((r) => `${r.name}${r.detail ? ` ${r.detail}` : ''} ${r.result}`);
}

describe.runIf(onVirtioIommu)('AddressSpace: auto domains with kernel test mocks', () => {
  it('two dirty-capable mocks share one dirty HWPT; a mock without dirty tracking gets its own', async () => {
    const fdsBefore = syscalls().openFds().length;
    const space = new AddressSpace(kernel());
    const a = await space.attach('mock');
    const b = await space.attach('mock');
    expect(a.hostIommu?.type).toBe('selftest');
    expect([a.dirtyTracker, b.dirtyTracker]).toEqual(['iommu', 'iommu']);
    expect(a.hwpt).toBe(b.hwpt);
    expect(a.hwpt?.dirtyTracking).toBe(true);
    const dirtyHwpt = a.hwpt!.id;

    // the third: EINVAL on the dirty HWPT (dropped, as QEMU does), then a plain HWPT of its own
    let c!: Awaited<ReturnType<AddressSpace['attach']>>;
    const calls = await recorded(async () => {
      c = await space.attach('mock:no-dirty');
    });
    expect(calls.filter((call) => /MOCK_DOMAIN_REPLACE|HWPT_ALLOC/.test(call))).toEqual([
      'IOMMU_TEST_CMD op MOCK_DOMAIN_REPLACE EINVAL',
      'IOMMU_HWPT_ALLOC plain ok',
      'IOMMU_TEST_CMD op MOCK_DOMAIN_REPLACE ok',
    ]);
    expect(c.hwpt?.dirtyTracking).toBe(false);
    expect(c.dirtyTracker).toBe('none');

    const ioasId = (space.containers[0] as unknown as { ioasId: number }).ioasId;
    expect(space.topology()).toEqual({
      containers: [{
        backend: 'iommufd',
        ioasId,
        hwpts: [
          { id: dirtyHwpt, dirtyTracking: true, devices: [a.name, b.name] },
          { id: c.hwpt!.id, dirtyTracking: false, devices: [c.name] },
        ],
        ioasDevices: [],
        iovaRanges: [{ start: '0x1000000', last: '0x7fffffff' }],
      }],
      devices: [
        { name: a.name, backend: 'iommufd', tracker: 'iommu', container: 0, hwpt: dirtyHwpt },
        { name: b.name, backend: 'iommufd', tracker: 'iommu', container: 0, hwpt: dirtyHwpt },
        { name: c.name, backend: 'iommufd', tracker: 'none', container: 0, hwpt: c.hwpt!.id },
      ],
    });

    // a mapping reaches the HWPTs: the mock can mark each of its 2 KiB pages dirty
    const mapping = await space.map({ iova: START, size: MiB });
    const iommufd = space.iommufdHandle!;
    iommufd.hwptSetDirtyTracking(dirtyHwpt, true);
    const marks = new Uint8Array(64);
    for (let i = 0; i < 512; i++) setBit(marks, i);
    expect(iommufd.test!.markDirty(dirtyHwpt, { iova: START, length: MiB, pageSize: uapi.MOCK_IO_PAGE_SIZE, bitmap: marks })).toBe(512n);
    iommufd.hwptSetDirtyTracking(dirtyHwpt, false);

    // outside the mock aperture the kernel refuses, and the space keeps what it had
    await expectKernelErrorAsync(() => space.map({ iova: 0n, size: 4096n }), 'IOMMU_IOAS_MAP', 'EINVAL');
    expect(space.mappings).toEqual([mapping]);

    // detach in QEMU's order: the shared HWPT stays until its last device leaves
    await space.detach(b);
    expect(space.topology().containers[0]).toMatchObject({ hwpts: [{ id: dirtyHwpt, devices: [a.name] }, { devices: [c.name] }] });
    await space.detach(a);
    expect(space.topology().containers[0]).toMatchObject({ hwpts: [{ id: c.hwpt!.id, dirtyTracking: false, devices: [c.name] }] });
    expect(() => iommufd.destroy(dirtyHwpt)).toThrow(expect.objectContaining({ ioctl: 'IOMMU_DESTROY', code: 'ENOENT' }));

    await space.close();
    expect(space.topology()).toEqual({ containers: [], devices: [] });
    expect(space.iommufdHandle).toBeUndefined();
    expect(iommufd.closed).toBe(true);
    expect(mapping.memory.released).toBe(true);
    expect(syscalls().openFds().length).toBe(fdsBefore);
    await expect(space.attach('mock')).rejects.toThrow(/address space: is closed/);
  });

  it('a failing attach unwinds: nothing is left in the kernel or the space', async () => {
    const space = new AddressSpace(kernel());
    await space.attach('mock');
    // legacy for a mock makes no sense: refused before anything happens
    await expect(space.attach('mock', { iommufd: 'off' })).rejects.toThrow(/only on iommufd/);
    // the same display name twice: the second mock is created, then destroyed again
    const calls = await recorded(() => space.attach('mock', { name: 'm' }).then(() => space.attach('mock', { name: 'm' })).catch(() => undefined));
    expect(calls.filter((call) => call.startsWith('IOMMU_TEST_CMD op MOCK_DOMAIN ') || call.startsWith('IOMMU_DESTROY'))).toEqual([
      'IOMMU_TEST_CMD op MOCK_DOMAIN ok', 'IOMMU_TEST_CMD op MOCK_DOMAIN ok', 'IOMMU_DESTROY ok',
    ]);
    expect(space.devices.map((d) => d.name)).toHaveLength(2);
    expect(space.topology().containers[0]).toMatchObject({ hwpts: [{ dirtyTracking: true }] });
    await space.close();
  });
});

/** edu's IOVA ranges in this boot: all but the MSI window, up to the vIOMMU's address width. */
const eduRanges = () => [
  { start: '0x0', last: '0xfedfffff' },
  { start: '0xfef00000', last: onIntelIommu ? '0x7fffffffff' : '0xffffffffffffffff' },
];

/** Runs `body` with a fresh space, closing it whatever happens (edu is shared by every test). */
async function withSpace(body: (space: AddressSpace) => Promise<void>): Promise<void> {
  const space = new AddressSpace(kernel());
  try {
    await body(space);
  } finally {
    await space.close().catch(() => undefined);
  }
}

describe.runIf(onIntelIommu)('AddressSpace: edu through iommufd', () => {
  it('bound, on a HWPT of its own, mapped, DMA through, unmapped, detached', () =>
    withSpace(async (space) => {
      const device = await space.attach(edu.bdf, { iommufd: 'on' });
      expect(device.backend).toBe('iommufd');
      expect(device.handle.kind).toBe('cdev');
      expect(device.hostIommu?.type).toBe('intel-vtd');
      expect(device.dmaLogging).toBe(false);
      expect(device.dirtyTracker).toBe('none');
      expect(device.info?.numRegions).toBe(9);
      expect(space.topology().containers).toEqual([{
        backend: 'iommufd',
        ioasId: expect.any(Number),
        hwpts: [{ id: device.hwpt!.id, dirtyTracking: false, devices: [edu.bdf] }],
        ioasDevices: [],
        iovaRanges: eduRanges(),
      }]);

      const from = kernel().allocateHostMemory(4096n);
      const to = kernel().allocateHostMemory(4096n);
      await space.map({ iova: MiB, size: 4096n, memory: from });
      await space.map({ iova: 2n * MiB, size: 4096n, memory: to });
      // the interrupt window is reserved
      await expectKernelErrorAsync(() => space.map({ iova: 0xfee0_0000n, size: 4096n }), 'IOMMU_IOAS_MAP', 'EINVAL');
      expect(space.mappings).toHaveLength(2);
      enableBusMaster(device.handle);
      const data = pattern(EDU_BUFFER_SIZE, 7);
      from.bytes!.set(data);
      to.bytes!.fill(0);
      await eduCopy(eduDriver(device.handle), MiB, 2n * MiB);
      expect(Buffer.from(to.bytes!.subarray(0, EDU_BUFFER_SIZE)).equals(Buffer.from(data))).toBe(true);

      expect(await space.unmap({ iova: 2n * MiB, size: 4096n })).toHaveLength(1);
      await expect(space.unmap({ iova: 2n * MiB, size: 4096n })).rejects.toThrow(/nothing is mapped/);
      await space.detach(device);
      expect(space.topology()).toEqual({ containers: [], devices: [] });
      expect(device.handle.closed).toBe(true);
      await space.close();
      from.release();
      to.release();
    }));
});

describe.runIf(onVirtioIommu)('AddressSpace: edu through iommufd on virtio-iommu (Linux 6.12)', () => {
  it('falls back to the kernel\'s auto domain (its own HWPT would collapse the IOAS), then maps and DMAs through it', () =>
    withSpace(async (space) => {
      // See vfio-cdev.test.ts: a virtio-iommu domain gets its aperture at its first attach, and
      // IOMMU_HWPT_ALLOC adds it to the IOAS before that, leaving only IOVA 0.
      const device = await space.attach(edu.bdf, { iommufd: 'on' });
      expect(device.hostIommu?.type).toBe('none');
      expect(device.dirtyTracker).toBe('none');
      expect(device.attachedToIoas).toBe(true);
      expect(space.topology().containers).toEqual([{
        backend: 'iommufd', ioasId: expect.any(Number), hwpts: [], ioasDevices: [edu.bdf], iovaRanges: eduRanges(),
      }]);
      const from = kernel().allocateHostMemory(4096n);
      const to = kernel().allocateHostMemory(4096n);
      await space.map({ iova: MiB, size: 4096n, memory: from });
      await space.map({ iova: 2n * MiB, size: 4096n, memory: to });
      enableBusMaster(device.handle);
      const data = pattern(EDU_BUFFER_SIZE, 9);
      from.bytes!.set(data);
      to.bytes!.fill(0);
      await eduCopy(eduDriver(device.handle), MiB, 2n * MiB);
      expect(Buffer.from(to.bytes!.subarray(0, EDU_BUFFER_SIZE)).equals(Buffer.from(data))).toBe(true);
      await space.unmap({ iova: MiB, size: 2n * MiB });
      await space.detach(device);
      // Mapped before the attach: the fallback works there too (the HWPT clashed with EADDRINUSE).
      await space.map({ iova: MiB, size: 4096n, memory: from });
      const again = await space.attach(edu.bdf, { iommufd: 'on' });
      expect(again.attachedToIoas).toBe(true);
      await space.detach(again);
      await space.unmap({ iova: MiB, size: 4096n });
      expect(space.topology()).toEqual({ containers: [], devices: [] });
      await space.close();
      from.release();
      to.release();
    }));
});

describe.runIf(inKernelGuest)('AddressSpace: edu through the legacy type1 backend', () => {
  it('group, container, type1 dirty tracking, DMA, detach', () =>
    withSpace(async (space) => {
      const device = await space.attach(edu.bdf, { iommufd: 'off' });
      expect(device.backend).toBe('legacy');
      expect(device.handle.kind).toBe('group');
      expect(device.dirtyTracker).toBe('type1');
      expect(space.topology()).toEqual({
        containers: [{
          backend: 'legacy',
          groups: [kernel().locateDevice(edu.bdf).groupId],
          devices: [edu.bdf],
          type1DirtyTracking: true,
          iovaRanges: eduRanges(),
        }],
        devices: [{ name: edu.bdf, backend: 'legacy', tracker: 'type1', container: 0, hwpt: undefined }],
      });
      const from = kernel().allocateHostMemory(4096n);
      const to = kernel().allocateHostMemory(4096n);
      await space.map({ iova: MiB, size: 4096n, memory: from });
      await space.map({ iova: 2n * MiB, size: 4096n, memory: to });
      await expectKernelErrorAsync(() => space.map({ iova: 0xfee0_0000n, size: 4096n }), 'VFIO_IOMMU_MAP_DMA', 'EINVAL');
      enableBusMaster(device.handle);
      const data = pattern(EDU_BUFFER_SIZE, 8);
      from.bytes!.set(data);
      to.bytes!.fill(0);
      await eduCopy(eduDriver(device.handle), MiB, 2n * MiB);
      expect(Buffer.from(to.bytes!.subarray(0, EDU_BUFFER_SIZE)).equals(Buffer.from(data))).toBe(true);
      expect(await space.unmap({ iova: MiB, size: 2n * MiB })).toHaveLength(2);
      await space.detach(edu.bdf);
      expect(space.topology()).toEqual({ containers: [], devices: [] });
      await space.close();
      from.release();
      to.release();
    }));

  it('the edu cdev cannot join a space while its group is held by another (EBUSY), and nothing is left', () =>
    withSpace(async (legacy) => {
      await legacy.attach(edu.bdf, { iommufd: 'off' });
      await withSpace(async (modern) => {
        await expectKernelErrorAsync(() => modern.attach(edu.bdf, { iommufd: 'on' }), 'VFIO_DEVICE_BIND_IOMMUFD', 'EBUSY');
        expect(modern.topology()).toEqual({ containers: [], devices: [] });
        expect(modern.iommufdHandle).toBeUndefined();
        await legacy.close();
        // now it can
        const device = await modern.attach(edu.bdf, { iommufd: 'on' });
        expect(device.backend).toBe('iommufd');
      });
    }));
});
