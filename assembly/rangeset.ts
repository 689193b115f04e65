// The IOVA range set: disjoint mappings [iova, iova + length), each with the
// bit of the migration bitmap where its first page lands, kept sorted in one
// array. Lookups are binary searches; an insert or remove moves the tail with
// memory.copy, which for tens of thousands of 24-byte entries is a few
// microseconds and keeps lookups cache-friendly.
//
// Layout at `set`: u32 count, u32 capacity, u32 pageShift, u32 reserved, then
// entries of three u64: iova, length, bitmapOffset (in pages/bits).
// Ranges are handled by their last byte (iova + length - 1) so that a mapping
// that ends at 2^64 does not overflow.

const HEADER: usize = 16;
const ENTRY: usize = 24;

export const RANGE_OVERLAP: i32 = -1;
export const RANGE_FULL: i32 = -2;

@inline function entryAt(set: usize, i: u32): usize {
  return set + HEADER + <usize>i * ENTRY;
}
@inline function countOf(set: usize): u32 {
  return load<u32>(set);
}
@inline function iovaOf(e: usize): u64 {
  return load<u64>(e);
}
@inline function lastOf(e: usize): u64 {
  return load<u64>(e) + load<u64>(e, 8) - 1;
}

function write(e: usize, iova: u64, length: u64, offset: u64): void {
  store<u64>(e, iova);
  store<u64>(e, length, 8);
  store<u64>(e, offset, 16);
}

// Opens a gap of `n` entries at i, or closes one of -n.
function shift(set: usize, i: u32, n: i32): void {
  const count = countOf(set);
  memory.copy(entryAt(set, <u32>(<i32>i + n)), entryAt(set, i), <usize>(count - i) * ENTRY);
  store<u32>(set, <u32>(<i32>count + n));
}

export function rangeSetInit(set: usize, capacity: u32, pageShift: u32): void {
  store<u32>(set, 0);
  store<u32>(set, capacity, 4);
  store<u32>(set, pageShift, 8);
  store<u32>(set, 0, 12);
}

export function rangeSetBytes(capacity: u32): usize {
  return HEADER + <usize>capacity * ENTRY;
}

// First entry whose last byte is >= iova (entries are disjoint and sorted, so
// their last bytes are sorted too).
function firstEndingAtOrAfter(set: usize, iova: u64): u32 {
  let lo: u32 = 0;
  let hi = countOf(set);
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (lastOf(entryAt(set, mid)) < iova) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Inserts [iova, iova + length) at bitmap bit `offset`, merging with a
// neighbour that is adjacent both in IOVA and in the bitmap. Returns the entry
// count, RANGE_OVERLAP if it overlaps a mapping, RANGE_FULL if no room.
export function rangeSetInsert(set: usize, iova: u64, length: u64, offset: u64): i32 {
  const pageShift = <u64>load<u32>(set, 8);
  const last = iova + length - 1;
  const count = countOf(set);
  const i = firstEndingAtOrAfter(set, iova);
  if (i < count && iovaOf(entryAt(set, i)) <= last) return RANGE_OVERLAP;
  const pages = length >> pageShift;
  let joinLeft = false;
  let joinRight = false;
  if (i > 0) {
    const left = entryAt(set, i - 1);
    joinLeft = lastOf(left) + 1 == iova && load<u64>(left, 16) + (load<u64>(left, 8) >> pageShift) == offset;
  }
  if (i < count && last != <u64>-1) {
    const right = entryAt(set, i);
    joinRight = iovaOf(right) == last + 1 && offset + pages == load<u64>(right, 16);
  }
  if (joinLeft && joinRight) {
    const left = entryAt(set, i - 1);
    const right = entryAt(set, i);
    store<u64>(left, load<u64>(left, 8) + length + load<u64>(right, 8), 8);
    shift(set, i + 1, -1);
  } else if (joinLeft) {
    const left = entryAt(set, i - 1);
    store<u64>(left, load<u64>(left, 8) + length, 8);
  } else if (joinRight) {
    const right = entryAt(set, i);
    write(right, iova, load<u64>(right, 8) + length, offset);
  } else {
    if (count >= load<u32>(set, 4)) return RANGE_FULL;
    shift(set, i, 1);
    write(entryAt(set, i), iova, length, offset);
  }
  return <i32>countOf(set);
}

// Writes into out (triples of u64) the parts of mappings inside
// [iova, iova + length), clipped, with their bitmap offsets adjusted. Returns
// how many there are; only the first `capacity` are written.
export function rangeSetOverlapping(set: usize, iova: u64, length: u64, out: usize, capacity: u32): u32 {
  const pageShift = <u64>load<u32>(set, 8);
  const last = iova + length - 1;
  const count = countOf(set);
  let n: u32 = 0;
  for (let i = firstEndingAtOrAfter(set, iova); i < count; i++) {
    const e = entryAt(set, i);
    const start = iovaOf(e);
    if (start > last) break;
    if (n < capacity) {
      const lo = start > iova ? start : iova;
      const eLast = lastOf(e);
      const hi = eLast < last ? eLast : last;
      write(out + <usize>n * ENTRY, lo, hi - lo + 1, load<u64>(e, 16) + ((lo - start) >> pageShift));
    }
    n++;
  }
  return n;
}

// Removes [iova, iova + length) from the set, splitting mappings that stick out
// on either side. Writes the removed parts into out as rangeSetOverlapping
// does (out must hold as many as overlap). Returns how many parts were
// removed, or RANGE_FULL if a split needs a slot the set does not have.
export function rangeSetRemove(set: usize, iova: u64, length: u64, out: usize, capacity: u32): i32 {
  const pageShift = <u64>load<u32>(set, 8);
  const last = iova + length - 1;
  const count = countOf(set);
  const i = firstEndingAtOrAfter(set, iova);
  let j = i;
  while (j < count && iovaOf(entryAt(set, j)) <= last) j++;
  if (j == i) return 0;
  const first = entryAt(set, i);
  const final = entryAt(set, j - 1);
  const keepLeft = iovaOf(first) < iova;
  const keepRight = lastOf(final) > last;
  const kept = (keepLeft ? 1 : 0) + (keepRight ? 1 : 0);
  const removed = j - i;
  if (<i32>count - <i32>removed + kept > <i32>load<u32>(set, 4)) return RANGE_FULL;
  const parts = rangeSetOverlapping(set, iova, length, out, capacity);
  // Remainders, computed before the array moves.
  const leftIova = iovaOf(first);
  const leftOffset = load<u64>(first, 16);
  const rightLast = lastOf(final);
  const rightIova = last + 1;
  const rightOffset = load<u64>(final, 16) + ((rightIova - iovaOf(final)) >> pageShift);
  shift(set, j, kept - <i32>removed);
  let at = i;
  if (keepLeft) {
    write(entryAt(set, at), leftIova, iova - leftIova, leftOffset);
    at++;
  }
  if (keepRight) write(entryAt(set, at), rightIova, rightLast - rightIova + 1, rightOffset);
  return <i32>parts;
}

// The bitmap bit of the page holding `iova`, or -1 when it is not mapped.
export function rangeSetLookup(set: usize, iova: u64): i64 {
  const i = firstEndingAtOrAfter(set, iova);
  if (i >= countOf(set)) return -1;
  const e = entryAt(set, i);
  if (iovaOf(e) > iova) return -1;
  return <i64>(load<u64>(e, 16) + ((iova - iovaOf(e)) >> <u64>load<u32>(set, 8)));
}
