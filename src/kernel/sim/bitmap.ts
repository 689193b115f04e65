// Bit operations for the simulated kernel's dirty state and for callers' bitmaps.
//
// Dirty state must scale to a 1 TiB guest at 4 KiB pages (2^28 bits, 32 MiB), so it is a
// bitmap of 32-bit words allocated lazily in chunks, never an object per page. Bit i of a
// caller's bitmap is bit (i % 8) of byte (i / 8): the little-endian u64 layout of the uAPI.
import type { ChunkOwner, KernelMemory, SharedChunk, SharedRegion } from './kernel-memory.js';

/** Index of the lowest set bit of a non-zero 32-bit word. */
export function lowestSetBit(word: number): number {
  return 31 - Math.clz32(word & -word);
}

/** Number of set bits of a 32-bit word. */
export function popcount32(word: number): number {
  let v = word - ((word >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** A mask of bits [from, to) of one 32-bit word (0 <= from < to <= 32). */
function wordMask(from: number, to: number): number {
  const high = to === 32 ? 0xffffffff : (1 << to) - 1;
  return (high & ~((1 << from) - 1)) >>> 0;
}

/**
 * A bitmap of `size` bits stored as lazily allocated chunks of 2^18 bits (32 KiB): a range
 * never written costs nothing, so a 1 TiB guest that dirties 1% of its memory in one place
 * holds only the chunks it touched.
 */
export class ChunkedBitmap implements ChunkOwner {
  static readonly CHUNK_SHIFT = 18;
  static readonly CHUNK_BITS = 1 << ChunkedBitmap.CHUNK_SHIFT;
  static readonly CHUNK_WORDS = ChunkedBitmap.CHUNK_BITS / 32;

  private readonly chunks = new Map<number, Uint32Array>();
  /** The chunks placed in a memory the process shared (see kernel-memory.ts), by index. */
  private readonly shared = new Map<number, SharedChunk>();
  /** Chunk indexes in ascending order, rebuilt after a chunk is added. */
  private sortedKeys: number[] | undefined = [];

  /** `memory`: where new chunks may be placed (a kernel's dirty state); without it, own arrays. */
  constructor(readonly size: number, private readonly memory?: KernelMemory) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bitmap size ${size} is not a safe integer`);
  }

  /** Chunks held in a shared process memory (for inspection and tests). */
  get sharedChunks(): number {
    return this.shared.size;
  }

  /** Bytes held by the allocated chunks. */
  get allocatedBytes(): number {
    return this.chunks.size * ChunkedBitmap.CHUNK_WORDS * 4;
  }

  private chunk(index: number): Uint32Array {
    // Bulk writers go in ascending order: the last chunk is most often the next one too.
    if (index === this.lastIndex) return this.lastChunk!;
    let chunk = this.chunks.get(index);
    if (!chunk) {
      const placed = this.memory?.allocate(this, ChunkedBitmap.CHUNK_WORDS);
      if (placed) this.shared.set(index, placed);
      chunk = placed?.words ?? new Uint32Array(ChunkedBitmap.CHUNK_WORDS);
      this.chunks.set(index, chunk);
      this.sortedKeys = undefined;
    }
    this.lastIndex = index;
    this.lastChunk = chunk;
    return chunk;
  }

  private lastIndex = -1;
  private lastChunk: Uint32Array | undefined;

  /** Indexes of allocated chunks overlapping bits [from, to), ascending. */
  private chunksIn(from: number, to: number): number[] {
    if (!this.sortedKeys) this.sortedKeys = [...this.chunks.keys()].sort((a, b) => a - b);
    const first = Math.floor(from / ChunkedBitmap.CHUNK_BITS);
    const last = Math.floor((to - 1) / ChunkedBitmap.CHUNK_BITS);
    const keys = this.sortedKeys;
    let low = 0;
    let high = keys.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (keys[middle]! < first) low = middle + 1;
      else high = middle;
    }
    const result: number[] = [];
    for (let index = low; index < keys.length && keys[index]! <= last; index++) result.push(keys[index]!);
    return result;
  }

  test(bit: number): boolean {
    const chunk = this.chunks.get(Math.floor(bit / ChunkedBitmap.CHUNK_BITS));
    if (!chunk) return false;
    const inChunk = bit % ChunkedBitmap.CHUNK_BITS;
    return ((chunk[inChunk >>> 5]! >>> (inChunk & 31)) & 1) === 1;
  }

  set(bit: number): void {
    const chunk = this.chunk(Math.floor(bit / ChunkedBitmap.CHUNK_BITS));
    const inChunk = bit % ChunkedBitmap.CHUNK_BITS;
    chunk[inChunk >>> 5]! |= 1 << (inChunk & 31);
  }

  /** Sets bits [from, to). */
  setRange(from: number, to: number): void {
    let bit = Math.max(0, from);
    const end = Math.min(to, this.size);
    // One bit, or a run inside one word: the workload's common case, without the general loop.
    if (bit < end && Math.floor(bit / 32) === Math.floor((end - 1) / 32)) {
      const chunk = this.chunk(Math.floor(bit / ChunkedBitmap.CHUNK_BITS));
      const local = bit % ChunkedBitmap.CHUNK_BITS;
      chunk[local >>> 5]! |= wordMask(local & 31, (local & 31) + end - bit);
      return;
    }
    while (bit < end) {
      const chunkIndex = Math.floor(bit / ChunkedBitmap.CHUNK_BITS);
      const chunkStart = chunkIndex * ChunkedBitmap.CHUNK_BITS;
      const chunkEnd = Math.min(end, chunkStart + ChunkedBitmap.CHUNK_BITS);
      applyToWords(this.chunk(chunkIndex), bit - chunkStart, chunkEnd - chunkStart, true);
      bit = chunkEnd;
    }
  }

  /**
   * Sets bits [from, to) and returns how many of them were clear before: a ground truth's
   * "newly dirty", a word at a time.
   */
  setRangeCountingNew(from: number, to: number): number {
    let bit = Math.max(0, from);
    const end = Math.min(to, this.size);
    if (bit < end && Math.floor(bit / 32) === Math.floor((end - 1) / 32)) {
      const chunk = this.chunk(Math.floor(bit / ChunkedBitmap.CHUNK_BITS));
      const local = bit % ChunkedBitmap.CHUNK_BITS;
      const mask = wordMask(local & 31, (local & 31) + end - bit);
      const old = chunk[local >>> 5]!;
      chunk[local >>> 5] = (old | mask) >>> 0;
      return popcount32((mask & ~old) >>> 0);
    }
    let fresh = 0;
    while (bit < end) {
      const chunkIndex = Math.floor(bit / ChunkedBitmap.CHUNK_BITS);
      const chunkStart = chunkIndex * ChunkedBitmap.CHUNK_BITS;
      const chunkEnd = Math.min(end, chunkStart + ChunkedBitmap.CHUNK_BITS);
      const words = this.chunk(chunkIndex);
      let local = bit - chunkStart;
      const localEnd = chunkEnd - chunkStart;
      while (local < localEnd) {
        const word = local >>> 5;
        const wordEnd = Math.min(localEnd, (word + 1) * 32);
        const mask = wordMask(local & 31, wordEnd - word * 32);
        const old = words[word]!;
        fresh += popcount32((mask & ~old) >>> 0);
        words[word] = (old | mask) >>> 0;
        local = wordEnd;
      }
      bit = chunkEnd;
    }
    return fresh;
  }

  /** Clears bits [from, to); chunks that become empty are kept (they will likely be written again). */
  clearRange(from: number, to: number): void {
    const start = Math.max(0, from);
    const end = Math.min(to, this.size);
    if (start >= end) return;
    // A run inside one word: no chunk list to build.
    if (Math.floor(start / 32) === Math.floor((end - 1) / 32)) {
      const index = Math.floor(start / ChunkedBitmap.CHUNK_BITS);
      const chunk = index === this.lastIndex ? this.lastChunk : this.chunks.get(index);
      if (chunk) {
        const local = start % ChunkedBitmap.CHUNK_BITS;
        chunk[local >>> 5]! &= ~wordMask(local & 31, (local & 31) + end - start);
      }
      return;
    }
    for (const chunkIndex of this.chunksIn(start, end)) {
      const chunkStart = chunkIndex * ChunkedBitmap.CHUNK_BITS;
      const local = Math.max(start, chunkStart) - chunkStart;
      const localEnd = Math.min(end, chunkStart + ChunkedBitmap.CHUNK_BITS) - chunkStart;
      applyToWords(this.chunks.get(chunkIndex)!, local, localEnd, false);
    }
  }

  /**
   * ORs bits [from, to) into `dst` from bit `dstBit` on, 32 at a time, clearing them here when
   * `clear`: what iova_bitmap does, at memory speed rather than a callback per run. Only when
   * both sides are word-aligned (from and dstBit multiples of 32, dst on 4 bytes and whole
   * words); returns false otherwise, and the caller takes the bit-by-run path.
   */
  orInto(from: number, to: number, dst: Uint8Array, dstBit: number, clear: boolean): boolean {
    const start = Math.max(0, from);
    const end = Math.min(to, this.size);
    if (start >= end) return true;
    if (start % 32 !== 0 || dstBit % 32 !== 0 || dst.byteOffset % 4 !== 0 || dst.byteLength % 4 !== 0) return false;
    if (dstBit + (end - start) > dst.byteLength * 8) return false;
    // Int32 views: V8 keeps int32 values unboxed, while uint32 words above 2^31 become doubles.
    const out = new Int32Array(dst.buffer, dst.byteOffset, dst.byteLength >>> 2);
    // Chunks placed in the memory `dst` is in go by WASM, neighbours (adjacent on both sides, as
    // chunks written in ascending order are) in one pass: `pending` is the pass not yet done.
    let region: SharedRegion | undefined;
    let regionHolds = false;
    let pendingDst = 0;
    let pendingSrc = 0;
    let pendingBytes = 0;
    const flush = (): void => {
      if (pendingBytes > 0) region!.orWords(pendingDst, pendingSrc, pendingBytes, clear);
      pendingBytes = 0;
    };
    for (const chunkIndex of this.chunksIn(start, end)) {
      const chunkStart = chunkIndex * ChunkedBitmap.CHUNK_BITS;
      const local = Math.max(start, chunkStart) - chunkStart;
      const localEnd = Math.min(end, chunkStart + ChunkedBitmap.CHUNK_BITS) - chunkStart;
      const fullEnd = localEnd >>> 5;
      const first = (dstBit + (chunkStart + local - start)) >>> 5;
      const firstWord = local >>> 5;
      const words = this.chunks.get(chunkIndex)!;
      const placed = this.shared.get(chunkIndex);
      if (placed && placed.region !== region) {
        flush();
        region = placed.region;
        regionHolds = region.holds(dst);
      }
      if (placed && regionHolds) {
        const dstAt = dst.byteOffset + first * 4;
        const srcAt = placed.block.offset + firstWord * 4;
        const bytes = (fullEnd - firstWord) * 4;
        if (pendingBytes > 0 && dstAt === pendingDst + pendingBytes && srcAt === pendingSrc + pendingBytes) {
          pendingBytes += bytes;
        } else {
          flush();
          pendingDst = dstAt;
          pendingSrc = srcAt;
          pendingBytes = bytes;
        }
      } else {
        flush();
        const chunk = new Int32Array(words.buffer, words.byteOffset, words.length);
        orWords(out, chunk, firstWord, fullEnd, first - firstWord);
        if (clear) chunk.fill(0, firstWord, fullEnd);
      }
      // A partial last word (only the range's last chunk has one), after the whole words.
      const tail = localEnd & 31;
      if (tail !== 0) {
        flush();
        const at = first + (fullEnd - firstWord);
        const mask = wordMask(0, tail);
        const value = (words[fullEnd]! & mask) >>> 0;
        if (value !== 0) {
          out[at] = (out[at]! | value) >>> 0;
          if (clear) words[fullEnd] = (words[fullEnd]! & ~mask) >>> 0;
        }
      }
    }
    flush();
    return true;
  }

  /** Calls `visit(start, end)` for each maximal run of set bits within [from, to), in order. */
  forEachSetRun(from: number, to: number, visit: (start: number, end: number) => void): void {
    const start = Math.max(0, from);
    const end = Math.min(to, this.size);
    if (start >= end) return;
    let runStart = -1;
    let runEnd = -1;
    for (const chunkIndex of this.chunksIn(start, end)) {
      const chunk = this.chunks.get(chunkIndex)!;
      const chunkStart = chunkIndex * ChunkedBitmap.CHUNK_BITS;
      let local = Math.max(start, chunkStart) - chunkStart;
      const localEnd = Math.min(end, chunkStart + ChunkedBitmap.CHUNK_BITS) - chunkStart;
      while (local < localEnd) {
        const word = local >>> 5;
        const wordBase = word * 32;
        const wordEnd = Math.min(localEnd, wordBase + 32);
        let value = chunk[word]!;
        if (value === 0) {
          local = wordEnd;
          continue;
        }
        value = (value & wordMask(local - wordBase, wordEnd - wordBase)) >>> 0;
        while (value !== 0) {
          const low = lowestSetBit(value);
          // Length of the run of ones starting at `low`.
          const zeros = ~(value >>> low);
          const length = zeros === 0 ? 32 - low : Math.min(32 - low, lowestSetBit(zeros));
          const bitStart = chunkStart + wordBase + low;
          if (runStart >= 0 && bitStart === runEnd) {
            runEnd = bitStart + length;
          } else {
            if (runStart >= 0) visit(runStart, runEnd);
            runStart = bitStart;
            runEnd = bitStart + length;
          }
          value = (value & ~wordMask(low, low + length)) >>> 0;
        }
        local = wordEnd;
      }
    }
    if (runStart >= 0) visit(runStart, runEnd);
  }

  /** Number of set bits within [from, to). */
  count(from = 0, to = this.size): number {
    let total = 0;
    this.forEachSetRun(from, to, (start, end) => {
      total += end - start;
    });
    return total;
  }

  /** Drops every chunk (and gives back those placed in a shared memory). */
  reset(): void {
    for (const placed of this.shared.values()) placed.block.free();
    for (const region of new Set([...this.shared.values()].map((placed) => placed.region))) region.owners.delete(this);
    this.shared.clear();
    this.chunks.clear();
    this.lastIndex = -1;
    this.lastChunk = undefined;
    this.sortedKeys = [];
  }

  /** The shared memory `region` goes away: its chunks move into arrays of the bitmap's own, bits unchanged. */
  evict(region: SharedRegion): void {
    for (const [index, placed] of [...this.shared]) {
      if (placed.region !== region) continue;
      const copy = new Uint32Array(placed.words);
      this.chunks.set(index, copy);
      if (this.lastIndex === index) this.lastChunk = copy;
      this.shared.delete(index);
      placed.block.free();
    }
    region.owners.delete(this);
  }
}

/**
 * out[word + delta] |= words[word] for word in [from, to): branch-free over int32 words (a test
 * per word or group mispredicts at migration densities), eight words a turn from one base
 * index. Measured 15-18 ms against 41-53 for the one-word loop over 8 Mi words (1 TiB at 4 KiB
 * pages), on a busy 2-core machine: V8 does not unroll it, and the loop's own bookkeeping was
 * most of its time.
 */
function orWords(out: Int32Array, words: Int32Array, from: number, to: number, delta: number): void {
  let word = from;
  for (; word + 8 <= to; word += 8) {
    const at = word + delta;
    out[at] = out[at]! | words[word]!;
    out[at + 1] = out[at + 1]! | words[word + 1]!;
    out[at + 2] = out[at + 2]! | words[word + 2]!;
    out[at + 3] = out[at + 3]! | words[word + 3]!;
    out[at + 4] = out[at + 4]! | words[word + 4]!;
    out[at + 5] = out[at + 5]! | words[word + 5]!;
    out[at + 6] = out[at + 6]! | words[word + 6]!;
    out[at + 7] = out[at + 7]! | words[word + 7]!;
  }
  for (; word < to; word++) out[word + delta] = out[word + delta]! | words[word]!;
}

/** Sets or clears bits [from, to) of one chunk's words. */
function applyToWords(words: Uint32Array, from: number, to: number, set: boolean): void {
  let local = from;
  while (local < to) {
    const word = local >>> 5;
    const wordEnd = Math.min(to, (word + 1) * 32);
    if ((local & 31) === 0 && wordEnd - local === 32) {
      // Whole words: fill them in one go.
      const lastWord = (to >>> 5) - 1;
      words.fill(set ? 0xffffffff : 0, word, lastWord + 1);
      local = (lastWord + 1) * 32;
      continue;
    }
    const mask = wordMask(local & 31, wordEnd - word * 32);
    if (set) words[word]! |= mask;
    else words[word]! &= ~mask;
    local = wordEnd;
  }
}

/** Sets bits [from, to) of a caller's byte bitmap. */
export function setBits(bytes: Uint8Array, from: number, to: number): void {
  if (to <= from) return;
  let bit = from;
  while (bit < to && (bit & 7) !== 0) {
    bytes[bit >>> 3]! |= 1 << (bit & 7);
    bit++;
  }
  const wholeEnd = to - (to & 7);
  if (bit < wholeEnd) {
    bytes.fill(0xff, bit >>> 3, wholeEnd >>> 3);
    bit = wholeEnd;
  }
  while (bit < to) {
    bytes[bit >>> 3]! |= 1 << (bit & 7);
    bit++;
  }
}

/** Clears bits [from, to) of a caller's byte bitmap. */
export function clearBits(bytes: Uint8Array, from: number, to: number): void {
  if (to <= from) return;
  let bit = from;
  while (bit < to && (bit & 7) !== 0) {
    bytes[bit >>> 3]! &= ~(1 << (bit & 7));
    bit++;
  }
  const wholeEnd = to - (to & 7);
  if (bit < wholeEnd) {
    bytes.fill(0, bit >>> 3, wholeEnd >>> 3);
    bit = wholeEnd;
  }
  while (bit < to) {
    bytes[bit >>> 3]! &= ~(1 << (bit & 7));
    bit++;
  }
}

export function testBit(bytes: Uint8Array, bit: number): boolean {
  return ((bytes[bit >>> 3] ?? 0) >>> (bit & 7) & 1) === 1;
}

/** Number of set bits in a caller's byte bitmap, over bits [from, to). */
export function countBits(bytes: Uint8Array, from = 0, to = bytes.length * 8): number {
  let total = 0;
  let bit = from;
  while (bit < to && (bit & 7) !== 0) {
    if (testBit(bytes, bit)) total++;
    bit++;
  }
  const wholeEnd = to - (to & 7);
  for (let index = bit >>> 3; index < wholeEnd >>> 3; index++) total += popcount32(bytes[index]!);
  bit = Math.max(bit, wholeEnd);
  while (bit < to) {
    if (testBit(bytes, bit)) total++;
    bit++;
  }
  return total;
}
