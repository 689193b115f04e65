// The kernels called synchronously on the calling thread (the main thread or a
// worker), with every input checked first. The pool's sharded calls run the
// same kernels in workers.
import { INDEX_SLACK } from './layout.js';
import type { KernelExports } from './module.js';
import { type ResampleSpec, resampleGeometry } from './resample.js';
import {
  type BitmapLike, checkBit, checkBits, checkCount, checkMerge, checkOutput, checkRange,
} from './validate.js';

/** Sources per merge call: the size of the per-thread source list. */
export const MAXIMUM_SOURCES = 256;

/** Private space of one thread: the source list, the journal's undo block, a work area. */
export interface ThreadScratch {
  /** MAXIMUM_SOURCES u32 addresses. */
  sourceList: number;
  /** JOURNAL_BLOCK_WORDS u64 words: the journal's undo copy. */
  block: number;
  /** 4 KiB for per-call tables (resample). */
  work: number;
}

export interface IndexScanResult {
  /** Bit indices, a view on the output buffer: valid until it is written again. */
  indices: Uint32Array;
  /** Where the next call resumes. */
  cursor: number;
  done: boolean;
}

export interface RunScanResult {
  /** (start, length) pairs, a view on the output buffer: valid until it is written again. */
  runs: Uint32Array;
  /** Number of runs (runs.length / 2). */
  count: number;
  cursor: number;
  done: boolean;
}

export interface MergeCountScanResult extends RunScanResult {
  newlySet: number;
}

/** Words of a `bits`-bit range, and the bits used in its last word (1 to 64). */
export function wordsOf(bits: number): { words: number; lastBits: number } {
  const words = Math.ceil(bits / 64);
  return { words, lastBits: bits - (words - 1) * 64 };
}

export class Kernels {
  constructor(
    readonly exports: KernelExports,
    readonly memory: WebAssembly.Memory,
    readonly scratch: ThreadScratch,
  ) {}

  #writeSources(sources: readonly BitmapLike[]): void {
    const list = new Uint32Array(this.memory.buffer, this.scratch.sourceList, sources.length);
    sources.forEach((source, i) => (list[i] = source.offset));
  }

  /** dst |= every source, over bits [0, bits). */
  merge(dst: BitmapLike, sources: readonly BitmapLike[], bits: number): void {
    checkMerge(dst, sources, bits, MAXIMUM_SOURCES);
    if (bits === 0) return;
    this.#writeSources(sources);
    const { words, lastBits } = wordsOf(bits);
    this.exports.merge(dst.offset, this.scratch.sourceList, sources.length, 0, words, lastBits);
  }

  /** merge, returning how many destination bits went from 0 to 1. */
  mergeAndCount(dst: BitmapLike, sources: readonly BitmapLike[], bits: number): number {
    checkMerge(dst, sources, bits, MAXIMUM_SOURCES);
    if (bits === 0) return 0;
    this.#writeSources(sources);
    const { words, lastBits } = wordsOf(bits);
    return this.exports.mergeCount(dst.offset, this.scratch.sourceList, sources.length, 0, words, lastBits);
  }

  /** Set bits in [start, end). */
  popcount(bitmap: BitmapLike, start: number, end: number): number {
    checkRange('bitmap', bitmap, start, end);
    return this.exports.popcountRange(bitmap.offset, start, end);
  }

  /** Clears [start, end). */
  clear(bitmap: BitmapLike, start: number, end: number): void {
    checkRange('bitmap', bitmap, start, end);
    this.exports.clearRange(bitmap.offset, start, end);
  }

  /** Clears [start, end); returns how many of those bits were set (one pass). */
  clearCounting(bitmap: BitmapLike, start: number, end: number): number {
    checkRange('bitmap', bitmap, start, end);
    return this.exports.clearRangeCounting(bitmap.offset, start, end);
  }

  /** Sets [start, end); returns how many of those bits were clear. */
  setRange(bitmap: BitmapLike, start: number, end: number): number {
    checkRange('bitmap', bitmap, start, end);
    return this.exports.setRange(bitmap.offset, start, end);
  }

  testBit(bitmap: BitmapLike, bit: number): boolean {
    checkBit('bitmap', bitmap, bit);
    return this.exports.testBit(bitmap.offset, bit) === 1;
  }

  /** Sets a bit; returns whether it was set before. */
  testAndSetBit(bitmap: BitmapLike, bit: number): boolean {
    checkBit('bitmap', bitmap, bit);
    return this.exports.testAndSetBit(bitmap.offset, bit) === 1;
  }

  /** Clears a bit; returns whether it was set before. */
  testAndClearBit(bitmap: BitmapLike, bit: number): boolean {
    checkBit('bitmap', bitmap, bit);
    return this.exports.testAndClearBit(bitmap.offset, bit) === 1;
  }

  /**
   * Indices of the set bits of [cursor, bits) written to `output` (u32 each);
   * call again with the returned cursor until done. The output needs at least
   * INDEX_SLACK (72) entries; a word is only started with that much room left.
   */
  scanIndices(bitmap: BitmapLike, bits: number, cursor: number, output: BitmapLike): IndexScanResult {
    checkBits('bitmap', bitmap, bits);
    checkCount('cursor', cursor, bits);
    const capacity = checkOutput('output', output, 4, 2 * INDEX_SLACK);
    const count = this.exports.scanIndices(bitmap.offset, cursor, bits, output.offset, capacity) >>> 0;
    const next = this.exports.lastCursor() >>> 0;
    return { indices: new Uint32Array(this.memory.buffer, output.offset, count), cursor: next, done: next >= bits };
  }

  /**
   * Runs of set bits (start, length) starting in [cursor, bits), written to
   * `output` as u32 pairs; call again with the returned cursor until done.
   * A run holding `cursor` is reported from `cursor` on.
   */
  scanRuns(bitmap: BitmapLike, bits: number, cursor: number, output: BitmapLike): RunScanResult {
    checkBits('bitmap', bitmap, bits);
    checkCount('cursor', cursor, bits);
    const capacity = checkOutput('output', output, 8, 1);
    const count = this.exports.scanRuns(bitmap.offset, cursor, bits, bits, output.offset, capacity) >>> 0;
    const next = this.exports.lastCursor() >>> 0;
    return {
      runs: new Uint32Array(this.memory.buffer, output.offset, count * 2),
      count,
      cursor: next,
      done: next >= bits,
    };
  }

  /**
   * Fused merge + count + scan to runs over [0, bits). Merging always
   * completes; if the output fills, continue with scanRuns from the cursor.
   */
  mergeCountScan(dst: BitmapLike, sources: readonly BitmapLike[], bits: number, output: BitmapLike): MergeCountScanResult {
    checkMerge(dst, sources, bits, MAXIMUM_SOURCES);
    const capacity = checkOutput('output', output, 8, 1);
    if (bits === 0) {
      return { newlySet: 0, runs: new Uint32Array(this.memory.buffer, output.offset, 0), count: 0, cursor: 0, done: true };
    }
    this.#writeSources(sources);
    const { words, lastBits } = wordsOf(bits);
    const newlySet = this.exports.mergeCountScanRuns(
      dst.offset, this.scratch.sourceList, sources.length, 0, words, lastBits, this.scratch.block, 0, -1,
      output.offset, capacity,
    );
    const count = this.exports.runsWritten() >>> 0;
    const next = this.exports.lastCursor() >>> 0;
    return {
      newlySet,
      runs: new Uint32Array(this.memory.buffer, output.offset, count * 2),
      count,
      cursor: next,
      done: next >= bits,
    };
  }

  /** ORs a source at one page size into a destination at another; returns the destination bits newly set. */
  resample(spec: ResampleSpec): number {
    const g = resampleGeometry(spec);
    return this.exports.resample(g.dst, g.dstStart, g.dstEnd, g.src, g.srcStart, g.srcEnd, g.shift, g.delta, this.scratch.work, 0, 0, -1);
  }

  /** Length of the run of ones from `bit`, up to `limit`. */
  runLengthFrom(bitmap: BitmapLike, bit: number, limit: number): number {
    checkRange('bitmap', bitmap, bit, limit);
    return this.exports.runLengthFrom(bitmap.offset, bit, limit) >>> 0;
  }
}
