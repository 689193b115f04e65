// The tuned plain-JS kernels of the benchmark's JS column (src/engine/tuned.ts)
// against the clarity-first reference models: the bench compares WASM with them,
// so they must compute the same thing.
import { describe, expect } from 'vitest';
import { fc, test } from '@fast-check/vitest';
import {
  referenceMergeAndCount, referencePopcount, referenceResample, referenceScanIndices, referenceScanRuns,
} from '../../src/engine/reference.js';
import {
  tunedMerge, tunedMergeAndCount, tunedMergeCountScan, tunedPopcount, tunedResample, tunedScanIndices, tunedScanRuns,
} from '../../src/engine/tuned.js';

const RUNS = Number(process.env.ENGINE_PROPERTY_RUNS ?? 200);

/** Whole u64 words as 32-bit halves: random words, runs of ones and zeros, or sparse bits. */
const halvesArbitrary = fc.integer({ min: 0, max: 80 }).chain((words) =>
  fc.oneof(
    fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 2 * words, maxLength: 2 * words }),
    fc.array(fc.constantFrom(0, 0xffffffff, 0x80000000, 1, 0x7fffffff, 0xfffffffe), { minLength: 2 * words, maxLength: 2 * words }),
    fc.array(fc.oneof({ weight: 9, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) }), { minLength: 2 * words, maxLength: 2 * words }),
  ).map((values) => Uint32Array.from(values)));

/** Every run of the reference, in one go. */
function allRuns(map: Uint32Array): number[] {
  const bits = map.length * 32;
  return Array.from(referenceScanRuns(map, 0, bits, bits, bits + 1).values);
}

describe('tuned JS kernels', () => {
  test.prop([halvesArbitrary], { numRuns: RUNS })('popcount agrees with the reference', (map) => {
    expect(tunedPopcount(map, map.length)).toBe(referencePopcount(map, 0, map.length * 32));
  });

  test.prop([halvesArbitrary, fc.integer(), fc.integer()], { numRuns: RUNS })('merge and merge-and-count agree with the reference', (dst, seedA, seedB) => {
    const a = dst.map((v, i) => Math.imul(v ^ seedA, i + 1) >>> 0);
    const b = dst.map((v, i) => (v & seedB) >>> 0);
    const expected = dst.slice();
    const count = referenceMergeAndCount(expected, [a, b], dst.length * 32);
    const counted = dst.slice();
    expect(tunedMergeAndCount(counted, [a, b], dst.length)).toBe(count);
    expect(counted).toEqual(expected);
    const three = dst.slice();
    const expectedThree = dst.slice();
    referenceMergeAndCount(expectedThree, [a, b, dst.map((v) => ~v >>> 0)], dst.length * 32);
    tunedMerge(three, [a, b, dst.map((v) => ~v >>> 0)], dst.length);
    expect(three).toEqual(expectedThree);
  });

  test.prop([halvesArbitrary], { numRuns: RUNS })('scan to indices agrees with the reference', (map) => {
    const bits = map.length * 32;
    const expected = Array.from(referenceScanIndices(map, 0, bits, bits + 100).values);
    const out = new Uint32Array(1 << 13);
    const n = tunedScanIndices(map, map.length, out);
    expect(n).toBe(expected.length);
    expect(Array.from(out.subarray(0, n))).toEqual(expected);
  });

  test.prop([halvesArbitrary], { numRuns: RUNS })('scan to runs agrees with the reference', (map) => {
    const expected = allRuns(map);
    const out = new Uint32Array(2 << 12);
    const n = tunedScanRuns(map, map.length, out);
    expect(n * 2).toBe(expected.length);
    expect(Array.from(out.subarray(0, 2 * n))).toEqual(expected);
  });

  test.prop([halvesArbitrary, fc.integer()], { numRuns: RUNS })('the fused merge + count + scan agrees with merge-and-count then scan', (dst, seed) => {
    const source = dst.map((v, i) => (Math.imul(v + seed, 2654435761) >>> (i & 7)) >>> 0);
    const expected = dst.slice();
    const count = referenceMergeAndCount(expected, [source], dst.length * 32);
    const out = new Uint32Array(2 << 12);
    const merged = dst.slice();
    const result = tunedMergeCountScan(merged, source, dst.length, out);
    expect(result.count).toBe(count);
    expect(merged).toEqual(expected);
    const runs = allRuns(expected);
    expect(result.runs * 2).toBe(runs.length);
    expect(Array.from(out.subarray(0, 2 * result.runs))).toEqual(runs);
  });

  // Every geometry the kernel takes: coarse into fine and fine into coarse (up to 2^6 apart),
  // equal pages, a source off the destination's alignment either way, both ranges clipped.
  test.prop([
    halvesArbitrary, halvesArbitrary, fc.integer({ min: -6, max: 6 }), fc.integer({ min: -300, max: 300 }),
    fc.nat(), fc.nat(), fc.nat(), fc.nat(),
  ], { numRuns: RUNS })('resample agrees with the reference', (src, dstInit, shift, delta, a, b, c, d) => {
    const dst = dstInit.length >= 2 ? dstInit : new Uint32Array(4);
    const srcBits = src.length * 32;
    const dstBits = dst.length * 32;
    const [srcStart, srcEnd] = [a % (srcBits + 1), b % (srcBits + 1)].sort((x, y) => x - y) as [number, number];
    const [dstStart, dstEnd] = [c % (dstBits + 1), d % (dstBits + 1)].sort((x, y) => x - y) as [number, number];
    const geometry = { dstStart, dstEnd, srcStart, srcEnd, shift, delta };
    const expected = dst.slice();
    const count = referenceResample(expected, src, geometry);
    const actual = dst.slice();
    expect(tunedResample(actual, src, geometry)).toBe(count);
    expect(actual).toEqual(expected);
  });
});
