// One tracker per dirty source, chosen per device: an IOMMU HWPT with dirty tracking, a
// device's own DMA logging, a legacy container's type1 dirty pages. Each writes the kernel's
// bitmap straight into engine memory; DirtySync merges them into the migration bitmap.
import type { ArenaBuffer, Engine } from '../engine/index.js';
import { isKernelError } from '../kernel/errors.js';
import type { DmaLoggingRange } from '../kernel/types.js';
import type { Device, Hwpt } from '../vfio/device.js';
import type { IommufdContainer } from '../vfio/iommufd-container.js';
import type { LegacyContainer } from '../vfio/legacy-container.js';
import type { BitmapPlacement, MigrationBitmap } from './migration-bitmap.js';

export type TrackerKind = 'iommu' | 'dma-logging' | 'type1';

/** A range whose dirty state could not be read: it is reported all dirty instead. */
export interface QueryFailure {
  readonly tracker: string;
  readonly iova: bigint;
  readonly length: bigint;
  readonly error: Error;
}

export interface TrackerContext {
  readonly bitmap: MigrationBitmap;
  readonly engine: Engine;
  /** Marks a placement all dirty in the migration bitmap because its source failed. */
  failed(tracker: Tracker, placement: BitmapPlacement, error: Error): void;
}

/** Where each placement's bits sit in a scratch bitmap at a source page size other than the migration one. */
export class ScratchLayout {
  readonly blocks = new Map<BitmapPlacement, { bit: number; bits: number; iova: bigint; length: bigint }>();
  readonly buffer: ArenaBuffer;

  constructor(engine: Engine, placements: readonly BitmapPlacement[], readonly pageSize: bigint) {
    let bit = 0;
    for (const p of placements) {
      const iova = (p.iova / pageSize) * pageSize;
      const end = ((p.iova + p.size + pageSize - 1n) / pageSize) * pageSize;
      const bits = Number((end - iova) / pageSize);
      this.blocks.set(p, { bit, bits, iova, length: end - iova });
      bit += Math.ceil(bits / 64) * 64;
    }
    this.buffer = engine.arena.allocate(Math.max(8, bit / 8), 64);
  }

  view(placement: BitmapPlacement): Uint8Array {
    const block = this.blocks.get(placement)!;
    return new Uint8Array(this.buffer.arena.memory.buffer, this.buffer.offset + block.bit / 8, Math.ceil(block.bits / 64) * 8);
  }

  /** ORs the placement's scratch bits into the migration bitmap; returns the bits newly set. */
  async resampleInto(engine: Engine, bitmap: MigrationBitmap, placement: BitmapPlacement): Promise<number> {
    const block = this.blocks.get(placement)!;
    const spec = {
      destination: bitmap.buffer, destinationPageSize: bitmap.pageSize, destinationBit: placement.bit, destinationBits: placement.bits,
      source: this.buffer, sourcePageSize: this.pageSize, sourceBit: block.bit, sourceBits: block.bits,
      sourceIovaOffset: block.iova - placement.iova,
    };
    try {
      return await engine.resample(spec);
    } catch {
      // The workers failed: the bits are still in shared memory, do it on this thread.
      return engine.sync.resample(spec);
    }
  }

  free(): void {
    this.buffer.free();
  }
}

export abstract class Tracker {
  abstract readonly kind: TrackerKind;
  abstract readonly name: string;
  abstract readonly devices: readonly Device[];
  /**
   * The kernel only sets bits in the caller's bitmap (HWPT dirty bitmaps, DMA logging reports):
   * at the migration page size such a source writes straight into the migration bitmap, which
   * is then the merge. A source that overwrites (type1) gets a buffer of its own.
   */
  abstract readonly onlySetsBits: boolean;
  /** True when the kernel writes this tracker's bits straight into the migration bitmap. */
  direct = false;
  /** A source bitmap in the migration bitmap's geometry (same page size): merged by a plain OR. */
  source: ArenaBuffer | undefined;
  /** A scratch bitmap at another page size: resampled into the migration bitmap per placement. */
  scratch: ScratchLayout | undefined;

  abstract start(context: TrackerContext): void;
  abstract stop(): void;
  /** Reads (and clears, in the kernel) every placement's dirty pages into `source` or `scratch`. */
  abstract query(context: TrackerContext, placements: readonly BitmapPlacement[]): void;

  /** Sources and scratch buffers are sized for the placements: rebuild them when those change. */
  layout(context: TrackerContext, placements: readonly BitmapPlacement[], pageSize: bigint): void {
    const same = pageSize === context.bitmap.pageSize;
    // A same-geometry target spans the whole bitmap whatever is mapped: keep it.
    if (same && (this.direct || this.source) && !this.scratch) return;
    this.release();
    if (same && this.onlySetsBits) this.direct = true;
    else if (same) this.source = context.bitmap.allocateSource();
    else this.scratch = new ScratchLayout(context.engine, placements, pageSize);
  }

  /** The view the kernel writes a placement's bits into. */
  protected target(context: TrackerContext, placement: BitmapPlacement): Uint8Array {
    if (this.direct) return context.bitmap.view(context.bitmap.buffer, placement);
    if (this.source) return context.bitmap.view(this.source, placement);
    return this.scratch!.view(placement);
  }

  release(): void {
    this.direct = false;
    this.source?.free();
    this.source = undefined;
    this.scratch?.free();
    this.scratch = undefined;
  }
}

/** IOMMU_HWPT_SET_DIRTY_TRACKING / GET_DIRTY_BITMAP on one HWPT, for all the devices on it. */
export class IommuTracker extends Tracker {
  readonly kind = 'iommu' as const;
  readonly onlySetsBits = true;
  readonly name: string;
  private enabled = false;

  constructor(readonly container: IommufdContainer, readonly hwpt: Hwpt, readonly devices: readonly Device[]) {
    super();
    this.name = `hwpt ${hwpt.id}`;
  }

  start(context: TrackerContext): void {
    // Enabling clears the HWPT's stale dirty bits: everything before this point is sent anyway.
    this.container.iommufd.hwptSetDirtyTracking(this.hwpt.id, true);
    this.enabled = true;
    this.layout(context, context.bitmap.mappings, context.bitmap.pageSize);
  }

  stop(): void {
    if (this.enabled) this.container.iommufd.hwptSetDirtyTracking(this.hwpt.id, false);
    this.enabled = false;
    this.release();
  }

  query(context: TrackerContext, placements: readonly BitmapPlacement[]): void {
    for (const placement of placements) this.read(context, placement, this.target(context, placement), false);
  }

  /**
   * Before an unmap: read without clearing (NO_CLEAR skips the IOTLB flush the unmap does
   * anyway), straight into the migration bitmap, which the kernel only ORs into.
   */
  readBeforeUnmap(context: TrackerContext, placement: BitmapPlacement): void {
    this.read(context, placement, context.bitmap.view(context.bitmap.buffer, placement), true);
  }

  private read(context: TrackerContext, placement: BitmapPlacement, bitmap: Uint8Array, noClear: boolean): void {
    try {
      this.container.iommufd.hwptGetDirtyBitmap({
        hwptId: this.hwpt.id, iova: placement.iova, length: placement.size, pageSize: context.bitmap.pageSize, bitmap, noClear,
      });
    } catch (error) {
      context.failed(this, placement, error as Error);
    }
  }
}

/** The most ranges DMA_LOGGING_START takes: PAGE_SIZE / sizeof(struct vfio_device_feature_dma_logging_range). */
export const DMA_LOGGING_MAX_RANGES = 256;

/**
 * Fewest ranges covering `ranges`, merging across the smallest gaps first (what QEMU and
 * the kernel's vfio_combine_iova_ranges do to fit a device's limit).
 */
export function combineRanges(ranges: readonly DmaLoggingRange[], maximum: number): DmaLoggingRange[] {
  const sorted = [...ranges].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  const spans = sorted.map((r) => ({ start: r.iova, end: r.iova + r.length }));
  while (spans.length > Math.max(1, maximum)) {
    let smallest = 1;
    for (let i = 2; i < spans.length; i++) {
      if (spans[i]!.start - spans[i - 1]!.end < spans[smallest]!.start - spans[smallest - 1]!.end) smallest = i;
    }
    spans[smallest - 1]!.end = spans[smallest]!.end;
    spans.splice(smallest, 1);
  }
  return spans.map((s) => ({ iova: s.start, length: s.end - s.start }));
}

/** A device's own DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*). */
export class DeviceLoggingTracker extends Tracker {
  readonly kind = 'dma-logging' as const;
  readonly onlySetsBits = true;
  readonly name: string;
  readonly devices: readonly Device[];
  /** The page size the device chose at START. */
  pageSize = 0n;
  private logging = false;
  /** Set when logging could not be restarted: every round then reports the device's ranges all dirty. */
  broken: Error | undefined;

  constructor(readonly device: Device) {
    super();
    this.name = `device ${device.name}`;
    this.devices = [device];
  }

  start(context: TrackerContext): void {
    const placements = context.bitmap.mappings;
    if (placements.length === 0) throw new Error(`${this.device.name}: nothing is mapped to log`);
    let maximum = DMA_LOGGING_MAX_RANGES;
    const exact = placements.map((p) => ({ iova: p.iova, length: p.size }));
    for (;;) {
      try {
        this.pageSize = this.device.handle.dmaLoggingStart(context.bitmap.pageSize, combineRanges(exact, maximum));
        break;
      } catch (error) {
        // A device's own limit may be below the kernel's: combine harder and try again.
        if (isKernelError(error, 'E2BIG') && maximum > 1) {
          maximum = Math.max(1, Math.floor(maximum / 2));
          continue;
        }
        throw error;
      }
    }
    this.logging = true;
    this.broken = undefined;
    this.layout(context, placements, this.pageSize);
  }

  stop(): void {
    if (this.logging) this.device.handle.dmaLoggingStop();
    this.logging = false;
    this.release();
  }

  query(context: TrackerContext, placements: readonly BitmapPlacement[]): void {
    if (this.broken) {
      for (const p of placements) context.failed(this, p, this.broken);
      return;
    }
    for (const placement of placements) {
      const bitmap = this.target(context, placement);
      if (this.scratch) bitmap.fill(0); // the driver only sets bits; a direct target is the migration bitmap itself
      if (!this.report(context, placement, bitmap)) return;
    }
  }

  /** After an unmap (the device may DMA until then): report into the migration bitmap itself when the page sizes agree. */
  readAfterUnmap(context: TrackerContext, placement: BitmapPlacement): boolean {
    if (this.broken || !this.logging) return false;
    if (this.pageSize === context.bitmap.pageSize) return this.report(context, placement, context.bitmap.view(context.bitmap.buffer, placement));
    const bitmap = this.scratch!.view(placement);
    bitmap.fill(0);
    return this.report(context, placement, bitmap);
  }

  /** Reports one placement; on error the log is corrupt: all dirty, then restart logging. */
  private report(context: TrackerContext, placement: BitmapPlacement, bitmap: Uint8Array): boolean {
    const block = this.scratch?.blocks.get(placement);
    try {
      this.device.handle.dmaLoggingReport({
        iova: block?.iova ?? placement.iova, length: block?.length ?? placement.size, pageSize: this.pageSize, bitmap,
      });
      return true;
    } catch (error) {
      for (const p of context.bitmap.mappings) context.failed(this, p, error as Error);
      this.restart(context);
      return false;
    }
  }

  /** Stop and start again on the current mappings (after a report error, or when mappings change). */
  restart(context: TrackerContext): void {
    try {
      this.stop();
    } catch {
      // A log that failed to report may also fail to stop; START below says whether it is usable.
    }
    try {
      this.start(context);
    } catch (error) {
      this.broken = error as Error;
    }
  }
}

/** type1's VFIO_IOMMU_DIRTY_PAGES for a legacy container: every pinned page is reported dirty. */
export class Type1Tracker extends Tracker {
  readonly kind = 'type1' as const;
  /** type1 copies whole words over the caller's bitmap. */
  readonly onlySetsBits = false;
  readonly name: string;
  private started = false;

  constructor(readonly container: LegacyContainer, readonly devices: readonly Device[]) {
    super();
    this.name = `type1 container of ${devices.map((d) => d.name).join(', ')}`;
  }

  /** type1 only reports at the IOMMU's smallest page size. */
  get pageSize(): bigint {
    return this.container.minimumPageSize;
  }

  start(context: TrackerContext): void {
    this.container.handle.dirtyPagesStart();
    this.started = true;
    this.layout(context, context.bitmap.mappings, this.pageSize);
  }

  stop(): void {
    if (this.started) this.container.handle.dirtyPagesStop();
    this.started = false;
    this.release();
  }

  query(context: TrackerContext, placements: readonly BitmapPlacement[]): void {
    for (const placement of placements) {
      // type1 copies whole words over the bitmap (not an OR): each placement owns its words.
      const block = this.scratch?.blocks.get(placement);
      try {
        this.container.handle.dirtyPagesGetBitmap({
          iova: block?.iova ?? placement.iova, length: block?.length ?? placement.size, pageSize: this.pageSize, bitmap: this.target(context, placement),
        });
      } catch (error) {
        context.failed(this, placement, error as Error);
      }
    }
  }
}
