// struct io_pagetable (drivers/iommu/iommufd/io_pagetable.c): an IOAS's areas (IOVA -> host
// memory), reserved and allowed IOVA ranges, the domains it fills, and its IOVA alignment. The
// checks run in the kernel's order and fail with the kernel's errno.
import { fail } from './failure.js';
import { PAGE_SIZE, type SimulatedHostMemory } from './host-memory.js';
import type { Domain, MappedRange } from './iommu-domain.js';

export const U64_MAX = (1n << 64n) - 1n;
/** CONFIG_TRANSPARENT_HUGEPAGE's HPAGE_SIZE on x86-64: the largest alignment iopt_alloc_iova asks for. */
const HPAGE_SIZE = 2n * 1024n * 1024n;

/** A range of host memory an area maps (struct iopt_pages plus the slice the area takes). */
export interface PagesSlice {
  readonly memory: SimulatedHostMemory;
  /** Byte offset of the slice inside `memory`. */
  readonly offset: bigint;
  readonly length: bigint;
  /** iopt_pages.writable: the pages were pinned writable (the first map asked for IOMMU_WRITE). */
  readonly pagesWritable: boolean;
}

export interface Protection {
  readonly read: boolean;
  readonly write: boolean;
}

/** struct iopt_area: one mapping of the IOAS. Unmap must cover it whole. */
export class Area implements MappedRange {
  constructor(
    readonly iova: bigint,
    readonly length: bigint,
    readonly pages: PagesSlice,
    readonly protection: Protection,
  ) {}

  get start(): bigint {
    return this.iova;
  }

  get last(): bigint {
    return this.iova + this.length - 1n;
  }

  get physicalAddress(): bigint {
    return this.pages.memory.address + this.pages.offset;
  }

  get backingPageSize(): bigint {
    return this.pages.memory.backingPageSize;
  }

  /** area->page_offset: where the first byte sits inside its PAGE_SIZE page. */
  get pageOffset(): bigint {
    return this.physicalAddress % PAGE_SIZE;
  }
}

export interface IovaInterval {
  readonly start: bigint;
  readonly last: bigint;
}

interface Reserved extends IovaInterval {
  readonly owner: unknown;
}

function intersects(a: IovaInterval, start: bigint, last: bigint): boolean {
  return a.start <= last && a.last >= start;
}

function roundUpPowerOfTwo(value: bigint): bigint {
  let result = 1n;
  while (result < value) result <<= 1n;
  return result;
}

/** 1 << __ffs(value): the lowest set bit. */
export function lowestBit(value: bigint): bigint {
  return value & -value;
}

export class IoPagetable {
  /** Sorted by IOVA, never overlapping. */
  private areaList: Area[] = [];
  private reservedList: Reserved[] = [];
  private allowedList: IovaInterval[] = [];
  private readonly domainList: Domain[] = [];
  private readonly accessAlignments = new Map<object, bigint>();
  /** iopt->iova_alignment: starts at 1 (no domain, software table). */
  iovaAlignment = 1n;
  disableLargePages = false;

  get areas(): readonly Area[] {
    return this.areaList;
  }

  get domains(): readonly Domain[] {
    return this.domainList;
  }

  get reserved(): readonly IovaInterval[] {
    return this.reservedList;
  }

  get allowed(): readonly IovaInterval[] {
    return this.allowedList;
  }

  /** Bytes mapped in total. */
  get mappedBytes(): bigint {
    return this.areaList.reduce((total, area) => total + area.length, 0n);
  }

  areasIntersecting(start: bigint, last: bigint): Area[] {
    return this.areaList.filter((area) => intersects(area, start, last));
  }

  areaAt(iova: bigint): Area | undefined {
    let low = 0;
    let high = this.areaList.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      const area = this.areaList[middle]!;
      if (area.last < iova) low = middle + 1;
      else high = middle;
    }
    const area = this.areaList[low];
    return area && area.iova <= iova ? area : undefined;
  }

  /**
   * iopt_for_each_contig_area: the areas covering [iova, last] back to back, starting with the
   * one that holds `iova`. `done` is false when a hole interrupts the run.
   */
  contiguousAreas(iova: bigint, last: bigint): { readonly areas: Area[]; readonly done: boolean } {
    const areas: Area[] = [];
    let area = this.areaAt(iova);
    while (area) {
      areas.push(area);
      if (area.last >= last) return { areas, done: true };
      const next = this.areaAt(area.last + 1n);
      if (!next || next.iova !== area.last + 1n) break;
      area = next;
    }
    return { areas, done: false };
  }

  private reservedIntersects(start: bigint, last: bigint): boolean {
    return this.reservedList.some((reserved) => intersects(reserved, start, last));
  }

  /** iopt_check_iova: a fixed IOVA must be aligned, must not overflow, hit a reserved range or an area. */
  checkIova(iova: bigint, length: bigint): void {
    if (iova & (this.iovaAlignment - 1n)) fail('EINVAL');
    const last = iova + length - 1n;
    if (last > U64_MAX) fail('EOVERFLOW');
    if (this.reservedIntersects(iova, last)) fail('EINVAL');
    if (this.areaList.some((area) => intersects(area, iova, last))) fail('EEXIST');
  }

  /** iopt_alloc_iova: the lowest free, allowed, suitably aligned IOVA (never 0). */
  allocIova(uptr: bigint, length: bigint): bigint {
    const pageOffset = uptr % PAGE_SIZE;
    if (length === 0n || length >= U64_MAX / 2n) fail('EOVERFLOW');
    let alignment = uptr === 0n ? roundUpPowerOfTwo(length) : minBig(roundUpPowerOfTwo(length), lowestBit(uptr));
    if (alignment >= HPAGE_SIZE) alignment = HPAGE_SIZE;
    if (alignment < this.iovaAlignment) fail('EINVAL');

    const checkRange = (start: bigint, last: bigint): bigint | undefined => {
      let aligned = start + alignment - 1n;
      if (aligned > U64_MAX) return undefined;
      aligned &= ~(alignment - 1n);
      aligned |= pageOffset;
      if (aligned >= last || last - aligned < length - 1n) return undefined;
      return aligned;
    };
    const lowest = PAGE_SIZE;
    const highest = U64_MAX - PAGE_SIZE;
    const allowedSpans: IovaInterval[] = this.allowedList.length === 0
      ? [{ start: lowest, last: highest }]
      : this.allowedList
          .filter((allowed) => intersects(allowed, lowest, highest))
          .map((allowed) => ({ start: maxBig(allowed.start, lowest), last: minBig(allowed.last, highest) }))
          .sort((a, b) => compare(a.start, b.start));
    const used = mergeIntervals([...this.reservedList, ...this.areaList.map((area) => ({ start: area.iova, last: area.last }))]);
    for (const span of allowedSpans) {
      if (checkRange(span.start, span.last) === undefined) continue;
      for (const hole of holes(used, span.start, span.last)) {
        const found = checkRange(hole.start, hole.last);
        if (found !== undefined) return found;
      }
    }
    return fail('ENOSPC');
  }

  /**
   * iopt_map_pages: reserve the IOVA (chosen or fixed), insert one area per slice, fill every
   * domain. Returns the IOVA used.
   */
  mapPages(slices: readonly PagesSlice[], length: bigint, fixedIova: bigint | undefined, protection: Protection): bigint {
    if ((length & (this.iovaAlignment - 1n)) !== 0n || length === 0n) fail('EINVAL');
    let iova: bigint;
    if (fixedIova === undefined) {
      const first = slices[0]!;
      iova = this.allocIova(first.memory.address + first.offset, length);
    } else {
      this.checkIova(fixedIova, length);
      iova = fixedIova;
    }
    const created: Area[] = [];
    let next = iova;
    for (const slice of slices) {
      if (protection.write && !slice.pagesWritable) fail('EPERM');
      const area = new Area(next, slice.length, slice, protection);
      if (area.pageOffset & (this.iovaAlignment - 1n)) fail('EINVAL');
      created.push(area);
      next += slice.length;
    }
    // Pinning happens only when a domain needs the pages (iopt_area_fill_domains).
    if (this.domainList.length > 0) {
      for (const area of created) if (!area.pages.memory.covers(area.pages.offset, area.length)) fail('EFAULT');
    }
    for (const area of created) this.insertArea(area);
    return iova;
  }

  private insertArea(area: Area): void {
    let index = 0;
    while (index < this.areaList.length && this.areaList[index]!.iova < area.iova) index++;
    this.areaList.splice(index, 0, area);
    area.pages.memory.mappings++;
    for (const domain of this.domainList) domain.map(area, area, this.disableLargePages);
  }

  private removeArea(area: Area): void {
    this.areaList = this.areaList.filter((other) => other !== area);
    area.pages.memory.mappings--;
    for (const domain of this.domainList) domain.unmap(area);
  }

  /**
   * iopt_unmap_iova_range: unmap every area inside [start, last], in IOVA order, stopping with
   * ENOENT at the first one that is not wholly inside (the ones before stay unmapped).
   */
  unmapRange(start: bigint, last: bigint): { unmapped: bigint; errno: 'ENOENT' | undefined } {
    let unmapped = 0n;
    for (;;) {
      const area = this.areaList.find((candidate) => intersects(candidate, start, last));
      if (!area) break;
      if (area.iova < start || area.last > last) return { unmapped, errno: 'ENOENT' };
      this.removeArea(area);
      unmapped += area.length;
      if (area.last >= last) break;
      start = area.last + 1n;
    }
    return { unmapped, errno: undefined };
  }

  /** iopt_get_pages: the slices behind [iova, iova + length), which must be mapped without a hole. */
  getPages(iova: bigint, length: bigint): PagesSlice[] {
    if (length === 0n) fail('EINVAL');
    const last = iova + length - 1n;
    if (last > U64_MAX) fail('EOVERFLOW');
    const run = this.contiguousAreas(iova, last);
    if (!run.done) fail('ENOENT');
    let current = iova;
    return run.areas.map((area) => {
      const end = minBig(last, area.last);
      const slice: PagesSlice = {
        memory: area.pages.memory,
        offset: area.pages.offset + (current - area.iova),
        length: end - current + 1n,
        pagesWritable: area.pages.pagesWritable,
      };
      current = end + 1n;
      return slice;
    });
  }

  /** iopt_reserve_iova: refused with EADDRINUSE over an area or an allowed range. */
  reserve(start: bigint, last: bigint, owner: unknown): void {
    if (this.areaList.some((area) => intersects(area, start, last)) || this.allowedList.some((allowed) => intersects(allowed, start, last))) {
      fail('EADDRINUSE');
    }
    this.reservedList.push({ start, last, owner });
  }

  removeReserved(owner: unknown): void {
    this.reservedList = this.reservedList.filter((reserved) => reserved.owner !== owner);
  }

  /** iopt_set_allow_iova: replace the allowed ranges; EADDRINUSE if one crosses a reserved range. */
  setAllowed(ranges: readonly IovaInterval[]): void {
    if (ranges.some((range) => this.reservedIntersects(range.start, range.last))) fail('EADDRINUSE');
    this.allowedList = [...ranges].sort((a, b) => compare(a.start, b.start));
  }

  /** IOMMU_IOAS_IOVA_RANGES: the holes between reserved ranges over the whole 64-bit space. */
  iovaRanges(): IovaInterval[] {
    return holes(mergeIntervals(this.reservedList), 0n, U64_MAX);
  }

  /** Every area conforms to a larger alignment (iopt_check_iova_alignment). */
  private checkAlignment(alignment: bigint): void {
    const mask = alignment - 1n;
    for (const area of this.areaList) {
      if ((area.iova & mask) || (area.length & mask) || (area.pageOffset & mask)) fail('EADDRINUSE');
    }
  }

  /** iopt_calculate_iova_alignment. */
  private recalculateAlignment(): void {
    let alignment = this.disableLargePages ? PAGE_SIZE : 1n;
    for (const domain of this.domainList) alignment = maxBig(alignment, domain.granule);
    for (const accessAlignment of this.accessAlignments.values()) alignment = maxBig(alignment, accessAlignment);
    if (alignment > this.iovaAlignment) this.checkAlignment(alignment);
    this.iovaAlignment = alignment;
  }

  /** iopt_table_add_domain: alignment, aperture reservations, then fill with every area. */
  addDomain(domain: Domain): void {
    const alignment = maxBig(domain.granule, this.iovaAlignment);
    if (alignment > PAGE_SIZE) fail('EINVAL');
    if (alignment !== this.iovaAlignment) this.checkAlignment(alignment);
    try {
      if (domain.apertureStart !== 0n) this.reserve(0n, domain.apertureStart - 1n, domain);
      if (domain.apertureLast !== U64_MAX) this.reserve(domain.apertureLast + 1n, U64_MAX, domain);
      for (const area of this.areaList) if (!area.pages.memory.covers(area.pages.offset, area.length)) fail('EFAULT');
    } catch (error) {
      this.removeReserved(domain);
      throw error;
    }
    for (const area of this.areaList) domain.map(area, area, this.disableLargePages);
    this.iovaAlignment = alignment;
    this.domainList.push(domain);
  }

  /** iopt_table_remove_domain. */
  removeDomain(domain: Domain): void {
    const index = this.domainList.indexOf(domain);
    if (index < 0) return;
    this.domainList.splice(index, 1);
    for (const area of this.areaList) domain.unmap(area);
    this.removeReserved(domain);
    try {
      this.recalculateAlignment();
    } catch {
      // The kernel WARNs: a smaller alignment set can never be violated by existing areas.
    }
  }

  /** iopt_add_access: an in-kernel user (mdev) raises the alignment to its own. */
  addAccess(key: object, alignment: bigint): void {
    this.accessAlignments.set(key, alignment);
    try {
      this.recalculateAlignment();
    } catch (error) {
      this.accessAlignments.delete(key);
      throw error;
    }
  }

  removeAccess(key: object): void {
    this.accessAlignments.delete(key);
    try {
      this.recalculateAlignment();
    } catch {
      // As removeDomain.
    }
  }

  get accessCount(): number {
    return this.accessAlignments.size;
  }

  /** IOMMU_OPTION_HUGE_PAGES = 0 (iopt_disable_large_pages). */
  disableLarge(): void {
    if (this.disableLargePages) return;
    if (this.domainList.length > 0 && this.areaList.length > 0) fail('EINVAL');
    this.disableLargePages = true;
    try {
      this.recalculateAlignment();
    } catch (error) {
      this.disableLargePages = false;
      throw error;
    }
  }

  /** IOMMU_OPTION_HUGE_PAGES = 1 (iopt_enable_large_pages). */
  enableLarge(): void {
    this.disableLargePages = false;
    try {
      this.recalculateAlignment();
    } catch {
      // Lowering the alignment cannot fail.
    }
  }

  /** Unmap everything and drop every reservation (the IOAS is being destroyed). */
  destroy(): void {
    this.unmapRange(0n, U64_MAX);
    this.allowedList = [];
  }
}

function compare(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function minBig(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

export function maxBig(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

/** Sorted, merged (overlapping or adjacent joined) copy of intervals. */
function mergeIntervals(intervals: readonly IovaInterval[]): IovaInterval[] {
  const sorted = [...intervals].sort((a, b) => compare(a.start, b.start));
  const merged: { start: bigint; last: bigint }[] = [];
  for (const interval of sorted) {
    const previous = merged[merged.length - 1];
    if (previous && interval.start <= previous.last + 1n) {
      if (interval.last > previous.last) previous.last = interval.last;
    } else {
      merged.push({ start: interval.start, last: interval.last });
    }
  }
  return merged;
}

/** The gaps of merged, sorted `used` intervals inside [start, last]. */
function holes(used: readonly IovaInterval[], start: bigint, last: bigint): IovaInterval[] {
  const result: IovaInterval[] = [];
  let cursor = start;
  for (const interval of used) {
    if (interval.last < cursor) continue;
    if (interval.start > last) break;
    if (interval.start > cursor) result.push({ start: cursor, last: interval.start - 1n });
    if (interval.last >= last) return result;
    cursor = interval.last + 1n;
  }
  if (cursor <= last) result.push({ start: cursor, last });
  return result;
}
