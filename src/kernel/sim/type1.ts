// The legacy VFIO container (/dev/vfio/vfio) with the type1 IOMMU driver, and VFIO groups
// (/dev/vfio/N): drivers/vfio/{container,group}.c and vfio_iommu_type1.c, including dirty page
// tracking where every page pinned for an IOMMU-backed (non-mdev) group is reported dirty.
import {
  VFIO_API_VERSION,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
  VFIO_UPDATE_VADDR,
} from '../../uapi/index.js';
import { InvalidArgumentError, type KernelObjects } from '../errors.js';
import type {
  DeviceHandle,
  DirtyBitmapRequest,
  GroupHandle,
  KernelOptions,
  LegacyContainerHandle,
  Type1Info,
  Type1MapRequest,
} from '../types.js';
import { checkBitmapHeld, checkBitmapRequest, checkRange, kernelBitmapBytes, checkU32, checkU64, U64_MAX } from '../validate.js';
import { ChunkedBitmap, clearBits, setBits } from './bitmap.js';
import { fail } from './failure.js';
import { PAGE_SIZE, SimulatedHostMemory } from './host-memory.js';
import { lowestBit, maxBig, minBig, type IovaInterval } from './io-pagetable.js';
import { checkHostMemory, runIoctl } from './iommufd.js';
import { SimulatedDeviceFile, type DeviceFileHost, type SimulatedVfioGroup } from './device.js';
import type { KernelServices } from './services.js';
import type { IommuModel } from './spec.js';

/** Extension numbers type1 answers that src/uapi does not export. */
const VFIO_TYPE1_NESTING_IOMMU = 6;
const VFIO_DMA_CC_IOMMU = 4;
/** dma_entry_limit's default: U16_MAX mappings per container. */
export const DMA_ENTRY_LIMIT = 65535;
/** DIRTY_BITMAP_PAGES_MAX = INT_MAX bits; DIRTY_BITMAP_SIZE_MAX is its size in bytes, rounded to u64. */
const DIRTY_BITMAP_PAGES_MAX = 0x7fff_ffffn;
export const DIRTY_BITMAP_SIZE_MAX = ((DIRTY_BITMAP_PAGES_MAX + 63n) / 64n) * 8n;
/** PAGE_MASK as type1 starts its pgsize_bitmap. */
const PAGE_MASK = U64_MAX & ~(PAGE_SIZE - 1n);

/** DIRTY_BITMAP_BYTES(n): bytes of a bitmap of n bits, rounded up to whole u64 words. */
function dirtyBitmapBytes(bits: bigint): bigint {
  return ((bits + 63n) / 64n) * 8n;
}

class Type1Dma {
  iommuMapped = false;
  /** Pages written through vfio_dma_rw while tracking (an mdev's DMA); allocated on first write. */
  written: ChunkedBitmap | undefined = undefined;

  constructor(
    readonly iova: bigint,
    readonly size: bigint,
    readonly memory: SimulatedHostMemory,
    readonly offset: bigint,
    readonly read: boolean,
    readonly write: boolean,
  ) {}

  get end(): bigint {
    return this.iova + this.size;
  }
}

interface Type1Domain {
  readonly owner: string;
  readonly pageSizes: bigint;
  readonly groups: Set<SimulatedVfioGroup>;
}

function intervalsIntersection(list: IovaInterval[], start: bigint, last: bigint): IovaInterval[] {
  if (list.length === 0) return [{ start, last }];
  return list
    .filter((node) => node.start <= last && node.last >= start)
    .map((node) => ({ start: maxBig(node.start, start), last: minBig(node.last, last) }));
}

function excludeRegions(list: IovaInterval[], regions: readonly IovaInterval[]): IovaInterval[] {
  let result = list;
  for (const region of regions) {
    const next: IovaInterval[] = [];
    for (const node of result) {
      if (node.last < region.start || node.start > region.last) {
        next.push(node);
        continue;
      }
      if (node.start < region.start) next.push({ start: node.start, last: region.start - 1n });
      if (node.last > region.last) next.push({ start: region.last + 1n, last: node.last });
    }
    result = next;
  }
  return result;
}

function reservedOf(iommu: IommuModel): IovaInterval[] {
  return iommu.reservedRegions.filter((region) => region.type !== 'direct-relaxable');
}

/** struct vfio_iommu: the type1 driver's state for one container. */
class Type1Iommu {
  readonly domains: Type1Domain[] = [];
  iovaList: IovaInterval[] = [];
  /** Sorted by IOVA. */
  dmas: Type1Dma[] = [];
  dmaAvailable = DMA_ENTRY_LIMIT;
  dirtyTracking = false;
  readonly emulatedGroups = new Set<SimulatedVfioGroup>();
  nonPinnedGroups = 0;
  pageSizeBitmap = PAGE_MASK;

  constructor(readonly v2: boolean) {}

  /** Smallest supported page size: the unit of every map, unmap and bitmap. */
  get pageSize(): bigint {
    return lowestBit(this.pageSizeBitmap);
  }

  /** vfio_find_dma(start, size): a mapping intersecting [start, start + size) as the rb-tree walk finds it. */
  findDma(start: bigint, size: bigint): Type1Dma | undefined {
    return this.dmas.find((dma) => !(start + size <= dma.iova) && !(start >= dma.end));
  }

  hasGroup(group: SimulatedVfioGroup): boolean {
    return this.emulatedGroups.has(group) || this.domains.some((domain) => domain.groups.has(group));
  }

  private updatePageSizes(): void {
    let bitmap = U64_MAX;
    for (const domain of this.domains) bitmap &= domain.pageSizes;
    // Sub-PAGE_SIZE IOMMU pages are hidden: the user maps in PAGE_SIZE units.
    if (bitmap & (PAGE_SIZE - 1n)) bitmap = (bitmap & PAGE_MASK) | PAGE_SIZE;
    this.pageSizeBitmap = this.domains.length === 0 ? PAGE_MASK : bitmap;
  }

  /** vfio_iommu_type1_attach_group. */
  attachGroup(group: SimulatedVfioGroup): void {
    if (this.hasGroup(group)) fail('EINVAL');
    if (group.emulated) {
      this.emulatedGroups.add(group);
      return;
    }
    const iommu = group.devices[0]!.iommu;
    // vfio_iommu_aper_conflict
    if (this.iovaList.length > 0) {
      const first = this.iovaList[0]!;
      const last = this.iovaList[this.iovaList.length - 1]!;
      if (iommu.apertureStart > last.last || iommu.apertureLast < first.start) fail('EINVAL');
      if (iommu.apertureStart > first.start && this.findDma(first.start, iommu.apertureStart - first.start)) fail('EINVAL');
      if (iommu.apertureLast < last.last && this.findDma(iommu.apertureLast + 1n, last.last - iommu.apertureLast)) fail('EINVAL');
    }
    const reserved = group.devices.flatMap((device) => reservedOf(device.iommu));
    // vfio_iommu_resv_conflict
    if (reserved.some((region) => this.findDma(region.start, region.last - region.start + 1n))) fail('EINVAL');
    const list = excludeRegions(intervalsIntersection([...this.iovaList], iommu.apertureStart, iommu.apertureLast), reserved);
    if (list.length === 0) fail('EINVAL');
    const shared = this.domains.find((domain) => domain.owner === iommu.type);
    if (shared) {
      shared.groups.add(group);
    } else {
      // vfio_iommu_replay: pin and map every existing mapping into the new domain.
      for (const dma of this.dmas) if (!dma.memory.covers(dma.offset, dma.size)) fail('EFAULT');
      for (const dma of this.dmas) dma.iommuMapped = true;
      this.domains.push({ owner: iommu.type, pageSizes: iommu.pageSizes.reduce((bits, size) => bits | size, 0n), groups: new Set([group]) });
      this.updatePageSizes();
    }
    this.iovaList = list;
    this.nonPinnedGroups++;
  }

  /** vfio_iommu_type1_detach_group. */
  detachGroup(group: SimulatedVfioGroup): void {
    if (this.emulatedGroups.delete(group)) {
      if (this.emulatedGroups.size === 0 && this.domains.length === 0) this.unmapAll();
      return;
    }
    const domain = this.domains.find((candidate) => candidate.groups.has(group));
    if (!domain) return;
    domain.groups.delete(group);
    this.nonPinnedGroups--;
    if (domain.groups.size === 0) {
      if (this.domains.length === 1) {
        if (this.emulatedGroups.size === 0) this.unmapAll();
        else for (const dma of this.dmas) dma.iommuMapped = false;
      }
      this.domains.splice(this.domains.indexOf(domain), 1);
    }
    this.rebuildIovaList();
    this.updatePageSizes();
  }

  /** The IOVA list of the remaining groups: apertures intersected, reserved regions excluded. */
  private rebuildIovaList(): void {
    let list: IovaInterval[] = [];
    const groups = this.domains.flatMap((domain) => [...domain.groups]);
    for (const group of groups) {
      const iommu = group.devices[0]!.iommu;
      list = intervalsIntersection(list, iommu.apertureStart, iommu.apertureLast);
    }
    this.iovaList = excludeRegions(list, groups.flatMap((group) => group.devices.flatMap((device) => reservedOf(device.iommu))));
  }

  removeDma(dma: Type1Dma): void {
    this.dmas = this.dmas.filter((other) => other !== dma);
    dma.memory.mappings--;
    this.dmaAvailable++;
  }

  unmapAll(): void {
    for (const dma of [...this.dmas]) this.removeDma(dma);
  }

  /**
   * update_user_bitmap: write this mapping's dirty bits into the caller's bitmap at their place
   * relative to `base`. The kernel writes whole u64 words: the bits below the mapping in its first
   * word are kept, the bits after it up to the next word boundary are cleared.
   */
  writeUserBitmap(bitmap: Uint8Array, dma: Type1Dma, base: bigint, pageSize: bigint): void {
    const bits = Number(dma.size / pageSize);
    const offset = Number((dma.iova - base) / pageSize);
    const wordStart = offset - (offset % 64);
    const spanEnd = wordStart + Math.ceil((bits + (offset - wordStart)) / 64) * 64;
    if (spanEnd > bitmap.byteLength * 8) fail('EFAULT');
    clearBits(bitmap, offset, spanEnd);
    if (this.nonPinnedGroups > 0 && dma.iommuMapped) {
      // Every pinned page may have been written by a device that cannot report: all dirty.
      setBits(bitmap, offset, offset + bits);
    } else if (dma.written) {
      dma.written.forEachSetRun(0, bits, (first, after) => setBits(bitmap, offset + first, offset + after));
    }
  }
}

export interface Type1Host extends DeviceFileHost {
  readonly services: KernelServices;
  readonly identity: object;
  containerClosed(container: SimulatedLegacyContainer): void;
  groupClosed(group: SimulatedGroup): void;
}

/** An open /dev/vfio/vfio. */
export class SimulatedLegacyContainer implements LegacyContainerHandle {
  readonly fd: number;
  private closedFlag = false;
  readonly groups: SimulatedVfioGroup[] = [];
  iommu: Type1Iommu | undefined = undefined;
  private readonly validate: boolean;

  constructor(
    readonly host: Type1Host,
    options: KernelOptions | undefined,
  ) {
    this.fd = host.services.allocateFd();
    this.validate = options?.validateArguments !== false;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  private ioctl<T>(ioctl: string, objects: KernelObjects, body: () => T): T {
    return runIoctl(this.host.services, this.fd, this.closedFlag ? ['container', 'is closed'] : undefined, ioctl, objects, body);
  }

  /** Container ioctls other than the three the container answers itself go to the driver; none set: EINVAL. */
  private driver(): Type1Iommu {
    if (!this.iommu) fail('EINVAL');
    return this.iommu;
  }

  getApiVersion(): number {
    return this.ioctl('VFIO_GET_API_VERSION', {}, () => VFIO_API_VERSION);
  }

  checkExtension(extension: number): number {
    if (this.validate) checkU32('extension', extension);
    return this.ioctl('VFIO_CHECK_EXTENSION', { extension }, () => {
      switch (extension) {
        case VFIO_TYPE1_IOMMU:
        case VFIO_TYPE1v2_IOMMU:
        case VFIO_TYPE1_NESTING_IOMMU:
        case VFIO_UNMAP_ALL:
          return 1;
        case VFIO_UPDATE_VADDR:
          return this.iommu && this.iommu.emulatedGroups.size === 0 ? 1 : 0;
        case VFIO_DMA_CC_IOMMU:
          return this.iommu && this.iommu.domains.length > 0 ? 1 : 0;
        default:
          return 0;
      }
    });
  }

  setIommu(type: number): void {
    if (this.validate) checkU32('type', type);
    this.ioctl('VFIO_SET_IOMMU', { type }, () => {
      if (this.groups.length === 0 || this.iommu) fail('EINVAL');
      if (type !== VFIO_TYPE1_IOMMU && type !== VFIO_TYPE1v2_IOMMU && type !== VFIO_TYPE1_NESTING_IOMMU) fail('ENODEV');
      const iommu = new Type1Iommu(type !== VFIO_TYPE1_IOMMU);
      const attached: SimulatedVfioGroup[] = [];
      try {
        for (const group of this.groups) {
          iommu.attachGroup(group);
          attached.push(group);
        }
      } catch (error) {
        for (const group of attached.reverse()) iommu.detachGroup(group);
        throw error;
      }
      this.iommu = iommu;
    });
  }

  /**
   * VFIO_IOMMU_GET_INFO, as the linux shim issues it: first with the bare struct (the kernel says
   * the size the capability chain needs), then again with room for the chain.
   */
  getIommuInfo(): Type1Info {
    this.ioctl('VFIO_IOMMU_GET_INFO', {}, () => this.driver());
    return this.ioctl('VFIO_IOMMU_GET_INFO', {}, () => {
      const iommu = this.driver();
      const iovaRanges = iommu.iovaList.length > 0 ? iommu.iovaList.map((node) => ({ start: node.start, last: node.last })) : undefined;
      return {
        // Migration and DMA_AVAIL capabilities are always there, so CAPS is always set.
        flags: VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS,
        iovaPageSizes: iommu.pageSizeBitmap,
        iovaRanges,
        migration: { flags: 0, pageSizeBitmap: iommu.pageSize, maxDirtyBitmapSize: DIRTY_BITMAP_SIZE_MAX },
        dmaAvailable: iommu.dmaAvailable,
      };
    });
  }

  mapDma(request: Type1MapRequest): void {
    const offset = request.memoryOffset ?? 0n;
    const read = request.readable ?? true;
    const write = request.writeable ?? true;
    if (this.validate) {
      checkRange('map', request.iova, request.size);
      checkU64('memoryOffset', offset);
      checkHostMemory(this.host.identity, request.memory, offset, request.size);
    }
    this.ioctl('VFIO_IOMMU_MAP_DMA', { iova: request.iova, size: request.size }, () => {
      const iommu = this.driver();
      if (!read && !write) fail('EINVAL');
      const { iova, size } = request;
      const vaddr = request.memory.address + offset;
      const pageSize = iommu.pageSize;
      if (!size || ((size | iova | vaddr) & (pageSize - 1n))) fail('EINVAL');
      if (iova + size - 1n > U64_MAX || vaddr + size - 1n > U64_MAX) fail('EINVAL');
      if (iommu.findDma(iova, size)) fail('EEXIST');
      if (iommu.dmaAvailable === 0) fail('ENOSPC');
      if (iommu.iovaList.length > 0 && !iommu.iovaList.some((node) => iova >= node.start && iova + size - 1n <= node.last)) fail('EINVAL');
      const memory = request.memory;
      if (!(memory instanceof SimulatedHostMemory) || memory.owner !== this.host.identity) fail('EFAULT');
      const dma = new Type1Dma(iova, size, memory, offset, read, write);
      if (iommu.domains.length > 0) {
        // vfio_pin_map_dma: pinning faults on memory the process does not hold.
        if (!memory.covers(offset, size)) fail('EFAULT');
        dma.iommuMapped = true;
      }
      if (iommu.dirtyTracking && size / pageSize > DIRTY_BITMAP_PAGES_MAX) fail('EINVAL');
      iommu.dmaAvailable--;
      memory.mappings++;
      let index = 0;
      while (index < iommu.dmas.length && iommu.dmas[index]!.iova < iova) index++;
      iommu.dmas.splice(index, 0, dma);
    });
  }

  unmapDma(iova: bigint, size: bigint, dirtyBitmap?: { pageSize: bigint; bitmap: Uint8Array }): bigint {
    if (this.validate) {
      checkRange('unmap', iova, size);
      if (dirtyBitmap) checkBitmapRequest('unmap dirty bitmap', { iova, length: size, ...dirtyBitmap });
    }
    // As the linux shim: the bitmap holds what type1 would copy, and type1 is told that size.
    if (dirtyBitmap) checkBitmapHeld('unmap dirty bitmap', { length: size, ...dirtyBitmap }, true);
    const bitmap = dirtyBitmap && { pageSize: dirtyBitmap.pageSize, bitmap: dirtyBitmap.bitmap, size: kernelBitmapBytes(size, dirtyBitmap.pageSize) };
    return this.ioctl('VFIO_IOMMU_UNMAP_DMA', { iova, size }, () => this.unmap(iova, size, false, bitmap));
  }

  unmapAll(): bigint {
    return this.ioctl('VFIO_IOMMU_UNMAP_DMA', { flags: 'VFIO_DMA_UNMAP_FLAG_ALL' }, () => this.unmap(0n, 0n, true, undefined));
  }

  /** vfio_iommu_type1_unmap_dma + vfio_dma_do_unmap. */
  private unmap(iova: bigint, size: bigint, all: boolean, dirtyBitmap: { pageSize: bigint; bitmap: Uint8Array; size: bigint } | undefined): bigint {
    const iommu = this.driver();
    if (dirtyBitmap) {
      const bitSize = lowestBit(dirtyBitmap.pageSize); // 1 << __ffs(pgsize)
      verifyBitmapSize(bitSize === 0n ? 0n : size / bitSize, dirtyBitmap.size);
    }
    const pageSize = iommu.pageSize;
    if (iova & (pageSize - 1n)) fail('EINVAL');
    let end: bigint;
    if (all) {
      if (iova || size) fail('EINVAL');
      end = U64_MAX + 1n;
    } else {
      if (!size || (size & (pageSize - 1n)) || iova + size - 1n > U64_MAX) fail('EINVAL');
      end = iova + size;
    }
    if (dirtyBitmap && (!iommu.dirtyTracking || dirtyBitmap.pageSize !== pageSize)) fail('EINVAL');
    if (iommu.v2 && !all) {
      const first = iommu.findDma(iova, 1n);
      if (first && first.iova !== iova) fail('EINVAL');
      const last = lastDmaFind(iommu, end - 1n);
      if (last && last.end !== end) fail('EINVAL');
    }
    let unmapped = 0n;
    for (const dma of [...iommu.dmas]) {
      if (dma.end <= iova || dma.iova >= end) continue;
      if (!iommu.v2 && iova > dma.iova) break;
      if (dirtyBitmap) iommu.writeUserBitmap(dirtyBitmap.bitmap, dma, iova, pageSize);
      unmapped += dma.size;
      iommu.removeDma(dma);
    }
    return unmapped;
  }

  dirtyPagesStart(): void {
    this.ioctl('VFIO_IOMMU_DIRTY_PAGES', { flags: 'VFIO_IOMMU_DIRTY_PAGES_FLAG_START' }, () => {
      const iommu = this.driver();
      if (!iommu.v2) fail('EACCES');
      if (iommu.dirtyTracking) return;
      if (iommu.dmas.some((dma) => dma.size / iommu.pageSize > DIRTY_BITMAP_PAGES_MAX)) fail('EINVAL');
      for (const dma of iommu.dmas) dma.written = undefined;
      iommu.dirtyTracking = true;
    });
  }

  dirtyPagesStop(): void {
    this.ioctl('VFIO_IOMMU_DIRTY_PAGES', { flags: 'VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP' }, () => {
      const iommu = this.driver();
      if (!iommu.v2) fail('EACCES');
      iommu.dirtyTracking = false;
      for (const dma of iommu.dmas) dma.written = undefined;
    });
  }

  dirtyPagesGetBitmap(request: DirtyBitmapRequest): void {
    if (this.validate) checkBitmapRequest('dirty pages', request);
    checkBitmapHeld('dirty pages', request, true);
    const bitmapSize = kernelBitmapBytes(request.length, request.pageSize);
    const objects: KernelObjects = { flags: 'VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP', iova: request.iova, size: request.length, pgsize: request.pageSize };
    this.ioctl('VFIO_IOMMU_DIRTY_PAGES', objects, () => {
      const iommu = this.driver();
      if (!iommu.v2) fail('EACCES');
      const { iova, length, pageSize, bitmap } = request;
      if (iova + length > U64_MAX) fail('EINVAL'); // range.iova + range.size wraps
      const bitSize = lowestBit(pageSize); // 1 << __ffs(pgsize)
      verifyBitmapSize(bitSize === 0n ? 0n : length / bitSize, bitmapSize);
      const unit = iommu.pageSize;
      if (pageSize !== unit) fail('EINVAL');
      if (iova & (unit - 1n)) fail('EINVAL');
      if (!length || (length & (unit - 1n))) fail('EINVAL');
      if (!iommu.dirtyTracking) fail('EINVAL');
      // vfio_iova_dirty_bitmap: the range must not bisect a mapping.
      const first = iommu.findDma(iova, 1n);
      if (first && first.iova !== iova) fail('EINVAL');
      const last = lastDmaFind(iommu, iova + length - 1n);
      if (last && last.end !== iova + length) fail('EINVAL');
      for (const dma of iommu.dmas) {
        if (dma.iova < iova) continue;
        if (dma.iova > iova + length - 1n) break;
        iommu.writeUserBitmap(bitmap, dma, iova, unit);
        // Re-populate with what is still pinned: nothing stays pinned in the simulator.
        dma.written = undefined;
      }
    });
  }

  /** The type1 driver's view of a device write at [iova, iova + length) (translation, vfio_dma_rw). */
  deviceWrite(iova: bigint, length: bigint, emulated: boolean, data?: Uint8Array): { written: bigint; faulted: bigint } {
    const iommu = this.iommu;
    if (!iommu) return { written: 0n, faulted: length };
    let written = 0n;
    const end = iova + length;
    for (const dma of iommu.dmas) {
      if (dma.end <= iova || dma.iova >= end || !dma.write) continue;
      if (!emulated && !dma.iommuMapped) continue;
      const from = maxBig(iova, dma.iova);
      const to = minBig(end, dma.end);
      written += to - from;
      if (data && dma.memory.bytes) dma.memory.bytes.set(data.subarray(Number(from - iova), Number(to - iova)), Number(dma.offset + (from - dma.iova)));
      if (emulated && iommu.dirtyTracking) {
        const pageSize = iommu.pageSize;
        dma.written ??= new ChunkedBitmap(Number(dma.size / pageSize));
        dma.written.setRange(Number((from - dma.iova) / pageSize), Number((to - dma.iova + pageSize - 1n) / pageSize));
      }
    }
    return { written, faulted: length - written };
  }

  /** VFIO_GROUP_SET_CONTAINER's side (vfio_container_attach_group). */
  attachGroup(group: SimulatedVfioGroup): void {
    if (!group.emulated) this.host.services.claimDmaOwner(group.key, group);
    if (this.iommu) {
      try {
        this.iommu.attachGroup(group);
      } catch (error) {
        if (!group.emulated) this.host.services.releaseDmaOwner(group.key, group);
        throw error;
      }
    }
    this.groups.push(group);
    group.container = this;
    group.containerUsers = 1;
  }

  /** vfio_group_detach_container: the last group out releases the IOMMU driver. */
  detachGroup(group: SimulatedVfioGroup): void {
    this.iommu?.detachGroup(group);
    if (!group.emulated) this.host.services.releaseDmaOwner(group.key, group);
    this.groups.splice(this.groups.indexOf(group), 1);
    group.container = undefined;
    group.containerUsers = 0;
    if (this.groups.length === 0 && this.iommu) {
      this.iommu.unmapAll();
      this.iommu = undefined;
    }
    this.maybeRelease();
  }

  close(): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.host.services.releaseFd(this.fd);
    this.maybeRelease();
  }

  /** The container lives while its fd is open or a group holds it. */
  private maybeRelease(): void {
    if (this.closedFlag && this.groups.length === 0) this.host.containerClosed(this);
  }

  get mappingCount(): number {
    return this.iommu?.dmas.length ?? 0;
  }

  get driverName(): string | undefined {
    return this.iommu ? (this.iommu.v2 ? 'type1v2' : 'type1') : undefined;
  }
}

/** verify_bitmap_size. */
function verifyBitmapSize(pages: bigint, bytes: bigint): void {
  if (!pages || !bytes || bytes > DIRTY_BITMAP_SIZE_MAX || bytes < dirtyBitmapBytes(pages)) fail('EINVAL');
}

/** vfio_find_dma(iommu, position, 0): a mapping with iova < position < end (the rb-tree walk with size 0). */
function lastDmaFind(iommu: Type1Iommu, position: bigint): Type1Dma | undefined {
  return iommu.dmas.find((dma) => position > dma.iova && position < dma.end);
}

/** An open /dev/vfio/N. */
export class SimulatedGroup implements GroupHandle {
  readonly fd: number;
  private closedFlag = false;
  readonly deviceFiles = new Set<SimulatedDeviceFile>();

  constructor(
    readonly host: Type1Host,
    readonly group: SimulatedVfioGroup,
    readonly options: KernelOptions | undefined,
  ) {
    this.fd = host.services.allocateFd();
    group.openedBy = this;
  }

  get groupId(): number {
    return this.group.groupId;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  private ioctl<T>(ioctl: string, objects: KernelObjects, body: () => T): T {
    const closed = this.closedFlag ? (['group', `${this.groupId} is closed`] as const) : undefined;
    return runIoctl(this.host.services, this.fd, closed, ioctl, { group: this.groupId, ...objects }, body);
  }

  getStatus(): { viable: boolean; containerSet: boolean } {
    return this.ioctl('VFIO_GROUP_GET_STATUS', {}, () => {
      if (this.group.container) return { viable: true, containerSet: true };
      return { viable: this.host.services.dmaOwner(this.group.key) === undefined, containerSet: false };
    });
  }

  setContainer(container: LegacyContainerHandle): void {
    const simulated = container instanceof SimulatedLegacyContainer && container.host.identity === this.host.identity ? container : undefined;
    this.ioctl('VFIO_GROUP_SET_CONTAINER', { container_fd: container.fd }, () => {
      if (!simulated || simulated.closed) fail('EBADF');
      if (this.group.container) fail('EINVAL');
      simulated.attachGroup(this.group);
    });
  }

  unsetContainer(): void {
    this.ioctl('VFIO_GROUP_UNSET_CONTAINER', {}, () => {
      const container = this.group.container;
      if (!container) fail('EINVAL');
      if (this.group.containerUsers !== 1) fail('EBUSY');
      container.detachGroup(this.group);
    });
  }

  openDevice(name: string): DeviceHandle {
    if (typeof name !== 'string' || name.length === 0) throw new InvalidArgumentError('name', 'must be the device name, e.g. 0000:00:03.0');
    return this.ioctl('VFIO_GROUP_GET_DEVICE_FD', { name }, () => {
      const device = this.group.devices.find((candidate) => candidate.name === name || candidate.model.pciAddress === name);
      if (!device) fail('ENODEV');
      const container = this.group.container;
      if (!container) fail('EINVAL');
      // vfio_group_use_container: SET_IOMMU must have been done.
      if (!container.iommu) fail('EINVAL');
      // The cdev path and the group path cannot both have the device open.
      if (device.boundFile) fail('EBUSY');
      const file = new SimulatedDeviceFile(this.host, device, 'group', this.options);
      file.markGroupOpen();
      this.group.containerUsers++;
      this.deviceFiles.add(file);
      return file;
    });
  }

  /** A device fd of this group was closed. */
  deviceClosed(file: SimulatedDeviceFile): void {
    if (!this.deviceFiles.delete(file)) return;
    file.markGroupClosed();
    this.group.containerUsers--;
    this.maybeRelease();
  }

  close(): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.host.services.releaseFd(this.fd);
    this.maybeRelease();
  }

  /** The group file is released once its fd and every device fd from it are closed. */
  private maybeRelease(): void {
    if (!this.closedFlag || this.deviceFiles.size > 0) return;
    if (this.group.openedBy !== this) return;
    if (this.group.container) this.group.container.detachGroup(this.group);
    this.group.openedBy = undefined;
    this.host.groupClosed(this);
  }
}
