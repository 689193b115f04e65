// A small seeded pseudo-random generator, so that a simulated guest's workload is the same on
// every run with the same seed.
//
// xoshiro128** 1.1 (David Blackman and Sebastiano Vigna, https://prng.di.unimi.it/), 32-bit
// outputs, period 2^128 - 1; its state is seeded from the integer seed with SplitMix32, as the
// authors recommend for filling xoshiro state from a single value.

export class Xoshiro128 {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    let s = seed >>> 0;
    const splitMix32 = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = splitMix32();
    this.b = splitMix32();
    this.c = splitMix32();
    this.d = splitMix32();
    if ((this.a | this.b | this.c | this.d) === 0) this.a = 1;
  }

  /** A generator with an explicit state (for checking against the reference implementation). */
  static fromState(a: number, b: number, c: number, d: number): Xoshiro128 {
    const generator = new Xoshiro128(0);
    generator.a = a >>> 0;
    generator.b = b >>> 0;
    generator.c = c >>> 0;
    generator.d = d >>> 0;
    return generator;
  }

  /** The next 32-bit unsigned output. */
  nextUint32(): number {
    const result = Math.imul(rotateLeft(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotateLeft(this.d, 11);
    return result;
  }

  /** A float in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const high = this.nextUint32() >>> 5; // 27 bits
    const low = this.nextUint32() >>> 6; // 26 bits
    return (high * 67108864 + low) / 9007199254740992;
  }

  /** An integer in [0, bound), for bound up to 2^53. */
  nextBelow(bound: number): number {
    if (bound <= 0) throw new RangeError(`bound must be positive, got ${bound}`);
    if (bound <= 0x100000000) {
      // Lemire's nearly-divisionless method would be faster; rejection keeps it exact and simple.
      const limit = 0x100000000 - (0x100000000 % bound);
      let value = this.nextUint32();
      while (value >= limit) value = this.nextUint32();
      return value % bound;
    }
    return Math.floor(this.nextFloat() * bound);
  }
}

function rotateLeft(value: number, shift: number): number {
  return ((value << shift) | (value >>> (32 - shift))) >>> 0;
}
