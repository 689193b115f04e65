// The IOVA range set in WASM against its model: random map/unmap sequences,
// including adjacency (coalescing), splits, a full set, and IOVAs at the top
// of the 64-bit space.
import { afterAll, beforeAll, describe, expect, test as plainTest } from 'vitest';
import { fc, test } from '@fast-check/vitest';
import { Engine, EngineInputError } from '../../src/engine/index.js';
import { ReferenceIovaRangeSet } from '../../src/engine/reference.js';
import { CaseCounter } from './helpers.js';

const RUNS = Number(process.env.ENGINE_PROPERTY_RUNS ?? 200);
const PAGE = 4096n;
let engine: Engine;
const counter = new CaseCounter();

beforeAll(async () => {
  engine = await Engine.create({ workers: 0, memoryBytes: 16 * 1024 * 1024 });
});

afterAll(async () => {
  console.log(counter.report('IOVA range set vs reference, generated cases:'));
  await engine.close();
});

const operation = fc.oneof(
  fc.record({
    kind: fc.constant('insert' as const),
    page: fc.nat({ max: 120 }),
    pages: fc.integer({ min: 1, max: 24 }),
    // 'follow' puts the mapping where IOVA order would: neighbours then coalesce.
    offset: fc.oneof(fc.constant('follow' as const), fc.nat({ max: 400 })),
  }),
  fc.record({ kind: fc.constant('remove' as const), page: fc.nat({ max: 130 }), pages: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ kind: fc.constant('overlapping' as const), page: fc.nat({ max: 130 }), pages: fc.integer({ min: 1, max: 60 }) }),
  fc.record({ kind: fc.constant('lookup' as const), page: fc.nat({ max: 130 }) }),
);

describe('IovaRangeSet', () => {
  test.prop(
    [fc.array(operation, { minLength: 1, maxLength: 80 }), fc.integer({ min: 1, max: 24 }), fc.boolean()],
    { numRuns: RUNS },
  )(`random map/unmap sequences agree with the model (${RUNS} cases)`, (operations, capacity, atTop) => {
    counter.hit('range set sequences');
    // atTop: the same pattern in the last pages below 2^64, where iova + length overflows u64.
    const base = atTop ? (1n << 64n) - 131n * PAGE : 0n;
    const set = engine.createRangeSet({ pageSize: PAGE, capacity });
    const model = new ReferenceIovaRangeSet(12n, capacity);
    try {
      for (const op of operations) {
        const iova = base + BigInt(op.page) * PAGE;
        if (op.kind === 'insert') {
          const length = BigInt(op.pages) * PAGE;
          if (iova + length > 1n << 64n) continue;
          const bitmapOffset = op.offset === 'follow' ? BigInt(op.page) : BigInt(op.offset);
          let expected: 'ok' | 'overlap' | 'full';
          try {
            expected = model.insert({ iova, length, bitmapOffset }) ? 'ok' : 'overlap';
          } catch {
            expected = 'full';
          }
          let got: 'ok' | 'overlap' | 'full' = 'ok';
          try {
            set.insert({ iova, length, bitmapOffset });
          } catch (error) {
            expect(error).toBeInstanceOf(EngineInputError);
            got = /overlaps/.test((error as Error).message) ? 'overlap' : 'full';
          }
          expect(got).toBe(expected);
        } else if (op.kind === 'remove') {
          const length = BigInt(op.pages) * PAGE;
          if (iova + length > 1n << 64n) continue;
          let expected;
          try {
            expected = model.remove(iova, length);
          } catch {
            expected = 'full';
          }
          let got;
          try {
            got = set.remove(iova, length);
          } catch (error) {
            expect(error).toBeInstanceOf(EngineInputError);
            got = 'full';
          }
          expect(got).toEqual(expected);
        } else if (op.kind === 'overlapping') {
          const length = BigInt(op.pages) * PAGE;
          if (iova + length > 1n << 64n) continue;
          expect(set.overlapping(iova, length)).toEqual(model.overlapping(iova, length));
        } else {
          expect(set.lookup(iova + 17n)).toEqual(model.lookup(iova + 17n));
        }
        expect(set.list()).toEqual(model.mappings);
        expect(set.size).toBe(model.mappings.length);
      }
    } finally {
      set.close();
    }
  });

  plainTest('holds tens of thousands of mappings, in order, with lookups', () => {
    counter.hit('range set, 50000 mappings');
    const count = 50_000;
    const set = engine.createRangeSet({ pageSize: PAGE, capacity: count });
    try {
      // Inserted out of order, one page apart so none coalesce.
      for (let i = 0; i < count; i++) {
        const page = BigInt(((i * 7919) % count) * 2);
        set.insert({ iova: page * PAGE, length: PAGE, bitmapOffset: page });
      }
      expect(set.size).toBe(count);
      const list = set.list();
      for (let i = 1; i < list.length; i++) expect(list[i]!.iova > list[i - 1]!.iova).toBe(true);
      expect(set.lookup(2n * 1234n * PAGE + 5n)).toBe(2468n);
      expect(set.lookup((2n * 1234n + 1n) * PAGE)).toBeUndefined();
      // Filling the gaps coalesces everything into one mapping.
      for (let i = 0; i < count; i++) {
        const page = BigInt(i * 2 + 1);
        set.insert({ iova: page * PAGE, length: PAGE, bitmapOffset: page });
      }
      expect(set.list()).toEqual([{ iova: 0n, length: BigInt(count * 2) * PAGE, bitmapOffset: 0n }]);
      // A remove in the middle splits it in two, with the right part's bitmap offset following.
      expect(set.remove(100n * PAGE, 10n * PAGE)).toEqual([{ iova: 100n * PAGE, length: 10n * PAGE, bitmapOffset: 100n }]);
      expect(set.list()).toEqual([
        { iova: 0n, length: 100n * PAGE, bitmapOffset: 0n },
        { iova: 110n * PAGE, length: BigInt(count * 2 - 110) * PAGE, bitmapOffset: 110n },
      ]);
    } finally {
      set.close();
    }
  });

  plainTest('rejects misaligned, empty and overflowing ranges before touching the set', () => {
    counter.hit('range set, bad input');
    const set = engine.createRangeSet({ pageSize: PAGE, capacity: 4 });
    try {
      expect(() => set.insert({ iova: 100n, length: PAGE, bitmapOffset: 0n })).toThrow(/multiples of the page size/);
      expect(() => set.insert({ iova: 0n, length: 0n, bitmapOffset: 0n })).toThrow(/non-empty/);
      expect(() => set.insert({ iova: (1n << 64n) - PAGE, length: 2n * PAGE, bitmapOffset: 0n })).toThrow(/2\^64/);
      expect(() => set.remove(0n, 3n)).toThrow(/multiples of the page size/);
      expect(() => engine.createRangeSet({ pageSize: 3000 })).toThrow(/power of two/);
      expect(set.size).toBe(0);
    } finally {
      set.close();
    }
  });
});
