import { InvalidArgumentError } from '../kernel/errors.js';
import type { ArenaBuffer, Engine } from '../engine/index.js';
import type { HostMemory } from '../kernel/types.js';
import type { Mapping } from '../vfio/container.js';

/**
 * One guest memory region (a `HostMemory`: a RAM block) in the migration bitmap: one bit per
 * migration page of the whole memory, whatever of it is mapped. The same memory mapped at two
 * IOVAs shares these bits; other memory at a reused IOVA gets bits of its own.
 */
export class MemoryRegion {
  /** Live mappings onto this memory, by memory offset. */
  readonly mappings: Mapping[] = [];

  constructor(
    readonly memory: HostMemory,
    /** First bit, a multiple of 64: every region starts on a u64 word of the bitmap. */
    readonly bit: number,
    readonly pages: number,
    /** Index of the region, in order of first mapping: a stable name for reports. */
    readonly index: number,
  ) {}

  /** Bits the region occupies, whole words. */
  get span(): number {
    return Math.ceil(this.pages / 64) * 64;
  }
}

/** Where one mapping's pages sit in the migration bitmap: the bits of the memory behind it. */
export interface BitmapPlacement {
  readonly mapping: Mapping;
  readonly region: MemoryRegion;
  readonly iova: bigint;
  readonly size: bigint;
  /** First bit: the region's bit plus the mapping's memory offset in pages. */
  readonly bit: number;
  readonly bits: number;
}

/**
 * A run of the migration bitmap, translated: which memory, where in it, and where that memory is
 * mapped now. A run is split where the memory's mappings begin or end.
 */
export interface DirtyRange {
  readonly memory: HostMemory;
  /** Index of the memory region (see `MemoryRegion.index`). */
  readonly region: number;
  /** Byte offset in the memory. */
  readonly offset: bigint;
  readonly length: bigint;
  /** IOVA of `offset` in the first mapping that maps it; undefined when no mapping does now. */
  readonly iova: bigint | undefined;
  /** Every IOVA at which `offset` is mapped (two or more when the memory is aliased). */
  readonly iovas: readonly bigint[];
}

/** A region made for a map that the kernel has not done yet: committed after it, cancelled if it fails. */
export interface Reservation {
  readonly mapping: Mapping;
  readonly region: MemoryRegion;
  /** The memory was new to the bitmap: all of it is dirty once the map is done (never sent). */
  readonly newRegion: boolean;
}

/**
 * The migration bitmap: one bit per migration page of every guest memory region that has been
 * mapped, in the engine's shared memory, as QEMU keeps a dirty bitmap per RAMBlock. Mappings only
 * translate IOVAs to (memory, offset): every source's bits land in the memory they cover.
 */
export class MigrationBitmap {
  readonly buffer: ArenaBuffer;
  /** Capacity in bits. */
  readonly bits: number;
  private readonly regionList: MemoryRegion[] = [];
  private readonly byMemory = new Map<HostMemory, MemoryRegion>();
  private readonly placementMap = new Map<Mapping, BitmapPlacement>();
  /** Free bit ranges [start, end), sorted, word-aligned. */
  private free: { start: number; end: number }[];
  private nextIndex = 0;

  constructor(readonly engine: Engine, readonly pageSize: bigint, capacityBytes: bigint) {
    if (pageSize < 4096n || (pageSize & (pageSize - 1n)) !== 0n) {
      throw new InvalidArgumentError('pageSize', `must be a power of two of at least 4096, got ${pageSize}`);
    }
    const pages = (capacityBytes + pageSize - 1n) / pageSize;
    if (pages <= 0n) throw new InvalidArgumentError('capacityBytes', 'must be at least one page');
    // Runs are (start, length) pairs of u32: the bitmap holds at most 2^32 - 64 bits.
    if (pages > 0xffffffc0n) {
      throw new InvalidArgumentError('capacityBytes', `0x${capacityBytes.toString(16)} bytes is ${pages} pages of 0x${pageSize.toString(16)}; the migration bitmap holds at most 2^32 - 64 pages (use a larger migration page size)`);
    }
    const bits = Number((pages + 63n) / 64n) * 64;
    this.bits = bits;
    this.buffer = engine.arena.allocate(bits / 8, 64);
    this.free = [{ start: 0, end: bits }];
  }

  /** Regions in bit order. */
  get regions(): readonly MemoryRegion[] {
    return this.regionList;
  }

  regionOf(memory: HostMemory): MemoryRegion | undefined {
    return this.byMemory.get(memory);
  }

  /** Bits in use: up to the end of the last region. Rounds count, scan and clear only these. */
  get usedBits(): number {
    const last = this.regionList[this.regionList.length - 1];
    return last ? last.bit + last.span : 0;
  }

  /** Placements of the live mappings, in IOVA order. */
  get placements(): BitmapPlacement[] {
    return [...this.placementMap.values()].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  }

  placementOf(mapping: Mapping): BitmapPlacement | undefined {
    return this.placementMap.get(mapping);
  }

  /**
   * Checks a mapping and gives its memory bits if the memory is new, before the kernel maps it:
   * a map is either tracked or refused. Nothing is visible to rounds until `commit`.
   */
  reserve(mapping: Mapping): Reservation {
    const hex = (v: bigint) => `0x${v.toString(16)}`;
    const ps = this.pageSize;
    if (mapping.iova % ps !== 0n || mapping.size % ps !== 0n || mapping.memoryOffset % ps !== 0n) {
      throw new InvalidArgumentError('mapping', `${hex(mapping.iova)}+${hex(mapping.size)} at memory offset ${hex(mapping.memoryOffset)} is not aligned to the migration page size ${hex(ps)}`);
    }
    const existing = this.byMemory.get(mapping.memory);
    if (existing) return { mapping, region: existing, newRegion: false };
    const pages = Number((mapping.memory.length + ps - 1n) / ps);
    const need = Math.ceil(pages / 64) * 64;
    const index = this.free.findIndex((f) => f.end - f.start >= need);
    if (index === -1) {
      throw new InvalidArgumentError('mapping', `the migration bitmap has no room for the ${pages} pages of a new ${hex(mapping.memory.length)}-byte memory (capacity ${this.bits} pages, ${this.bits - this.freeBits()} in use): create DirtySync with a larger capacityBytes`);
    }
    const slot = this.free[index]!;
    const region = new MemoryRegion(mapping.memory, slot.start, pages, this.nextIndex++);
    if (slot.end - slot.start === need) this.free.splice(index, 1);
    else slot.start += need;
    // Listed now so a second reservation of the same memory finds it; its bits are clean.
    this.insertRegion(region);
    return { mapping, region, newRegion: true };
  }

  /** The kernel mapped it: the mapping translates into its region from now on. */
  commit(reservation: Reservation): BitmapPlacement {
    const { mapping, region } = reservation;
    const placement: BitmapPlacement = {
      mapping, region, iova: mapping.iova, size: mapping.size,
      bit: region.bit + Number(mapping.memoryOffset / this.pageSize), bits: Number(mapping.size / this.pageSize),
    };
    this.placementMap.set(mapping, placement);
    region.mappings.push(mapping);
    region.mappings.sort((a, b) => (a.memoryOffset < b.memoryOffset ? -1 : a.memoryOffset > b.memoryOffset ? 1 : 0));
    return placement;
  }

  /** The kernel refused the map: a region made for it goes again. */
  cancel(reservation: Reservation): void {
    if (reservation.newRegion && reservation.region.mappings.length === 0) this.releaseRegion(reservation.region);
  }

  /** The mapping is gone; its memory keeps its bits (they may be dirty and not sent yet). */
  remove(mapping: Mapping): BitmapPlacement | undefined {
    const placement = this.placementMap.get(mapping);
    if (!placement) return undefined;
    this.placementMap.delete(mapping);
    const list = placement.region.mappings;
    list.splice(list.indexOf(mapping), 1);
    return placement;
  }

  /**
   * Gives back the bits of memory that nothing maps, that was released, and whose pages were
   * all handed over. Memory still held keeps its bits: it may be mapped again.
   */
  releaseIdle(): void {
    for (const region of [...this.regionList]) {
      if (region.mappings.length || !region.memory.released) continue;
      if (this.engine.sync.popcount(this.buffer, region.bit, region.bit + region.pages) === 0) this.releaseRegion(region);
    }
  }

  /** Sets every bit of a placement: all its pages are dirty. */
  markPlacement(placement: BitmapPlacement): void {
    this.engine.sync.setRange(this.buffer, placement.bit, placement.bit + placement.bits);
  }

  /** Sets every bit of a region: the whole memory is dirty. */
  markRegion(region: MemoryRegion): void {
    this.engine.sync.setRange(this.buffer, region.bit, region.bit + region.pages);
  }

  /**
   * The memory ranges of a bitmap run [bit, bit + length), split where regions and mappings
   * begin or end, each with the IOVAs it is mapped at.
   */
  rangesOfRun(bit: number, length: number): DirtyRange[] {
    const ranges: DirtyRange[] = [];
    const end = bit + length;
    const ps = this.pageSize;
    let low = 0;
    let high = this.regionList.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      const r = this.regionList[middle]!;
      if (r.bit + r.pages <= bit) low = middle + 1;
      else high = middle;
    }
    for (let i = low; i < this.regionList.length; i++) {
      const region = this.regionList[i]!;
      if (region.bit >= end) break;
      const from = Math.max(bit, region.bit) - region.bit;
      const to = Math.min(end, region.bit + region.pages) - region.bit;
      if (from >= to) continue;
      // Cut points: the run's ends and every mapping edge inside it.
      const cuts = new Set<number>([from, to]);
      for (const m of region.mappings) {
        const s = Number(m.memoryOffset / ps);
        const e = s + Number(m.size / ps);
        if (s > from && s < to) cuts.add(s);
        if (e > from && e < to) cuts.add(e);
      }
      const points = [...cuts].sort((a, b) => a - b);
      for (let k = 0; k + 1 < points.length; k++) {
        const offset = BigInt(points[k]!) * ps;
        const iovas: bigint[] = [];
        for (const m of region.mappings) {
          if (m.memoryOffset <= offset && offset < m.memoryOffset + m.size) iovas.push(m.iova + (offset - m.memoryOffset));
        }
        iovas.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        ranges.push({ memory: region.memory, region: region.index, offset, length: BigInt(points[k + 1]! - points[k]!) * ps, iova: iovas[0], iovas });
      }
    }
    return ranges;
  }

  /** A view of bits [bit, bit + bits) where the kernel writes them; `bit` must be a multiple of 64. */
  view(bit: number, bits: number): Uint8Array {
    if (bit % 64 !== 0) throw new RangeError(`bit ${bit} is not on a u64 word`);
    return new Uint8Array(this.buffer.arena.memory.buffer, this.buffer.offset + bit / 8, Math.ceil(bits / 64) * 8);
  }

  close(): void {
    this.buffer.free();
    this.regionList.length = 0;
    this.byMemory.clear();
    this.placementMap.clear();
  }

  private freeBits(): number {
    return this.free.reduce((sum, f) => sum + f.end - f.start, 0);
  }

  private insertRegion(region: MemoryRegion): void {
    const at = this.regionList.findIndex((r) => r.bit > region.bit);
    this.regionList.splice(at === -1 ? this.regionList.length : at, 0, region);
    this.byMemory.set(region.memory, region);
  }

  private releaseRegion(region: MemoryRegion): void {
    const at = this.regionList.indexOf(region);
    if (at === -1) return;
    this.regionList.splice(at, 1);
    this.byMemory.delete(region.memory);
    // Cleared so that the next memory placed here starts clean.
    this.engine.sync.clear(this.buffer, region.bit, region.bit + region.span);
    this.free.push({ start: region.bit, end: region.bit + region.span });
    this.free.sort((a, b) => a.start - b.start);
    const merged: { start: number; end: number }[] = [];
    for (const f of this.free) {
      const last = merged[merged.length - 1];
      if (last && last.end === f.start) last.end = f.end;
      else merged.push({ ...f });
    }
    this.free = merged;
  }
}
