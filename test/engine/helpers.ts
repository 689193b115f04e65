// Shared pieces of the engine's tests: bitmap patterns and case counting.
import { fc } from '@fast-check/vitest';
import type { ArenaBuffer } from '../../src/engine/index.js';

export type Pattern = 'empty' | 'full' | 'sparse' | 'half' | 'dense' | 'runs' | 'single';

export const patternArbitrary: fc.Arbitrary<Pattern> = fc.constantFrom<Pattern>(
  'empty', 'full', 'sparse', 'half', 'dense', 'runs', 'single',
);

import { mulberry32 as random } from '../../src/engine/random.js';

/** Fills 32-bit halves with a pattern. The whole buffer is filled, past any bit count too. */
export function fill(halves: Uint32Array, pattern: Pattern, seed: number): void {
  const next = random(seed);
  switch (pattern) {
    case 'empty':
      halves.fill(0);
      return;
    case 'full':
      halves.fill(0xffffffff);
      return;
    case 'single': {
      halves.fill(0);
      if (halves.length > 0) {
        const bit = next() % (halves.length * 32);
        halves[bit >>> 5] = 1 << (bit & 31);
      }
      return;
    }
    case 'runs': {
      // Long runs of ones and zeros: runs that cross words, blocks and shard boundaries.
      let bit = 0;
      let on = next() & 1;
      const total = halves.length * 32;
      halves.fill(0);
      while (bit < total) {
        const length = 1 + (next() % (next() & 1 ? 40 : 5000));
        if (on) for (let b = bit; b < Math.min(total, bit + length); b++) halves[b >>> 5] = halves[b >>> 5]! | (1 << (b & 31));
        bit += length;
        on ^= 1;
      }
      return;
    }
    default:
      for (let i = 0; i < halves.length; i++) {
        const a = next();
        const b = next();
        const c = next();
        halves[i] = pattern === 'sparse' ? a & b & c & next() : pattern === 'half' ? a : (a | b) >>> 0;
      }
  }
}

export function fillBuffer(buffer: ArenaBuffer, pattern: Pattern, seed: number): void {
  fill(buffer.u32(), pattern, seed);
}

/** A copy of a buffer's bits, for the reference model. */
export function snapshot(buffer: ArenaBuffer): Uint32Array {
  return buffer.u32().slice();
}

/** Counts the cases each property really ran, to print them at the end. */
export class CaseCounter {
  readonly #counts = new Map<string, number>();
  hit(name: string): void {
    this.#counts.set(name, (this.#counts.get(name) ?? 0) + 1);
  }
  get(name: string): number {
    return this.#counts.get(name) ?? 0;
  }
  report(title: string): string {
    const lines = [...this.#counts].map(([name, n]) => `  ${name.padEnd(40)} ${n} cases`);
    return `${title}\n${lines.join('\n')}`;
  }
}

/** Equality of two large bit arrays, reporting the first difference (toEqual is slow on millions of elements). */
export function firstDifference(got: Uint32Array, expected: Uint32Array): string | undefined {
  if (got.length !== expected.length) return `lengths differ: ${got.length} vs ${expected.length}`;
  for (let i = 0; i < got.length; i++) {
    if (got[i] !== expected[i]) return `bits ${i * 32}..${i * 32 + 31}: got 0x${got[i]!.toString(16)}, expected 0x${expected[i]!.toString(16)}`;
  }
  return undefined;
}
