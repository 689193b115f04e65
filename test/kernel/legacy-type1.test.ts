// C. The legacy VFIO path on edu (both boots): /dev/vfio/vfio + /dev/vfio/GROUP with the type1v2 IOMMU.
// Group status, container setup, extensions, IOMMU info and its capability chain, DMA map/unmap,
// dirty-page tracking (type1 reports every mapped page dirty), unmap with a dirty bitmap, and
// the cdev/group exclusion. Each test closes the cdev first: a device bound to iommufd cannot
// be used through its group at the same time.
import { afterAll, describe, expect, it } from 'vitest';
import type { GroupHandle, HostMemory, LegacyContainerHandle } from '../../src/kernel/types.js';
import { U64_MAX } from '../../src/kernel/validate.js';
import * as uapi from '../../src/uapi/index.js';
import { edu, inKernelGuest, onIntelIommu } from './harness/guest-env.js';
import { expectKernelError, expectRefused, flushCoverage, kernel, MiB, perTestCleanup, setBits } from './support/kernel.js';

const PAGE = 4096n;
const { track, memory } = perTestCleanup();
afterAll(() => flushCoverage('legacy-type1.test.ts'));

const groupId = () => Number(edu.group.replace('/dev/vfio/', ''));
/** The top of the IOVA space: virtio-iommu takes all 64 bits, this VT-d 39. */
const TOP = onIntelIommu ? (1n << 39n) - 1n : U64_MAX;

/** edu's group in a fresh container with the type1v2 IOMMU set. */
function type1(): { group: GroupHandle; container: LegacyContainerHandle } {
  const group = track(kernel().openGroup(groupId()));
  const container = track(kernel().openLegacyContainer());
  group.setContainer(container);
  container.setIommu(uapi.VFIO_TYPE1v2_IOMMU);
  return { group, container };
}

describe.runIf(inKernelGuest)('legacy type1: group and container', () => {
  it('the group is viable; the container speaks API 0 and has type1v2', () => {
    const group = track(kernel().openGroup(groupId()));
    expect(group.getStatus()).toEqual({ viable: true, containerSet: false });
    const container = track(kernel().openLegacyContainer());
    expect(container.getApiVersion()).toBe(uapi.VFIO_API_VERSION);
    expect(container.checkExtension(uapi.VFIO_TYPE1v2_IOMMU)).toBe(1);
    expect(container.checkExtension(uapi.VFIO_TYPE1_IOMMU)).toBe(1);
    expect(container.checkExtension(uapi.VFIO_NOIOMMU_IOMMU)).toBe(0);
    expect(container.checkExtension(uapi.VFIO_UNMAP_ALL)).toBe(1);
  });

  it('refuses what needs a group or an IOMMU first (EINVAL), and a second IOMMU (EINVAL)', () => {
    const group = track(kernel().openGroup(groupId()));
    const container = track(kernel().openLegacyContainer());
    expectKernelError(() => container.setIommu(uapi.VFIO_TYPE1v2_IOMMU), 'VFIO_SET_IOMMU', 'EINVAL');
    expectKernelError(() => container.getIommuInfo(), 'VFIO_IOMMU_GET_INFO', 'EINVAL');
    expectKernelError(() => group.openDevice(edu.bdf), 'VFIO_GROUP_GET_DEVICE_FD', 'EINVAL');
    group.setContainer(container);
    expect(group.getStatus()).toEqual({ viable: true, containerSet: true });
    // a group with a container but no IOMMU yet still has no device to give
    expectKernelError(() => group.openDevice(edu.bdf), 'VFIO_GROUP_GET_DEVICE_FD', 'EINVAL');
    container.setIommu(uapi.VFIO_TYPE1v2_IOMMU);
    expectKernelError(() => container.setIommu(uapi.VFIO_TYPE1v2_IOMMU), 'VFIO_SET_IOMMU', 'EINVAL');
    group.unsetContainer();
    expect(group.getStatus()).toEqual({ viable: true, containerSet: false });
    // unsetting again: there is no container to leave
    expectKernelError(() => group.unsetContainer(), 'VFIO_GROUP_UNSET_CONTAINER', 'EINVAL');
  });

  it('VFIO_IOMMU_GET_INFO: page sizes and the capability chain (IOVA ranges, migration, DMA entries)', () => {
    const { container } = type1();
    const info = container.getIommuInfo();
    expect(info.flags).toBe(uapi.VFIO_IOMMU_INFO_PGSIZES | uapi.VFIO_IOMMU_INFO_CAPS);
    expect(info.iovaPageSizes & PAGE).toBe(PAGE);
    expect(info.iovaPageSizes & (PAGE - 1n)).toBe(0n);
    expect(info.iovaRanges).toEqual([{ start: 0n, last: 0xfedf_ffffn }, { start: 0xfef0_0000n, last: TOP }]);
    expect(info.migration).toEqual({ flags: 0, pageSizeBitmap: PAGE, maxDirtyBitmapSize: 256n * MiB });
    expect(info.dmaAvailable).toBe(65535);
  });

  it('gives edu a device fd, which is a VFIO device but cannot bind to iommufd (EINVAL)', () => {
    const { group } = type1();
    const device = track(group.openDevice(edu.bdf));
    expect(device.kind).toBe('group');
    // a PCI device, resettable alone behind boot.sh's pcie-root-port (the bus reset method)
    expect(device.getInfo()).toMatchObject({ numRegions: 9, flags: uapi.VFIO_DEVICE_FLAGS_PCI | uapi.VFIO_DEVICE_FLAGS_RESET });
    const config = device.regionRead(uapi.VFIO_PCI_CONFIG_REGION_INDEX, 0n, 4);
    expect(Array.from(config)).toEqual([0x34, 0x12, 0xe8, 0x11]);
    const fd = track(kernel().openIommufd());
    expectKernelError(() => device.bindIommufd(fd), 'VFIO_DEVICE_BIND_IOMMUFD', 'EINVAL');
    // an unknown device name in this group
    expectKernelError(() => group.openDevice('0000:00:1e.7'), 'VFIO_GROUP_GET_DEVICE_FD', 'ENODEV');
  });

  it('the cdev and the group exclude each other (EBUSY both ways)', () => {
    // group open: the cdev cannot bind
    const group = track(kernel().openGroup(groupId()));
    const fd = track(kernel().openIommufd());
    const device = track(kernel().openDevice(edu.cdev));
    expectKernelError(() => device.bindIommufd(fd), 'VFIO_DEVICE_BIND_IOMMUFD', 'EBUSY');
    // the group is opened once at a time
    expectKernelError(() => kernel().openGroup(groupId()), 'open', 'EBUSY');
    group.close();
    // cdev bound: the group cannot be opened
    device.bindIommufd(fd);
    expectKernelError(() => kernel().openGroup(groupId()), 'open', 'EBUSY');
  });
});

describe.runIf(inKernelGuest)('legacy type1: DMA map and unmap', () => {
  it('maps and unmaps whole mappings; refuses overlaps, splits, misalignment and reserved IOVAs', () => {
    const { container } = type1();
    const m = memory(128n * 1024n);
    container.mapDma({ memory: m, iova: MiB, size: 64n * 1024n });
    container.mapDma({ memory: m, memoryOffset: 64n * 1024n, iova: 2n * MiB, size: 64n * 1024n, writeable: false });
    expectKernelError(() => container.mapDma({ memory: m, iova: MiB + PAGE, size: PAGE }), 'VFIO_IOMMU_MAP_DMA', 'EEXIST');
    expectKernelError(() => container.unmapDma(MiB, PAGE), 'VFIO_IOMMU_UNMAP_DMA', 'EINVAL');
    expectKernelError(() => container.mapDma({ memory: m, iova: 4n * MiB + 0x800n, size: PAGE }), 'VFIO_IOMMU_MAP_DMA', 'EINVAL');
    expectKernelError(() => container.mapDma({ memory: m, iova: 0xfee0_0000n, size: PAGE }), 'VFIO_IOMMU_MAP_DMA', 'EINVAL');
    expectKernelError(() => container.mapDma({ memory: m, iova: 4n * MiB, size: PAGE, readable: false, writeable: false }), 'VFIO_IOMMU_MAP_DMA', 'EINVAL');
    expectRefused(() => container.mapDma({ memory: m, iova: 4n * MiB, size: 256n * 1024n }), 'memoryOffset');
    // nothing mapped there: type1 unmaps nothing and says so
    expect(container.unmapDma(8n * MiB, 64n * 1024n)).toBe(0n);
    expect(container.unmapDma(MiB, 64n * 1024n)).toBe(64n * 1024n);
    expect(container.unmapAll()).toBe(64n * 1024n);
    expect(container.unmapAll()).toBe(0n);
  });
});

describe.runIf(inKernelGuest)('legacy type1: dirty pages', () => {
  it('START, GET_BITMAP (every mapped page, every time), unmap with a bitmap, STOP', () => {
    const { container } = type1();
    const m = memory(80n * 1024n);
    container.mapDma({ memory: m, iova: MiB, size: 64n * 1024n });
    container.mapDma({ memory: m, memoryOffset: 64n * 1024n, iova: 2n * MiB, size: 16n * 1024n });
    const bitmap = (bytes: number) => new Uint8Array(bytes);
    const request = { iova: MiB, length: 64n * 1024n, pageSize: PAGE, bitmap: bitmap(8) };
    expectKernelError(() => container.dirtyPagesGetBitmap(request), 'VFIO_IOMMU_DIRTY_PAGES', 'EINVAL');
    expectKernelError(() => container.unmapDma(2n * MiB, 16n * 1024n, { pageSize: PAGE, bitmap: bitmap(8) }), 'VFIO_IOMMU_UNMAP_DMA', 'EINVAL');

    container.dirtyPagesStart();
    container.dirtyPagesStart(); // starting again is harmless
    for (let read = 0; read < 2; read++) {
      const b = bitmap(8);
      container.dirtyPagesGetBitmap({ ...request, bitmap: b });
      expect(setBits(b, 64)).toEqual(Array.from({ length: 16 }, (_, i) => i));
    }
    // one request over both mappings and the hole between them: only mapped pages are dirty
    const wide = bitmap(40);
    container.dirtyPagesGetBitmap({ iova: MiB, length: MiB + 16n * 1024n, pageSize: PAGE, bitmap: wide });
    expect(setBits(wide, 320)).toEqual([...Array.from({ length: 16 }, (_, i) => i), 256, 257, 258, 259]);
    // the library refuses a bitmap that does not hold whole u64 words, which type1 writes:
    // DIRTY_BITMAP_BYTES(260 pages) = 40; 33 bytes would hold the bits but not the words
    expectRefused(() => container.dirtyPagesGetBitmap({ iova: MiB, length: MiB + 16n * 1024n, pageSize: PAGE, bitmap: bitmap(33) }), 'dirty pages.bitmap');
    // type1 takes only its smallest IOMMU page size, and ranges on mapping boundaries
    expectKernelError(() => container.dirtyPagesGetBitmap({ ...request, pageSize: 2n * PAGE }), 'VFIO_IOMMU_DIRTY_PAGES', 'EINVAL');
    expectKernelError(() => container.dirtyPagesGetBitmap({ ...request, iova: MiB + PAGE, length: PAGE }), 'VFIO_IOMMU_DIRTY_PAGES', 'EINVAL');

    // unmap with a dirty bitmap: the pages of what is unmapped
    const unmapped = bitmap(8);
    expect(container.unmapDma(2n * MiB, 16n * 1024n, { pageSize: PAGE, bitmap: unmapped })).toBe(16n * 1024n);
    expect(setBits(unmapped, 64)).toEqual([0, 1, 2, 3]);
    expectKernelError(() => container.unmapDma(MiB, 64n * 1024n, { pageSize: 2n * PAGE, bitmap: bitmap(8) }), 'VFIO_IOMMU_UNMAP_DMA', 'EINVAL');

    container.dirtyPagesStop();
    expectKernelError(() => container.dirtyPagesGetBitmap({ ...request, bitmap: bitmap(8) }), 'VFIO_IOMMU_DIRTY_PAGES', 'EINVAL');
    expect(container.unmapAll()).toBe(64n * 1024n);
  });
});
