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

/**
 * Where (a piece of) one mapping's pages sit in the migration bitmap: the bits of the memory
 * behind it. A mapping whose bits cross a segment edge is placed as one piece per segment.
 */
export interface BitmapPlacement {
  readonly mapping: Mapping;
  readonly region: MemoryRegion;
  /** IOVA and size of this piece. */
  readonly iova: bigint;
  readonly size: bigint;
  /** The segment's buffer, and the first bit in it (what the engine and the kernel are given). */
  readonly buffer: ArenaBuffer;
  readonly bit: number;
  readonly bits: number;
  /** The first bit in the whole bitmap (segment base + bit): what rangesOfRun takes. */
  readonly globalBit: number;
}

/** One buffer of the migration bitmap: the engine's kernels index bits with 32-bit numbers. */
export interface Segment {
  /** First bit of the whole bitmap in this segment. */
  readonly base: number;
  readonly bits: number;
  /** Allocated when a region first needs it. */
  buffer: ArenaBuffer | undefined;
  /** Bits in use: up to the end of the last region piece in the segment. */
  usedBits: number;
  /**
   * Known to hold no set bit below usedBits: since the last complete hand-over (or the
   * allocation) nothing has written it, so a round's count before its query is 0 without a pass
   * over the bitmap. Every writer clears it: view(), the mark calls, noteWritten().
   */
  clean: boolean;
}

/** Bits per segment: 2^31 (256 MiB of bitmap, 8 TiB of guest at 4 KiB pages). */
export const SEGMENT_BITS = 2 ** 31;

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
  /** Capacity in bits. */
  readonly bits: number;
  readonly segments: Segment[] = [];
  private readonly regionList: MemoryRegion[] = [];
  private readonly byMemory = new Map<HostMemory, MemoryRegion>();
  private readonly placementMap = new Map<Mapping, BitmapPlacement[]>();
  /** Free bit ranges [start, end), sorted, word-aligned. */
  private free: { start: number; end: number }[];
  private nextIndex = 0;

  constructor(readonly engine: Engine, readonly pageSize: bigint, capacityBytes: bigint) {
    if (pageSize < 4096n || (pageSize & (pageSize - 1n)) !== 0n) {
      throw new InvalidArgumentError('pageSize', `must be a power of two of at least 4096, got ${pageSize}`);
    }
    const pages = (capacityBytes + pageSize - 1n) / pageSize;
    if (pages <= 0n) throw new InvalidArgumentError('capacityBytes', 'must be at least one page');
    // Segments live in one shared WebAssembly memory of at most 4 GiB, beside the other buffers.
    if (pages > 3n << 33n) {
      throw new InvalidArgumentError('capacityBytes', `0x${capacityBytes.toString(16)} bytes is ${pages} pages of 0x${pageSize.toString(16)}; the migration bitmap holds at most 3 GiB of bits (2^35 * 0.75 pages): use a larger migration page size`);
    }
    const bits = Number((pages + 63n) / 64n) * 64;
    this.bits = bits;
    for (let base = 0; base < bits; base += SEGMENT_BITS) this.segments.push({ base, bits: Math.min(SEGMENT_BITS, bits - base), buffer: undefined, usedBits: 0, clean: true });
    this.free = [{ start: 0, end: bits }];
  }

  /**
   * The first segment's buffer, for a bitmap of one segment (guests below 8 TiB at 4 KiB pages).
   * @deprecated Bitmaps of more than 2^31 pages have several: use `segments`.
   */
  get buffer(): ArenaBuffer {
    return this.segmentBuffer(0);
  }

  /** A segment's buffer, allocated (and zeroed) on first use. */
  segmentBuffer(index: number): ArenaBuffer {
    const segment = this.segments[index]!;
    if (!segment.buffer) {
      const buffer = this.engine.arena.allocate(segment.bits / 8, 64);
      buffer.bytes().fill(0);
      segment.buffer = buffer;
      segment.clean = true;
    }
    return segment.buffer;
  }

  /** Calls `visit` for each segment piece of bits [start, start + count) of the whole bitmap. */
  private pieces(start: number, count: number, visit: (segment: number, bit: number, bits: number, globalBit: number) => void): void {
    let at = start;
    const end = start + count;
    while (at < end) {
      const index = Math.floor(at / SEGMENT_BITS);
      const segment = this.segments[index]!;
      const stop = Math.min(end, segment.base + segment.bits);
      visit(index, at - segment.base, stop - at, at);
      at = stop;
    }
  }

  private recomputeUsed(): void {
    const before = this.segments.map((segment) => segment.usedBits);
    for (const segment of this.segments) segment.usedBits = 0;
    for (const region of this.regionList) {
      this.pieces(region.bit, region.span, (index, bit, bits) => {
        const segment = this.segments[index]!;
        segment.usedBits = Math.max(segment.usedBits, bit + bits);
      });
    }
    // Bits that come into use again may hold what a region released left behind.
    this.segments.forEach((segment, index) => {
      if (segment.usedBits !== before[index]) {
        segment.clean = false;
        this.writeCount++;
      }
    });
  }

  /** Writes (and changes of bits in use) so far: a round that saw none during its scan may call handedOver. */
  get writes(): number {
    return this.writeCount;
  }

  private writeCount = 0;

  /** The segment holding a placement's buffer is no longer known to be clean. */
  private touch(buffer: ArenaBuffer): void {
    this.writeCount++;
    for (const segment of this.segments) if (segment.buffer === buffer) segment.clean = false;
  }

  /** Something other than this class (a merge, a resample) wrote bits of the placement. */
  noteWritten(placement: BitmapPlacement): void {
    this.touch(placement.buffer);
  }

  /**
   * Every set bit below the segment's usedBits was handed over and cleared, and nothing wrote
   * it since (a round's scan and hand-over, without a failure).
   */
  handedOver(segment: Segment): void {
    segment.clean = true;
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

  /** Placements (pieces) of the live mappings, in IOVA order. */
  get placements(): BitmapPlacement[] {
    return [...this.placementMap.values()].flat().sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  }

  /** The pieces of a live mapping (one unless its bits cross a segment edge). */
  placementsOf(mapping: Mapping): readonly BitmapPlacement[] {
    return this.placementMap.get(mapping) ?? [];
  }

  /** @deprecated A mapping may have several pieces: use placementsOf. */
  placementOf(mapping: Mapping): BitmapPlacement | undefined {
    return this.placementMap.get(mapping)?.[0];
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
    // Buffers first: if one cannot be had, nothing is taken.
    this.pieces(region.bit, need, (segment) => this.segmentBuffer(segment));
    if (slot.end - slot.start === need) this.free.splice(index, 1);
    else slot.start += need;
    // Listed now so a second reservation of the same memory finds it; its bits are clean.
    this.insertRegion(region);
    this.recomputeUsed();
    return { mapping, region, newRegion: true };
  }

  /** The kernel mapped it: the mapping translates into its region from now on. */
  commit(reservation: Reservation): readonly BitmapPlacement[] {
    const { mapping, region } = reservation;
    const first = region.bit + Number(mapping.memoryOffset / this.pageSize);
    const pieces: BitmapPlacement[] = [];
    this.pieces(first, Number(mapping.size / this.pageSize), (segment, bit, bits, globalBit) => {
      const iova = mapping.iova + BigInt(globalBit - first) * this.pageSize;
      pieces.push({ mapping, region, iova, size: BigInt(bits) * this.pageSize, buffer: this.segmentBuffer(segment), bit, bits, globalBit });
    });
    this.placementMap.set(mapping, pieces);
    region.mappings.push(mapping);
    region.mappings.sort((a, b) => (a.memoryOffset < b.memoryOffset ? -1 : a.memoryOffset > b.memoryOffset ? 1 : 0));
    return pieces;
  }

  /** The kernel refused the map: a region made for it goes again. */
  cancel(reservation: Reservation): void {
    if (reservation.newRegion && reservation.region.mappings.length === 0) this.releaseRegion(reservation.region);
  }

  /** The mapping is gone; its memory keeps its bits (they may be dirty and not sent yet). */
  remove(mapping: Mapping): readonly BitmapPlacement[] {
    const pieces = this.placementMap.get(mapping);
    if (!pieces) return [];
    this.placementMap.delete(mapping);
    const list = pieces[0]!.region.mappings;
    list.splice(list.indexOf(mapping), 1);
    return pieces;
  }

  /**
   * Gives back the bits of memory that nothing maps, that was released, and whose pages were
   * all handed over. Memory still held keeps its bits: it may be mapped again.
   */
  releaseIdle(): void {
    for (const region of [...this.regionList]) {
      if (region.mappings.length || !region.memory.released) continue;
      let set = 0;
      this.pieces(region.bit, region.pages, (segment, bit, bits) => {
        set += this.engine.sync.popcount(this.segmentBuffer(segment), bit, bit + bits);
      });
      if (set === 0) this.releaseRegion(region);
    }
  }

  /** Sets every bit of a placement: all its pages are dirty. */
  markPlacement(placement: BitmapPlacement): void {
    this.touch(placement.buffer);
    this.engine.sync.setRange(placement.buffer, placement.bit, placement.bit + placement.bits);
  }

  /** Sets every bit of a region: the whole memory is dirty. */
  markRegion(region: MemoryRegion): void {
    this.markBits(region.bit, region.pages);
  }

  /** Sets bits [start, start + count) of the whole bitmap. */
  markBits(start: number, count: number): void {
    this.pieces(start, count, (segment, bit, bits) => {
      const buffer = this.segmentBuffer(segment);
      this.segments[segment]!.clean = false;
      this.writeCount++;
      this.engine.sync.setRange(buffer, bit, bit + bits);
    });
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

  /** A view of a placement's bits where the kernel writes them; its bit must be a multiple of 64. */
  view(placement: BitmapPlacement): Uint8Array {
    if (placement.bit % 64 !== 0) throw new RangeError(`bit ${placement.bit} is not on a u64 word`);
    const buffer = placement.buffer;
    this.touch(buffer);
    return new Uint8Array(buffer.arena.memory.buffer, buffer.offset + placement.bit / 8, Math.ceil(placement.bits / 64) * 8);
  }

  close(): void {
    for (const segment of this.segments) {
      segment.buffer?.free();
      segment.buffer = undefined;
    }
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
    this.pieces(region.bit, region.span, (segment, bit, bits) => this.engine.sync.clear(this.segmentBuffer(segment), bit, bit + bits));
    this.free.push({ start: region.bit, end: region.bit + region.span });
    this.free.sort((a, b) => a.start - b.start);
    const merged: { start: number; end: number }[] = [];
    for (const f of this.free) {
      const last = merged[merged.length - 1];
      if (last && last.end === f.start) last.end = f.end;
      else merged.push({ ...f });
    }
    this.free = merged;
    this.recomputeUsed();
  }
}
