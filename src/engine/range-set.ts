// The IOVA range set: which IOVA ranges are mapped and where each one's pages
// sit in the migration bitmap. It lives in the shared memory and runs in WASM
// on the calling thread (its operations take microseconds; no worker needed).
// Not safe to use from two threads at once.
import type { ArenaBuffer, Arena } from './arena.js';
import { EngineInputError } from './errors.js';
import type { KernelExports } from './module.js';
import type { Mapping } from './reference.js';
import { pageShift } from './validate.js';

export type { Mapping } from './reference.js';

const ENTRY_BYTES = 24;
const HEADER_BYTES = 16;
const OVERLAP = -1;
const FULL = -2;
const U64_LIMIT = 1n << 64n;

export interface IovaRangeSetOptions {
  /** Page size of the migration bitmap (a power of two); IOVAs and lengths must be multiples of it. */
  pageSize: number | bigint;
  /** Most mappings held at once (default 65536). */
  capacity?: number;
}

export class IovaRangeSet {
  readonly pageSize: bigint;
  readonly capacity: number;
  readonly #shift: bigint;
  readonly #set: ArenaBuffer;
  /** Room for every mapping: where overlapping/remove write their results. */
  readonly #out: ArenaBuffer;
  #closed = false;

  constructor(
    readonly exports: KernelExports,
    arena: Arena,
    options: IovaRangeSetOptions,
  ) {
    const shift = pageShift('pageSize', options.pageSize);
    const capacity = options.capacity ?? 65536;
    if (!Number.isSafeInteger(capacity) || capacity < 1 || capacity > 2 ** 24) {
      throw new EngineInputError(`capacity must be an integer from 1 to ${2 ** 24}, got ${capacity}`);
    }
    this.pageSize = 1n << BigInt(shift);
    this.#shift = BigInt(shift);
    this.capacity = capacity;
    this.#set = arena.allocate(HEADER_BYTES + capacity * ENTRY_BYTES, 64);
    this.#out = arena.allocate(capacity * ENTRY_BYTES + ENTRY_BYTES, 64);
    exports.rangeSetInit(this.#set.offset, capacity, shift);
  }

  get size(): number {
    this.#check();
    return new Uint32Array(this.#set.arena.memory.buffer, this.#set.offset, 1)[0]!;
  }

  /**
   * Adds a mapping of [iova, iova + length) whose first page is bit
   * `bitmapOffset` of the migration bitmap. Merges with a neighbour adjacent in
   * both IOVA and bitmap. Throws if it overlaps a mapping or the set is full.
   */
  insert(mapping: Mapping): void {
    this.#checkRange('insert', mapping.iova, mapping.length);
    const offset = mapping.bitmapOffset;
    if (typeof offset !== 'bigint' || offset < 0n || offset + (mapping.length >> this.#shift) > U64_LIMIT) {
      throw new EngineInputError(`bitmapOffset must be a non-negative bigint, got ${String(offset)}`);
    }
    const status = this.exports.rangeSetInsert(this.#set.offset, mapping.iova, mapping.length, offset);
    if (status === OVERLAP) {
      throw new EngineInputError(
        `mapping [0x${mapping.iova.toString(16)}, +0x${mapping.length.toString(16)}) overlaps an existing mapping`,
      );
    }
    if (status === FULL) throw new EngineInputError(`the IOVA range set is full (${this.capacity} mappings)`);
  }

  /**
   * Removes [iova, iova + length), splitting mappings that stick out of it.
   * Returns the parts removed (with their bitmap offsets), in IOVA order.
   */
  remove(iova: bigint, length: bigint): Mapping[] {
    this.#checkRange('remove', iova, length);
    const n = this.exports.rangeSetRemove(this.#set.offset, iova, length, this.#out.offset, this.capacity + 1);
    if (n === FULL) {
      throw new EngineInputError(`removing would split a mapping but the IOVA range set is full (${this.capacity} mappings)`);
    }
    return this.#read(this.#out, n);
  }

  /** The parts of mappings inside [iova, iova + length), clipped to it, in IOVA order. */
  overlapping(iova: bigint, length: bigint): Mapping[] {
    this.#checkRange('overlapping', iova, length);
    const n = this.exports.rangeSetOverlapping(this.#set.offset, iova, length, this.#out.offset, this.capacity + 1);
    return this.#read(this.#out, n);
  }

  /** The bitmap bit of the page holding `iova`, or undefined when it is not mapped. */
  lookup(iova: bigint): bigint | undefined {
    this.#check();
    if (typeof iova !== 'bigint' || iova < 0n || iova >= U64_LIMIT) {
      throw new EngineInputError(`iova must be a bigint in [0, 2^64), got ${String(iova)}`);
    }
    const bit = this.exports.rangeSetLookup(this.#set.offset, BigInt.asIntN(64, iova));
    return bit < 0n ? undefined : bit;
  }

  /** Every mapping, in IOVA order. */
  list(): Mapping[] {
    this.#check();
    const count = this.size;
    const words = new BigUint64Array(this.#set.arena.memory.buffer, this.#set.offset + HEADER_BYTES, count * 3);
    const out: Mapping[] = [];
    for (let i = 0; i < count; i++) {
      out.push({ iova: words[i * 3]!, length: words[i * 3 + 1]!, bitmapOffset: words[i * 3 + 2]! });
    }
    return out;
  }

  /** Frees its space in the arena. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#set.free();
    this.#out.free();
  }

  #read(buffer: ArenaBuffer, n: number): Mapping[] {
    const words = new BigUint64Array(buffer.arena.memory.buffer, buffer.offset, n * 3);
    const out: Mapping[] = [];
    for (let i = 0; i < n; i++) out.push({ iova: words[i * 3]!, length: words[i * 3 + 1]!, bitmapOffset: words[i * 3 + 2]! });
    return out;
  }

  #check(): void {
    if (this.#closed) throw new EngineInputError('the IOVA range set is closed');
  }

  #checkRange(what: string, iova: bigint, length: bigint): void {
    this.#check();
    if (typeof iova !== 'bigint' || typeof length !== 'bigint') {
      throw new EngineInputError(`${what}: iova and length must be bigints`);
    }
    if (iova < 0n || length <= 0n || iova + length > U64_LIMIT) {
      throw new EngineInputError(
        `${what}: [0x${iova.toString(16)}, +0x${length.toString(16)}) must be non-empty and end at or below 2^64`,
      );
    }
    if (iova % this.pageSize !== 0n || length % this.pageSize !== 0n) {
      throw new EngineInputError(
        `${what}: iova 0x${iova.toString(16)} and length 0x${length.toString(16)} must be multiples of the page size 0x${this.pageSize.toString(16)}`,
      );
    }
  }
}
