// The sharded calls, run by a pool of workers over the one shared memory,
// against the reference models. Small shards and small output chunks so that
// bitmaps of a few hundred thousand bits cross shard boundaries, runs span
// them, and scans resume many times.
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { fc, test } from '@fast-check/vitest';
import { type ArenaBuffer, Engine, type RunChunk } from '../../src/engine/index.js';
import {
  referenceMergeAndCount, referencePopcount, referenceResample, referenceScanIndices, referenceScanRuns,
  referenceClear,
} from '../../src/engine/reference.js';
import { resampleGeometry } from '../../src/engine/resample.js';
import { CaseCounter, type Pattern, fillBuffer, patternArbitrary, snapshot } from './helpers.js';

const RUNS = Number(process.env.ENGINE_POOL_PROPERTY_RUNS ?? 120);
const WORKERS = 3;
let engine: Engine;
const counter = new CaseCounter();
const live: ArenaBuffer[] = [];

beforeAll(async () => {
  // Shards of 4 KiB of bitmap (32768 bits), output chunks of 100 runs / 200 indices.
  engine = await Engine.create({ workers: WORKERS, memoryBytes: 32 * 1024 * 1024, minimumShardBytes: 4096, inlineUpToBytes: 4096, outputEntries: 100 });
});

afterAll(async () => {
  console.log(counter.report(`sharded over ${WORKERS} workers vs reference, generated cases per kernel:`));
  await engine.close();
});

function bitmap(bits: number, pattern: Pattern, seed: number): ArenaBuffer {
  const buffer = engine.arena.allocate(Math.ceil(bits / 64) * 8 + 16, 64);
  fillBuffer(buffer, pattern, seed);
  live.push(buffer);
  return buffer;
}

function release(): void {
  while (live.length > 0) live.pop()!.free();
}

async function collectRuns(chunks: AsyncIterable<RunChunk>): Promise<number[][]> {
  const runs: number[][] = [];
  for await (const chunk of chunks) {
    for (let i = 0; i < chunk.count; i++) runs.push([chunk.runs[2 * i]!, chunk.runs[2 * i + 1]!]);
  }
  // Shards interleave; within a shard runs come in order.
  return runs.sort((a, b) => a[0]! - b[0]!);
}

function pairs(values: number[]): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < values.length; i += 2) out.push([values[i]!, values[i + 1]!]);
  return out;
}

const bitsArbitrary = fc.integer({ min: 0, max: 200_000 });
const sourceArbitrary = fc.record({ pattern: patternArbitrary, seed: fc.integer() });

describe('sharded over workers', () => {
  test.prop([bitsArbitrary, sourceArbitrary, fc.array(sourceArbitrary, { minLength: 1, maxLength: 3 }), fc.boolean()], { numRuns: RUNS })(
    `merge and merge-and-count agree with the reference (${RUNS} cases)`,
    async (bits, target, sources, count) => {
      counter.hit(count ? 'merge-and-count' : 'merge');
      try {
        const dst = bitmap(bits, target.pattern, target.seed);
        const srcs = sources.map((s) => bitmap(bits, s.pattern, s.seed));
        const expected = snapshot(dst);
        const newly = referenceMergeAndCount(expected, srcs.map(snapshot), bits);
        if (count) expect(await engine.mergeAndCount(dst, srcs, bits)).toBe(newly);
        else await engine.merge(dst, srcs, bits);
        expect(snapshot(dst)).toEqual(expected);
      } finally {
        release();
      }
    },
  );

  test.prop([bitsArbitrary, sourceArbitrary, fc.nat(), fc.nat(), fc.boolean()], { numRuns: RUNS })(
    `popcount and clear of a range agree with the reference (${RUNS} cases)`,
    async (bits, source, a, b, clear) => {
      counter.hit(clear ? 'clear' : 'popcount');
      try {
        const map = bitmap(bits, source.pattern, source.seed);
        const start = a % (bits + 1);
        const end = start + (b % (bits - start + 1));
        const expected = snapshot(map);
        if (clear) {
          await engine.clear(map, start, end);
          referenceClear(expected, start, end);
          expect(snapshot(map)).toEqual(expected);
        } else {
          expect(await engine.popcount(map, start, end)).toBe(referencePopcount(expected, start, end));
        }
      } finally {
        release();
      }
    },
  );

  test.prop([bitsArbitrary, sourceArbitrary, fc.nat()], { numRuns: RUNS })(
    `scan to indices agrees with the reference (${RUNS} cases)`,
    async (bits, source, from) => {
      counter.hit('scan-indices');
      try {
        const map = bitmap(bits, source.pattern, source.seed);
        const start = from % (bits + 1);
        const indices: number[] = [];
        for await (const chunk of engine.scanIndices(map, bits, { from: start })) indices.push(...chunk);
        indices.sort((x, y) => x - y);
        expect(indices).toEqual(referenceScanIndices(snapshot(map), start, bits, Infinity).values);
      } finally {
        release();
      }
    },
  );

  test.prop([bitsArbitrary, sourceArbitrary, fc.nat()], { numRuns: RUNS })(
    `scan to runs returns whole runs across shards, agreeing with the reference (${RUNS} cases)`,
    async (bits, source, from) => {
      counter.hit('scan-runs');
      try {
        const map = bitmap(bits, source.pattern, source.seed);
        const start = from % (bits + 1);
        const runs = await collectRuns(engine.scanRuns(map, bits, { from: start }));
        expect(runs).toEqual(pairs(referenceScanRuns(snapshot(map), start, bits, bits, Infinity).values));
      } finally {
        release();
      }
    },
  );

  test.prop([bitsArbitrary, sourceArbitrary, fc.array(sourceArbitrary, { minLength: 1, maxLength: 2 })], { numRuns: RUNS })(
    `fused merge + count + scan agrees with the reference (${RUNS} cases)`,
    async (bits, target, sources) => {
      counter.hit('merge-count-scan (fused)');
      try {
        const dst = bitmap(bits, target.pattern, target.seed);
        const srcs = sources.map((s) => bitmap(bits, s.pattern, s.seed));
        const expected = snapshot(dst);
        const newly = referenceMergeAndCount(expected, srcs.map(snapshot), bits);
        const round = await engine.mergeCountScan(dst, srcs, bits);
        expect(round.newlySet).toBe(newly);
        expect(snapshot(dst)).toEqual(expected);
        expect(await collectRuns(round.runs)).toEqual(pairs(referenceScanRuns(expected, 0, bits, bits, Infinity).values));
      } finally {
        release();
      }
    },
  );

  test.prop(
    [
      fc.integer({ min: 1000, max: 150_000 }), sourceArbitrary, sourceArbitrary,
      fc.constantFrom(-9, -4, -1, 0, 1, 3, 9), fc.integer({ min: -3000, max: 3000 }),
    ],
    { numRuns: RUNS },
  )(`resample agrees with the reference (${RUNS} cases)`, async (dstBits, target, source, shift, offsetPages) => {
    counter.hit('resample');
    try {
      const dst = bitmap(dstBits, target.pattern, target.seed);
      const srcBits = Math.max(1, Math.floor(shift >= 0 ? dstBits / 2 ** shift : dstBits * 2 ** -shift));
      const src = bitmap(Math.min(srcBits, 400_000), source.pattern, source.seed);
      const fineShift = shift >= 0 ? 12 : 12 + shift;
      const spec = {
        destination: dst, destinationPageSize: 4096, destinationBits: dstBits,
        source: src, sourcePageSize: 2 ** (12 + shift), sourceBits: Math.min(srcBits, 400_000),
        sourceIovaOffset: offsetPages * 2 ** fineShift,
      };
      const expected = snapshot(dst);
      const newly = referenceResample(expected, snapshot(src), resampleGeometry(spec));
      expect(await engine.resample(spec)).toBe(newly);
      expect(snapshot(dst)).toEqual(expected);
    } finally {
      release();
    }
  });
});
