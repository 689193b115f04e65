// An arena handing out aligned buffers in the one shared memory: bitmaps the
// kernel's ioctls write straight into, scan outputs, the range set. Buffers
// never move; the memory grows when the free space runs out, which belongs at
// setup, never in the hot path (fresh pages cost ~30 ms per 32 MiB to touch).
import { EngineInputError } from './errors.js';
import { ARENA_START, MAXIMUM_BYTES, PAGE_BYTES } from './layout.js';

/** A buffer in the shared memory. Views over it are what the kernel ioctls write into. */
export class ArenaBuffer {
  #freed = false;
  constructor(
    readonly arena: Arena,
    /** Byte offset in the shared memory (what the WASM kernels take as an address). */
    readonly offset: number,
    readonly byteLength: number,
  ) {}

  /** A fresh view (the memory's buffer object changes when it grows). */
  bytes(): Uint8Array {
    this.#check();
    return new Uint8Array(this.arena.memory.buffer, this.offset, this.byteLength);
  }

  /** The buffer as little-endian u64 words (bitmap words). */
  words(): BigUint64Array {
    this.#check();
    return new BigUint64Array(this.arena.memory.buffer, this.offset, Math.floor(this.byteLength / 8));
  }

  u32(): Uint32Array {
    this.#check();
    return new Uint32Array(this.arena.memory.buffer, this.offset, Math.floor(this.byteLength / 4));
  }

  get freed(): boolean {
    return this.#freed;
  }

  free(): void {
    if (this.#freed) return;
    this.#freed = true;
    this.arena.release(this.offset, this.byteLength);
  }

  #check(): void {
    if (this.#freed) throw new EngineInputError(`buffer at offset ${this.offset} was freed`);
  }
}

export interface AllocateOptions {
  /** Write every page now so the first kernel pass does not pay for page faults (default true). */
  touch?: boolean;
}

interface Segment {
  start: number;
  end: number;
}

export class Arena {
  /** Free segments, sorted and disjoint. */
  #free: Segment[] = [{ start: ARENA_START, end: MAXIMUM_BYTES }];
  #allocated = 0;

  constructor(readonly memory: WebAssembly.Memory) {}

  /** Bytes currently handed out. */
  get allocatedBytes(): number {
    return this.#allocated;
  }

  /**
   * A zeroed buffer of `bytes` bytes whose offset is a multiple of `align`
   * (a power of two, default 64: a cache line, and whole u64 words for bitmaps).
   */
  allocate(bytes: number, align = 64, options: AllocateOptions = {}): ArenaBuffer {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) {
      throw new EngineInputError(`allocation size must be a positive integer, got ${bytes}`);
    }
    if (!Number.isSafeInteger(align) || align < 8 || (align & (align - 1)) !== 0 || align > PAGE_BYTES) {
      throw new EngineInputError(`alignment must be a power of two from 8 to ${PAGE_BYTES}, got ${align}`);
    }
    // Keep every buffer a whole number of 64-byte lines so neighbours stay aligned.
    const size = Math.ceil(bytes / 64) * 64;
    for (let i = 0; i < this.#free.length; i++) {
      const segment = this.#free[i]!;
      const start = Math.ceil(segment.start / align) * align;
      if (start + size > segment.end) continue;
      const pieces: Segment[] = [];
      if (start > segment.start) pieces.push({ start: segment.start, end: start });
      if (start + size < segment.end) pieces.push({ start: start + size, end: segment.end });
      this.#ensure(start + size);
      this.#free.splice(i, 1, ...pieces);
      this.#allocated += size;
      const buffer = new ArenaBuffer(this, start, bytes);
      // Reused space holds old data; fresh space is zero but not yet faulted in.
      if (options.touch !== false) buffer.bytes().fill(0);
      else new Uint8Array(this.memory.buffer, start, bytes).fill(0);
      return buffer;
    }
    throw new EngineInputError(
      `cannot allocate ${bytes} bytes aligned to ${align}: the shared memory is limited to 4 GiB ` +
        `and ${this.#allocated} bytes are in use`,
    );
  }

  /** Returns a buffer's space (ArenaBuffer.free calls this). */
  release(offset: number, byteLength: number): void {
    const size = Math.ceil(byteLength / 64) * 64;
    this.#allocated -= size;
    const segment = { start: offset, end: offset + size };
    let i = 0;
    while (i < this.#free.length && this.#free[i]!.start < segment.start) i++;
    this.#free.splice(i, 0, segment);
    // Coalesce with the neighbours.
    if (i + 1 < this.#free.length && this.#free[i + 1]!.start === segment.end) {
      segment.end = this.#free[i + 1]!.end;
      this.#free.splice(i + 1, 1);
    }
    if (i > 0 && this.#free[i - 1]!.end === segment.start) {
      this.#free[i - 1]!.end = segment.end;
      this.#free.splice(i, 1);
    }
  }

  #ensure(end: number): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    this.memory.grow(Math.ceil((end - have) / PAGE_BYTES));
  }
}
