// Resample between page sizes.
// Geometry, in units of the finer page: destination bit d covers [d*Rd, (d+1)*Rd),
// source bit s covers [s*Rs + delta, (s+1)*Rs + delta), where one of Rs, Rd is 1
// and the other 2^|shift| (shift = log2(Rs / Rd)). Every destination bit in
// [dstStart, dstEnd) is set when a set source bit in [srcStart, srcEnd) overlaps
// it: a coarse source sets every fine page it covers, a fine source ORs into the
// coarse page holding it. delta needs no alignment.
import { fetchBits, highMask, loadWord, lowMask, storeWord } from "./bits";
import { JOURNAL_BLOCK_WORDS, journalBegin, journalBlocks, journalCommit, journalCount, journalResume } from "./merge";
import { EXPAND_16, EXPAND_32, EXPAND_8, expandBits } from "./tables";
import { tables } from "./state";

@inline function sourceBit(src: usize, s: i64, start: i64, end: i64): u64 {
  if (s < start || s >= end) return 0;
  return (loadWord(src, <u32>(s >>> 6)) >>> <u64>(s & 63)) & 1;
}

// Gathers bit 0 of each r-bit field of x, r = 2^k, into the low 64/r bits,
// after ORing each field into its bit 0.
@inline function reduceFields(x: u64, k: u32): u64 {
  if (k == 1) {
    x = (x | (x >>> 1)) & 0x5555555555555555;
    x = (x | (x >>> 1)) & 0x3333333333333333;
    x = (x | (x >>> 2)) & 0x0f0f0f0f0f0f0f0f;
    x = (x | (x >>> 4)) & 0x00ff00ff00ff00ff;
    x = (x | (x >>> 8)) & 0x0000ffff0000ffff;
    return (x | (x >>> 16)) & 0xffffffff;
  }
  if (k == 2) {
    x |= x >>> 1;
    x = (x | (x >>> 2)) & 0x1111111111111111;
    x = (x | (x >>> 3)) & 0x0303030303030303;
    x = (x | (x >>> 6)) & 0x000f000f000f000f;
    x = (x | (x >>> 12)) & 0x000000ff000000ff;
    return (x | (x >>> 24)) & 0xffff;
  }
  if (k == 3) {
    x |= x >>> 4;
    x |= x >>> 2;
    x = (x | (x >>> 1)) & 0x0101010101010101;
    // Every product term lands on its own bit, so no carries: the top byte gathers the 8 bits.
    return (x * 0x0102040810204080) >>> 56;
  }
  if (k == 4) {
    x |= x >>> 8;
    x |= x >>> 4;
    x |= x >>> 2;
    x = (x | (x >>> 1)) & 0x0001000100010001;
    return (x * 0x1000200040008000) >>> 60;
  }
  // k == 5
  return <u64>((x & 0xffffffff) != 0) | (<u64>((x >>> 32) != 0) << 1);
}

@inline function orWord(dst: usize, j: u32, m: u64, w0: u32, w1: u32, head: u64, tail: u64): u64 {
  if (j == w0) m &= head;
  if (j == w1) m &= tail;
  if (m == 0) return 0;
  const old = loadWord(dst, j);
  storeWord(dst, j, old | m);
  return popcnt<u64>(m & ~old);
}

// One loop per geometry, so the per-word work has no case analysis: words
// [j0, j1] of the destination; w0/w1 are the window's edge words.

function sameSize(dst: usize, j0: u32, j1: u32, w0: u32, w1: u32, head: u64, tail: u64, src: usize, s0: i64, s1: i64, delta: i64): u64 {
  let count: u64 = 0;
  for (let j = j0; j <= j1; j++) {
    count += orWord(dst, j, fetchBits(src, (<i64>j << 6) - delta, s0, s1), w0, w1, head, tail);
  }
  return count;
}

// A coarse source, r = 2^k < 64 destination bits per source bit: 64/r source
// bits widen into one word; the phase (how far into a source bit the word
// starts) is the same for every word. For k >= 3 the per + 1 source bits a
// word needs index a table built for this call's phase in `work` (at most 512
// u64), so the loop does one load and no variable shift of the result (V8's
// variable i64 shifts halved its speed).
function coarseNarrow(dst: usize, j0: u32, j1: u32, w0: u32, w1: u32, head: u64, tail: u64, src: usize, s0: i64, s1: i64, k: u32, delta: i64, work: usize): u64 {
  let count: u64 = 0;
  const per = <u32>64 >>> k;
  const low = lowMask(per);
  const x0 = (<i64>j0 << 6) - delta;
  const phase = <u64>(x0 & ((<i64>1 << <i64>k) - 1));
  const carry = phase == 0 ? 0 : highMask(64 - <u32>phase);
  let s = x0 >> <i64>k;
  if (k >= 3) {
    const table = tables + (k == 3 ? EXPAND_8 : k == 4 ? EXPAND_16 : EXPAND_32);
    const entries = <u32>2 << per;
    for (let i: u32 = 0; i < entries; i++) {
      const widened = load<u64>(table + (<usize>(i & <u32>low) << 3)) >>> phase;
      store<u64>(work + (<usize>i << 3), (i >>> per) != 0 ? widened | carry : widened);
    }
    const index = lowMask(per + 1);
    // Words whose bits come from inside the source window and that are not the
    // destination's edge words go through a loop with no tests; the rest
    // through the general one.
    const sBase = s;
    const perI = <i64>per;
    let fastFirst = <i64>j0 + (s0 > sBase ? (s0 - sBase + perI - 1) / perI : 0);
    let fastLast = <i64>j0 + (s1 - 64 - sBase >= 0 ? (s1 - 64 - sBase) / perI : -1);
    if (fastFirst <= <i64>w0) fastFirst = <i64>w0 + 1;
    if (fastLast >= <i64>w1) fastLast = <i64>w1 - 1;
    if (fastLast > <i64>j1) fastLast = <i64>j1;
    if (fastFirst < <i64>j0) fastFirst = <i64>j0;
    if (fastFirst > fastLast) {
      fastFirst = <i64>j1 + 1;
      fastLast = <i64>j1;
    }
    const a = <u32>fastFirst;
    for (let j = j0; j < a; j++, s += per) {
      count += orWord(dst, j, load<u64>(work + (<usize>(fetchBits(src, s, s0, s1) & index) << 3)), w0, w1, head, tail);
    }
    const b = <u32>fastLast;
    // A zero load (at least 57 source bits: the shift drops up to 7) leaves the next 56 / per
    // words untouched, each needing per + 1 of those bits: skip them (a sparse coarse source,
    // the common case, then costs a load per 56 source bits instead of one per word).
    const skip = <u32>56 / per;
    for (let j = a; j <= b && j >= a; j++, s += per) {
      const g = load<u64>(src + <usize>(s >>> 3)) >>> <u64>(s & 7);
      if (g == 0) {
        const n = min<u32>(skip, b - j + 1) - 1;
        j += n;
        s += <i64>n * <i64>per;
        continue;
      }
      const m = load<u64>(work + (<usize>(g & index) << 3));
      if (m == 0) continue;
      const p = dst + (<usize>j << 3);
      const old = load<u64>(p);
      store<u64>(p, old | m);
      count += popcnt<u64>(m & ~old);
    }
    for (let j = b + 1; j <= j1 && j > b; j++, s += per) {
      count += orWord(dst, j, load<u64>(work + (<usize>(fetchBits(src, s, s0, s1) & index) << 3)), w0, w1, head, tail);
    }
    return count;
  }
  for (let j = j0; j <= j1; j++, s += per) {
    const g = s >= s0 && s + 64 <= s1
      ? load<u64>(src + <usize>(s >>> 3)) >>> <u64>(s & 7)
      : fetchBits(src, s, s0, s1);
    let m = expandBits(g & low, k) >>> phase;
    if (((g >>> <u64>per) & 1) != 0) m |= carry;
    count += orWord(dst, j, m, w0, w1, head, tail);
  }
  return count;
}

// A coarse source, r >= 64: each destination word takes one or two source bits.
function coarseWide(dst: usize, j0: u32, j1: u32, w0: u32, w1: u32, head: u64, tail: u64, src: usize, s0: i64, s1: i64, k: u32, delta: i64): u64 {
  let count: u64 = 0;
  for (let j = j0; j <= j1; j++) {
    const x0 = (<i64>j << 6) - delta;
    const s = x0 >> <i64>k;
    const phase = <u64>(x0 & ((<i64>1 << <i64>k) - 1));
    const first = (<u64>1 << <u64>k) - phase; // destination bits left in source bit s
    let m: u64 = sourceBit(src, s, s0, s1) ? lowMask(first >= 64 ? 64 : <u32>first) : 0;
    if (first < 64 && sourceBit(src, s + 1, s0, s1)) m |= highMask(<u32>first);
    count += orWord(dst, j, m, w0, w1, head, tail);
  }
  return count;
}

// A fine source, r = 2^k source bits per destination bit.
function fine(dst: usize, j0: u32, j1: u32, w0: u32, w1: u32, head: u64, tail: u64, src: usize, s0: i64, s1: i64, k: u32, delta: i64): u64 {
  let count: u64 = 0;
  const r = <i64>1 << <i64>k;
  for (let j = j0; j <= j1; j++) {
    const p0 = ((<i64>j << 6) << <i64>k) - delta;
    let m: u64 = 0;
    if (k <= 5) {
      const per = <u32>64 >>> k;
      const chunks = <u32>1 << k;
      for (let c: u32 = 0; c < chunks; c++) {
        const x = fetchBits(src, p0 + (<i64>c << 6), s0, s1);
        if (x != 0) m |= reduceFields(x, k) << <u64>(c * per);
      }
    } else {
      for (let i: u32 = 0; i < 64; i++) {
        const p = p0 + <i64>i * r;
        if (p + r <= s0 || p >= s1) continue;
        for (let at: i64 = 0; at < r; at += 64) {
          if (fetchBits(src, p + at, s0, s1) != 0) {
            m |= <u64>1 << <u64>i;
            break;
          }
        }
      }
    }
    count += orWord(dst, j, m, w0, w1, head, tail);
  }
  return count;
}

function resampleWords(dst: usize, j0: u32, j1: u32, w0: u32, w1: u32, head: u64, tail: u64, src: usize, s0: i64, s1: i64, shift: i32, delta: i64, work: usize): u64 {
  if (shift == 0) return sameSize(dst, j0, j1, w0, w1, head, tail, src, s0, s1, delta);
  if (shift > 0 && shift < 6) return coarseNarrow(dst, j0, j1, w0, w1, head, tail, src, s0, s1, <u32>shift, delta, work);
  if (shift >= 6) return coarseWide(dst, j0, j1, w0, w1, head, tail, src, s0, s1, <u32>shift, delta);
  return fine(dst, j0, j1, w0, w1, head, tail, src, s0, s1, <u32>(-shift), delta);
}

// Returns the number of destination bits newly set. `work` is 4 KiB of the
// calling thread's own (a per-call table). With a journal (nonzero),
// the destination goes block by block through the undo area as in
// mergeCountJournaled, so a replacement worker finishes a dead one's call exactly.
export function resample(
  dst: usize, dstStart: u32, dstEnd: u32, src: usize, srcStart: u32, srcEnd: u32, shift: i32, delta: f64,
  work: usize, undo: usize, journal: usize, faultAfterBlock: i32,
): f64 {
  if (dstStart >= dstEnd) return 0;
  const d = <i64>delta;
  const s0 = <i64>srcStart;
  const s1 = <i64>srcEnd;
  const w0 = dstStart >>> 6;
  const w1 = (dstEnd - 1) >>> 6;
  const head = highMask(dstStart & 63);
  const tail = lowMask(((dstEnd - 1) & 63) + 1);
  if (journal == 0) return <f64>resampleWords(dst, w0, w1, w0, w1, head, tail, src, s0, s1, shift, d, work);
  const words = w1 - w0 + 1;
  const blocks = (words + JOURNAL_BLOCK_WORDS - 1) / JOURNAL_BLOCK_WORDS;
  const packed = journalResume(journal, undo, dst, w0, words);
  let count = journalCount(packed);
  for (let b = journalBlocks(packed); b < blocks; b++) {
    const first = w0 + b * JOURNAL_BLOCK_WORDS;
    const n = min<u32>(JOURNAL_BLOCK_WORDS, words - b * JOURNAL_BLOCK_WORDS);
    journalBegin(journal, undo, dst, first, n, count, b);
    if (<i32>b == faultAfterBlock) {
      resampleWords(dst, first, first + (n >>> 1), w0, w1, head, tail, src, s0, s1, shift, d, work);
      return -1;
    }
    count += resampleWords(dst, first, first + n - 1, w0, w1, head, tail, src, s0, s1, shift, d, work);
    journalCommit(journal, count, b + 1);
  }
  return <f64>count;
}
