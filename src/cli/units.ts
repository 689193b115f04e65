// Sizes, rates and durations as people write them (`64GiB`, `1GiB/s`, `10Gbit/s`, `300ms`),
// parsed by xbytes and ms; a bad value says what is allowed.
import ms from 'ms';
import xbytes from 'xbytes';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** `64GiB`, `512MiB`, `1TiB`, `4096` (bytes). */
export function parseSize(option: string, text: string): bigint {
  const value = /^\d+$/.test(text.trim()) ? Number(text) : xbytes.parseSize(text.trim());
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || !Number.isInteger(value)) {
    throw new UsageError(`${option}: ${JSON.stringify(text)} is not a size; write it like 64GiB, 512MiB or 1TiB`);
  }
  return BigInt(value);
}

/** Bytes per second from `1GiB/s`, `500MiB/s`, `10Gbit/s` (bits) or `10Gb/s`. */
export function parseRate(option: string, text: string): number {
  const match = /^\s*([\d.]+)\s*([KMGTP]?i?)(B|b|bit|bits|Byte|Bytes)\s*\/\s*s\s*$/.exec(text);
  const parsed = match ? xbytes.parseSize(`${match[1]} ${match[2]}${match[3]!.startsWith('b') ? 'b' : 'B'}`) : undefined;
  if (typeof parsed !== 'number' || !Number.isFinite(parsed) || parsed <= 0) {
    throw new UsageError(`${option}: ${JSON.stringify(text)} is not a rate; write it like 1GiB/s, 500MiB/s or 10Gbit/s`);
  }
  return parsed;
}

/** Milliseconds from `300ms`, `1s`, `1.5s`. */
export function parseDuration(option: string, text: string): number {
  const value = ms(text as ms.StringValue);
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new UsageError(`${option}: ${JSON.stringify(text)} is not a duration; write it like 300ms or 1s`);
  }
  return value;
}

export function parseCount(option: string, text: string, minimum = 1, maximum = Number.MAX_SAFE_INTEGER, why = ''): number {
  const value = /^\s*\d+\s*$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < minimum) throw new UsageError(`${option}: ${JSON.stringify(text)} must be a whole number of at least ${minimum}`);
  if (value > maximum) throw new UsageError(`${option}: ${text} is more than ${maximum}${why ? `, ${why}` : ''}`);
  return value;
}

export function formatBytes(bytes: number | bigint): string {
  return xbytes(Number(bytes), { iec: true });
}
