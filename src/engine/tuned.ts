// Tuned plain-JS versions of the engine's kernels, for the benchmark's JS
// column: the same algorithms as assembly/ (word skipping, run starts and ends
// of a word at once, ctz through Math.clz32) on 32-bit halves, the widest
// integer JS handles without BigInt. The clarity-first oracles the tests check
// against stay in reference.ts; these exist so that "WASM against JS" compares
// like with like. Bitmaps are Uint32Array views of little-endian u64 words, so
// bit i is bit (i & 31) of half i >>> 5; every function takes whole words.

import type { ReferenceResampleGeometry } from './reference.js';

/** Set bits of a 32-bit value, SWAR. */
function popcount32(value: number): number {
  let v = value - ((value >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

/** Index of the lowest set bit of a nonzero 32-bit value. */
function ctz32(value: number): number {
  return 31 - Math.clz32(value & -value);
}

/** Set bits of halves [0, halfCount). */
export function tunedPopcount(map: Uint32Array, halfCount: number): number {
  let c0 = 0;
  let c1 = 0;
  let i = 0;
  for (; i + 2 <= halfCount; i += 2) {
    c0 += popcount32(map[i]!);
    c1 += popcount32(map[i + 1]!);
  }
  for (; i < halfCount; i++) c0 += popcount32(map[i]!);
  return c0 + c1;
}

/** dst |= every source over halves [0, halfCount); returns the bits newly set. */
export function tunedMergeAndCount(dst: Uint32Array, sources: Uint32Array[], halfCount: number): number {
  let count = 0;
  if (sources.length === 2) {
    const a = sources[0]!;
    const b = sources[1]!;
    for (let i = 0; i < halfCount; i++) {
      const old = dst[i]!;
      const merged = a[i]! | b[i]!;
      if ((merged & ~old) === 0) continue;
      dst[i] = old | merged;
      count += popcount32(merged & ~old);
    }
    return count;
  }
  for (let i = 0; i < halfCount; i++) {
    let merged = 0;
    for (const source of sources) merged |= source[i]!;
    const old = dst[i]!;
    if ((merged & ~old) === 0) continue;
    dst[i] = old | merged;
    count += popcount32(merged & ~old);
  }
  return count;
}

/** dst |= every source, no count. */
export function tunedMerge(dst: Uint32Array, sources: Uint32Array[], halfCount: number): void {
  if (sources.length === 2) {
    const a = sources[0]!;
    const b = sources[1]!;
    for (let i = 0; i < halfCount; i++) dst[i] = dst[i]! | a[i]! | b[i]!;
    return;
  }
  for (const source of sources) for (let i = 0; i < halfCount; i++) dst[i] = dst[i]! | source[i]!;
}

/**
 * Indices of the set bits of halves [0, halfCount) into `out`, which wraps
 * (its length a power of two) so that every index is stored as a consumer
 * reading chunks would see it; returns how many.
 */
export function tunedScanIndices(map: Uint32Array, halfCount: number, out: Uint32Array): number {
  const mask = out.length - 1;
  let n = 0;
  for (let i = 0; i < halfCount; i++) {
    let x = map[i]!;
    if (x === 0) continue;
    const base = i << 5;
    while (x !== 0) {
      out[n & mask] = base + ctz32(x);
      n++;
      x &= x - 1;
    }
  }
  return n;
}

/** The state of a run scan carried from word to word: starts written (n), runs complete (m), the last bit seen. */
export interface TunedRunState {
  n: number;
  m: number;
  carry: number;
}

export function tunedRunState(): TunedRunState {
  return { n: 0, m: 0, carry: 0 };
}

/**
 * Run starts and ends of halves [from, to), word by word: starts x & ~(x << 1 | c),
 * ends ~x & (x << 1 | c). `out` holds (start, length) pairs and wraps (its
 * pair count a power of two); an end writes the length of the oldest open run.
 */
export function tunedRunsOfHalves(map: Uint32Array, from: number, to: number, state: TunedRunState, out: Uint32Array): void {
  const mask = (out.length >>> 1) - 1;
  let { n, m, carry } = state;
  for (let i = from; i < to; i++) {
    const x = map[i]!;
    if ((x | carry) === 0) continue;
    const before = (x << 1) | carry;
    let starts = x & ~before;
    let ends = ~x & before;
    carry = x >>> 31;
    const base = i << 5;
    while (starts !== 0) {
      out[(n & mask) << 1] = base + ctz32(starts);
      n++;
      starts &= starts - 1;
    }
    while (ends !== 0) {
      const slot = (m & mask) << 1;
      out[slot + 1] = base + ctz32(ends) - out[slot]!;
      m++;
      ends &= ends - 1;
    }
  }
  state.n = n;
  state.m = m;
  state.carry = carry;
}

/** Closes a run still open at bit `end`; returns the number of runs. */
export function tunedFinishRuns(state: TunedRunState, end: number, out: Uint32Array): number {
  if (state.n > state.m) {
    const slot = (state.m & ((out.length >>> 1) - 1)) << 1;
    out[slot + 1] = end - out[slot]!;
    state.m++;
    state.carry = 0;
  }
  return state.m;
}

/** Runs of halves [0, halfCount); returns how many. */
export function tunedScanRuns(map: Uint32Array, halfCount: number, out: Uint32Array): number {
  const state = tunedRunState();
  tunedRunsOfHalves(map, 0, halfCount, state, out);
  return tunedFinishRuns(state, halfCount << 5, out);
}

/** The fused round with one source: merge, count and scan block by block (1024 halves, 4 KiB); returns { count, runs }. */
export function tunedMergeCountScan(dst: Uint32Array, source: Uint32Array, halfCount: number, out: Uint32Array): { count: number; runs: number } {
  const state = tunedRunState();
  let count = 0;
  for (let block = 0; block < halfCount; block += 1024) {
    const stop = Math.min(halfCount, block + 1024);
    for (let i = block; i < stop; i++) {
      const old = dst[i]!;
      const added = source[i]! & ~old;
      if (added === 0) continue;
      dst[i] = old | added;
      count += popcount32(added);
    }
    tunedRunsOfHalves(dst, block, stop, state, out);
  }
  return { count, runs: tunedFinishRuns(state, halfCount << 5, out) };
}

/** Sets bits [from, to) of `map`; returns how many were clear. */
function setRangeCounting(map: Uint32Array, from: number, to: number): number {
  let count = 0;
  let bit = from;
  while (bit < to) {
    const half = bit >>> 5;
    const low = bit & 31;
    const high = Math.min(32, low + (to - bit));
    const mask = (high === 32 ? 0xffffffff : (1 << high) - 1) & ~((1 << low) - 1);
    const old = map[half]!;
    const added = mask & ~old;
    if (added !== 0) {
      map[half] = old | added;
      count += popcount32(added);
    }
    bit += high - low;
  }
  return count;
}

/**
 * Resample between page sizes (the geometry of assembly/resample.ts): destination bits in
 * [dstStart, dstEnd) are set where a set source bit in [srcStart, srcEnd) overlaps them. Source
 * halves that are zero are skipped; a coarse source sets each run of its set bits as one
 * destination range, a fine source sets a coarse bit and skips the rest of its source bits.
 * Returns the destination bits newly set.
 */
export function tunedResample(dst: Uint32Array, src: Uint32Array, g: ReferenceResampleGeometry): number {
  let count = 0;
  const firstHalf = g.srcStart >>> 5;
  const endHalf = (g.srcEnd + 31) >>> 5;
  if (g.shift >= 0) {
    const rs = 2 ** g.shift;
    // Source run [a, b) covers destination bits [a * rs + delta, b * rs + delta).
    let runStart = -1;
    let runEnd = -1;
    const flush = (): void => {
      if (runStart < 0) return;
      const from = Math.max(g.dstStart, runStart * rs + g.delta);
      const to = Math.min(g.dstEnd, runEnd * rs + g.delta);
      if (from < to) count += setRangeCounting(dst, from, to);
      runStart = -1;
    };
    for (let half = firstHalf; half < endHalf; half++) {
      let x = src[half]!;
      if (x === 0) continue;
      const base = half << 5;
      // Clip to [srcStart, srcEnd) in the first and last halves.
      if (base < g.srcStart) x &= ~((1 << (g.srcStart - base)) - 1);
      if (g.srcEnd - base < 32) x &= (1 << (g.srcEnd - base)) - 1;
      while (x !== 0) {
        const low = ctz32(x);
        const rest = ~(x >>> low);
        const length = rest === 0 ? 32 - low : Math.min(32 - low, ctz32(rest));
        const start = base + low;
        if (start === runEnd) runEnd = start + length;
        else {
          flush();
          runStart = start;
          runEnd = start + length;
        }
        x = length + low >= 32 ? 0 : x & ~((2 ** (low + length) - 1) >>> 0);
      }
    }
    flush();
    return count;
  }
  const rd = 2 ** -g.shift;
  // Source bit s lies in destination bit floor((s + delta) / rd); after setting it, the rest of
  // that destination page's source bits are skipped.
  let s = g.srcStart;
  while (s < g.srcEnd) {
    const half = s >>> 5;
    let x = src[half]! & ~((1 << (s & 31)) - 1);
    if (x === 0) {
      s = (half + 1) << 5;
      continue;
    }
    const bit = (half << 5) + ctz32(x);
    if (bit >= g.srcEnd) break;
    const d = Math.floor((bit + g.delta) / rd);
    if (d >= g.dstStart && d < g.dstEnd) count += setRangeCounting(dst, d, d + 1);
    s = Math.max(bit + 1, (d + 1) * rd - g.delta);
  }
  return count;
}
