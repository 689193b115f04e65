// Merge: OR k source bitmaps into a destination, optionally counting the bits
// that were newly set (what QEMU's set_dirty_lebitmap counts).
import { lowMask, loadWord, popcountPair, sourceAt, storeWord, wordAddress } from "./bits";

// With more than two sources the destination is processed in blocks so it stays
// in L1 while each source streams through once.
const MERGE_BLOCK_BYTES: usize = 8192;

// Blocks of the journaled variant (see mergeCountJournaled).
export const JOURNAL_BLOCK_WORDS: u32 = 512;

export function or1(d: usize, a: usize, bytes: usize): void {
  let i: usize = 0;
  const end64 = bytes & ~(<usize>63);
  for (; i < end64; i += 64) {
    const p = d + i;
    const q = a + i;
    v128.store(p, v128.or(v128.load(p), v128.load(q)));
    v128.store(p, v128.or(v128.load(p, 16), v128.load(q, 16)), 16);
    v128.store(p, v128.or(v128.load(p, 32), v128.load(q, 32)), 32);
    v128.store(p, v128.or(v128.load(p, 48), v128.load(q, 48)), 48);
  }
  for (; i < bytes; i += 8) store<u64>(d + i, load<u64>(d + i) | load<u64>(a + i));
}

function or2(d: usize, a: usize, b: usize, bytes: usize): void {
  let i: usize = 0;
  const end64 = bytes & ~(<usize>63);
  for (; i < end64; i += 64) {
    const p = d + i;
    const q = a + i;
    const r = b + i;
    v128.store(p, v128.or(v128.load(p), v128.or(v128.load(q), v128.load(r))));
    v128.store(p, v128.or(v128.load(p, 16), v128.or(v128.load(q, 16), v128.load(r, 16))), 16);
    v128.store(p, v128.or(v128.load(p, 32), v128.or(v128.load(q, 32), v128.load(r, 32))), 32);
    v128.store(p, v128.or(v128.load(p, 48), v128.or(v128.load(q, 48), v128.load(r, 48))), 48);
  }
  for (; i < bytes; i += 8) store<u64>(d + i, load<u64>(d + i) | load<u64>(a + i) | load<u64>(b + i));
}

// Counts the bits of four vectors with a carry-save adder first: three
// popcount pairs instead of four (WASM SIMD has no 64-bit lane popcount, and
// lane extract + i64.popcnt beat i8x16.popcnt in V8).
@inline function countFour(n0: v128, n1: v128, n2: v128, n3: v128): u64 {
  const u = v128.xor(n0, n1);
  const sum3 = v128.xor(u, n2);
  const carry3 = v128.or(v128.and(n0, n1), v128.and(u, n2));
  const sum = v128.xor(sum3, n3);
  const carry = v128.and(sum3, n3);
  // carry3 and carry each count twice.
  return popcountPair(sum) + ((popcountPair(v128.or(carry3, carry)) + popcountPair(v128.and(carry3, carry))) << 1);
}

function or1Count(d: usize, a: usize, bytes: usize): u64 {
  let c0: u64 = 0, c1: u64 = 0;
  let i: usize = 0;
  const end64 = bytes & ~(<usize>63);
  for (; i < end64; i += 64) {
    const p = d + i;
    const q = a + i;
    const o0 = v128.load(p), o1 = v128.load(p, 16), o2 = v128.load(p, 32), o3 = v128.load(p, 48);
    const s0 = v128.load(q), s1 = v128.load(q, 16), s2 = v128.load(q, 32), s3 = v128.load(q, 48);
    v128.store(p, v128.or(o0, s0));
    v128.store(p, v128.or(o1, s1), 16);
    v128.store(p, v128.or(o2, s2), 32);
    v128.store(p, v128.or(o3, s3), 48);
    c1 += countFour(v128.andnot(s0, o0), v128.andnot(s1, o1), v128.andnot(s2, o2), v128.andnot(s3, o3));
  }
  for (; i < bytes; i += 8) {
    const old = load<u64>(d + i);
    const s = load<u64>(a + i);
    store<u64>(d + i, old | s);
    c0 += popcnt<u64>(s & ~old);
  }
  return c0 + c1;
}

function or2Count(d: usize, a: usize, b: usize, bytes: usize): u64 {
  let c0: u64 = 0, c1: u64 = 0;
  let i: usize = 0;
  const end64 = bytes & ~(<usize>63);
  for (; i < end64; i += 64) {
    const p = d + i;
    const q = a + i;
    const r = b + i;
    const o0 = v128.load(p), o1 = v128.load(p, 16), o2 = v128.load(p, 32), o3 = v128.load(p, 48);
    const s0 = v128.or(v128.load(q), v128.load(r));
    const s1 = v128.or(v128.load(q, 16), v128.load(r, 16));
    const s2 = v128.or(v128.load(q, 32), v128.load(r, 32));
    const s3 = v128.or(v128.load(q, 48), v128.load(r, 48));
    v128.store(p, v128.or(o0, s0));
    v128.store(p, v128.or(o1, s1), 16);
    v128.store(p, v128.or(o2, s2), 32);
    v128.store(p, v128.or(o3, s3), 48);
    c1 += countFour(v128.andnot(s0, o0), v128.andnot(s1, o1), v128.andnot(s2, o2), v128.andnot(s3, o3));
  }
  for (; i < bytes; i += 8) {
    const old = load<u64>(d + i);
    const s = load<u64>(a + i) | load<u64>(b + i);
    store<u64>(d + i, old | s);
    c0 += popcnt<u64>(s & ~old);
  }
  return c0 + c1;
}

// OR sources [first, first+k) of the list over `bytes` bytes at byte offset `offset`.
function mergeBytes(dst: usize, list: usize, k: u32, offset: usize, bytes: usize, count: bool): u64 {
  let total: u64 = 0;
  if (k == 0 || bytes == 0) return 0;
  if (k <= 2) {
    const a = sourceAt(list, 0) + offset;
    if (k == 1) {
      if (count) return or1Count(dst + offset, a, bytes);
      or1(dst + offset, a, bytes);
      return 0;
    }
    const b = sourceAt(list, 1) + offset;
    if (count) return or2Count(dst + offset, a, b, bytes);
    or2(dst + offset, a, b, bytes);
    return 0;
  }
  // Newly set bits are counted by the pass that sets them, so per-pass counts add up.
  for (let at: usize = 0; at < bytes; at += MERGE_BLOCK_BYTES) {
    const n = bytes - at < MERGE_BLOCK_BYTES ? bytes - at : MERGE_BLOCK_BYTES;
    const d = dst + offset + at;
    let i: u32 = 0;
    for (; i + 1 < k; i += 2) {
      const a = sourceAt(list, i) + offset + at;
      const b = sourceAt(list, i + 1) + offset + at;
      if (count) total += or2Count(d, a, b, n);
      else or2(d, a, b, n);
    }
    if (i < k) {
      const a = sourceAt(list, i) + offset + at;
      if (count) total += or1Count(d, a, n);
      else or1(d, a, n);
    }
  }
  return total;
}

// The last word of a range may be partial: only its low `lastBits` bits belong.
function mergeTail(dst: usize, list: usize, k: u32, word: u32, lastBits: u32): u64 {
  const mask = lowMask(lastBits);
  let union: u64 = 0;
  for (let i: u32 = 0; i < k; i++) union |= loadWord(sourceAt(list, i), word);
  union &= mask;
  const old = loadWord(dst, word);
  storeWord(dst, word, old | union);
  return popcnt<u64>(union & ~old);
}

export function mergeRange(dst: usize, list: usize, k: u32, firstWord: u32, wordCount: u32, lastBits: u32, count: bool): u64 {
  if (wordCount == 0 || k == 0) return 0;
  const partial = lastBits < 64;
  const full = partial ? wordCount - 1 : wordCount;
  let total = mergeBytes(dst, list, k, <usize>firstWord << 3, <usize>full << 3, count);
  if (partial) total += mergeTail(dst, list, k, firstWord + full, lastBits);
  return total;
}

// dst |= OR of the k sources listed at `sourceList` (u32 addresses), over words
// [firstWord, firstWord + wordCount); the last word keeps only `lastBits` bits.
export function merge(dst: usize, sourceList: usize, k: u32, firstWord: u32, wordCount: u32, lastBits: u32): void {
  mergeRange(dst, sourceList, k, firstWord, wordCount, lastBits, false);
}

// Same as merge, returning the number of destination bits that went from 0 to 1.
export function mergeCount(dst: usize, sourceList: usize, k: u32, firstWord: u32, wordCount: u32, lastBits: u32): f64 {
  return <f64>mergeRange(dst, sourceList, k, firstWord, wordCount, lastBits, true);
}

// Journal word layout: (count << 23) | (blocksDone << 1) | undoValid, stored
// atomically so a reader never sees a count without its block number.
const JOURNAL_COUNT_SHIFT: u64 = 23;
@inline export function journalBlocks(packed: u64): u32 {
  return <u32>((packed >> 1) & ((<u64>1 << 22) - 1));
}
@inline export function journalCount(packed: u64): u64 {
  return packed >> JOURNAL_COUNT_SHIFT;
}
@inline export function journalUndoValid(packed: u64): bool {
  return (packed & 1) != 0;
}
@inline export function journalPack(count: u64, blocks: u32, undoValid: bool): u64 {
  return (count << JOURNAL_COUNT_SHIFT) | (<u64>blocks << 1) | <u64>undoValid;
}

// A journaled pass over blocks of JOURNAL_BLOCK_WORDS words, so that a worker
// that dies part-way can be replaced and the pass finished exactly. Per block:
// copy the destination block to the undo area (it stays in L1, and the kernel
// then reads the block from there), mark the undo valid, run the kernel in
// place, then commit (count, next block). A replacement first restores a block
// whose undo is valid, then goes on from the committed block. Counted blocks are
// never counted again and a half-written block is never counted from a mixed state.

// Reads the journal and puts back the block in progress from its undo copy if
// the dead worker had started it. Returns the journal word (count, blocks done).
@inline export function journalResume(journal: usize, undo: usize, dst: usize, firstWord: u32, wordCount: u32): u64 {
  const packed = atomic.load<u64>(journal);
  const done = journalBlocks(packed);
  if (journalUndoValid(packed)) {
    const word = firstWord + done * JOURNAL_BLOCK_WORDS;
    const words = min<u32>(JOURNAL_BLOCK_WORDS, wordCount - done * JOURNAL_BLOCK_WORDS);
    memory.copy(wordAddress(dst, word), undo, <usize>words << 3);
  }
  return packed;
}

@inline export function journalBegin(journal: usize, undo: usize, dst: usize, word: u32, words: u32, count: u64, block: u32): void {
  memory.copy(undo, wordAddress(dst, word), <usize>words << 3);
  atomic.store<u64>(journal, journalPack(count, block, true));
}

@inline export function journalCommit(journal: usize, count: u64, blocksDone: u32): void {
  atomic.store<u64>(journal, journalPack(count, blocksDone, false));
}

// Merge-and-count that a replacement worker finishes exactly after the first
// one died part-way (see journalBegin). `undo` holds JOURNAL_BLOCK_WORDS words.
// `faultAfterBlock` >= 0 is a test hook: stop half-way through merging that
// block and return -1, as a worker killed at that point would leave things.
export function mergeCountJournaled(
  dst: usize, sourceList: usize, k: u32, firstWord: u32, wordCount: u32, lastBits: u32,
  undo: usize, journal: usize, faultAfterBlock: i32,
): f64 {
  if (wordCount == 0 || k == 0) return 0;
  const blocks = (wordCount + JOURNAL_BLOCK_WORDS - 1) / JOURNAL_BLOCK_WORDS;
  const packed = journalResume(journal, undo, dst, firstWord, wordCount);
  let count = journalCount(packed);
  for (let b = journalBlocks(packed); b < blocks; b++) {
    const word = firstWord + b * JOURNAL_BLOCK_WORDS;
    const words = min<u32>(JOURNAL_BLOCK_WORDS, wordCount - b * JOURNAL_BLOCK_WORDS);
    const bits = b == blocks - 1 ? lastBits : 64;
    journalBegin(journal, undo, dst, word, words, count, b);
    if (<i32>b == faultAfterBlock) {
      mergeRange(dst, sourceList, k, word, words >>> 1, 64, false);
      return -1;
    }
    count += mergeRange(dst, sourceList, k, word, words, bits, true);
    journalCommit(journal, count, b + 1);
  }
  return <f64>count;
}
