// Input checks, done before any work so a bad call changes nothing and says
// what was wrong and what is allowed.
import { EngineInputError } from './errors.js';
import { MAXIMUM_BITS } from './layout.js';

/** Anything with an address and a size in the shared memory (an ArenaBuffer). */
export interface BitmapLike {
  readonly offset: number;
  readonly byteLength: number;
}

/** Bits a buffer can hold as whole u64 words (the kernels read whole words). */
export function capacityBits(buffer: BitmapLike): number {
  return Math.floor(buffer.byteLength / 8) * 64;
}

export function checkBitmap(name: string, buffer: BitmapLike): void {
  if (buffer === null || typeof buffer !== 'object' || !Number.isSafeInteger(buffer.offset) || !Number.isSafeInteger(buffer.byteLength)) {
    throw new EngineInputError(`${name} must be a buffer from the engine's arena`);
  }
  if ((buffer as { freed?: boolean }).freed === true) throw new EngineInputError(`${name} was freed`);
  if (buffer.offset % 8 !== 0) {
    throw new EngineInputError(`${name} must start on an 8-byte boundary (a u64 word), its offset is ${buffer.offset}`);
  }
}

export function checkCount(name: string, value: number, maximum = MAXIMUM_BITS): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new EngineInputError(`${name} must be a non-negative integer, got ${String(value)}`);
  }
  if (value > maximum) throw new EngineInputError(`${name} is ${value}, the most allowed is ${maximum}`);
}

/** bits of `buffer` are used: it must hold them as whole words. */
export function checkBits(name: string, buffer: BitmapLike, bits: number): void {
  checkBitmap(name, buffer);
  checkCount(`${name} bit count`, bits);
  const have = capacityBits(buffer);
  if (bits > have) {
    throw new EngineInputError(`${name} holds ${have} bits (${buffer.byteLength} bytes), ${bits} were asked for`);
  }
}

/** A bit range [start, end) inside the buffer. */
export function checkRange(name: string, buffer: BitmapLike, start: number, end: number): void {
  checkBitmap(name, buffer);
  checkCount(`${name} range start`, start);
  checkCount(`${name} range end`, end);
  if (start > end) throw new EngineInputError(`${name} range start ${start} is past its end ${end}`);
  const have = capacityBits(buffer);
  if (end > have) throw new EngineInputError(`${name} range [${start}, ${end}) goes past its ${have} bits`);
}

export function checkBit(name: string, buffer: BitmapLike, bit: number): void {
  checkBitmap(name, buffer);
  checkCount(`${name} bit`, bit);
  if (bit >= capacityBits(buffer)) throw new EngineInputError(`${name} bit ${bit} is past its ${capacityBits(buffer)} bits`);
}

/** The same bit count from the destination and every source. */
export function checkMerge(dst: BitmapLike, sources: readonly BitmapLike[], bits: number, maximumSources: number): void {
  checkBits('destination', dst, bits);
  if (!Array.isArray(sources) || sources.length === 0) {
    throw new EngineInputError('merge needs at least one source bitmap');
  }
  if (sources.length > maximumSources) {
    throw new EngineInputError(`merge takes at most ${maximumSources} sources at once, got ${sources.length}`);
  }
  sources.forEach((source, i) => checkBits(`source ${i}`, source, bits));
}

/** log2 of a page size, which must be a power of two between 1 and 2^62 bytes. */
export function pageShift(name: string, size: number | bigint): number {
  const value = typeof size === 'bigint' ? size : Number.isSafeInteger(size) ? BigInt(size) : -1n;
  if (value <= 0n || (value & (value - 1n)) !== 0n || value > 1n << 62n) {
    throw new EngineInputError(`${name} must be a power of two number of bytes (4096, 2097152, ...), got ${String(size)}`);
  }
  return value.toString(2).length - 1;
}

export function checkOutput(name: string, output: BitmapLike, entryBytes: number, minimumEntries: number): number {
  checkBitmap(name, output);
  const entries = Math.floor(output.byteLength / entryBytes);
  if (entries < minimumEntries) {
    throw new EngineInputError(`${name} must hold at least ${minimumEntries} entries of ${entryBytes} bytes, it holds ${entries}`);
  }
  return Math.min(entries, MAXIMUM_BITS);
}
