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

/**
 * Bytes a bitmap needs for `length` bytes of IOVA at `pageSize`: whole u64 words,
 * DIV_ROUND_UP(pages, 64) * 8. Every kernel bitmap is an array of u64 (`__u64 *data` in the
 * uAPI): type1 copies whole words over it (DIRTY_BITMAP_BYTES), iova_bitmap sets bits with
 * bitmap_set on the unsigned longs of the pinned pages, a read-modify-write of each word.
 */
export function bitmapBytes(length: bigint, pageSize: bigint): bigint {
  const pages = (length + pageSize - 1n) / pageSize;
  return ((pages + 63n) / 64n) * 8n;
}

/**
 * The common shape of every dirty-bitmap request: range, page size, alignment, and room in the
 * bitmap. A bitmap the kernel writes must be whole u64 words on a u64 word (`bitmapBytes`);
 * `readOnly` is for one it only reads as bytes (IOMMU_TEST_OP_DIRTY copies DIV_ROUND_UP(pages, 8)).
 */
export function checkBitmapRequest(
  argument: string,
  request: { iova: unknown; length: unknown; pageSize: unknown; bitmap: unknown },
  readOnly = false,
): { iova: bigint; length: bigint; pageSize: bigint; bitmap: Uint8Array } {
  const { iova, length } = checkRange(argument, request.iova, request.length);
  const pageSize = checkPageSize(`${argument}.pageSize`, request.pageSize);
  checkAligned(`${argument}.iova`, iova, pageSize);
  checkAligned(`${argument}.length`, length, pageSize);
  let bitmap: Uint8Array;
  let needed: bigint;
  if (readOnly) {
    if (!(request.bitmap instanceof Uint8Array)) {
      throw new InvalidArgumentError(`${argument}.bitmap`, `must be a Uint8Array, got ${describe(request.bitmap)}`);
    }
    bitmap = request.bitmap;
    needed = (length / pageSize + 7n) / 8n;
  } else {
    bitmap = checkBitmapBuffer(argument, request.bitmap);
    needed = bitmapBytes(length, pageSize);
  }
  if (BigInt(bitmap.byteLength) < needed) {
    throw new InvalidArgumentError(
      `${argument}.bitmap`,
      `holds ${bitmap.byteLength} bytes but ${length / pageSize} pages need ${needed}${readOnly ? '' : ' (whole u64 words: the kernel writes words)'}`,
    );
  }
  return { iova, length, pageSize, bitmap };
}

/**
 * What the kernel will touch of a bitmap, checked even when validateArguments is false: the
 * library never hands the kernel memory it does not hold. The bit count is the kernel's own for
 * whatever it is given (a bit per 1 << __ffs(page_size) bytes, ((length - 1) >> shift) + 1 bits,
 * as iova_bitmap_alloc counts; type1's verify_bitmap_size counts no more), so a malformed request
 * still reaches the kernel for its errno whenever the buffer covers what the kernel could write.
 * A zero page size is refused by every kernel path before it touches the bitmap (EINVAL); a zero
 * length only where `kernelRefusesZeroLength`: the VFIO core's DMA_LOGGING_REPORT does not check
 * it, and iova_bitmap over a zero length spans all of IOVA.
 */
export function checkBitmapHeld(
  argument: string,
  request: { length: unknown; pageSize: unknown; bitmap: unknown },
  kernelRefusesZeroLength: boolean,
): Uint8Array {
  const bitmap = checkBitmapBuffer(argument, request.bitmap);
  if (typeof request.length !== 'bigint' || typeof request.pageSize !== 'bigint') {
    throw new InvalidArgumentError(argument, `length and page size must be bigints, got ${describe(request.length)} and ${describe(request.pageSize)}`);
  }
  if ((request.pageSize & U64_MAX) === 0n) return bitmap;
  if ((request.length & U64_MAX) === 0n) {
    if (kernelRefusesZeroLength) return bitmap;
    throw new InvalidArgumentError(`${argument}.length`, 'must not be zero: the kernel would not bound the bitmap it writes');
  }
  const needed = kernelBitmapBytes(request.length, request.pageSize);
  if (BigInt(bitmap.byteLength) < needed) {
    throw new InvalidArgumentError(
      `${argument}.bitmap`,
      `holds ${bitmap.byteLength} bytes but the kernel writes ${needed} (whole u64 words) for length 0x${(request.length & U64_MAX).toString(16)} at page size 0x${(request.pageSize & U64_MAX).toString(16)}`,
    );
  }
  return bitmap;
}

/**
 * Bytes of bitmap the kernel covers for `length` at `pageSize` (both nonzero), counted as the
 * kernel counts (a bit per 1 << __ffs(page_size) bytes), in whole u64 words.
 */
export function kernelBitmapBytes(length: bigint, pageSize: bigint): bigint {
  const size = length & U64_MAX;
  const page = pageSize & U64_MAX;
  if (size === 0n || page === 0n) return 0n;
  let shift = 0n;
  while (((page >> shift) & 1n) === 0n) shift++;
  const bits = ((size - 1n) >> shift) + 1n;
  return ((bits + 63n) / 64n) * 8n;
}

/** A bitmap is a Uint8Array starting on a u64 word: the kernel addresses it as `__u64 *`. */
function checkBitmapBuffer(argument: string, bitmap: unknown): Uint8Array {
  if (!(bitmap instanceof Uint8Array)) {
    throw new InvalidArgumentError(`${argument}.bitmap`, `must be a Uint8Array, got ${describe(bitmap)}`);
  }
  if (bitmap.byteOffset % 8 !== 0) {
    throw new InvalidArgumentError(`${argument}.bitmap`, `starts at byte ${bitmap.byteOffset} of its buffer, not on a u64 word (8 bytes)`);
  }
  return bitmap;
}

/** The largest view Node 20 makes of host memory (its typed arrays stop at 2 GiB here). */
export const MAXIMUM_VIEW_BYTES = 1n << 31n;

/** The checks of HostMemory.view, the same on both kernels: live memory, a range inside it, one view's size. */
export function checkView(
  memory: { readonly released: boolean; readonly length: bigint },
  offset: unknown,
  length: unknown,
): { start: bigint; size: bigint } {
  if (memory.released) throw new InvalidArgumentError('memory', 'has been released: its views are gone');
  const start = checkU64('offset', offset);
  if (start > memory.length) {
    throw new InvalidArgumentError('offset', `0x${start.toString(16)} is past the memory's 0x${memory.length.toString(16)} bytes`);
  }
  const size = length === undefined ? memory.length - start : checkU64('length', length);
  if (start + size > memory.length) {
    throw new InvalidArgumentError('length', `offset 0x${start.toString(16)} + length 0x${size.toString(16)} does not fit the memory's 0x${memory.length.toString(16)} bytes`);
  }
  if (size > MAXIMUM_VIEW_BYTES) {
    throw new InvalidArgumentError('length', `0x${size.toString(16)} is more than one view holds (2 GiB): take views of parts`);
  }
  return { start, size };
}

function describe(value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === null || value === undefined) return String(value);
  if (typeof value === 'object') return value.constructor?.name ?? 'object';
  return `${typeof value} ${String(value)}`;
}
