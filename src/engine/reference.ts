// Reference models of every kernel in plain TypeScript: the property tests hold
// the WASM to them, and the benchmark reports them as the plain-JS figure.
// Bitmaps are Uint32Array views of little-endian u64 words (word w is halves
// 2w and 2w+1), which keeps this code out of BigInt.
// Written for clarity first; they follow the kernels' documented semantics,
// including where a full output chunk makes a scan stop.
import { INDEX_SLACK } from './layout.js';

export type Halves = Uint32Array;

export function bitOf(bitmap: Halves, bit: number): number {
  return (bitmap[bit >>> 5]! >>> (bit & 31)) & 1;
}

function setBitIn(bitmap: Halves, bit: number): void {
  bitmap[bit >>> 5] = bitmap[bit >>> 5]! | (1 << (bit & 31));
}

export function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

function ctz32(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/** The 32-bit halves holding bits [0, bits), with bits past the end masked off. */
function halfMask(index: number, bits: number): number {
  const first = index * 32;
  if (first + 32 <= bits) return 0xffffffff;
  if (first >= bits) return 0;
  return (2 ** (bits - first) - 1) >>> 0;
}

export function referenceMerge(dst: Halves, sources: Halves[], bits: number): void {
  referenceMergeAndCount(dst, sources, bits);
}

/** ORs the sources into dst over bits [0, bits); returns the bits newly set in dst. */
export function referenceMergeAndCount(dst: Halves, sources: Halves[], bits: number): number {
  let count = 0;
  const halves = Math.ceil(bits / 32);
  for (let i = 0; i < halves; i++) {
    let union = 0;
    for (const source of sources) union |= source[i]!;
    union &= halfMask(i, bits);
    const old = dst[i]!;
    dst[i] = (old | union) >>> 0;
    count += popcount32(union & ~old);
  }
  return count;
}

export function referencePopcount(bitmap: Halves, start: number, end: number): number {
  let count = 0;
  let bit = start;
  while (bit < end && bit & 31) count += bitOf(bitmap, bit++);
  for (; bit + 32 <= end; bit += 32) count += popcount32(bitmap[bit >>> 5]!);
  while (bit < end) count += bitOf(bitmap, bit++);
  return count;
}

export function referenceClear(bitmap: Halves, start: number, end: number): void {
  for (let bit = start; bit < end; bit++) bitmap[bit >>> 5] = bitmap[bit >>> 5]! & ~(1 << (bit & 31));
}

/** Sets [start, end); returns how many of those bits were clear. */
export function referenceSetRange(bitmap: Halves, start: number, end: number): number {
  let count = 0;
  for (let bit = start; bit < end; bit++) {
    if (!bitOf(bitmap, bit)) count++;
    setBitIn(bitmap, bit);
  }
  return count;
}

export interface ReferenceScanResult {
  /** Page indices, or (start, length) pairs for runs. */
  values: number[];
  /** Where to resume; the range's end when finished. */
  cursor: number;
}

/**
 * Indices of set bits in [cursor, end), at most what fits in `capacity`:
 * the scan works word by word (64 bits) and starts a nonzero word only while
 * INDEX_SLACK entries of room remain (the first word always).
 */
export function referenceScanIndices(bitmap: Halves, cursor: number, end: number, capacity: number): ReferenceScanResult {
  const values: number[] = [];
  if (cursor >= end) return { values, cursor: end };
  const firstWord = Math.floor(cursor / 64);
  const lastWord = Math.floor((end - 1) / 64);
  const found: number[] = [];
  for (let word = firstWord; word <= lastWord; word++) {
    found.length = 0;
    for (let half = 0; half < 2; half++) {
      const base = word * 64 + half * 32;
      // Keep only the bits of this half inside [cursor, end).
      let x = bitmap[word * 2 + half]!;
      if (base < cursor) x &= cursor - base >= 32 ? 0 : ~((2 ** (cursor - base) - 1) >>> 0);
      if (base + 32 > end) x &= end <= base ? 0 : (2 ** (end - base) - 1) >>> 0;
      while (x !== 0) {
        found.push(base + ctz32(x));
        x &= x - 1;
      }
    }
    if (found.length === 0) continue;
    if (word !== firstWord && capacity - values.length < INDEX_SLACK) return { values, cursor: word * 64 };
    for (const bit of found) values.push(bit);
  }
  return { values, cursor: end };
}

/**
 * Runs of set bits starting in [cursor, end) (a run holding `cursor` counts
 * from `cursor`), as (start, length) pairs, at most `capacity` runs. A run
 * reaching `end` goes on up to `limit`. When full, the cursor is the start of
 * the first run not written.
 */
export function referenceScanRuns(
  bitmap: Halves, cursor: number, end: number, limit: number, capacity: number,
): ReferenceScanResult {
  const values: number[] = [];
  let bit = cursor;
  while (bit < end) {
    if (!bitOf(bitmap, bit)) {
      // Skip clear bits a half at a time where possible.
      if ((bit & 31) === 0 && bit + 32 <= end && bitmap[bit >>> 5] === 0) bit += 32;
      else bit++;
      continue;
    }
    const start = bit;
    while (bit < end && bitOf(bitmap, bit)) bit++;
    if (bit === end) while (bit < limit && bitOf(bitmap, bit)) bit++;
    if (values.length / 2 >= capacity) return { values, cursor: start };
    values.push(start, bit - start);
  }
  return { values, cursor: end };
}

export interface ReferenceMergeCountScanResult extends ReferenceScanResult {
  newlySet: number;
}

/** Merge, count, then the runs of the merged range [0, bits), clipped to it. */
export function referenceMergeCountScan(
  dst: Halves, sources: Halves[], bits: number, capacity: number,
): ReferenceMergeCountScanResult {
  const newlySet = referenceMergeAndCount(dst, sources, bits);
  return { newlySet, ...referenceScanRuns(dst, 0, bits, bits, capacity) };
}

/**
 * Resample in units of the finer page: destination bit d covers
 * [d * Rd, (d + 1) * Rd), source bit s covers [s * Rs + delta, (s + 1) * Rs + delta),
 * with shift = log2(Rs / Rd). Destination bits in [dstStart, dstEnd) are set
 * when an overlapping source bit in [srcStart, srcEnd) is set.
 */
export interface ReferenceResampleGeometry {
  dstStart: number;
  dstEnd: number;
  srcStart: number;
  srcEnd: number;
  shift: number;
  delta: number;
}

export function referenceResample(dst: Halves, src: Halves, g: ReferenceResampleGeometry): number {
  const rs = g.shift > 0 ? 2 ** g.shift : 1;
  const rd = g.shift < 0 ? 2 ** -g.shift : 1;
  let count = 0;
  for (let d = g.dstStart; d < g.dstEnd; d++) {
    const first = Math.max(Math.floor((d * rd - g.delta) / rs), g.srcStart);
    const last = Math.min(Math.floor(((d + 1) * rd - 1 - g.delta) / rs), g.srcEnd - 1);
    let any = false;
    for (let s = first; s <= last && !any; s++) any = bitOf(src, s) === 1;
    if (any && !bitOf(dst, d)) {
      setBitIn(dst, d);
      count++;
    }
  }
  return count;
}

// ---- the IOVA range set ----

export interface Mapping {
  iova: bigint;
  length: bigint;
  /** Bit of the migration bitmap where the mapping's first page lands. */
  bitmapOffset: bigint;
}

/** The range set's model: sorted disjoint mappings, merged when adjacent in IOVA and bitmap. */
export class ReferenceIovaRangeSet {
  readonly mappings: Mapping[] = [];
  constructor(readonly pageShift: bigint, readonly capacity: number) {}

  /** Returns false (and changes nothing) when the range overlaps a mapping. Throws when full. */
  insert(m: Mapping): boolean {
    const last = m.iova + m.length - 1n;
    if (this.mappings.some((e) => e.iova <= last && m.iova <= e.iova + e.length - 1n)) return false;
    let i = 0;
    while (i < this.mappings.length && this.mappings[i]!.iova < m.iova) i++;
    const left = this.mappings[i - 1];
    const right = this.mappings[i];
    const joinLeft = left !== undefined && left.iova + left.length === m.iova &&
      left.bitmapOffset + (left.length >> this.pageShift) === m.bitmapOffset;
    const joinRight = right !== undefined && right.iova === m.iova + m.length &&
      m.bitmapOffset + (m.length >> this.pageShift) === right.bitmapOffset;
    if (joinLeft && joinRight) {
      left.length += m.length + right.length;
      this.mappings.splice(i, 1);
    } else if (joinLeft) {
      left.length += m.length;
    } else if (joinRight) {
      this.mappings[i] = { iova: m.iova, length: m.length + right.length, bitmapOffset: m.bitmapOffset };
    } else {
      if (this.mappings.length >= this.capacity) throw new Error('full');
      this.mappings.splice(i, 0, { ...m });
    }
    return true;
  }

  overlapping(iova: bigint, length: bigint): Mapping[] {
    const last = iova + length - 1n;
    const out: Mapping[] = [];
    for (const e of this.mappings) {
      const eLast = e.iova + e.length - 1n;
      if (eLast < iova || e.iova > last) continue;
      const lo = e.iova > iova ? e.iova : iova;
      const hi = eLast < last ? eLast : last;
      out.push({ iova: lo, length: hi - lo + 1n, bitmapOffset: e.bitmapOffset + ((lo - e.iova) >> this.pageShift) });
    }
    return out;
  }

  /** Removes [iova, iova + length), splitting mappings; returns the removed parts. Throws when a split does not fit. */
  remove(iova: bigint, length: bigint): Mapping[] {
    const removed = this.overlapping(iova, length);
    const last = iova + length - 1n;
    const next: Mapping[] = [];
    for (const e of this.mappings) {
      const eLast = e.iova + e.length - 1n;
      if (eLast < iova || e.iova > last) {
        next.push(e);
        continue;
      }
      if (e.iova < iova) next.push({ iova: e.iova, length: iova - e.iova, bitmapOffset: e.bitmapOffset });
      if (eLast > last) {
        next.push({
          iova: last + 1n,
          length: eLast - last,
          bitmapOffset: e.bitmapOffset + ((last + 1n - e.iova) >> this.pageShift),
        });
      }
    }
    if (next.length > this.capacity) throw new Error('full');
    this.mappings.splice(0, this.mappings.length, ...next);
    return removed;
  }

  lookup(iova: bigint): bigint | undefined {
    for (const e of this.mappings) {
      if (e.iova <= iova && iova <= e.iova + e.length - 1n) return e.bitmapOffset + ((iova - e.iova) >> this.pageShift);
    }
    return undefined;
  }
}
