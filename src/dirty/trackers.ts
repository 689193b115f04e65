// One tracker per dirty source, chosen per device: an IOMMU HWPT with dirty tracking, a
// device's own DMA logging, a legacy container's type1 dirty pages. The kernel writes straight
// into the migration bitmap where the geometry allows (a source that only sets bits, at the
// migration page size, onto a u64 word of its memory's bits); otherwise into a scratch buffer
// that DirtySync ORs into every mapping it covers.
import type { ArenaBuffer, Engine } from '../engine/index.js';
import { isKernelError } from '../kernel/errors.js';
import type { DmaLoggingRange, IovaRange } from '../kernel/types.js';
import * as uapi from '../uapi/index.js';
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

/**
 * Bits the kernel wrote into a scratch buffer, to be ORed into the migration bitmap for each
 * target mapping (the buffer's IOVA frame, at its page size, resampled onto each target's bits).
 */
export interface ScratchMerge {
  readonly tracker: Tracker;
  readonly buffer: ArenaBuffer;
  readonly pageSize: bigint;
  /** IOVA of the buffer's bit 0. */
  readonly iova: bigint;
  readonly bits: number;
  readonly targets: readonly BitmapPlacement[];
}

export interface TrackerContext {
  readonly bitmap: MigrationBitmap;
  readonly engine: Engine;
  /** Marks placements all dirty in the migration bitmap because their source failed. */
  failed(tracker: Tracker, placements: readonly BitmapPlacement[], error: Error): void;
}

/**
 * The most ranges DMA_LOGGING_START takes on a 4 KiB-page host (256): LOG_MAX_RANGES in
 * drivers/vfio/vfio_main.c is PAGE_SIZE / sizeof(struct vfio_device_feature_dma_logging_range).
 * @deprecated It depends on the page size: uapi.dmaLoggingMaxRanges(pageSize); trackers use the host's.
 */
export const DMA_LOGGING_MAX_RANGES = uapi.dmaLoggingMaxRanges(4096);

/** A zeroed buffer of whole u64 words for `bits` bits: what a kernel writes a source's bitmap into. */
export function scratch(engine: Engine, bits: number): ArenaBuffer {
  const buffer = engine.arena.allocate(Math.max(8, Math.ceil(bits / 64) * 8), 64);
  buffer.bytes().fill(0);
  return buffer;
}

export abstract class Tracker {
  abstract readonly kind: TrackerKind;
  abstract readonly name: string;
  /** The devices this source tracks; trackers gain and lose devices as they attach and detach. */
  readonly devices: Device[] = [];
  /** Set once the source is gone (its HWPT destroyed, its log stopped at detach): never read again. */
  retired = false;

  abstract start(context: TrackerContext): void;
  abstract stop(): void;
  /**
   * Reads (and clears, in the kernel) the dirty pages of `placements`. Bits written straight
   * into the migration bitmap are there on return; the rest is appended to `merges`.
   */
  abstract query(context: TrackerContext, placements: readonly BitmapPlacement[], merges: ScratchMerge[]): void;

  /** A source that only sets bits writes straight into the migration bitmap when the placement is on a word. */
  protected direct(context: TrackerContext, placement: BitmapPlacement): Uint8Array | undefined {
    return placement.bit % 64 === 0 ? context.bitmap.view(placement) : undefined;
  }
}

/** IOMMU_HWPT_SET_DIRTY_TRACKING / GET_DIRTY_BITMAP on one HWPT, for all the devices on it. */
export class IommuTracker extends Tracker {
  readonly kind = 'iommu' as const;
  readonly name: string;
  private enabled = false;

  constructor(readonly container: IommufdContainer, readonly hwpt: Hwpt, devices: readonly Device[]) {
    super();
    this.name = `hwpt ${hwpt.id}`;
    this.devices.push(...devices);
  }

  start(): void {
    // Enabling clears the HWPT's stale dirty bits: everything before this point is sent anyway.
    this.container.iommufd.hwptSetDirtyTracking(this.hwpt.id, true);
    this.enabled = true;
  }

  stop(): void {
    const enabled = this.enabled;
    this.enabled = false;
    if (enabled && !this.retired && this.container.autoDomains.hwpts.includes(this.hwpt)) {
      this.container.iommufd.hwptSetDirtyTracking(this.hwpt.id, false);
    }
  }

  query(context: TrackerContext, placements: readonly BitmapPlacement[], merges: ScratchMerge[]): void {
    this.read(context, placements, merges, false);
  }

  /**
   * Before an unmap: read without clearing (NO_CLEAR skips the IOTLB flush the unmap does
   * anyway). The bits stay in the migration bitmap until a round hands them over.
   */
  readBeforeUnmap(context: TrackerContext, placements: readonly BitmapPlacement[], merges: ScratchMerge[]): void {
    this.read(context, placements, merges, true);
  }

  private read(context: TrackerContext, placements: readonly BitmapPlacement[], merges: ScratchMerge[], noClear: boolean): void {
    // An id that no longer names our HWPT could name a new object: never read it as clean.
    if (this.retired || !this.container.autoDomains.hwpts.includes(this.hwpt)) {
      context.failed(this, placements, new Error(`HWPT ${this.hwpt.id} is gone: its pages are reported dirty`));
      return;
    }
    const pageSize = context.bitmap.pageSize;
    for (const placement of placements) {
      const target = this.direct(context, placement);
      let buffer: ArenaBuffer | undefined;
      try {
        if (!target) buffer = scratch(context.engine, placement.bits);
        this.container.iommufd.hwptGetDirtyBitmap({
          hwptId: this.hwpt.id, iova: placement.iova, length: placement.size, pageSize, bitmap: target ?? buffer!.bytes(), noClear,
        });
        if (buffer) merges.push({ tracker: this, buffer, pageSize, iova: placement.iova, bits: placement.bits, targets: [placement] });
      } catch (error) {
        buffer?.free();
        context.failed(this, [placement], error as Error);
      }
    }
  }
}

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

const U64_END = 1n << 64n;

/**
 * The IOVA window DMA logging covers: the usable IOVA ranges, aligned inward to `pageSize` and
 * ending at most at 2^64 - pageSize (DMA_LOGGING_START refuses iova + length past ULONG_MAX).
 */
/** True when one of `ranges` holds all of [iova, iova + size). */
export function rangesCover(ranges: readonly DmaLoggingRange[], iova: bigint, size: bigint): boolean {
  return ranges.some((r) => r.iova <= iova && iova + size <= r.iova + r.length);
}

export function loggingWindow(ranges: readonly IovaRange[], pageSize: bigint): DmaLoggingRange[] {
  const out: DmaLoggingRange[] = [];
  for (const r of ranges) {
    const start = ((r.start + pageSize - 1n) / pageSize) * pageSize;
    let end = ((r.last + 1n) / pageSize) * pageSize;
    if (end > U64_END - pageSize) end = U64_END - pageSize;
    if (end > start) out.push({ iova: start, length: end - start });
  }
  return out;
}

/**
 * A device's own DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*), as QEMU does it: started once
 * over coarse ranges covering every IOVA the device could be given, never restarted by mapping
 * changes. A REPORT covers whole device pages, and reading one clears it for every mapping in
 * it: so one REPORT goes over each group of mappings that share device pages, and its bits are
 * ORed into each of them.
 */
export class DeviceLoggingTracker extends Tracker {
  readonly kind = 'dma-logging' as const;
  readonly name: string;
  /** The page size the device chose at START. */
  pageSize = 0n;
  /** The ranges logging was started with. */
  ranges: readonly DmaLoggingRange[] = [];
  private logging = false;

  /** `maxRanges`: the kernel's LOG_MAX_RANGES at the host's page size (uapi.dmaLoggingMaxRanges). */
  constructor(readonly device: Device, private readonly window: readonly DmaLoggingRange[], private readonly maxRanges = DMA_LOGGING_MAX_RANGES) {
    super();
    this.name = `device ${device.name}`;
    this.devices.push(device);
  }

  /** True when logging covers all of [iova, iova + size). */
  covers(iova: bigint, size: bigint): boolean {
    return rangesCover(this.ranges, iova, size);
  }

  start(context: TrackerContext): void {
    if (this.window.length === 0) throw new Error(`${this.device.name}: no IOVA window to log`);
    let maximum = this.maxRanges;
    for (;;) {
      const ranges = combineRanges(this.window, maximum);
      try {
        this.pageSize = this.device.handle.dmaLoggingStart(context.bitmap.pageSize, ranges);
        this.ranges = ranges;
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
  }

  stop(): void {
    const logging = this.logging;
    this.logging = false;
    if (logging) this.device.handle.dmaLoggingStop();
  }

  query(context: TrackerContext, placements: readonly BitmapPlacement[], merges: ScratchMerge[]): void {
    if (!this.logging) {
      context.failed(this, placements, new Error(`${this.device.name}: DMA logging is not running`));
      return;
    }
    const pageSize = context.bitmap.pageSize;
    for (const group of this.groups(placements)) {
      const first = group[0]!;
      const last = group[group.length - 1]!;
      const start = (first.iova / this.pageSize) * this.pageSize;
      const end = ((last.iova + last.size + this.pageSize - 1n) / this.pageSize) * this.pageSize;
      const bits = Number((end - start) / pageSize);
      // One mapping on whole device pages, on a word of its memory: the kernel writes in place.
      const target = group.length === 1 && start === first.iova && end === first.iova + first.size ? this.direct(context, first) : undefined;
      let buffer: ArenaBuffer | undefined;
      try {
        if (!target) buffer = scratch(context.engine, bits);
        // Reported at the migration page size: the kernel spreads each device page over its bits.
        this.device.handle.dmaLoggingReport({ iova: start, length: end - start, pageSize, bitmap: target ?? buffer!.bytes() });
        if (buffer) merges.push({ tracker: this, buffer, pageSize, iova: start, bits, targets: group });
      } catch (error) {
        buffer?.free();
        // What the device cleared before failing is unknown: everything it logs is dirty.
        context.failed(this, placements, error as Error);
        return;
      }
    }
  }

  /** Groups of placements (IOVA order) that share a device page. */
  groups(placements: readonly BitmapPlacement[]): BitmapPlacement[][] {
    const sorted = [...placements].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
    const groups: BitmapPlacement[][] = [];
    let lastPage = -1n;
    for (const p of sorted) {
      const firstPage = p.iova / this.pageSize;
      const endPage = (p.iova + p.size - 1n) / this.pageSize;
      const current = groups[groups.length - 1];
      if (current && firstPage <= lastPage) current.push(p);
      else groups.push([p]);
      if (endPage > lastPage) lastPage = endPage;
    }
    return groups;
  }
}

/** type1's VFIO_IOMMU_DIRTY_PAGES for a legacy container: every pinned page is reported dirty. */
export class Type1Tracker extends Tracker {
  readonly kind = 'type1' as const;
  readonly name: string;
  private started = false;

  constructor(readonly container: LegacyContainer, devices: readonly Device[]) {
    super();
    this.name = `type1 container of ${devices.map((d) => d.name).join(', ')}`;
    this.devices.push(...devices);
  }

  /** type1 only reports at the IOMMU's smallest page size. */
  get pageSize(): bigint {
    return this.container.minimumPageSize;
  }

  start(): void {
    this.container.handle.dirtyPagesStart();
    this.started = true;
  }

  stop(): void {
    const started = this.started;
    this.started = false;
    if (started && !this.container.handle.closed) this.container.handle.dirtyPagesStop();
  }

  query(context: TrackerContext, placements: readonly BitmapPlacement[], merges: ScratchMerge[]): void {
    if (this.retired || this.container.handle.closed) {
      context.failed(this, placements, new Error(`${this.name} is closed: its pages are reported dirty`));
      return;
    }
    const pageSize = this.pageSize;
    for (const placement of placements) {
      // type1 copies whole words over the caller's bitmap (not an OR): always a buffer of its own.
      const start = (placement.iova / pageSize) * pageSize;
      const end = ((placement.iova + placement.size + pageSize - 1n) / pageSize) * pageSize;
      const bits = Number((end - start) / pageSize);
      let buffer: ArenaBuffer | undefined;
      try {
        buffer = scratch(context.engine, bits);
        this.container.handle.dirtyPagesGetBitmap({ iova: start, length: end - start, pageSize, bitmap: buffer.bytes() });
        merges.push({ tracker: this, buffer, pageSize, iova: start, bits, targets: [placement] });
      } catch (error) {
        buffer?.free();
        context.failed(this, [placement], error as Error);
      }
    }
  }
}
