// The legacy container and type1 (drivers/vfio/{container,group}.c, vfio_iommu_type1.c): the
// capability chain with the migration capability, whole-mapping unmaps in v2, DIRTY_PAGES where
// every page pinned for a vfio-pci device is dirty, unmap with a dirty bitmap, group rules.
import { describe, expect, it } from 'vitest';
import { VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU } from '../../src/uapi/index.js';
import type { GroupHandle, LegacyContainerHandle } from '../../src/kernel/types.js';
import { ContractFixture, KIB, MIB, countSetBits, expectInvalidArgument, expectKernelError, setBitIndexes, simOnly, type ContractTarget } from './context.js';

const PAGE = 4n * KIB;

export function defineType1Contract(target: ContractTarget): void {
  describe('legacy container and type1', () => {
    const t = new ContractFixture(target);
    const simIt = simOnly(target);

    /** The plain device's group in a container with `type` set. */
    function type1(type = VFIO_TYPE1v2_IOMMU, groupId = t.env.plainGroupId, options?: { validateArguments?: boolean }): { container: LegacyContainerHandle; group: GroupHandle } {
      const container = t.container(options);
      const group = t.group(groupId, options);
      group.setContainer(container);
      container.setIommu(type);
      return { container, group };
    }

    it('the container answers API version 0 and the type1 extensions; SET_IOMMU without a group is EINVAL', () => {
      const container = t.container();
      expect(container.getApiVersion()).toBe(0);
      expect(container.checkExtension(VFIO_TYPE1_IOMMU)).toBe(1);
      expect(container.checkExtension(VFIO_TYPE1v2_IOMMU)).toBe(1);
      expect(container.checkExtension(4242)).toBe(0);
      expectKernelError(() => container.setIommu(VFIO_TYPE1v2_IOMMU), 'VFIO_SET_IOMMU', 'EINVAL');
    });

    it('before SET_IOMMU the container has no driver: GET_INFO and MAP_DMA fail with EINVAL', () => {
      const container = t.container();
      const group = t.group(t.env.plainGroupId);
      group.setContainer(container);
      expectKernelError(() => container.getIommuInfo(), 'VFIO_IOMMU_GET_INFO', 'EINVAL');
      const memory = t.memory(PAGE);
      expectKernelError(() => container.mapDma({ memory, iova: MIB, size: PAGE }), 'VFIO_IOMMU_MAP_DMA', 'EINVAL');
    });

    it('group status, and SET_CONTAINER twice is EINVAL; SET_IOMMU twice is EINVAL', () => {
      const container = t.container();
      const group = t.group(t.env.plainGroupId);
      expect(group.getStatus()).toEqual({ viable: true, containerSet: false });
      group.setContainer(container);
      expect(group.getStatus()).toEqual({ viable: true, containerSet: true });
      expectKernelError(() => group.setContainer(container), 'VFIO_GROUP_SET_CONTAINER', 'EINVAL');
      container.setIommu(VFIO_TYPE1v2_IOMMU);
      expectKernelError(() => container.setIommu(VFIO_TYPE1v2_IOMMU), 'VFIO_SET_IOMMU', 'EINVAL');
    });

    it('GET_INFO: page sizes, the migration capability (4 KiB, 256 MiB bitmaps) and DMA_AVAIL counting mappings', () => {
      const { container } = type1();
      const info = container.getIommuInfo();
      expect(info.flags & (VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS)).toBe(VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
      expect(info.iovaPageSizes & -info.iovaPageSizes).toBe(PAGE);
      expect(info.migration).toEqual({ flags: 0, pageSizeBitmap: PAGE, maxDirtyBitmapSize: 256n * MIB });
      expect(info.dmaAvailable).toBe(65535);
      expect(info.iovaRanges?.length).toBeGreaterThan(0);
      container.mapDma({ memory: t.memory(64n * KIB), iova: MIB, size: 64n * KIB });
      expect(container.getIommuInfo().dmaAvailable).toBe(65534);
    });

    it('MAP_DMA: an overlap is EEXIST, a size or IOVA not a multiple of the page size EINVAL', () => {
      const { container } = type1();
      const memory = t.memory(128n * KIB);
      container.mapDma({ memory, iova: MIB, size: 64n * KIB });
      expectKernelError(() => container.mapDma({ memory, memoryOffset: 64n * KIB, iova: MIB + 32n * KIB, size: 64n * KIB }), 'VFIO_IOMMU_MAP_DMA', 'EEXIST');
      expectKernelError(() => container.mapDma({ memory, memoryOffset: 64n * KIB, iova: 2n * MIB, size: PAGE + 1n }), 'VFIO_IOMMU_MAP_DMA', 'EINVAL');
      expectKernelError(() => container.mapDma({ memory, memoryOffset: 64n * KIB, iova: 2n * MIB + 512n, size: PAGE }), 'VFIO_IOMMU_MAP_DMA', 'EINVAL');
    });

    it('UNMAP_DMA (v2) must not bisect a mapping (EINVAL); it returns the bytes unmapped, 0 where nothing is mapped', () => {
      const { container } = type1();
      const memory = t.memory(128n * KIB);
      container.mapDma({ memory, iova: MIB, size: 64n * KIB });
      container.mapDma({ memory, memoryOffset: 64n * KIB, iova: MIB + 64n * KIB, size: 64n * KIB });
      expectKernelError(() => container.unmapDma(MIB + PAGE, 64n * KIB), 'VFIO_IOMMU_UNMAP_DMA', 'EINVAL');
      expectKernelError(() => container.unmapDma(MIB, 96n * KIB), 'VFIO_IOMMU_UNMAP_DMA', 'EINVAL');
      expect(container.unmapDma(4n * MIB, 64n * KIB)).toBe(0n);
      expect(container.unmapDma(MIB, 128n * KIB)).toBe(128n * KIB);
      container.mapDma({ memory, iova: MIB, size: 64n * KIB });
      expect(container.unmapAll()).toBe(64n * KIB);
    });

    it('DIRTY_PAGES: every mapped page of a vfio-pci device is reported dirty, at every read', () => {
      const { container } = type1();
      const memory = t.memory(128n * KIB);
      container.mapDma({ memory, iova: MIB, size: 64n * KIB });
      container.mapDma({ memory, memoryOffset: 64n * KIB, iova: MIB + 128n * KIB, size: 64n * KIB });
      container.dirtyPagesStart();
      for (let read = 0; read < 2; read++) {
        const bitmap = new Uint8Array(8);
        container.dirtyPagesGetBitmap({ iova: MIB, length: 256n * KIB, pageSize: PAGE, bitmap });
        expect(setBitIndexes(bitmap, 64)).toEqual([...Array.from({ length: 16 }, (_, i) => i), ...Array.from({ length: 16 }, (_, i) => 32 + i)]);
      }
      container.dirtyPagesStop();
    });

    it('DIRTY_PAGES GET_BITMAP: without START, at another page size, or bisecting a mapping: EINVAL; a bitmap under whole u64 words is refused first', () => {
      const { container } = type1();
      const memory = t.memory(64n * KIB);
      container.mapDma({ memory, iova: MIB, size: 64n * KIB });
      const bitmap = new Uint8Array(8);
      expectKernelError(() => container.dirtyPagesGetBitmap({ iova: MIB, length: 64n * KIB, pageSize: PAGE, bitmap }), 'VFIO_IOMMU_DIRTY_PAGES', 'EINVAL');
      container.dirtyPagesStart();
      expectKernelError(() => container.dirtyPagesGetBitmap({ iova: MIB, length: 64n * KIB, pageSize: 8n * KIB, bitmap }), 'VFIO_IOMMU_DIRTY_PAGES', 'EINVAL');
      expectKernelError(() => container.dirtyPagesGetBitmap({ iova: MIB + PAGE, length: 32n * KIB, pageSize: PAGE, bitmap }), 'VFIO_IOMMU_DIRTY_PAGES', 'EINVAL');
      // 16 pages fit in 2 bytes, but type1 writes whole u64 words (DIRTY_BITMAP_BYTES): refused before the ioctl.
      expectInvalidArgument(() => container.dirtyPagesGetBitmap({ iova: MIB, length: 64n * KIB, pageSize: PAGE, bitmap: new Uint8Array(2) }), 'bitmap');
      container.dirtyPagesGetBitmap({ iova: MIB, length: 64n * KIB, pageSize: PAGE, bitmap });
      expect(countSetBits(bitmap, 16)).toBe(16);
      container.dirtyPagesStop();
    });

    it('UNMAP_DMA with a dirty bitmap reports the mapping\'s pages; without tracking it is EINVAL', () => {
      const { container } = type1();
      const memory = t.memory(64n * KIB);
      container.mapDma({ memory, iova: MIB, size: 64n * KIB });
      expectKernelError(() => container.unmapDma(MIB, 64n * KIB, { pageSize: PAGE, bitmap: new Uint8Array(8) }), 'VFIO_IOMMU_UNMAP_DMA', 'EINVAL');
      container.dirtyPagesStart();
      const bitmap = new Uint8Array(8);
      expect(container.unmapDma(MIB, 64n * KIB, { pageSize: PAGE, bitmap })).toBe(64n * KIB);
      expect(countSetBits(bitmap, 64)).toBe(16);
      container.dirtyPagesStop();
    });

    for (const validate of [true, false]) {
      it(`GET_BITMAP and UNMAP_DMA refuse a bitmap ending mid-u64 or off a u64 word before the ioctl (validateArguments: ${validate}); the mapping stays`, () => {
        const { container } = type1(VFIO_TYPE1v2_IOMMU, t.env.plainGroupId, { validateArguments: validate });
        const memory = t.memory(320n * KIB);
        container.mapDma({ memory, iova: MIB, size: 320n * KIB });
        container.dirtyPagesStart();
        // type1's DIRTY_BITMAP_BYTES(80 pages) = ALIGN(80, 64) / 8 = 16 bytes, copied as u64 words.
        const pages = 80;
        const bytes = Math.ceil(pages / 64) * 8;
        const room = new ArrayBuffer(bytes + 16);
        const refused = [new Uint8Array(room, 0, Math.ceil(pages / 8)), new Uint8Array(room, 0, bytes - 1), new Uint8Array(room, 1, bytes), new Uint8Array(room, 4, bytes)];
        for (const bitmap of refused) {
          expectInvalidArgument(() => container.dirtyPagesGetBitmap({ iova: MIB, length: 320n * KIB, pageSize: PAGE, bitmap }), /bitmap/);
          expectInvalidArgument(() => container.unmapDma(MIB, 320n * KIB, { pageSize: PAGE, bitmap }), /bitmap/);
        }
        expect(new Uint8Array(room).every((byte) => byte === 0)).toBe(true);
        const bitmap = new Uint8Array(room, 0, bytes);
        expect(container.unmapDma(MIB, 320n * KIB, { pageSize: PAGE, bitmap })).toBe(320n * KIB);
        expect(countSetBits(bitmap, pages)).toBe(pages);
        container.dirtyPagesStop();
      });
    }

    it('type1 v1 has no dirty page tracking: DIRTY_PAGES fails with EACCES', () => {
      const { container } = type1(VFIO_TYPE1_IOMMU);
      expectKernelError(() => container.dirtyPagesStart(), 'VFIO_IOMMU_DIRTY_PAGES', 'EACCES');
    });

    it('GET_DEVICE_FD: an unknown name is ENODEV; without a container, or before SET_IOMMU, EINVAL', () => {
      const group = t.group(t.env.plainGroupId);
      expectKernelError(() => group.openDevice('0000:ff:1f.7'), 'VFIO_GROUP_GET_DEVICE_FD', 'ENODEV');
      expectKernelError(() => group.openDevice(t.env.plainDevice), 'VFIO_GROUP_GET_DEVICE_FD', 'EINVAL');
      const container = t.container();
      group.setContainer(container);
      expectKernelError(() => group.openDevice(t.env.plainDevice), 'VFIO_GROUP_GET_DEVICE_FD', 'EINVAL');
    });

    it('a device fd from the group works; UNSET_CONTAINER fails with EBUSY while it is open', () => {
      const { group } = type1();
      const device = t.track(group.openDevice(t.env.plainDevice));
      expect(device.kind).toBe('group');
      expect(device.getInfo().numRegions).toBe(9);
      expectKernelError(() => group.unsetContainer(), 'VFIO_GROUP_UNSET_CONTAINER', 'EBUSY');
      device.close();
      group.unsetContainer();
      expectKernelError(() => group.unsetContainer(), 'VFIO_GROUP_UNSET_CONTAINER', 'EINVAL');
    });

    it('the group of a device bound through its cdev cannot be opened: EBUSY', () => {
      const iommufd = t.iommufd();
      const device = t.device(t.env.plainDevice);
      device.bindIommufd(iommufd);
      expectKernelError(() => t.group(t.env.plainGroupId), undefined, 'EBUSY');
      device.close();
      t.group(t.env.plainGroupId);
    });

    simIt('an mdev in a container without IOMMU groups: only the pages it wrote are dirty [sim only: no mdev in the guest, no real DMA]', () => {
      const { container, group } = type1(VFIO_TYPE1v2_IOMMU, t.sim.mdevGroupId);
      const device = t.track(group.openDevice(t.sim.mdevDevice));
      const memory = t.memory(64n * KIB);
      container.mapDma({ memory, iova: MIB, size: 64n * KIB });
      container.dirtyPagesStart();
      t.sim.kernel.dmaWrite(device, MIB + 3n * PAGE, 2n * PAGE);
      const bitmap = new Uint8Array(8);
      container.dirtyPagesGetBitmap({ iova: MIB, length: 64n * KIB, pageSize: PAGE, bitmap });
      expect(setBitIndexes(bitmap, 16)).toEqual([3, 4]);
      bitmap.fill(0);
      container.dirtyPagesGetBitmap({ iova: MIB, length: 64n * KIB, pageSize: PAGE, bitmap });
      expect(setBitIndexes(bitmap, 16)).toEqual([]);
      t.sim.kernel.dmaWrite(device, MIB + 15n * PAGE, PAGE);
      expect(container.unmapDma(MIB, 64n * KIB, { pageSize: PAGE, bitmap })).toBe(64n * KIB);
      expect(setBitIndexes(bitmap, 16)).toEqual([15]);
      container.dirtyPagesStop();
    });
  });
}
