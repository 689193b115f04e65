// StructLayout's encode/encodeSlice/write/read against a plain DataView reference written here: for every
// struct of the uAPI (offsets checked against gcc by conformance.test.ts) and for random layouts
// with nested structs, arrays and unions, random values (in range, out of range, fractional, NaN,
// bigints), views at any byteOffset into a buffer of random bytes, any base, fields that do not
// fit. The same bytes must come out, the same values read back, the same errors thrown.
import { describe, expect } from 'vitest';
import { fc, test } from '@fast-check/vitest';
import { ALL_STRUCTS } from '../../src/uapi/index.js';
import { type FieldSpec, type FieldType, type ScalarType, StructLayout, type Values } from '../../src/uapi/layout.js';

const RUNS = Number(process.env.LAYOUT_PROPERTY_RUNS ?? 400);

// The reference: one DataView over the view, Object.entries, one field lookup and one DataView call per value.
function referenceWrite(layout: StructLayout, bytes: Uint8Array, values: Values, base = 0): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (const [name, value] of Object.entries(values)) {
    const f = layout.fields.get(name);
    if (!f || f.type === 'bytes') throw new Error(`struct ${layout.name} has no scalar field ${name}`);
    const at = base + f.offset;
    if (f.type === 'u8') view.setUint8(at, Number(value));
    else if (f.type === 'u16') view.setUint16(at, Number(value), true);
    else if (f.type === 'u32') view.setUint32(at, Number(value), true);
    else if (f.type === 's32') view.setInt32(at, Number(value), true);
    else {
      if (typeof value !== 'bigint') throw new Error(`${layout.name}.${name} is a u64 and takes a bigint`);
      view.setBigUint64(at, value, true);
    }
  }
}

function referenceRead(layout: StructLayout, bytes: Uint8Array, field: string, base = 0): number | bigint {
  const f = layout.fields.get(field);
  if (!f || f.type === 'bytes') throw new Error(`struct ${layout.name} has no scalar field ${field}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const at = base + f.offset;
  if (f.type === 'u8') return view.getUint8(at);
  if (f.type === 'u16') return view.getUint16(at, true);
  if (f.type === 'u32') return view.getUint32(at, true);
  if (f.type === 's32') return view.getInt32(at, true);
  return view.getBigUint64(at, true);
}

type Outcome = { value: unknown } | { error: string };

function outcome(run: () => unknown): Outcome {
  try {
    return { value: run() };
  } catch (error) {
    return { error: `${(error as Error).constructor.name}: ${(error as Error).message}` };
  }
}

// Random layouts: scalars, arrays, nested structs and unions (named or anonymous) a few levels deep.
type Shape = ScalarType | { array: Shape; count: number } | { struct: Shape[] } | { union: Shape[]; anonymous: boolean };

const scalarType = fc.constantFrom<ScalarType>('u8', 'u16', 'u32', 's32', 'u64');
const { shape } = fc.letrec<{ shape: Shape }>((tie) => ({
  shape: fc.oneof(
    { maxDepth: 3, depthIdentifier: 'layout' },
    { arbitrary: scalarType, weight: 6 },
    { arbitrary: fc.record({ array: fc.oneof(scalarType, tie('shape')), count: fc.integer({ min: 1, max: 3 }) }), weight: 1 },
    { arbitrary: fc.record({ struct: fc.array(tie('shape'), { minLength: 1, maxLength: 4 }) }), weight: 1 },
    { arbitrary: fc.record({ union: fc.array(tie('shape'), { minLength: 1, maxLength: 3 }), anonymous: fc.boolean() }), weight: 1 },
  ),
}));

let layoutCount = 0;
function build(shapes: readonly Shape[], names: { next: number }): FieldSpec[] {
  return shapes.map((s): FieldSpec => {
    const name = `f${names.next++}`;
    if (typeof s === 'string') return [name, s];
    return [
      'union' in s && s.anonymous ? '' : name,
      toType(s, names),
    ];
  });
}
function toType(s: Shape, names: { next: number }): FieldType {
  if (typeof s === 'string') return s;
  if ('array' in s) return { array: toType(s.array, names), count: s.count };
  if ('struct' in s) return new StructLayout(`inner${layoutCount++}`, build(s.struct, names));
  return { union: build(s.union, names) };
}

const randomLayout = fc.array(shape, { minLength: 1, maxLength: 6 }).map((shapes) => new StructLayout(`random${layoutCount++}`, build(shapes, { next: 0 })));
const layout = fc.oneof(fc.constantFrom(...ALL_STRUCTS), randomLayout);

const TWO_64 = 1n << 64n;
function valueFor(type: ScalarType | 'bytes'): fc.Arbitrary<number | bigint> {
  if (type === 'u64') {
    return fc.oneof(
      { arbitrary: fc.bigInt({ min: 0n, max: TWO_64 - 1n }), weight: 4 },
      { arbitrary: fc.bigInt({ min: 0n, max: BigInt(Number.MAX_SAFE_INTEGER) + 4n }), weight: 4 },
      { arbitrary: fc.bigInt({ min: -TWO_64, max: 2n * TWO_64 }), weight: 2 },
      { arbitrary: fc.integer(), weight: 1 },
    );
  }
  const bits = type === 'u8' ? 8 : type === 'u16' ? 16 : 32;
  return fc.oneof(
    { arbitrary: fc.integer({ min: type === 's32' ? -(2 ** 31) : 0, max: type === 's32' ? 2 ** 31 - 1 : 2 ** bits - 1 }), weight: 6 },
    { arbitrary: fc.double(), weight: 2 },
    { arbitrary: fc.integer({ min: -(2 ** 33), max: 2 ** 33 }), weight: 1 },
    { arbitrary: fc.bigInt({ min: -(1n << 40n), max: 1n << 40n }), weight: 1 },
  );
}

/** A random subset of the layout's scalar fields in random order (union members overlap), sometimes a name that is no scalar. */
function valuesFor(l: StructLayout): fc.Arbitrary<Values> {
  const scalars = [...l.fields.values()].filter((f) => f.type !== 'bytes');
  const notScalar = [...[...l.fields.values()].filter((f) => f.type === 'bytes').map((f) => f.name), 'no_such_field'];
  return fc
    .tuple(
      fc.shuffledSubarray(scalars),
      fc.option(fc.constantFrom(...notScalar), { freq: 8 }),
    )
    .chain(([chosen, wrong]) =>
      fc.tuple(...chosen.map((f) => valueFor(f.type))).map((drawn) => {
        const values: Values = {};
        chosen.forEach((f, i) => (values[f.name] = drawn[i]!));
        if (wrong !== null) values[wrong] = 1;
        return values;
      }),
    );
}

/** A view at a random byteOffset into a buffer of random bytes, usually long enough for the struct at `base`, sometimes not. */
const placement = (l: StructLayout) =>
  fc.record({
    byteOffset: fc.integer({ min: 0, max: 15 }),
    base: fc.oneof(
      { arbitrary: fc.constant(0), weight: 4 },
      { arbitrary: fc.integer({ min: 0, max: 3 }).map((n) => n * l.size), weight: 3 },
      { arbitrary: fc.integer({ min: -3, max: 40 }), weight: 2 },
      { arbitrary: fc.constantFrom(0.5, 2.75, -0.5, Number.NaN), weight: 1 },
    ),
    slack: fc.integer({ min: -Math.min(l.size, 12), max: 3 * l.size + 8 }),
    fill: fc.uint8Array({ minLength: 1, maxLength: 64 }),
  });

function buffers(l: StructLayout, p: { byteOffset: number; base: number; slack: number; fill: Uint8Array }): [Uint8Array, Uint8Array] {
  const length = Math.max(0, (Number.isInteger(p.base) && p.base > 0 ? p.base : 0) + l.size + p.slack);
  const total = new Uint8Array(p.byteOffset + length + 16);
  for (let i = 0; i < total.length; i++) total[i] = p.fill[i % p.fill.length]!;
  const copy = total.slice();
  return [new Uint8Array(total.buffer, p.byteOffset, length), new Uint8Array(copy.buffer, p.byteOffset, length)];
}

const caseOf = layout.chain((l) => fc.record({ layout: fc.constant(l), values: valuesFor(l), place: placement(l) }));

describe('StructLayout against a DataView reference', () => {
  test.prop([caseOf], { numRuns: RUNS })('write stores the same bytes (and throws the same error) at any byteOffset and base', ({ layout: l, values, place }) => {
    const [ours, reference] = buffers(l, place);
    const got = outcome(() => l.write(ours, values, place.base));
    const want = outcome(() => referenceWrite(l, reference, values, place.base));
    expect(got).toEqual(want);
    // The whole ArrayBuffer: nothing before the view, after it, or between the fields changes differently.
    expect(new Uint8Array(ours.buffer)).toEqual(new Uint8Array(reference.buffer));
  });

  test.prop([caseOf], { numRuns: RUNS })('read, readNumber and readBigint return what a DataView reads', ({ layout: l, values, place }) => {
    const [bytes] = buffers(l, place);
    // Struct-shaped contents: the values written where they fit, random bytes elsewhere.
    outcome(() => referenceWrite(l, bytes, values, place.base));
    for (const name of [...l.fields.keys(), 'no_such_field']) {
      const want = outcome(() => referenceRead(l, bytes, name, place.base));
      expect(outcome(() => l.read(bytes, name, place.base)), name).toEqual(want);
      const wantNumber = 'value' in want && typeof want.value === 'bigint' ? { error: `Error: ${l.name}.${name} is a u64: use readBigint` } : want;
      const wantBigint = 'value' in want && typeof want.value !== 'bigint' ? { error: `Error: ${l.name}.${name} is not a u64: use readNumber` } : want;
      expect(outcome(() => l.readNumber(bytes, name, place.base)), name).toEqual(wantNumber);
      expect(outcome(() => l.readBigint(bytes, name, place.base)), name).toEqual(wantBigint);
    }
  });

  test.prop([caseOf, fc.option(fc.integer({ min: 0, max: 300 }), { freq: 2 }), fc.constantFrom('encode', 'encodeSlice' as const)], { numRuns: RUNS })(
    'encode and encodeSlice return a zeroed buffer of the size asked, values written in, that no other encode shares',
    ({ layout: l, values }, size, method) => {
      const encode = (v: Values, s?: number) => (method === 'encode' ? l.encode(v, s) : l.encodeSlice(v, s));
      const want = outcome(() => {
        const bytes = new Uint8Array(size ?? l.size);
        referenceWrite(l, bytes, values);
        return Array.from(bytes);
      });
      const got = outcome(() => Array.from(size === null ? encode(values) : encode(values, size)));
      expect(got).toEqual(want);
      if ('value' in want) {
        const first = size === null ? encode(values) : encode(values, size);
        const second = size === null ? encode(values) : encode(values, size);
        expect(first.byteLength).toBe(size ?? l.size);
        // encode's buffer is its own (callers may view `.buffer` from 0); encodeSlice's is a slab's.
        if (method === 'encode') expect([first.byteOffset, first.buffer.byteLength]).toEqual([0, size ?? l.size]);
        first.fill(0xa5);
        expect(Array.from(second)).toEqual(want.value);
        const decoded = outcome(() => {
          const out: Values = {};
          for (const [name, f] of l.fields) if (f.type !== 'bytes') out[name] = referenceRead(l, second, name);
          return out;
        });
        expect(outcome(() => l.decode(second))).toEqual(decoded);
      }
    },
  );

  test('the u64 fast path and its edges: 2^53 - 1, 2^53, 2^64 - 1, negative, and high halves near 2^21', () => {
    const l = new StructLayout('edges', [['pad', 'u8'], ['value', 'u64'], ['tail', 'u32']]);
    const edges = [0n, 1n, 0xffff_ffffn, 1n << 32n, (1n << 53n) - 1n, 1n << 53n, (1n << 53n) + 1n, (0x20_0000n << 32n) - 1n, 0x20_0000n << 32n, TWO_64 - 1n, -1n, -(1n << 53n), TWO_64, TWO_64 + 5n];
    for (const value of edges) {
      for (const byteOffset of [0, 1, 3, 7]) {
        const [ours, reference] = buffers(l, { byteOffset, base: 0, slack: 0, fill: Uint8Array.of(0x5a, 0xc3) });
        l.write(ours, { value, tail: 0xdead_beef });
        referenceWrite(l, reference, { value, tail: 0xdead_beef });
        expect(new Uint8Array(ours.buffer), `${value} at byteOffset ${byteOffset}`).toEqual(new Uint8Array(reference.buffer));
        expect(l.readBigint(ours, 'value')).toBe(BigInt.asUintN(64, value));
      }
    }
    expect(() => l.write(new Uint8Array(l.size), { value: 1 })).toThrow('edges.value is a u64 and takes a bigint');
  });

  test.prop([fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 1, maxLength: 400 })], { numRuns: 40 })(
    'encodeSlice of any sizes, kept together, never share a byte and start 8-byte aligned',
    (sizes) => {
      const l = new StructLayout('one', [['x', 'u8']]);
      const kept = sizes.map((size) => l.encodeSlice({}, size));
      kept.forEach((bytes, i) => {
        expect(bytes.byteLength).toBe(sizes[i]);
        expect(bytes.every((b) => b === 0), `encode ${i} zeroed`).toBe(true);
        expect(bytes.byteOffset % 8).toBe(0);
        bytes.fill((i % 255) + 1);
      });
      kept.forEach((bytes, i) => expect(bytes.every((b) => b === (i % 255) + 1), `encode ${i} kept its bytes`).toBe(true));
    },
  );

  test('write takes the own enumerable keys only, as Object.entries does', () => {
    const l = new StructLayout('own', [['a', 'u32'], ['b', 'u32']]);
    const values = Object.create({ a: 7, inherited: 1 }) as Values;
    Object.defineProperty(values, 'hidden', { value: 3, enumerable: false });
    values.b = 9;
    const ours = new Uint8Array(l.size);
    const reference = new Uint8Array(l.size);
    l.write(ours, values);
    referenceWrite(l, reference, values);
    expect(ours).toEqual(reference);
    expect(l.decode(ours)).toEqual({ a: 0, b: 9 });
  });
});
