// C struct layouts described as data, with offsets computed by the x86_64 SysV rules that the
// kernel headers are compiled with (natural alignment; __aligned_u64 and __u64 both align to 8).
// The conformance test checks every offset against the real headers compiled by gcc.

export type ScalarType = 'u8' | 'u16' | 'u32' | 's32' | 'u64';

export type FieldType =
  | ScalarType
  | { readonly array: FieldType; readonly count: number }
  | { readonly union: readonly FieldSpec[] }
  | StructLayout;

/** [name, type] or [name, type, kernel version that added the field]. */
export type FieldSpec = readonly [name: string, type: FieldType, since?: string];

export interface Field {
  readonly name: string;
  readonly offset: number;
  readonly type: ScalarType | 'bytes';
  readonly size: number;
  readonly since: string | undefined;
}

const SCALAR_SIZE: Record<ScalarType, number> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 };

function isScalar(type: FieldType): type is ScalarType {
  return typeof type === 'string';
}

function sizeAndAlign(type: FieldType): { size: number; align: number } {
  if (isScalar(type)) return { size: SCALAR_SIZE[type], align: SCALAR_SIZE[type] };
  if (type instanceof StructLayout) return { size: type.size, align: type.align };
  if ('array' in type) {
    const element = sizeAndAlign(type.array);
    return { size: element.size * type.count, align: element.align };
  }
  let size = 0;
  let align = 1;
  for (const [, member] of type.union) {
    const m = sizeAndAlign(member);
    size = Math.max(size, m.size);
    align = Math.max(align, m.align);
  }
  return { size: roundUp(size, align), align };
}

function roundUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

export type Values = Record<string, number | bigint>;

/**
 * What write and read need of one scalar field, found once per field name: the offset, the byte
 * count and how to convert. Built in the constructor so the per-call path is one Map lookup per
 * field and byte stores, with no Object.entries, DataView or other allocation (issue 13: the
 * struct's encoding was most of the library's ioctl overhead).
 */
interface ScalarAccess {
  readonly offset: number;
  readonly type: ScalarType;
  readonly size: number;
  /** `struct.field`, for the u64 error message. */
  readonly what: string;
}

/** A u64 up to this converts to a Number exactly, so it is stored as two u32 halves without BigInt arithmetic. */
const MAX_SAFE_U64 = BigInt(Number.MAX_SAFE_INTEGER);
const TWO_TO_32 = 0x1_0000_0000;
/** The high u32 half below which hi * 2^32 + lo is still exact in a Number. */
const SAFE_HIGH_HALF = 0x20_0000;

/** A C struct of the uAPI: its size, every field's offset, and encoding to and from bytes. */
export class StructLayout {
  readonly size: number;
  readonly align: number;
  /** Every field, nested ones with dotted names (`bitmap.pgsize`, `mock_domain.out_hwpt_id`). */
  readonly fields: ReadonlyMap<string, Field>;
  /** The scalar fields of `fields`, each with its access precomputed. */
  private readonly scalars: ReadonlyMap<string, ScalarAccess>;

  constructor(
    readonly name: string,
    specs: readonly FieldSpec[],
    readonly since?: string,
  ) {
    const fields = new Map<string, Field>();
    let offset = 0;
    let align = 1;
    for (const [fieldName, type, fieldSince] of specs) {
      const m = sizeAndAlign(type);
      offset = roundUp(offset, m.align);
      align = Math.max(align, m.align);
      addField(fields, fieldName, type, offset, fieldSince ?? since);
      offset += m.size;
    }
    this.align = align;
    this.size = roundUp(offset, align);
    this.fields = fields;
    const scalars = new Map<string, ScalarAccess>();
    for (const [fieldName, f] of fields) {
      if (f.type !== 'bytes') scalars.set(fieldName, { offset: f.offset, type: f.type, size: f.size, what: `${name}.${fieldName}` });
    }
    this.scalars = scalars;
  }

  offsetOf(field: string): number {
    const f = this.fields.get(field);
    if (!f) throw new Error(`struct ${this.name} has no field ${field}`);
    return f.offset;
  }

  /** The size up to (not including) `field`: the shorter form an older kernel accepts. */
  sizeBefore(field: string): number {
    return this.offsetOf(field);
  }

  /** A zeroed buffer of this struct's size (or `size` bytes, for trailing data), values written in. */
  encode(values: Values = {}, size = this.size): Uint8Array {
    const bytes = new Uint8Array(size);
    this.write(bytes, values);
    return bytes;
  }

  /**
   * As encode, but a small struct's bytes are a slice of a shared off-heap slab (see slabSlice),
   * which saves the cost of a new backing store per ioctl. The bytes are zeroed and the caller's
   * alone, for as long as it likes; only its `buffer` is not its own: address it with
   * `byteOffset`, and never transfer or detach it.
   */
  encodeSlice(values: Values = {}, size = this.size): Uint8Array {
    const bytes = slabSlice(size);
    this.write(bytes, values);
    return bytes;
  }

  write(bytes: Uint8Array, values: Values, base = 0): void {
    // for...in with the own-property test visits exactly Object.entries' keys, in the same order,
    // without building the array of pairs.
    for (const name in values) {
      if (!hasOwn(values, name)) continue;
      const f = this.scalars.get(name);
      if (f === undefined) throw new Error(`struct ${this.name} has no scalar field ${name}`);
      writeScalar(bytes, base + f.offset, f, values[name]!);
    }
  }

  read(bytes: Uint8Array, field: string, base = 0): number | bigint {
    const f = this.scalars.get(field);
    if (f === undefined) throw new Error(`struct ${this.name} has no scalar field ${field}`);
    return readScalar(bytes, base + f.offset, f);
  }

  readNumber(bytes: Uint8Array, field: string, base = 0): number {
    const value = this.read(bytes, field, base);
    if (typeof value === 'bigint') throw new Error(`${this.name}.${field} is a u64: use readBigint`);
    return value;
  }

  readBigint(bytes: Uint8Array, field: string, base = 0): bigint {
    const value = this.read(bytes, field, base);
    if (typeof value !== 'bigint') throw new Error(`${this.name}.${field} is not a u64: use readNumber`);
    return value;
  }

  /** Every scalar field decoded (for tests and debugging). */
  decode(bytes: Uint8Array, base = 0): Values {
    const out: Values = {};
    for (const [name, f] of this.fields) if (f.type !== 'bytes') out[name] = this.read(bytes, name, base);
    return out;
  }
}

/**
 * encodeSlice cuts small structs from a slab: every new ArrayBuffer (or the backing store V8
 * makes for an on-heap typed array when koffi takes its address) costs as much as the koffi call
 * itself (issue 13 item 5), a view into an existing buffer a fraction of that. A slice is handed out once
 * and never reused, so it is zero and no one else's; the slab is freed when its last view is.
 * A kept struct holds its slab (at most SLAB_BYTES) alive, as a Buffer from Node's pool does.
 */
const SLAB_BYTES = 4096;
/** Larger buffers get an ArrayBuffer of their own: a slab would be used up by a few. */
const SLAB_SLICE_LIMIT = 256;
let slab = new ArrayBuffer(SLAB_BYTES);
let slabUsed = 0;

function slabSlice(size: number): Uint8Array {
  // Anything but a small whole size (negative, fractional, NaN) keeps Uint8Array's own conversion and errors.
  if (!(size >>> 0 === size && size <= SLAB_SLICE_LIMIT)) return new Uint8Array(size);
  if (slabUsed + size > SLAB_BYTES) {
    slab = new ArrayBuffer(SLAB_BYTES);
    slabUsed = 0;
  }
  const bytes = new Uint8Array(slab, slabUsed, size);
  // 8-byte aligned slices: every u64 of the struct is naturally aligned in memory, as in C.
  slabUsed += (size + 7) & ~7;
  return bytes;
}

const hasOwn = (object: object, key: string): boolean => Object.prototype.hasOwnProperty.call(object, key);

/**
 * True where the field lies whole inside `bytes` at an integer position: there, byte stores and
 * loads do what DataView does. Anywhere else (a negative, fractional or out-of-range position, a
 * detached buffer) the DataView path runs, so its RangeError or TypeError is the one thrown.
 */
function inBounds(bytes: Uint8Array, position: number, size: number): boolean {
  return position >>> 0 === position && position + size <= bytes.length;
}

function writeScalar(bytes: Uint8Array, position: number, f: ScalarAccess, value: number | bigint): void {
  if (f.type === 'u64') {
    if (typeof value !== 'bigint') throw new Error(`${f.what} is a u64 and takes a bigint`);
    if (value >= 0n && value <= MAX_SAFE_U64 && inBounds(bytes, position, 8)) {
      const n = Number(value);
      const low = n >>> 0;
      storeU32(bytes, position, low);
      storeU32(bytes, position + 4, (n - low) / TWO_TO_32);
      return;
    }
    dataView(bytes).setBigUint64(position, value, true);
    return;
  }
  // Number() first, as DataView's setters are called with: a bigint converts, a symbol throws.
  const n = Number(value);
  if (!inBounds(bytes, position, f.size)) {
    writeScalarByDataView(dataView(bytes), position, f.type, n);
    return;
  }
  // ToUint32 (>>> 0) then the low bytes: the same bits DataView's setUint8/16/32 and setInt32 store.
  const u = n >>> 0;
  switch (f.size) {
    case 1:
      bytes[position] = u;
      return;
    case 2:
      bytes[position] = u;
      bytes[position + 1] = u >>> 8;
      return;
    default:
      storeU32(bytes, position, u);
  }
}

function storeU32(bytes: Uint8Array, position: number, u: number): void {
  bytes[position] = u;
  bytes[position + 1] = u >>> 8;
  bytes[position + 2] = u >>> 16;
  bytes[position + 3] = u >>> 24;
}

function loadU32(bytes: Uint8Array, position: number): number {
  return (bytes[position]! | (bytes[position + 1]! << 8) | (bytes[position + 2]! << 16) | (bytes[position + 3]! << 24)) >>> 0;
}

function readScalar(bytes: Uint8Array, position: number, f: ScalarAccess): number | bigint {
  if (!inBounds(bytes, position, f.size)) return readScalarByDataView(dataView(bytes), position, f.type);
  switch (f.type) {
    case 'u8':
      return bytes[position]!;
    case 'u16':
      return bytes[position]! | (bytes[position + 1]! << 8);
    case 'u32':
      return loadU32(bytes, position);
    case 's32':
      return loadU32(bytes, position) | 0;
    case 'u64': {
      const low = loadU32(bytes, position);
      const high = loadU32(bytes, position + 4);
      // One BigInt from an exact Number where the value fits in 53 bits (lengths, IOVAs, pointers).
      if (high < SAFE_HIGH_HALF) return BigInt(high * TWO_TO_32 + low);
      return (BigInt(high) << 32n) | BigInt(low);
    }
  }
}

function dataView(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function addField(fields: Map<string, Field>, name: string, type: FieldType, offset: number, since: string | undefined): void {
  if (isScalar(type)) {
    fields.set(name, { name, offset, type, size: SCALAR_SIZE[type], since });
    return;
  }
  const m = sizeAndAlign(type);
  fields.set(name, { name, offset, type: 'bytes', size: m.size, since });
  if (type instanceof StructLayout) {
    for (const [inner, f] of type.fields) fields.set(`${name}.${inner}`, { ...f, name: `${name}.${inner}`, offset: offset + f.offset, since: since ?? f.since });
  } else if ('union' in type) {
    // Union members share the offset; each member struct's fields are named member.field.
    for (const [memberName, memberType, memberSince] of type.union) addField(fields, `${name ? `${name}.` : ''}${memberName}`, memberType, offset, memberSince ?? since);
    if (!name) fields.delete(name);
  }
}

function writeScalarByDataView(view: DataView, offset: number, type: Exclude<ScalarType, 'u64'>, value: number): void {
  switch (type) {
    case 'u8':
      view.setUint8(offset, value);
      return;
    case 'u16':
      view.setUint16(offset, value, true);
      return;
    case 'u32':
      view.setUint32(offset, value, true);
      return;
    case 's32':
      view.setInt32(offset, value, true);
      return;
  }
}

function readScalarByDataView(view: DataView, offset: number, type: ScalarType): number | bigint {
  switch (type) {
    case 'u8':
      return view.getUint8(offset);
    case 'u16':
      return view.getUint16(offset, true);
    case 'u32':
      return view.getUint32(offset, true);
    case 's32':
      return view.getInt32(offset, true);
    case 'u64':
      return view.getBigUint64(offset, true);
  }
}

export function struct(name: string, specs: readonly FieldSpec[], since?: string): StructLayout {
  return new StructLayout(name, specs, since);
}

/** `_IO(type, nr)`: no size and no direction bits, as every iommufd and VFIO ioctl is encoded. */
export function _IO(type: string, nr: number): number {
  return (type.charCodeAt(0) << 8) | nr;
}
