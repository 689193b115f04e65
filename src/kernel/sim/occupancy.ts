// The distinct pages that a number of independent, uniformly placed page writes hit, drawn
// directly in ascending order: the cost is the pages hit, not the writes (a 32 TiB guest writes
// about 7e8 pages while its first round is sent, and hits about half as many distinct pages).
//
// Exact, not an approximation: with r writes left, uniform over the m pages not yet passed, the
// offset J of the next page hit has P(J >= s) = (1 - s/m)^r, drawn by inversion; the writes that
// land on that page are Binomial(r, 1/(m - J)) conditioned on at least one; the rest are uniform
// over the pages after it. So the pages come out with the joint law of r uniform writes.
import binomial from '@stdlib/random-base-binomial';
import type { Xoshiro128 } from './prng.js';

/**
 * Up to this mean, writes per page (or block) are drawn by inversion, exactly, in O(mean) steps;
 * above it, by rejection from stdlib's binomial. That one (0.2.2) is biased: measured here, its
 * mean is about 0.45 high at n p = 25 to 40 (z = 30 over 2e5 draws), fine at n p = 5e4. Above
 * 600 writes on 32 pages every page is hit but with probability 1e-7, so the bias only moves a
 * fraction of a write to the pages after it; the hot set's share (the other use) is off by a
 * write in millions.
 */
const INVERSION_MEAN = 600;

/** Binomial(n, p) draws from a seeded generator (the binomial's own algorithm, stdlib's). */
export class BinomialSampler {
  private readonly draw: (n: number, p: number) => number;

  constructor(private readonly random: Xoshiro128) {
    this.draw = binomial.factory({ prng: () => random.nextFloat() });
  }

  /** Binomial(n, p) for a whole n >= 0 (below 2^53) and p in [0, 1]. */
  sample(n: number, p: number): number {
    if (n === 0 || p <= 0) return 0;
    if (p >= 1) return n;
    return this.draw(n, p);
  }

  /** Binomial(n, p) conditioned on at least one success (n >= 1, 0 < p <= 1). */
  sampleAtLeastOne(n: number, p: number): number {
    if (p >= 1 || n === 1) return n;
    const mean = n * p;
    if (mean > INVERSION_MEAN) {
      // P(0) < e^-600: the rejection loop does not turn.
      for (;;) {
        const value = this.draw(n, p);
        if (value > 0) return value;
      }
    }
    // Inversion from 1: P(1 | >= 1) = n p (1-p)^(n-1) / (1 - (1-p)^n), then the pmf's ratio.
    const logQ = Math.log1p(-p);
    const none = -Math.expm1(n * logQ); // 1 - (1-p)^n, exact for tiny p
    let probability = (mean * Math.exp((n - 1) * logQ)) / none;
    const ratio = p / (1 - p);
    const u = this.random.nextFloat();
    let cumulative = probability;
    let value = 1;
    while (u >= cumulative && value < n) {
      probability *= ((n - value) / (value + 1)) * ratio;
      value++;
      cumulative += probability;
    }
    return value;
  }
}

/**
 * Calls `visit(page)` for each distinct page in [0, pages) hit by `writes` independent writes,
 * each uniform over those pages, in ascending order. Returns how many pages it visited.
 */
export function forEachDistinctPage(random: Xoshiro128, binomial: BinomialSampler, pages: number, writes: number, visit: (page: number) => void): number {
  let visited = 0;
  forEachDistinctWord(random, binomial, pages, writes, (first, mask) => {
    for (let bits = mask; bits !== 0; bits &= bits - 1) {
      visit(first + 31 - Math.clz32(bits & -bits));
      visited++;
    }
  });
  return visited;
}

/**
 * The same draw, 32 pages at a time: `visit(first, mask)` for each block of pages
 * [first, first + 32) that some write hit (first a multiple of 32), bit i of `mask` set when page
 * first + i was hit, blocks in ascending order. The first block hit is drawn by inversion of
 * P(no write in the next s blocks) = (1 - 32 s / m)^r, the writes on it are Binomial(r, 32/m')
 * given at least one, and those writes fall uniformly in the block (five random bits each, until
 * every page of the block is hit). So a dense draw costs its blocks, a sparse one its pages.
 */
export function forEachDistinctWord(random: Xoshiro128, binomial: BinomialSampler, pages: number, writes: number, visit: (first: number, mask: number) => void): void {
  let left = writes;
  let position = 0; // first page not passed: a multiple of 32
  while (left > 0) {
    const remaining = pages - position;
    const blocks = Math.ceil(remaining / 32);
    const u = 1 - random.nextFloat(); // (0, 1]
    let skip = Math.floor((remaining * -Math.expm1(Math.log(u) / left)) / 32);
    if (skip >= blocks) skip = blocks - 1;
    const first = position + skip * 32;
    const size = Math.min(32, pages - first);
    const from = pages - first; // pages from this block on
    const hits = from === size ? left : binomial.sampleAtLeastOne(left, size / from);
    let mask = 0;
    if (size === 32) {
      for (let placed = 0; placed < hits && mask !== -1; ) {
        let bits = random.nextUint32();
        for (let i = 0; i < 6 && placed < hits; i++, placed++) {
          mask |= 1 << (bits & 31);
          bits >>>= 5;
        }
      }
    } else {
      const full = (1 << size) - 1;
      for (let placed = 0; placed < hits && mask !== full; placed++) mask |= 1 << random.nextBelow(size);
    }
    visit(first, mask >>> 0);
    left -= hits;
    position = first + size;
  }
}

/** E[distinct pages] of `writes` uniform writes into `pages` pages: n(1 - (1 - 1/n)^k). */
export function expectedDistinctPages(pages: number, writes: number): number {
  return -pages * Math.expm1(writes * Math.log1p(-1 / pages));
}

/**
 * Var[distinct pages] of `writes` uniform writes into `pages` pages (the occupancy problem):
 * n(n-1)(1-2/n)^k + n(1-1/n)^k - n^2(1-1/n)^2k, written without the cancellation that loses
 * it for large n: n^2 a^2 expm1(k log1p(-1/(n-1)^2)) - n a expm1(k log1p(-1/(n-1))), a = (1-1/n)^k.
 */
export function distinctPagesVariance(pages: number, writes: number): number {
  const n = pages;
  if (n <= 1) return 0;
  const a = Math.exp(writes * Math.log1p(-1 / n));
  return n * n * a * a * Math.expm1(writes * Math.log1p(-1 / ((n - 1) * (n - 1)))) - n * a * Math.expm1(writes * Math.log1p(-1 / (n - 1)));
}
