import { InvalidArgumentError } from '../kernel/errors.js';
import type { ArenaBuffer, Engine, IovaRangeSet } from '../engine/index.js';

/** Where one mapping's pages sit in the migration bitmap. */
export interface BitmapPlacement {
  readonly iova: bigint;
  readonly size: bigint;
  /** First bit; a multiple of 64 so that each mapping starts on a u64 word (and byte) of every bitmap. */
  readonly bit: number;
  readonly bits: number;
}

/** A span of IOVA space with dirty pages: a run of the migration bitmap translated to IOVAs. */
export interface DirtyRange {
  readonly iova: bigint;
  readonly length: bigint;
}

/**
 * The migration bitmap: one bit per migration page of every mapped range, in the engine's
 * shared memory. Each mapping gets a word-aligned block of bits; the IOVA range set (WASM)
 * translates between IOVAs and bits. Sources with the same page size share this geometry, so
 * the kernel writes their bitmaps at the same bit positions and the merge is a plain OR.
 */
export class MigrationBitmap {
  readonly buffer: ArenaBuffer;
  readonly bits: number;
  readonly rangeSet: IovaRangeSet;
  private readonly placements = new Map<bigint, BitmapPlacement>();
  /** Placements whose mapping is gone but whose dirty pages are not sent yet. */
  private readonly retiredList: BitmapPlacement[] = [];
  /** Free bit ranges [start, end), sorted, word-aligned. */
  private free: { start: number; end: number }[];

  constructor(readonly engine: Engine, readonly pageSize: bigint, capacityBytes: bigint) {
    if (pageSize < 4096n || (pageSize & (pageSize - 1n)) !== 0n) {
      throw new InvalidArgumentError('pageSize', `must be a power of two of at least 4096, got ${pageSize}`);
    }
    const bits = Number(((capacityBytes + pageSize - 1n) / pageSize + 63n) / 64n) * 64;
    if (bits <= 0) throw new InvalidArgumentError('capacity', 'must be at least one page');
    this.bits = bits;
    this.buffer = engine.arena.allocate(bits / 8, 64);
    this.rangeSet = engine.createRangeSet({ pageSize });
    this.free = [{ start: 0, end: bits }];
  }

  /** Bits of the same geometry for a source: its own buffer, the same size. */
  allocateSource(): ArenaBuffer {
    return this.engine.arena.allocate(this.bits / 8, 64);
  }

  /**
   * Bits in use: up to the end of the last placed block (live or retired). Rounds clear, merge
   * and scan only these, not the whole capacity kept for mappings to come.
   */
  get usedBits(): number {
    let end = 0;
    for (const p of [...this.placements.values(), ...this.retiredList]) end = Math.max(end, p.bit + Math.ceil(p.bits / 64) * 64);
    return end;
  }

  /** Placements of the live mappings, in IOVA order. */
  get mappings(): BitmapPlacement[] {
    return [...this.placements.values()].sort((a, b) => (a.iova < b.iova ? -1 : 1));
  }

  placementOf(iova: bigint): BitmapPlacement | undefined {
    return this.placements.get(iova);
  }

  /** Gives a new mapping its bits (first fit) and records it in the range set. */
  place(iova: bigint, size: bigint): BitmapPlacement {
    if (iova % this.pageSize !== 0n || size % this.pageSize !== 0n) {
      throw new InvalidArgumentError('mapping', `0x${iova.toString(16)}+0x${size.toString(16)} is not aligned to the migration page size 0x${this.pageSize.toString(16)}`);
    }
    const pages = Number(size / this.pageSize);
    const need = Math.ceil(pages / 64) * 64;
    const index = this.free.findIndex((f) => f.end - f.start >= need);
    if (index === -1) {
      throw new InvalidArgumentError('mapping', `the migration bitmap has no room for ${pages} more pages (capacity ${this.bits} pages): create DirtySync with a larger capacity`);
    }
    const slot = this.free[index]!;
    const placement: BitmapPlacement = { iova, size, bit: slot.start, bits: pages };
    if (slot.end - slot.start === need) this.free.splice(index, 1);
    else slot.start += need;
    this.rangeSet.insert({ iova, length: size, bitmapOffset: BigInt(placement.bit) });
    this.placements.set(iova, placement);
    return placement;
  }

  get retired(): readonly BitmapPlacement[] {
    return this.retiredList;
  }

  /**
   * The mapping was unmapped during migration: its IOVAs leave the range set (they may be
   * mapped again) but its bits stay until its dirty pages are sent.
   */
  retire(placement: BitmapPlacement): void {
    this.rangeSet.remove(placement.iova, placement.size);
    this.placements.delete(placement.iova);
    this.retiredList.push(placement);
  }

  /** Gives a retired placement's bits back, cleared so that a later mapping starts clean. */
  release(placement: BitmapPlacement): void {
    const index = this.retiredList.indexOf(placement);
    if (index === -1) throw new InvalidArgumentError('placement', 'is not retired');
    this.retiredList.splice(index, 1);
    this.engine.sync.clear(this.buffer, placement.bit, placement.bit + placement.bits);
    const need = Math.ceil(placement.bits / 64) * 64;
    this.free.push({ start: placement.bit, end: placement.bit + need });
    this.free.sort((a, b) => a.start - b.start);
    const merged: { start: number; end: number }[] = [];
    for (const f of this.free) {
      const last = merged[merged.length - 1];
      if (last && last.end === f.start) last.end = f.end;
      else merged.push({ ...f });
    }
    this.free = merged;
  }

  /** The IOVA ranges of a bitmap run [bit, bit + length), split where mappings end. */
  rangesOfRun(bit: number, length: number): DirtyRange[] {
    const ranges: DirtyRange[] = [];
    for (const p of [...this.placements.values(), ...this.retiredList]) {
      const start = Math.max(bit, p.bit);
      const end = Math.min(bit + length, p.bit + p.bits);
      if (start >= end) continue;
      ranges.push({ iova: p.iova + BigInt(start - p.bit) * this.pageSize, length: BigInt(end - start) * this.pageSize });
    }
    return ranges.sort((a, b) => (a.iova < b.iova ? -1 : 1));
  }

  /** A view of a placement's bytes in `buffer` (same geometry): what the kernel writes into. */
  view(buffer: ArenaBuffer, placement: BitmapPlacement): Uint8Array {
    return new Uint8Array(buffer.arena.memory.buffer, buffer.offset + placement.bit / 8, Math.ceil(placement.bits / 64) * 8);
  }

  close(): void {
    this.rangeSet.close();
    this.buffer.free();
  }
}
