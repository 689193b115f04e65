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

/** Above this mean, writes per page are drawn by rejection from the binomial rather than by inversion. */
const INVERSION_MEAN = 30;

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
      // P(0) < e^-30: the rejection loop almost never turns.
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
  let left = writes;
  let remaining = pages; // pages from `position` on
  let position = 0;
  let visited = 0;
  while (left > 0) {
    const u = 1 - random.nextFloat(); // (0, 1]
    // Inversion of P(J >= s) = (1 - s/remaining)^left.
    let skip = Math.floor(remaining * -Math.expm1(Math.log(u) / left));
    if (skip >= remaining) skip = remaining - 1;
    const page = position + skip;
    const from = remaining - skip; // pages from the hit page on
    left -= from === 1 ? left : binomial.sampleAtLeastOne(left, 1 / from);
    visit(page);
    visited++;
    position = page + 1;
    remaining = from - 1;
  }
  return visited;
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
