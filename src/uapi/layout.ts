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

/** A struct of the uAPI: its size, every field's offset, and encoding to and from bytes. */
export class StructLayout {
  readonly size: number;
  readonly align: number;
  /** Every field, nested ones with dotted names (`bitmap.pgsize`, `mock_domain.out_hwpt_id`). */
  readonly fields: ReadonlyMap<string, Field>;

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

  write(bytes: Uint8Array, values: Values, base = 0): void {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (const [name, value] of Object.entries(values)) {
      const f = this.fields.get(name);
      if (!f || f.type === 'bytes') throw new Error(`struct ${this.name} has no scalar field ${name}`);
      writeScalar(view, base + f.offset, f.type, value, `${this.name}.${name}`);
    }
  }

  read(bytes: Uint8Array, field: string, base = 0): number | bigint {
    const f = this.fields.get(field);
    if (!f || f.type === 'bytes') throw new Error(`struct ${this.name} has no scalar field ${field}`);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return readScalar(view, base + f.offset, f.type);
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

function writeScalar(view: DataView, offset: number, type: ScalarType, value: number | bigint, what: string): void {
  switch (type) {
    case 'u8':
      view.setUint8(offset, Number(value));
      return;
    case 'u16':
      view.setUint16(offset, Number(value), true);
      return;
    case 'u32':
      view.setUint32(offset, Number(value), true);
      return;
    case 's32':
      view.setInt32(offset, Number(value), true);
      return;
    case 'u64':
      if (typeof value !== 'bigint') throw new Error(`${what} is a u64 and takes a bigint`);
      view.setBigUint64(offset, value, true);
      return;
  }
}

function readScalar(view: DataView, offset: number, type: ScalarType): number | bigint {
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
