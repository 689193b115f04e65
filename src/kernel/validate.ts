import { InvalidArgumentError } from './errors.js';

// Argument checks shared by both kernels, made before any ioctl so that a bad request changes
// nothing. They cover what the caller got wrong on its own (types, ranges, sizes); what depends
// on kernel state (IOAS alignment, unknown IDs) is the kernel's to refuse, with its errno.

export const U64_MAX = (1n << 64n) - 1n;
export const U32_MAX = 0xffff_ffff;

export function checkU32(argument: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > U32_MAX) {
    throw new InvalidArgumentError(argument, `must be an integer from 0 to ${U32_MAX}, got ${describe(value)}`);
  }
  return value;
}

export function checkU64(argument: string, value: unknown): bigint {
  if (typeof value !== 'bigint') {
    throw new InvalidArgumentError(argument, `must be a bigint from 0 to 2^64-1, got ${describe(value)}`);
  }
  if (value < 0n || value > U64_MAX) {
    throw new InvalidArgumentError(argument, `must be from 0 to 2^64-1, got ${value}`);
  }
  return value;
}

export function checkLength(argument: string, value: unknown): bigint {
  const length = checkU64(argument, value);
  if (length === 0n) throw new InvalidArgumentError(argument, 'must not be zero');
  return length;
}

/** iova + length must not pass 2^64 (a range may end exactly at the top of the space). */
export function checkRange(argument: string, iova: unknown, length: unknown): { iova: bigint; length: bigint } {
  const start = checkU64(`${argument}.iova`, iova);
  const size = checkLength(`${argument}.length`, length);
  if (start + size - 1n > U64_MAX) {
    throw new InvalidArgumentError(argument, `iova 0x${start.toString(16)} + length 0x${size.toString(16)} overflows past 2^64`);
  }
  return { iova: start, length: size };
}

export function checkPageSize(argument: string, value: unknown): bigint {
  const pageSize = checkU64(argument, value);
  if (pageSize === 0n || (pageSize & (pageSize - 1n)) !== 0n) {
    throw new InvalidArgumentError(argument, `must be a power of two, got ${pageSize}`);
  }
  if (pageSize > 1n << 62n) throw new InvalidArgumentError(argument, `must be at most 2^62, got ${pageSize}`);
  return pageSize;
}

export function checkAligned(argument: string, value: bigint, alignment: bigint): void {
  if (value % alignment !== 0n) {
    throw new InvalidArgumentError(argument, `0x${value.toString(16)} is not aligned to 0x${alignment.toString(16)}`);
  }
}

/** Bytes a bitmap needs for `length` bytes of IOVA at `pageSize`. */
export function bitmapBytes(length: bigint, pageSize: bigint): bigint {
  const pages = (length + pageSize - 1n) / pageSize;
  return (pages + 7n) / 8n;
}

/** The common shape of every dirty-bitmap request: range, page size, alignment, and room in the bitmap. */
export function checkBitmapRequest(
  argument: string,
  request: { iova: unknown; length: unknown; pageSize: unknown; bitmap: unknown },
): { iova: bigint; length: bigint; pageSize: bigint; bitmap: Uint8Array } {
  const { iova, length } = checkRange(argument, request.iova, request.length);
  const pageSize = checkPageSize(`${argument}.pageSize`, request.pageSize);
  checkAligned(`${argument}.iova`, iova, pageSize);
  checkAligned(`${argument}.length`, length, pageSize);
  if (!(request.bitmap instanceof Uint8Array)) {
    throw new InvalidArgumentError(`${argument}.bitmap`, `must be a Uint8Array, got ${describe(request.bitmap)}`);
  }
  const needed = bitmapBytes(length, pageSize);
  if (BigInt(request.bitmap.byteLength) < needed) {
    throw new InvalidArgumentError(
      `${argument}.bitmap`,
      `holds ${request.bitmap.byteLength} bytes but ${length / pageSize} pages need ${needed}`,
    );
  }
  return { iova, length, pageSize, bitmap: request.bitmap };
}

function describe(value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === null || value === undefined) return String(value);
  if (typeof value === 'object') return value.constructor?.name ?? 'object';
  return `${typeof value} ${String(value)}`;
}
