// Every WASM kernel, run on this thread, against its plain-TypeScript reference
// model: random bitmaps of random lengths (bit counts that are not multiples
// of 64, unaligned ranges and offsets), random page-size pairs.
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { fc, test } from '@fast-check/vitest';
import { type ArenaBuffer, Engine } from '../../src/engine/index.js';
import { JOURNAL_BLOCK_WORDS } from '../../src/engine/layout.js';
import {
  referenceClear, referenceMergeAndCount, referencePopcount, referenceResample, referenceScanIndices,
  referenceScanRuns, referenceSetRange, bitOf,
} from '../../src/engine/reference.js';
import { type ResampleSpec, resampleGeometry } from '../../src/engine/resample.js';
import { CaseCounter, type Pattern, fillBuffer, patternArbitrary, snapshot } from './helpers.js';

// ENGINE_PROPERTY_RUNS raises the count for a longer hunt.
const RUNS = Number(process.env.ENGINE_PROPERTY_RUNS ?? 300);
let engine: Engine;
const counter = new CaseCounter();
const live: ArenaBuffer[] = [];

beforeAll(async () => {
  engine = await Engine.create({ workers: 0, memoryBytes: 16 * 1024 * 1024 });
});

afterAll(async () => {
  console.log(counter.report('single-threaded WASM vs reference, generated cases per kernel:'));
  await engine.close();
});

/** A buffer holding `bits` bits as whole words plus a little spare, filled with a pattern. */
function bitmap(bits: number, pattern: Pattern, seed: number): ArenaBuffer {
  const buffer = engine.arena.allocate(Math.ceil(bits / 64) * 8 + 16, 64);
  fillBuffer(buffer, pattern, seed);
  live.push(buffer);
  return buffer;
}

function release(): void {
  while (live.length > 0) live.pop()!.free();
}

const bitsArbitrary = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 3000 }) },
  { weight: 1, arbitrary: fc.integer({ min: 60000, max: 140000 }) },
);
const sourceArbitrary = fc.record({ pattern: patternArbitrary, seed: fc.integer() });

describe('merge kernels', () => {
  test.prop([bitsArbitrary, sourceArbitrary, fc.array(sourceArbitrary, { minLength: 1, maxLength: 5 })], { numRuns: RUNS })(
    `merge-and-count agrees with the reference (${RUNS} cases)`,
    (bits, target, sources) => {
      counter.hit('merge-and-count');
      try {
        const dst = bitmap(bits, target.pattern, target.seed);
        const srcs = sources.map((s) => bitmap(bits, s.pattern, s.seed));
        const expected = snapshot(dst);
        const count = referenceMergeAndCount(expected, srcs.map(snapshot), bits);
        expect(engine.sync.mergeAndCount(dst, srcs, bits)).toBe(count);
        // Bits past `bits` stay as they were.
        expect(snapshot(dst)).toEqual(expected);
      } finally {
        release();
      }
    },
  );

  test.prop([bitsArbitrary, sourceArbitrary, fc.array(sourceArbitrary, { minLength: 1, maxLength: 5 })], { numRuns: RUNS })(
    `merge agrees with the reference (${RUNS} cases)`,
    (bits, target, sources) => {
      counter.hit('merge');
      try {
        const dst = bitmap(bits, target.pattern, target.seed);
        const srcs = sources.map((s) => bitmap(bits, s.pattern, s.seed));
        const expected = snapshot(dst);
        referenceMergeAndCount(expected, srcs.map(snapshot), bits);
        engine.sync.merge(dst, srcs, bits);
        expect(snapshot(dst)).toEqual(expected);
      } finally {
        release();
      }
    },
  );

  test.prop(
    [fc.integer({ min: 1, max: 9000 }), sourceArbitrary, fc.array(sourceArbitrary, { minLength: 1, maxLength: 3 }), fc.nat()],
    { numRuns: RUNS },
  )(
    `journaled merge-and-count finishes a killed call exactly (${RUNS} cases)`,
    (bits, target, sources, faultSeed) => {
      counter.hit('merge-and-count, journaled resume');
      try {
        const dst = bitmap(bits, target.pattern, target.seed);
        const srcs = sources.map((s) => bitmap(bits, s.pattern, s.seed));
        const expected = snapshot(dst);
        const count = referenceMergeAndCount(expected, srcs.map(snapshot), bits);
        const exports = engine.sync.exports;
        const list = engine.sync.scratch.sourceList;
        new Uint32Array(engine.memory.buffer, list, srcs.length).set(srcs.map((s) => s.offset));
        const journal = bitmap(64, 'empty', 0);
        const words = Math.ceil(bits / 64);
        const blocks = Math.ceil(words / JOURNAL_BLOCK_WORDS);
        const fault = faultSeed % blocks;
        const lastBits = bits - (words - 1) * 64;
        const args = [dst.offset, list, srcs.length, 0, words, lastBits, engine.sync.scratch.block, journal.offset] as const;
        expect(exports.mergeCountJournaled(...args, fault)).toBe(-1);
        expect(exports.mergeCountJournaled(...args, -1)).toBe(count);
        expect(snapshot(dst)).toEqual(expected);
      } finally {
        release();
      }
    },
  );
});

describe('range kernels', () => {
  const rangeArbitrary = fc.tuple(bitsArbitrary, sourceArbitrary, fc.nat(), fc.nat());

  test.prop([rangeArbitrary], { numRuns: RUNS })(`popcount of a range agrees with the reference (${RUNS} cases)`, ([bits, source, a, b]) => {
    counter.hit('popcount');
    try {
      const map = bitmap(bits, source.pattern, source.seed);
      const start = bits === 0 ? 0 : a % (bits + 1);
      const end = start + (bits === 0 ? 0 : b % (bits - start + 1));
      expect(engine.sync.popcount(map, start, end)).toBe(referencePopcount(snapshot(map), start, end));
    } finally {
      release();
    }
  });

  test.prop([rangeArbitrary, fc.boolean()], { numRuns: RUNS })(`clear and set of a range agree with the reference (${RUNS} cases)`, ([bits, source, a, b], set) => {
    counter.hit('clear / set range');
    try {
      const map = bitmap(bits, source.pattern, source.seed);
      const start = bits === 0 ? 0 : a % (bits + 1);
      const end = start + (bits === 0 ? 0 : b % (bits - start + 1));
      const expected = snapshot(map);
      if (set) expect(engine.sync.setRange(map, start, end)).toBe(referenceSetRange(expected, start, end));
      else {
        engine.sync.clear(map, start, end);
        referenceClear(expected, start, end);
      }
      expect(snapshot(map)).toEqual(expected);
    } finally {
      release();
    }
  });

  test.prop([rangeArbitrary], { numRuns: RUNS })(`clear-and-count of a range clears what clear does and counts what popcount does (${RUNS} cases)`, ([bits, source, a, b]) => {
    counter.hit('clear counting');
    try {
      const map = bitmap(bits, source.pattern, source.seed);
      const start = bits === 0 ? 0 : a % (bits + 1);
      const end = start + (bits === 0 ? 0 : b % (bits - start + 1));
      const expected = snapshot(map);
      const set = referencePopcount(expected, start, end);
      referenceClear(expected, start, end);
      expect(engine.sync.clearCounting(map, start, end)).toBe(set);
      expect(snapshot(map)).toEqual(expected);
    } finally {
      release();
    }
  });

  test.prop([fc.integer({ min: 1, max: 5000 }), sourceArbitrary, fc.array(fc.tuple(fc.nat(), fc.constantFrom('test', 'set', 'clear')), { maxLength: 40 })], { numRuns: RUNS })(
    `test, test-and-set and test-and-clear of single bits agree with the reference (${RUNS} cases)`,
    (bits, source, operations) => {
      counter.hit('test / set / clear bit');
      try {
        const map = bitmap(bits, source.pattern, source.seed);
        const expected = snapshot(map);
        for (const [at, operation] of operations) {
          const bit = at % bits;
          const before = bitOf(expected, bit) === 1;
          if (operation === 'test') expect(engine.sync.testBit(map, bit)).toBe(before);
          else if (operation === 'set') {
            expect(engine.sync.testAndSetBit(map, bit)).toBe(before);
            referenceSetRange(expected, bit, bit + 1);
          } else {
            expect(engine.sync.testAndClearBit(map, bit)).toBe(before);
            referenceClear(expected, bit, bit + 1);
          }
        }
        expect(snapshot(map)).toEqual(expected);
      } finally {
        release();
      }
    },
  );
});

describe('scans', () => {
  const scanArbitrary = fc.tuple(bitsArbitrary, sourceArbitrary, fc.nat(), fc.integer({ min: 144, max: 3000 }));

  test.prop([scanArbitrary], { numRuns: RUNS })(`scan to indices, resumed chunk by chunk, agrees with the reference (${RUNS} cases)`, ([bits, source, from, capacity]) => {
    counter.hit('scan-indices');
    try {
      const map = bitmap(bits, source.pattern, source.seed);
      const output = bitmap(capacity * 32, 'empty', 0);
      const outputView = { offset: output.offset, byteLength: capacity * 4 };
      const copy = snapshot(map);
      let cursor = bits === 0 ? 0 : from % bits;
      for (let calls = 0; ; calls++) {
        const expected = referenceScanIndices(copy, cursor, bits, capacity);
        const got = engine.sync.scanIndices(map, bits, cursor, outputView);
        expect([...got.indices]).toEqual(expected.values);
        expect(got.cursor).toBe(expected.cursor);
        cursor = got.cursor;
        if (got.done) break;
        expect(calls).toBeLessThan(bits);
      }
    } finally {
      release();
    }
  });

  // Small outputs stop run by run; from 34 free runs on, words go the word-wise path.
  test.prop([scanArbitrary, fc.oneof(fc.integer({ min: 1, max: 50 }), fc.integer({ min: 34, max: 3000 })), fc.nat()], { numRuns: RUNS })(
    `scan to runs, resumed chunk by chunk and followed past the end, agrees with the reference (${RUNS} cases)`,
    ([bits, source, from], capacity, extra) => {
      counter.hit('scan-runs');
      try {
        const map = bitmap(bits, source.pattern, source.seed);
        const output = bitmap(capacity * 64, 'empty', 0);
        const copy = snapshot(map);
        const capacityBits = Math.floor(map.byteLength / 8) * 64;
        // The kernel takes a limit a run reaching the end may run on to (sharded scans use it).
        const end = bits === 0 ? 0 : bits - (extra % Math.min(bits, 200));
        const limit = Math.min(capacityBits, bits + (extra % 300));
        let cursor = end === 0 ? 0 : from % end;
        for (;;) {
          const expected = referenceScanRuns(copy, cursor, end, limit, capacity);
          const count = engine.sync.exports.scanRuns(map.offset, cursor, end, limit, output.offset, capacity);
          const next = engine.sync.exports.lastCursor();
          expect([...new Uint32Array(engine.memory.buffer, output.offset, count * 2)]).toEqual(expected.values);
          expect(next).toBe(expected.cursor);
          if (next >= end) break;
          cursor = next;
        }
      } finally {
        release();
      }
    },
  );

  test.prop([bitsArbitrary, sourceArbitrary, fc.array(sourceArbitrary, { minLength: 1, maxLength: 3 }), fc.integer({ min: 1, max: 400 })], { numRuns: RUNS })(
    `fused merge + count + scan to runs agrees with the reference (${RUNS} cases)`,
    (bits, target, sources, capacity) => {
      counter.hit('merge-count-scan (fused)');
      try {
        const dst = bitmap(bits, target.pattern, target.seed);
        const srcs = sources.map((s) => bitmap(bits, s.pattern, s.seed));
        const output = bitmap(capacity * 64, 'empty', 0);
        const outputView = { offset: output.offset, byteLength: capacity * 8 };
        const expected = snapshot(dst);
        const count = referenceMergeAndCount(expected, srcs.map(snapshot), bits);
        const first = engine.sync.mergeCountScan(dst, srcs, bits, outputView);
        expect(first.newlySet).toBe(count);
        expect(snapshot(dst)).toEqual(expected);
        const reference = referenceScanRuns(expected, 0, bits, bits, capacity);
        expect([...first.runs]).toEqual(reference.values);
        expect(first.cursor).toBe(reference.cursor);
        let cursor = first.cursor;
        while (cursor < bits) {
          const step = engine.sync.scanRuns(dst, bits, cursor, outputView);
          const again = referenceScanRuns(expected, cursor, bits, bits, capacity);
          expect([...step.runs]).toEqual(again.values);
          cursor = step.cursor;
        }
      } finally {
        release();
      }
    },
  );
});

describe('resample', () => {
  const shifts = [12, 13, 14, 16, 18, 21, 30];
  const specArbitrary = fc.record({
    dstShift: fc.constantFrom(...shifts),
    srcShift: fc.constantFrom(...shifts),
    source: sourceArbitrary,
    target: sourceArbitrary,
    srcBits: fc.integer({ min: 1, max: 2500 }),
    dstBits: fc.integer({ min: 1, max: 4000 }),
    sourceBit: fc.nat({ max: 200 }),
    destinationBit: fc.nat({ max: 200 }),
    sourceBits: fc.nat(),
    destinationBits: fc.nat(),
    offsetPages: fc.integer({ min: -5000, max: 5000 }),
  });

  /** The expected result straight from IOVA arithmetic, independent of resampleGeometry. */
  function expectedFromIova(dst: Uint32Array, src: Uint32Array, spec: Required<Omit<ResampleSpec, 'destination' | 'source'>>): number {
    // Numbers are exact here: every IOVA below stays under 2^53.
    const dstPage = Number(spec.destinationPageSize);
    const srcPage = Number(spec.sourcePageSize);
    const offset = Number(spec.sourceIovaOffset);
    const windowEnd = spec.sourceBit + spec.sourceBits;
    let count = 0;
    for (let d = spec.destinationBit; d < spec.destinationBit + spec.destinationBits; d++) {
      // The destination page's IOVA range, relative to the start of destination bit destinationBit.
      const lo = (d - spec.destinationBit) * dstPage;
      const hi = lo + dstPage; // exclusive
      // Source bits s cover [(s - sourceBit) * srcPage + offset, + srcPage).
      const first = Math.max(Math.floor((lo - offset) / srcPage) + spec.sourceBit, spec.sourceBit);
      const last = Math.min(Math.floor((hi - 1 - offset) / srcPage) + spec.sourceBit, windowEnd - 1);
      let any = false;
      for (let s = first; s <= last && !any; s++) any = bitOf(src, s) === 1;
      if (any && !bitOf(dst, d)) {
        dst[d >>> 5] = dst[d >>> 5]! | (1 << (d & 31));
        count++;
      }
    }
    return count;
  }

  test.prop([specArbitrary, fc.nat()], { numRuns: RUNS })(
    `resample between page sizes, at unaligned offsets, agrees with IOVA arithmetic (${RUNS} cases)`,
    (p, faultSeed) => {
      counter.hit('resample');
      try {
        const src = bitmap(p.srcBits, p.source.pattern, p.source.seed);
        const dst = bitmap(p.dstBits, p.target.pattern, p.target.seed);
        const sourceBit = Math.min(p.sourceBit, p.srcBits - 1);
        const sourceBits = p.sourceBits % (p.srcBits - sourceBit + 1);
        const destinationBit = Math.min(p.destinationBit, p.dstBits - 1);
        const destinationBits = p.destinationBits % (p.dstBits - destinationBit + 1);
        const fine = Math.min(p.dstShift, p.srcShift);
        const spec = {
          destination: dst,
          destinationPageSize: 2 ** p.dstShift,
          destinationBit,
          destinationBits,
          source: src,
          sourcePageSize: 2 ** p.srcShift,
          sourceBit,
          sourceBits,
          sourceIovaOffset: BigInt(p.offsetPages) << BigInt(fine),
        };
        const expected = snapshot(dst);
        const count = expectedFromIova(expected, snapshot(src), spec);
        // The model the benchmark reports agrees too.
        const viaReference = snapshot(dst);
        expect(referenceResample(viaReference, snapshot(src), resampleGeometry(spec))).toBe(count);
        expect(viaReference).toEqual(expected);

        const before = snapshot(dst);
        expect(engine.sync.resample(spec)).toBe(count);
        expect(snapshot(dst)).toEqual(expected);

        // The journaled form, killed part-way then resumed, lands on the same result.
        dst.u32().set(before);
        const g = resampleGeometry(spec);
        const journal = bitmap(64, 'empty', 0);
        const words = g.dstEnd > g.dstStart ? Math.floor((g.dstEnd - 1) / 64) - Math.floor(g.dstStart / 64) + 1 : 0;
        const blocks = Math.max(1, Math.ceil(words / JOURNAL_BLOCK_WORDS));
        const args = [g.dst, g.dstStart, g.dstEnd, g.src, g.srcStart, g.srcEnd, g.shift, g.delta, engine.sync.scratch.work, engine.sync.scratch.block, journal.offset] as const;
        if (words > 0) expect(engine.sync.exports.resample(...args, faultSeed % blocks)).toBe(-1);
        expect(engine.sync.exports.resample(...args, -1)).toBe(count);
        expect(snapshot(dst)).toEqual(expected);
      } finally {
        release();
      }
    },
  );

  // The coarse kernels skip destination words behind a zero source load: a lone set bit just
  // past the skipped stretch, at every position and phase, must still land. One bit at a time
  // (sparse sources are where the skip runs), for sources 2^3, 2^4 and 2^5 times the destination page.
  test('a lone source bit at every position and phase lands where it covers (coarse into fine)', () => {
    counter.hit('resample, lone bits');
    for (const k of [3, 4, 5]) {
      for (let phase = 0; phase < 2 ** k; phase += k === 5 ? 3 : 1) {
        for (let bit = 0; bit < 200; bit++) {
          try {
            const src = bitmap(256, 'empty', 0);
            const dst = bitmap(256 << k, 'empty', 0);
            src.u32()[bit >>> 5] = 1 << (bit & 31);
            const spec = {
              destination: dst, destinationPageSize: 4096, destinationBits: 256 << k,
              source: src, sourcePageSize: 4096 * 2 ** k, sourceBits: 256, sourceIovaOffset: -phase * 4096,
            };
            const expected = snapshot(dst);
            const count = referenceResample(expected, snapshot(src), resampleGeometry(spec));
            const got = engine.sync.resample(spec);
            if (got !== count || !snapshot(dst).every((v, i) => v === expected[i])) {
              expect.fail(`k ${k}, phase ${phase}, source bit ${bit}: ${got} bits set, expected ${count}`);
            }
          } finally {
            release();
          }
        }
      }
    }
  });

  test('a 2 MiB source page sets the 512 4 KiB pages it covers, clipped to the destination range', () => {
    counter.hit('resample, worked example');
    try {
      const src = bitmap(64, 'empty', 0);
      const dst = bitmap(2048, 'empty', 0);
      src.u32()[0] = 0b10; // source page 1
      // The source starts 1 MiB before destination bit 0: its page 1 covers destination bits 256..767.
      const count = engine.sync.resample({
        destination: dst, destinationPageSize: 4096, destinationBits: 2048,
        source: src, sourcePageSize: 2 * 1024 * 1024, sourceBits: 4, sourceIovaOffset: -(1024 * 1024),
      });
      expect(count).toBe(512);
      expect(engine.sync.popcount(dst, 256, 768)).toBe(512);
      expect(engine.sync.popcount(dst, 0, 2048)).toBe(512);
    } finally {
      release();
    }
  });
});
