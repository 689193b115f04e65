// From a caller's description of a resample (page sizes, bit positions, the
// IOVA offset between source and destination) to the kernel's geometry.
import { EngineInputError } from './errors.js';
import { type BitmapLike, capacityBits, checkBitmap, checkCount, pageShift } from './validate.js';

export interface ResampleSpec {
  destination: BitmapLike;
  /** Page size of the destination (the migration bitmap), a power of two. */
  destinationPageSize: number | bigint;
  /** First destination bit the call may set (default 0). */
  destinationBit?: number;
  /** How many destination bits from destinationBit the call may set (default: up to where the source ends). */
  destinationBits?: number;
  source: BitmapLike;
  /** Page size of the source (2 MiB, 1 GiB, a device's DMA-logging page size...), a power of two. */
  sourcePageSize: number | bigint;
  /** First source bit to read (default 0). */
  sourceBit?: number;
  /** How many source bits to read. */
  sourceBits: number;
  /**
   * IOVA of the start of source bit `sourceBit` minus the IOVA of the start of
   * destination bit `destinationBit`, in bytes (default 0). May be negative and
   * needs no alignment beyond the smaller page size: a source that starts in
   * the middle of a coarse destination page, or a coarse source page that starts
   * before the destination range.
   */
  sourceIovaOffset?: number | bigint;
}

/** The kernel's geometry: see assembly/resample.ts. */
export interface ResampleGeometry {
  dst: number;
  dstStart: number;
  dstEnd: number;
  src: number;
  srcStart: number;
  srcEnd: number;
  shift: number;
  delta: number;
}

export function resampleGeometry(spec: ResampleSpec): ResampleGeometry {
  if (spec === null || typeof spec !== 'object') throw new EngineInputError('resample needs a spec object');
  checkBitmap('destination', spec.destination);
  checkBitmap('source', spec.source);
  const dstShift = pageShift('destinationPageSize', spec.destinationPageSize);
  const srcShift = pageShift('sourcePageSize', spec.sourcePageSize);
  const shift = srcShift - dstShift;
  if (Math.abs(shift) > 30) {
    throw new EngineInputError(`page sizes differ by 2^${Math.abs(shift)}, at most 2^30 is supported`);
  }
  const sourceBit = spec.sourceBit ?? 0;
  const destinationBit = spec.destinationBit ?? 0;
  checkCount('sourceBit', sourceBit);
  checkCount('sourceBits', spec.sourceBits);
  checkCount('destinationBit', destinationBit);
  const srcEnd = sourceBit + spec.sourceBits;
  if (srcEnd > capacityBits(spec.source)) {
    throw new EngineInputError(`source bits [${sourceBit}, ${srcEnd}) go past the source's ${capacityBits(spec.source)} bits`);
  }
  const fineShift = Math.min(srcShift, dstShift);
  const offset = BigInt(spec.sourceIovaOffset ?? 0);
  if (typeof spec.sourceIovaOffset === 'number' && !Number.isSafeInteger(spec.sourceIovaOffset)) {
    throw new EngineInputError(`sourceIovaOffset must be an integer, got ${spec.sourceIovaOffset}`);
  }
  if (offset % (1n << BigInt(fineShift)) !== 0n) {
    throw new EngineInputError(
      `sourceIovaOffset ${offset} is not a multiple of the smaller page size ${1n << BigInt(fineShift)}`,
    );
  }
  const rs = 2 ** (srcShift - fineShift);
  const rd = 2 ** (dstShift - fineShift);
  const delta = Number(BigInt(destinationBit * rd) + (offset >> BigInt(fineShift)) - BigInt(sourceBit) * BigInt(rs));
  if (!Number.isSafeInteger(delta) || !Number.isSafeInteger(srcEnd * rs + delta)) {
    throw new EngineInputError('resample geometry is out of range: the source and destination are too far apart');
  }
  let dstEnd: number;
  if (spec.destinationBits !== undefined) {
    checkCount('destinationBits', spec.destinationBits);
    dstEnd = destinationBit + spec.destinationBits;
  } else {
    dstEnd = Math.max(destinationBit, Math.ceil((srcEnd * rs + delta) / rd));
  }
  if (dstEnd > capacityBits(spec.destination)) {
    throw new EngineInputError(
      `destination bits [${destinationBit}, ${dstEnd}) go past the destination's ${capacityBits(spec.destination)} bits` +
        (spec.destinationBits === undefined ? ' (pass destinationBits to clip)' : ''),
    );
  }
  checkCount('destination end', dstEnd);
  return {
    dst: spec.destination.offset,
    dstStart: destinationBit,
    dstEnd,
    src: spec.source.offset,
    srcStart: sourceBit,
    srcEnd,
    shift,
    delta,
  };
}
