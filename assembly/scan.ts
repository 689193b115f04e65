// Scans: set bits to page indices, set bits to runs (start, length); popcount,
// clear and set of bit ranges; single-bit test and set.
// Scans write into a small output chunk the host reuses; when it fills they stop
// and leave the next cursor in resultCursor, so the host resumes from there.
import { highMask, loadWord, lowMask, onesFrom, storeWord, wordAddress } from "./bits";
import { resultCursor, setResultCursor, tables } from "./state";
import { POSITIONS } from "./tables";

// A word emits at most 64 indices, and the unconditional stores below run up
// to 8 entries past the last real one.
export const INDEX_SLACK: u32 = 72;

// Scans are bound by branch mispredictions and stores, not bandwidth: write 4
// or 8 candidates unconditionally for sparse words, and for dense words one
// table entry (8 positions) per byte, chosen by the word's popcount.
@inline function emitWord(x: u64, base: u32, out: usize, n: u32): u32 {
  const count = <u32>popcnt<u64>(x);
  let p = out + (<usize>n << 2);
  if (count <= 4) {
    store<u32>(p, base + <u32>ctz<u64>(x)); x &= x - 1;
    store<u32>(p, base + <u32>ctz<u64>(x), 4); x &= x - 1;
    store<u32>(p, base + <u32>ctz<u64>(x), 8); x &= x - 1;
    store<u32>(p, base + <u32>ctz<u64>(x), 12);
  } else if (count <= 8) {
    store<u32>(p, base + <u32>ctz<u64>(x)); x &= x - 1;
    store<u32>(p, base + <u32>ctz<u64>(x), 4); x &= x - 1;
    store<u32>(p, base + <u32>ctz<u64>(x), 8); x &= x - 1;
    store<u32>(p, base + <u32>ctz<u64>(x), 12); x &= x - 1;
    store<u32>(p, base + <u32>ctz<u64>(x), 16); x &= x - 1;
    store<u32>(p, base + <u32>ctz<u64>(x), 20); x &= x - 1;
    store<u32>(p, base + <u32>ctz<u64>(x), 24); x &= x - 1;
    store<u32>(p, base + <u32>ctz<u64>(x), 28);
  } else {
    const table = tables + POSITIONS;
    for (let i: u32 = 0; i < 8; i++) {
      const byte = <u32>(x >>> (<u64>i << 3)) & 255;
      const positions = i16x8.extend_low_i8x16_u(v128.load64_zero(table + (<usize>byte << 3)));
      const offset = i32x4.splat(base + (i << 3));
      v128.store(p, i32x4.add(i32x4.extend_low_i16x8_u(positions), offset));
      v128.store(p, i32x4.add(i32x4.extend_high_i16x8_u(positions), offset), 16);
      p += <usize>popcnt<u32>(byte) << 2;
    }
  }
  return n + count;
}

// Writes the index of every set bit in [cursor, end) to out (u32 each), at most
// `capacity` (>= INDEX_SLACK) entries; returns how many, and leaves in
// resultCursor where to resume (end when finished). Stops only at word boundaries.
export function scanIndices(bitmap: usize, cursor: u32, end: u32, out: usize, capacity: u32): u32 {
  if (cursor >= end) {
    setResultCursor(end);
    return 0;
  }
  let n: u32 = 0;
  const lastWord = (end - 1) >>> 6;
  const tailMask = lowMask(((end - 1) & 63) + 1);
  let w = cursor >>> 6;
  let head = loadWord(bitmap, w) & highMask(cursor & 63);
  if (w == lastWord) head &= tailMask;
  n = emitWord(head, w << 6, out, n);
  w++;
  const zero = i64x2.splat(0);
  while (w < lastWord) {
    const blockWords = min<u32>(64, lastWord - w);
    // A mask of the nonzero words of the block: the loop below then branches
    // once per dirty word instead of once per word.
    let nonzero: u64 = 0;
    let i: u32 = 0;
    const block = wordAddress(bitmap, w);
    // Eight words at a time: the word flags narrowed twice to one 16-bit lane
    // each, then one bitmask (1 op per word instead of 2).
    for (; i + 8 <= blockWords; i += 8) {
      const p = block + (<usize>i << 3);
      const f01 = i16x8.narrow_i32x4_s(i64x2.ne(v128.load(p), zero), i64x2.ne(v128.load(p, 16), zero));
      const f23 = i16x8.narrow_i32x4_s(i64x2.ne(v128.load(p, 32), zero), i64x2.ne(v128.load(p, 48), zero));
      nonzero |= <u64>i16x8.bitmask(i8x16.narrow_i16x8_s(f01, f23)) << <u64>i;
    }
    for (; i < blockWords; i++) {
      if (load<u64>(block + (<usize>i << 3)) != 0) nonzero |= <u64>1 << <u64>i;
    }
    while (nonzero != 0) {
      const j = <u32>ctz<u64>(nonzero);
      if (capacity - n < INDEX_SLACK) {
        setResultCursor((w + j) << 6);
        return n;
      }
      n = emitWord(loadWord(bitmap, w + j), (w + j) << 6, out, n);
      nonzero &= nonzero - 1;
    }
    w += blockWords;
  }
  if (w == lastWord) {
    const x = loadWord(bitmap, w) & tailMask;
    if (x != 0) {
      if (capacity - n < INDEX_SLACK) {
        setResultCursor(w << 6);
        return n;
      }
      n = emitWord(x, w << 6, out, n);
    }
  }
  setResultCursor(end);
  return n;
}

// ---- runs ----
// State of a run scan, carried across words and across the blocks of the fused
// merge+count+scan.
let runOpen: bool = false;
let runStart: u32 = 0;
let runCount: u32 = 0;
let runEnd: u32 = 0;
let runLimit: u32 = 0;

export function beginRuns(end: u32, limit: u32): void {
  runOpen = false;
  runStart = 0;
  runCount = 0;
  runEnd = end;
  runLimit = limit > end ? limit : end;
}

export function runsWritten(): u32 {
  return runCount;
}

@inline function emitRun(out: usize, capacity: u32, start: u32, stop: u32): bool {
  if (runCount >= capacity) return false;
  const p = out + (<usize>runCount << 3);
  store<u32>(p, start);
  store<u32>(p, stop - start, 4);
  runCount++;
  return true;
}

// The runs of one (masked) word at bit `base`. False when the output filled
// (resultCursor is then set).
@inline function runsWord(x: u64, base: u32, out: usize, capacity: u32): bool {
  if (runOpen) {
    if (x == <u64>-1) return true;
    const z = <u32>ctz<u64>(~x);
    runOpen = false;
    if (!emitRun(out, capacity, runStart, base + z)) {
      setResultCursor(runStart);
      return false;
    }
    x &= <u64>-1 << <u64>z;
  }
  while (x != 0) {
    const s = <u32>ctz<u64>(x);
    const rest = ~x & (<u64>-1 << <u64>s);
    if (rest == 0) {
      runOpen = true;
      runStart = base + s;
      break;
    }
    const e = <u32>ctz<u64>(rest);
    if (!emitRun(out, capacity, base + s, base + e)) {
      setResultCursor(base + s);
      return false;
    }
    x &= <u64>-1 << <u64>e;
  }
  return true;
}

// Runs in words [firstWord, lastWord] (inclusive) with the first and last word
// masked (peeled off), word by word rather than run by run: with c the last
// bit of the previous word, a word's run starts are x & ~(x << 1 | c) and its
// run ends (one past the last bit) ~x & (x << 1 | c), both emitted with ctz
// loops whose first four stores are unconditional, so a word costs a few
// mispredictions at most whatever its runs. An all-ones word inside a run has
// neither and costs nothing. Starts of a word are written before its ends; an
// end writes the length of the oldest open run (slot m) from the start already
// there. The words between the peeled ones go by blocks of 64 with a mask of
// their nonzero words: a zero word ends an open run and starts none.
// Near the end of the output (fewer than RUN_SLACK runs free) the exact
// run-by-run path takes over, so a full output stops at the same run.
// Returns false when the output filled (resultCursor is then set).
const RUN_SLACK: u32 = 34;

export function runsInWords(
  bitmap: usize, firstWord: u32, lastWord: u32, headMask: u64, tailMask: u64, out: usize, capacity: u32,
): bool {
  if (firstWord == lastWord) return runsAt(bitmap, firstWord, headMask & tailMask, out, capacity);
  if (!runsAt(bitmap, firstWord, headMask, out, capacity)) return false;
  let previous = firstWord;
  let w = firstWord + 1;
  const zero = i64x2.splat(0);
  while (w < lastWord) {
    const blockWords = min<u32>(64, lastWord - w);
    const block = wordAddress(bitmap, w);
    let nonzero: u64 = 0;
    let i: u32 = 0;
    for (; i + 8 <= blockWords; i += 8) {
      const p = block + (<usize>i << 3);
      const f01 = i16x8.narrow_i32x4_s(i64x2.ne(v128.load(p), zero), i64x2.ne(v128.load(p, 16), zero));
      const f23 = i16x8.narrow_i32x4_s(i64x2.ne(v128.load(p, 32), zero), i64x2.ne(v128.load(p, 48), zero));
      nonzero |= <u64>i16x8.bitmask(i8x16.narrow_i16x8_s(f01, f23)) << <u64>i;
    }
    for (; i < blockWords; i++) {
      if (load<u64>(block + (<usize>i << 3)) != 0) nonzero |= <u64>1 << <u64>i;
    }
    if (nonzero != 0 && capacity - runCount >= RUN_SLACK) {
      // Word-wise: the state lives in locals and in the output itself.
      let m = runCount;
      let n = m;
      let carry: u64 = 0;
      if (runOpen) {
        if (w != previous + 1) {
          // The run open after `previous` ends at the zero word after it.
          emitRun(out, capacity, runStart, (previous + 1) << 6);
          runOpen = false;
          m = runCount;
          n = m;
        } else {
          store<u32>(out + (<usize>m << 3), runStart);
          n = m + 1;
          carry = 1;
        }
      }
      while (nonzero != 0 && capacity - n >= RUN_SLACK) {
        const word = w + <u32>ctz<u64>(nonzero);
        if (word != previous + 1 && carry != 0) {
          const q = out + (<usize>m << 3);
          store<u32>(q, ((previous + 1) << 6) - load<u32>(q), 4);
          m++;
          carry = 0;
        }
        const x = loadWord(bitmap, word);
        const before = x << 1 | carry;
        const base = word << 6;
        let starts = x & ~before;
        let ends = ~x & before;
        carry = x >>> 63;
        const startCount = <u32>popcnt<u64>(starts);
        const endCount = <u32>popcnt<u64>(ends);
        let p = out + (<usize>n << 3);
        store<u32>(p, base + <u32>ctz<u64>(starts)); starts &= starts - 1;
        store<u32>(p, base + <u32>ctz<u64>(starts), 8); starts &= starts - 1;
        store<u32>(p, base + <u32>ctz<u64>(starts), 16); starts &= starts - 1;
        store<u32>(p, base + <u32>ctz<u64>(starts), 24); starts &= starts - 1;
        while (starts != 0) {
          p += 8;
          store<u32>(p, base + <u32>ctz<u64>(starts), 24);
          starts &= starts - 1;
        }
        n += startCount;
        let q = out + (<usize>m << 3);
        store<u32>(q, base + <u32>ctz<u64>(ends) - load<u32>(q), 4); ends &= ends - 1;
        store<u32>(q, base + <u32>ctz<u64>(ends) - load<u32>(q, 8), 12); ends &= ends - 1;
        store<u32>(q, base + <u32>ctz<u64>(ends) - load<u32>(q, 16), 20); ends &= ends - 1;
        store<u32>(q, base + <u32>ctz<u64>(ends) - load<u32>(q, 24), 28); ends &= ends - 1;
        while (ends != 0) {
          q += 8;
          store<u32>(q, base + <u32>ctz<u64>(ends) - load<u32>(q, 24), 28);
          ends &= ends - 1;
        }
        m += endCount;
        previous = word;
        nonzero &= nonzero - 1;
      }
      runCount = m;
      runOpen = n > m;
      if (runOpen) runStart = load<u32>(out + (<usize>m << 3));
    }
    // What is left of the block (near the end of the output): run by run.
    while (nonzero != 0) {
      const word = w + <u32>ctz<u64>(nonzero);
      if (word != previous + 1 && !closeRun(previous, out, capacity)) return false;
      if (!runsWord(loadWord(bitmap, word), word << 6, out, capacity)) return false;
      previous = word;
      nonzero &= nonzero - 1;
    }
    w += blockWords;
  }
  if (lastWord != previous + 1 && !closeRun(previous, out, capacity)) return false;
  return runsAt(bitmap, lastWord, tailMask, out, capacity);
}

// One peeled (masked) word, run by run.
@inline function runsAt(bitmap: usize, word: u32, mask: u64, out: usize, capacity: u32): bool {
  return runsWord(loadWord(bitmap, word) & mask, word << 6, out, capacity);
}

// A run still open after word `previous` ends at the zero word that follows it.
@inline function closeRun(previous: u32, out: usize, capacity: u32): bool {
  if (!runOpen) return true;
  runOpen = false;
  if (!emitRun(out, capacity, runStart, (previous + 1) << 6)) {
    setResultCursor(runStart);
    return false;
  }
  return true;
}

// Closes a run still open at the end of the range, then follows the last run
// past the end up to the limit when it reaches the end: a shard's scan may read
// past its end to finish its last run once every shard has been merged.
// False when the output is full.
export function finishRuns(bitmap: usize, out: usize, capacity: u32): bool {
  if (runOpen) {
    runOpen = false;
    if (!emitRun(out, capacity, runStart, runEnd)) {
      setResultCursor(runStart);
      return false;
    }
  }
  if (runLimit > runEnd && runCount > 0) {
    // Only the last run can reach the end.
    const p = out + (<usize>(runCount - 1) << 3);
    const start = load<u32>(p);
    const length = load<u32>(p, 4);
    if (start + length == runEnd) store<u32>(p, length + onesFrom(bitmap, runEnd, runLimit), 4);
  }
  setResultCursor(runEnd);
  return true;
}

// Writes the runs of set bits that start in [cursor, end) as (start, length)
// u32 pairs, at most `capacity` runs; a run reaching `end` is followed up to
// `limit` (pass limit = end to clip). Returns how many; resultCursor is where to
// resume: the start of the first run not written, or end when finished.
export function scanRuns(bitmap: usize, cursor: u32, end: u32, limit: u32, out: usize, capacity: u32): u32 {
  beginRuns(end, limit);
  if (cursor >= end) {
    setResultCursor(end);
    return 0;
  }
  const ok = runsInWords(bitmap, cursor >>> 6, (end - 1) >>> 6, highMask(cursor & 63), lowMask(((end - 1) & 63) + 1), out, capacity);
  if (ok) finishRuns(bitmap, out, capacity);
  return runCount;
}

export function lastCursor(): u32 {
  return resultCursor;
}

// ---- ranges and single bits ----

export function popcountRange(bitmap: usize, start: u32, end: u32): f64 {
  if (start >= end) return 0;
  const w0 = start >>> 6;
  const w1 = (end - 1) >>> 6;
  const head = highMask(start & 63);
  const tail = lowMask(((end - 1) & 63) + 1);
  if (w0 == w1) return <f64>popcnt<u64>(loadWord(bitmap, w0) & head & tail);
  let c0: u64 = popcnt<u64>(loadWord(bitmap, w0) & head) + popcnt<u64>(loadWord(bitmap, w1) & tail);
  let c1: u64 = 0, c2: u64 = 0, c3: u64 = 0;
  let p = wordAddress(bitmap, w0 + 1);
  const stop = wordAddress(bitmap, w1);
  // Plain i64 loads, eight per turn: measured faster in V8 than v128 loads with
  // lane extracts (about 49 vs 33 GB/s in cache), the loop overhead amortized.
  for (; p + 64 <= stop; p += 64) {
    c0 += popcnt<u64>(load<u64>(p)) + popcnt<u64>(load<u64>(p, 32));
    c1 += popcnt<u64>(load<u64>(p, 8)) + popcnt<u64>(load<u64>(p, 40));
    c2 += popcnt<u64>(load<u64>(p, 16)) + popcnt<u64>(load<u64>(p, 48));
    c3 += popcnt<u64>(load<u64>(p, 24)) + popcnt<u64>(load<u64>(p, 56));
  }
  for (; p < stop; p += 8) c0 += popcnt<u64>(load<u64>(p));
  return <f64>(c0 + c1 + c2 + c3);
}

export function clearRange(bitmap: usize, start: u32, end: u32): void {
  if (start >= end) return;
  const w0 = start >>> 6;
  const w1 = (end - 1) >>> 6;
  const head = highMask(start & 63);
  const tail = lowMask(((end - 1) & 63) + 1);
  if (w0 == w1) {
    storeWord(bitmap, w0, loadWord(bitmap, w0) & ~(head & tail));
    return;
  }
  storeWord(bitmap, w0, loadWord(bitmap, w0) & ~head);
  storeWord(bitmap, w1, loadWord(bitmap, w1) & ~tail);
  memory.fill(wordAddress(bitmap, w0 + 1), 0, <usize>(w1 - w0 - 1) << 3);
}

// Clears [start, end); returns how many of its bits were set. One pass: a
// round's hand-over counts the pages it clears while their words are loaded.
export function clearRangeCounting(bitmap: usize, start: u32, end: u32): f64 {
  if (start >= end) return 0;
  const w0 = start >>> 6;
  const w1 = (end - 1) >>> 6;
  const head = highMask(start & 63);
  const tail = lowMask(((end - 1) & 63) + 1);
  if (w0 == w1) {
    const x = loadWord(bitmap, w0);
    storeWord(bitmap, w0, x & ~(head & tail));
    return <f64>popcnt<u64>(x & head & tail);
  }
  const first = loadWord(bitmap, w0);
  const last = loadWord(bitmap, w1);
  storeWord(bitmap, w0, first & ~head);
  storeWord(bitmap, w1, last & ~tail);
  let c0: u64 = popcnt<u64>(first & head) + popcnt<u64>(last & tail);
  let c1: u64 = 0;
  let p = wordAddress(bitmap, w0 + 1);
  const stop = wordAddress(bitmap, w1);
  const zero = i64x2.splat(0);
  for (; p + 32 <= stop; p += 32) {
    const a = load<u64>(p), b = load<u64>(p, 8), c = load<u64>(p, 16), d = load<u64>(p, 24);
    c0 += popcnt<u64>(a) + popcnt<u64>(c);
    c1 += popcnt<u64>(b) + popcnt<u64>(d);
    v128.store(p, zero);
    v128.store(p, zero, 16);
  }
  for (; p < stop; p += 8) {
    c0 += popcnt<u64>(load<u64>(p));
    store<u64>(p, 0);
  }
  return <f64>(c0 + c1);
}

// Sets [start, end); returns the number of bits that were clear.
export function setRange(bitmap: usize, start: u32, end: u32): f64 {
  if (start >= end) return 0;
  const before = popcountRange(bitmap, start, end);
  const w0 = start >>> 6;
  const w1 = (end - 1) >>> 6;
  const head = highMask(start & 63);
  const tail = lowMask(((end - 1) & 63) + 1);
  if (w0 == w1) {
    storeWord(bitmap, w0, loadWord(bitmap, w0) | (head & tail));
  } else {
    storeWord(bitmap, w0, loadWord(bitmap, w0) | head);
    storeWord(bitmap, w1, loadWord(bitmap, w1) | tail);
    memory.fill(wordAddress(bitmap, w0 + 1), 0xff, <usize>(w1 - w0 - 1) << 3);
  }
  return <f64>(end - start) - before;
}

export function testBit(bitmap: usize, bit: u32): u32 {
  return <u32>(loadWord(bitmap, bit >>> 6) >>> <u64>(bit & 63)) & 1;
}

// Sets the bit; returns its previous value.
export function testAndSetBit(bitmap: usize, bit: u32): u32 {
  const word = bit >>> 6;
  const old = loadWord(bitmap, word);
  storeWord(bitmap, word, old | (<u64>1 << <u64>(bit & 63)));
  return <u32>(old >>> <u64>(bit & 63)) & 1;
}

// Clears the bit; returns its previous value.
export function testAndClearBit(bitmap: usize, bit: u32): u32 {
  const word = bit >>> 6;
  const old = loadWord(bitmap, word);
  storeWord(bitmap, word, old & ~(<u64>1 << <u64>(bit & 63)));
  return <u32>(old >>> <u64>(bit & 63)) & 1;
}

// Length of the run of ones from `bit`, up to `limit` (the host joins runs
// across shard boundaries with it).
export function runLengthFrom(bitmap: usize, bit: u32, limit: u32): u32 {
  return onesFrom(bitmap, bit, limit);
}
