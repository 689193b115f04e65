// An iommu_domain: the IO page table a HWPT owns. It holds, per IOAS area mapped into it, the
// IOPTE layout (which IOVA is covered by a base page, which by a huge IOPTE) and one dirty bit
// per IOPTE. Dirty bits live in a lazily chunked bitmap at the granule (the smallest page size),
// set only at each IOPTE's first granule, so a 1 GiB IOPTE costs one bit and a 1 TiB mapping at
// 4 KiB costs at most 32 MiB, only where written.
import { ChunkedBitmap } from './bitmap.js';
import { PAGE_SIZE } from './host-memory.js';
import type { KernelMemory } from './kernel-memory.js';

/** What the domain needs from an IOAS area to map it. */
export interface MappedRange {
  readonly iova: bigint;
  readonly length: bigint;
  /** The host ("physical") address the first byte maps to. */
  readonly physicalAddress: bigint;
  /** Physically contiguous run size of the host memory behind it. */
  readonly backingPageSize: bigint;
}

export interface DomainOptions {
  /** The driver that allocated it (iommu_domain->owner): a device of another IOMMU type cannot attach. */
  readonly owner: string;
  /** Ascending `pgsize_bitmap` entries; the first is the granule. */
  readonly pageSizes: readonly bigint[];
  readonly apertureStart: bigint;
  readonly apertureLast: bigint;
  /** Allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING (has dirty_ops). */
  readonly dirtyOps: boolean;
  /** A kernel selftest mock domain (drivers/iommu/iommufd/selftest.c). */
  readonly mock: boolean;
  /** Where the dirty bits may be placed (the kernel's memory); own arrays without it. */
  readonly memory?: KernelMemory;
}

/** One IOPTE: its first granule and its size in granules, relative to the mapping. */
interface Iopte {
  start: number;
  size: number;
}

/** One area as mapped into one domain. */
export class DomainMapping {
  readonly granules: number;
  /** Page sizes usable for this mapping, descending, in granules, with the IOVA phase of each. */
  private readonly sizes: { readonly granules: number; readonly phase: number }[];
  readonly dirty: ChunkedBitmap;

  constructor(
    readonly range: MappedRange,
    readonly granule: bigint,
    pageSizes: readonly bigint[],
    largePagesDisabled: boolean,
    memory?: KernelMemory,
  ) {
    const count = range.length / granule;
    if (count > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('mapping too large for the simulator');
    this.granules = Number(count);
    const offset = range.iova - range.physicalAddress;
    // iommu_pgsize(): a page size is used where the IOVA and the physical address are both aligned
    // to it and the memory is physically contiguous over it; iommufd maps PAGE_SIZE at a time when
    // large pages are disabled (batch_iommu_map_small).
    this.sizes = pageSizes
      .filter((size) => size === granule || (
        size <= range.backingPageSize
        && ((offset % size) + size) % size === 0n
        && (!largePagesDisabled || size <= PAGE_SIZE)
      ))
      .sort((a, b) => (a > b ? -1 : a < b ? 1 : 0))
      .map((size) => {
        const perIopte = Number(size / granule);
        return { granules: perIopte, phase: Number((range.iova / granule) % BigInt(perIopte)) };
      });
    this.dirty = new ChunkedBitmap(this.granules, memory);
  }

  /** True when every IOPTE is one granule: dirty bits map one to one onto pages. */
  get uniform(): boolean {
    return this.sizes.length === 1;
  }

  /** The largest IOPTE of this mapping, in bytes. */
  get largestIopte(): bigint {
    return BigInt(this.sizes[0]!.granules) * this.granule;
  }

  /** The IOPTE covering granule `k`: the largest aligned block that fits inside the mapping. */
  iopteAt(k: number): Iopte {
    for (const size of this.sizes) {
      if (size.granules === 1) return { start: k, size: 1 };
      const start = k - ((k + size.phase) % size.granules);
      if (start >= 0 && start + size.granules <= this.granules) return { start, size: size.granules };
    }
    return { start: k, size: 1 };
  }

  /** The device wrote granules [from, to): set the dirty bit of every IOPTE touched. */
  markDirty(from: number, to: number): void {
    if (this.uniform) {
      this.dirty.setRange(from, to);
      return;
    }
    let k = from;
    while (k < to) {
      const iopte = this.iopteAt(k);
      this.dirty.set(iopte.start);
      k = iopte.start + iopte.size;
    }
  }

  /**
   * read_and_clear_dirty over granules [from, to): report each dirty IOPTE as the granules it
   * covers (clipped to the request), and clear its bit unless `noClear`. A huge IOPTE reports
   * every page it covers.
   */
  readAndClear(from: number, to: number, noClear: boolean, record: (start: number, end: number) => void): void {
    let k = from;
    if (!this.uniform) {
      const first = this.iopteAt(from);
      if (first.start < from) {
        if (this.dirty.test(first.start)) {
          record(from, Math.min(first.start + first.size, to));
          if (!noClear) this.dirty.clearRange(first.start, first.start + 1);
        }
        k = first.start + first.size;
      }
    }
    if (k >= to) return;
    if (this.uniform) {
      this.dirty.forEachSetRun(k, to, record);
    } else {
      this.dirty.forEachSetRun(k, to, (start, end) => {
        for (let head = start; head < end; head++) {
          const iopte = this.iopteAt(head);
          record(head, Math.min(head + iopte.size, to));
        }
      });
    }
    if (!noClear) this.dirty.clearRange(k, to);
  }

  /**
   * The word-wise path of readAndClear when every IOPTE is one granule and the caller's page is
   * the granule: OR granules [from, to) into `bitmap` from bit `bit`. False when not applicable.
   */
  readAndClearInto(from: number, to: number, noClear: boolean, bitmap: Uint8Array, bit: number): boolean {
    return this.uniform && this.dirty.orInto(from, to, bitmap, bit, !noClear);
  }

  /** Dirty granule count (IOPTE heads) — for inspection. */
  dirtyIoptes(): number {
    return this.dirty.count();
  }
}

export class Domain {
  readonly owner: string;
  readonly pageSizes: readonly bigint[];
  readonly granule: bigint;
  readonly apertureStart: bigint;
  readonly apertureLast: bigint;
  readonly dirtyOps: boolean;
  readonly mock: boolean;
  private readonly memory: KernelMemory | undefined;
  /** set_dirty_tracking(true) done: the IOMMU sets dirty bits on DMA writes. */
  trackingEnabled = false;
  private readonly mappings = new Map<object, DomainMapping>();

  constructor(options: DomainOptions) {
    this.owner = options.owner;
    this.pageSizes = [...options.pageSizes].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    this.granule = this.pageSizes[0]!;
    this.apertureStart = options.apertureStart;
    this.apertureLast = options.apertureLast;
    this.dirtyOps = options.dirtyOps;
    this.mock = options.mock;
    this.memory = options.memory;
  }

  /** `pgsize_bitmap` as the kernel reports it. */
  get pageSizeBitmap(): bigint {
    return this.pageSizes.reduce((bits, size) => bits | size, 0n);
  }

  map(key: object, range: MappedRange, largePagesDisabled: boolean): void {
    this.mappings.set(key, new DomainMapping(range, this.granule, this.pageSizes, largePagesDisabled, this.memory));
  }

  unmap(key: object): void {
    // Unmapping drops the IOPTEs and their dirty bits; give back any shared pages they held.
    this.mappings.get(key)?.dirty.reset();
    this.mappings.delete(key);
  }

  mapping(key: object): DomainMapping | undefined {
    return this.mappings.get(key);
  }

  get mappingCount(): number {
    return this.mappings.size;
  }

  /** Drop every dirty bit (iopt_clear_dirty_data, done before enabling tracking). */
  clearDirty(): void {
    for (const mapping of this.mappings.values()) mapping.dirty.reset();
  }

  /** Bytes of dirty bitmap chunks this domain holds. */
  get dirtyBytes(): number {
    let total = 0;
    for (const mapping of this.mappings.values()) total += mapping.dirty.allocatedBytes;
    return total;
  }
}
