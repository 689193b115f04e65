// The bit structures under every dirty source, checked against a plain boolean-array model.
import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { ChunkedBitmap, countBits, setBits, testBit } from '../../src/kernel/sim/index.js';
import { clearBits } from '../../src/kernel/sim/bitmap.js';
import { Xoshiro128 } from '../../src/kernel/sim/prng.js';
import { KernelMemory } from '../../src/kernel/sim/kernel-memory.js';
import { processMemory } from './process-memory.js';

type Operation = { set: boolean; from: number; to: number };

function runsOf(model: boolean[], from: number, to: number): [number, number][] {
  const runs: [number, number][] = [];
  let start = -1;
  for (let index = from; index <= to; index++) {
    const on = index < to && model[index] === true;
    if (on && start < 0) start = index;
    if (!on && start >= 0) {
      runs.push([start, index]);
      start = -1;
    }
  }
  return runs;
}

// Sizes across chunk boundaries (2^18 bits per chunk), ranges across words and chunks.
const size = ChunkedBitmap.CHUNK_BITS * 2 + 77;
const range = fc.tuple(fc.nat(size), fc.nat(size)).map(([a, b]) => [Math.min(a, b), Math.max(a, b)] as const);
const operation = fc.tuple(fc.boolean(), range).map(([set, [from, to]]): Operation => ({ set, from, to }));

describe('ChunkedBitmap', () => {
  test.prop([fc.array(operation, { maxLength: 12 }), range], { numRuns: 60 })(
    'set/clear ranges then runs and counts match a boolean-array model',
    (operations, [from, to]) => {
      const bitmap = new ChunkedBitmap(size);
      const model = new Array<boolean>(size).fill(false);
      for (const op of operations) {
        if (op.set) bitmap.setRange(op.from, op.to);
        else bitmap.clearRange(op.from, op.to);
        for (let index = op.from; index < op.to; index++) model[index] = op.set;
      }
      const runs: [number, number][] = [];
      bitmap.forEachSetRun(from, to, (start, end) => runs.push([start, end]));
      expect(runs).toEqual(runsOf(model, from, to));
      expect(bitmap.count(from, to)).toBe(model.slice(from, to).filter(Boolean).length);
      for (const probe of [from, to - 1, Math.floor((from + to) / 2)]) {
        if (probe >= 0 && probe < size) expect(bitmap.test(probe)).toBe(model[probe]);
      }
    },
  );

  // Short runs (the workload's and the no-loss check's common case: inside one word) anywhere in
  // a 2^33-bit bitmap, past the 2^31 and 2^32 marks, with set, clear and set-counting-new mixed.
  const huge = 2 ** 33 + 100;
  const anchor = fc.constantFrom(0, 31, 2 ** 18 - 3, 2 ** 31 - 5, 2 ** 32 - 17, 2 ** 33 - 40);
  const shortOperation = fc.tuple(fc.constantFrom('set', 'clear', 'count'), anchor, fc.nat(70), fc.nat(40))
    .map(([kind, at, offset, length]) => ({ kind, from: at + offset, to: Math.min(huge, at + offset + length) }));
  test.prop([fc.array(shortOperation, { maxLength: 30 })], { numRuns: 100 })(
    'short runs across the 2^31 and 2^32 marks: set, clear and setRangeCountingNew match a set of bits',
    (operations) => {
      const bitmap = new ChunkedBitmap(huge);
      const model = new Set<number>();
      for (const op of operations) {
        if (op.kind === 'clear') {
          bitmap.clearRange(op.from, op.to);
          for (let bit = op.from; bit < op.to; bit++) model.delete(bit);
          continue;
        }
        let fresh = 0;
        for (let bit = op.from; bit < op.to; bit++) if (!model.has(bit)) fresh++, model.add(bit);
        if (op.kind === 'count') expect(bitmap.setRangeCountingNew(op.from, op.to)).toBe(fresh);
        else bitmap.setRange(op.from, op.to);
      }
      const runs: [number, number][] = [];
      bitmap.forEachSetRun(0, huge, (start, end) => runs.push([start, end]));
      const bits = [...model].sort((a, b) => a - b);
      const expected: [number, number][] = [];
      for (const bit of bits) {
        const last = expected.at(-1);
        if (last && last[1] === bit) last[1] = bit + 1;
        else expected.push([bit, bit + 1]);
      }
      expect(runs).toEqual(expected);
    },
  );

  it('a long clear whose ends fall in the same word modulo 2^32 clears all of it', () => {
    const bitmap = new ChunkedBitmap(2 ** 33);
    bitmap.set(6);
    bitmap.set(2 ** 32 + 5);
    bitmap.clearRange(5, 2 ** 32 + 6);
    expect(bitmap.count()).toBe(0);
  });

  it('allocates only the chunks written', () => {
    const bitmap = new ChunkedBitmap(2 ** 40 / 4096); // a 1 TiB guest at 4 KiB
    expect(bitmap.allocatedBytes).toBe(0);
    bitmap.set(12345);
    bitmap.set(2 ** 27 + 1);
    expect(bitmap.allocatedBytes).toBe(2 * 32 * 1024);
    bitmap.clearRange(0, bitmap.size);
    expect(bitmap.count()).toBe(0);
    bitmap.reset();
    expect(bitmap.allocatedBytes).toBe(0);
  });

  it('rejects a size that is not a safe integer', () => {
    expect(() => new ChunkedBitmap(2 ** 60)).toThrow(RangeError);
  });
});

describe('caller bitmaps (bit i in byte i/8, bit i%8)', () => {
  test.prop([fc.array(operation, { maxLength: 10 })], { numRuns: 60 })('setBits/clearBits/countBits match the model', (operations) => {
    const bits = 1000;
    const bytes = new Uint8Array(bits / 8);
    const model = new Array<boolean>(bits).fill(false);
    for (const op of operations) {
      const from = op.from % bits;
      const to = Math.min(bits, from + (op.to - op.from) % 300);
      if (op.set) setBits(bytes, from, to);
      else clearBits(bytes, from, to);
      for (let index = from; index < to; index++) model[index] = op.set;
    }
    for (let index = 0; index < bits; index++) expect(testBit(bytes, index)).toBe(model[index]);
    expect(countBits(bytes)).toBe(model.filter(Boolean).length);
    expect(countBits(bytes, 3, 997)).toBe(model.slice(3, 997).filter(Boolean).length);
  });
});

describe('Xoshiro128 (xoshiro128** 1.1, SplitMix32-seeded)', () => {
  it('matches the reference C implementation from state {1, 2, 3, 4}', () => {
    const random = Xoshiro128.fromState(1, 2, 3, 4);
    expect(Array.from({ length: 6 }, () => random.nextUint32())).toEqual([11520, 0, 5927040, 70819200, 2031721883, 1637235492]);
  });

  it('is deterministic per seed and different across seeds', () => {
    const a = new Xoshiro128(42);
    const b = new Xoshiro128(42);
    const c = new Xoshiro128(43);
    const first = Array.from({ length: 8 }, () => a.nextUint32());
    expect(Array.from({ length: 8 }, () => b.nextUint32())).toEqual(first);
    expect(Array.from({ length: 8 }, () => c.nextUint32())).not.toEqual(first);
  });

  it('nextBelow stays in range and is roughly uniform', () => {
    const random = new Xoshiro128(1);
    const counts = new Array<number>(10).fill(0);
    for (let i = 0; i < 100_000; i++) counts[random.nextBelow(10)]!++;
    for (const count of counts) expect(Math.abs(count - 10_000)).toBeLessThan(500);
    for (let i = 0; i < 1000; i++) {
      const value = random.nextBelow(2 ** 40);
      expect(value).toBeGreaterThanOrEqual(0);
      expect(value).toBeLessThan(2 ** 40);
    }
    expect(() => random.nextBelow(0)).toThrow(RangeError);
  });
});

// The word-wise read-and-clear (GET_DIRTY_BITMAP and DMA logging reports when aligned) against
// a boolean model: the destination gets the OR of its old bits and the range, the range is
// cleared only when asked, and every other bit on both sides stays. The same in each place the
// kernel's words can be: its own arrays; a shared process memory that holds the destination too
// (the WASM pass, which must have run); that memory with the destination elsewhere (the JS
// loop); and chunks of both kinds, placed before and after the memory was shared.
type Placement = 'own' | 'shared' | 'shared, destination elsewhere' | 'mixed';

describe('ChunkedBitmap.orInto', () => {
  const bits = ChunkedBitmap.CHUNK_BITS * 2 + 96;
  test.prop([
    fc.array(fc.record({ from: fc.nat(bits), length: fc.nat(3000) }), { minLength: 1, maxLength: 12 }),
    fc.nat(Math.floor(bits / 32)), fc.nat(Math.floor(bits / 32)), fc.nat(Math.floor(bits / 32)), fc.boolean(), fc.nat(),
    fc.constantFrom<Placement>('own', 'shared', 'shared, destination elsewhere', 'mixed'),
  ], { numRuns: 80 })('ORs the range in, clears it when asked, and leaves the rest', (writes, fromWord, lengthWords, dstWord, clear, tailBits, placement) => {
    const kernelMemory = new KernelMemory();
    const process = processMemory();
    if (placement !== 'own' && placement !== 'mixed') kernelMemory.share(process);
    const source = new ChunkedBitmap(bits, kernelMemory);
    const model: boolean[] = new Array<boolean>(bits).fill(false);
    writes.forEach(({ from, length }, index) => {
      // Mixed: the first half of the writes before the memory is shared, the rest after.
      if (placement === 'mixed' && index === Math.floor(writes.length / 2)) kernelMemory.share(process);
      const to = Math.min(bits, from + length);
      source.setRange(from, to);
      for (let i = from; i < to; i++) model[i] = true;
    });
    const from = fromWord * 32;
    const to = Math.min(bits, from + lengthWords * 32 + (tailBits % 32));
    const dstBits = Math.ceil((to - from + dstWord * 32) / 32) * 32 + 64;
    const dst = placement === 'own' || placement === 'shared, destination elsewhere' ? new Uint8Array(dstBits / 8) : process.bytes(dstBits / 8);
    const random = new Xoshiro128(tailBits);
    for (let i = 0; i < dst.length; i++) dst[i] = random.nextBelow(256) & random.nextBelow(256);
    const before = Uint8Array.from(dst);
    expect(source.orInto(from, to, dst, dstWord * 32, clear)).toBe(true);
    for (let bit = 0; bit < dstBits; bit++) {
      const inRange = bit >= dstWord * 32 && bit < dstWord * 32 + Math.max(0, to - from);
      const expected = testBit(before, bit) || (inRange && model[from + bit - dstWord * 32] === true);
      if (testBit(dst, bit) !== expected) expect.fail(`destination bit ${bit}: ${testBit(dst, bit)}, expected ${expected}`);
    }
    for (let bit = 0; bit < bits; bit++) {
      const expected = model[bit] === true && !(clear && bit >= from && bit < to);
      if (source.test(bit) !== expected) expect.fail(`source bit ${bit}: ${source.test(bit)}, expected ${expected}`);
    }
    const passes = kernelMemory.current?.wasmPasses ?? 0;
    if (placement === 'own') expect(source.sharedChunks).toBe(0);
    if (placement === 'shared, destination elsewhere') expect(passes).toBe(0);
  });
});

describe('ChunkedBitmap in a shared process memory', () => {
  it('reads adjacent chunks into a bitmap of the same memory in one WASM pass', () => {
    const kernelMemory = new KernelMemory();
    const process = processMemory();
    kernelMemory.share(process);
    const bitmap = new ChunkedBitmap(ChunkedBitmap.CHUNK_BITS * 3, kernelMemory);
    bitmap.set(ChunkedBitmap.CHUNK_BITS * 3 - 1); // chunk 2 first: its block lies before chunk 0's
    bitmap.setRange(ChunkedBitmap.CHUNK_BITS - 7, ChunkedBitmap.CHUNK_BITS + 9); // chunks 0 and 1, adjacent blocks
    const dst = process.bytes(ChunkedBitmap.CHUNK_BITS * 3 / 8);
    expect(bitmap.orInto(0, ChunkedBitmap.CHUNK_BITS * 3 - 16, dst, 0, true)).toBe(true);
    expect(kernelMemory.current!.wasmPasses).toBe(2); // chunks 0-1 together, then chunk 2 (not adjacent)
    expect(countBits(dst)).toBe(16);
    expect(bitmap.count()).toBe(1); // the last bit lies past the range
    expect(bitmap.test(ChunkedBitmap.CHUNK_BITS * 3 - 1)).toBe(true);
  });

  it('moves its chunks back into its own arrays when the memory goes, bits unchanged, every block given back', () => {
    const kernelMemory = new KernelMemory();
    const process = processMemory();
    const release = kernelMemory.share(process);
    const bitmap = new ChunkedBitmap(ChunkedBitmap.CHUNK_BITS * 4, kernelMemory);
    bitmap.setRange(5, 40);
    bitmap.setRange(ChunkedBitmap.CHUNK_BITS * 3 + 1, ChunkedBitmap.CHUNK_BITS * 3 + 2);
    expect(bitmap.sharedChunks).toBe(2);
    expect(process.live.size).toBe(2);
    release();
    expect(bitmap.sharedChunks).toBe(0);
    expect(process.live.size).toBe(0);
    // The memory is overwritten after it went: the bitmap no longer reads it.
    new Uint8Array(process.memory.buffer).fill(0xff);
    const runs: [number, number][] = [];
    bitmap.forEachSetRun(0, bitmap.size, (start, end) => runs.push([start, end]));
    expect(runs).toEqual([[5, 40], [ChunkedBitmap.CHUNK_BITS * 3 + 1, ChunkedBitmap.CHUNK_BITS * 3 + 2]]);
    // New chunks go to the kernel's own arrays now.
    bitmap.set(ChunkedBitmap.CHUNK_BITS * 2);
    expect(bitmap.sharedChunks).toBe(0);
    release(); // idempotent
  });

  it('gives its blocks back on reset, and keeps its own arrays when the memory has no room', () => {
    const kernelMemory = new KernelMemory();
    const process = processMemory();
    kernelMemory.share(process);
    const bitmap = new ChunkedBitmap(ChunkedBitmap.CHUNK_BITS * 2, kernelMemory);
    bitmap.setRange(0, ChunkedBitmap.CHUNK_BITS * 2);
    expect(process.live.size).toBe(2);
    bitmap.reset();
    expect(process.live.size).toBe(0);
    expect(bitmap.count()).toBe(0);
    // A memory that refuses every allocation: the bitmap works as without one.
    const full = new KernelMemory();
    full.share({ memory: process.memory, allocate: () => undefined });
    const own = new ChunkedBitmap(ChunkedBitmap.CHUNK_BITS, full);
    own.setRange(3, 70);
    expect(own.sharedChunks).toBe(0);
    const dst = process.bytes(ChunkedBitmap.CHUNK_BITS / 8);
    expect(own.orInto(0, ChunkedBitmap.CHUNK_BITS, dst, 0, true)).toBe(true);
    expect(countBits(dst)).toBe(67);
    expect(own.count()).toBe(0);
  });
});
