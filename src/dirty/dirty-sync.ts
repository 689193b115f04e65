import { Engine, MAXIMUM_BYTES, type ArenaBuffer, type ResampleSpec } from '../engine/index.js';
import { InvalidArgumentError } from '../kernel/errors.js';
import * as uapi from '../uapi/index.js';
import type { DmaLoggingRange, HostMemory, ProcessMemory, ProcessMemoryBlock } from '../kernel/types.js';
import type { AddressSpace, IovaSpan, MappingObserver } from '../vfio/address-space.js';
import type { Mapping, UnmapBitmap } from '../vfio/container.js';
import type { Device } from '../vfio/device.js';
import { IommufdContainer } from '../vfio/iommufd-container.js';
import { LegacyContainer } from '../vfio/legacy-container.js';
import { MigrationBitmap, type BitmapPlacement, type DirtyRange, type MemoryRegion, type Reservation } from './migration-bitmap.js';
import {
  DeviceLoggingTracker, IommuTracker, Type1Tracker, loggingWindow, rangesCover, scratch,
  type QueryFailure, type ScratchMerge, type Tracker, type TrackerContext,
} from './trackers.js';

export interface DirtySyncOptions {
  /** An engine to use (shared with other users); otherwise one is created with `workers`. */
  readonly engine?: Engine;
  /** Worker threads of the engine DirtySync creates (default: available cores). */
  readonly workers?: number;
  /** Migration page size (default 4 KiB). */
  readonly pageSize?: bigint;
  /**
   * Guest memory bytes the migration bitmap can hold (default: twice the memory mapped at start,
   * at least 1 GiB): room for memory mapped during migration. Fixed at start, so rounds never
   * grow it; a map of new memory beyond it is refused before the kernel sees it.
   */
  readonly capacityBytes?: bigint;
  /** Mark all guest memory dirty at start, so the first round hands over all of it (default true). */
  readonly initiallyDirty?: boolean;
  /**
   * A device nothing can track blocks `start()` (QEMU's migration blocker) unless this is true:
   * then all mapped memory is reported dirty every round (QEMU's `enable-migration=on`), and the
   * migration cannot converge.
   */
  readonly allowUntrackedDevices?: boolean;
  /**
   * The IOVA ranges device DMA logging covers, started once (default: every IOVA range the
   * device's container can map, so no later mapping falls outside). With narrower ranges, a map
   * outside them is refused while a logging device is tracked.
   */
  readonly dmaLoggingRanges?: readonly DmaLoggingRange[];
}

export interface RoundPhases {
  /** Kernel queries: GET_DIRTY_BITMAP, DMA logging reports, type1 dirty pages. */
  readonly queryMs: number;
  /** ORing scratch bitmaps (type1, unaligned mappings, shared device pages) into the migration bitmap. */
  readonly mergeMs: number;
  /** Scanning the migration bitmap into runs, handing them over and clearing them. */
  readonly scanMs: number;
}

export interface DirtyRound {
  readonly index: number;
  /** Pages that became dirty in this round's queries (were not already waiting in the bitmap). */
  readonly newlyDirtyPages: number;
  /**
   * Dirty pages this round handed over (what the consumer must send). They left the migration
   * bitmap as they were handed over; before 0.2 this was what was left in the bitmap until
   * markSent, the same number for a consumer that sent every run.
   */
  readonly dirtyPages: number;
  readonly dirtyBytes: bigint;
  /** Runs of dirty pages handed over. */
  readonly runCount: number;
  readonly phases: RoundPhases;
  readonly durationMs: number;
  /** Newly dirty bytes per second since the previous round (0 for the first). */
  readonly dirtyRateBytesPerSecond: number;
  /** Ranges whose source failed since the last round: reported all dirty, never skipped. */
  readonly failures: readonly QueryFailure[];
  /** Devices nothing can track (allowed with `allowUntrackedDevices`): all memory is dirty every round. */
  readonly untrackedDevices: readonly string[];
}

export interface RoundOptions {
  /**
   * Receives each chunk of runs as (start bit, length) pairs while it is valid (zero copy), with
   * the bit where the chunk's segment starts: translate a run with `rangesOfRun(base + start,
   * length)` (`base` is 0 below 2^31 pages, so `rangesOfRun(start, length)` is right there). Every run is handed over once: when the callback returns, its
   * pages have left the migration bitmap (give pages back with `redirty`). If it throws, the
   * round stops and rejects with that error; the runs of that chunk and of the chunks not yet
   * handed over stay in the bitmap for the next round.
   */
  readonly onRuns?: (runs: Uint32Array, count: number, base: number) => void;
}

/** A device nothing can track blocks migration (QEMU's migration blocker). */
export class MigrationBlockedError extends Error {
  constructor(readonly devices: readonly { name: string; reason: string }[]) {
    super(
      `migration is blocked: ${devices.map((d) => `${d.name} (${d.reason})`).join('; ')}; ` +
        'pass allowUntrackedDevices: true to send all of their memory every round instead',
    );
    this.name = 'MigrationBlockedError';
  }
}

function untrackedReason(device: Device): string {
  if (device.attachedToIoas) return 'attached to the kernel\'s own IOMMU domain, which has no dirty tracking, and no DMA logging';
  if (device.backend === 'legacy') return 'its type1 container has no dirty page tracking and it has no DMA logging';
  return 'its IOMMU has no dirty tracking and it has no DMA logging';
}

class ConsumerError {
  constructor(readonly error: unknown) {}
}

/**
 * The precopy loop's dirty-page sync for every device of an address space. The migration
 * bitmap belongs to guest memory (one bitmap per memory region, QEMU's RAMBlock bitmaps); a
 * round asks every tracker for the dirty pages of every mapping, ORs them into the memory they
 * cover, and hands the dirty runs over: they leave the bitmap as they are handed over (QEMU's
 * test-and-clear before sending). Bits that arrive between rounds (a NO_CLEAR read before an
 * unmap, a device log drained at detach, memory newly mapped) wait for the next round.
 *
 * No dirty page is lost: a bit read (and cleared) from the kernel reaches the migration bitmap
 * or its whole range is marked dirty, whatever fails afterwards; trackers start and retire with
 * the devices that attach and detach during migration.
 */
export class DirtySync {
  private engine: Engine | undefined;
  private ownsEngine = false;
  /** Ends the kernel's use of the engine's memory (Kernel.shareProcessMemory), when it has it. */
  private unshareMemory: (() => void) | undefined;
  private bitmapStore: MigrationBitmap | undefined;
  private trackers: Tracker[] = [];
  private untracked: Device[] = [];
  private failures: QueryFailure[] = [];
  /** Opens the queue held by a gated hook (from a before-hook to its after- or aborted-hook). */
  private gateOpen: (() => void) | undefined;
  private detachObserver: (() => void) | undefined;
  private roundIndex = 0;
  private lastRoundEnd = 0;
  private running = false;
  private stopping = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly space: AddressSpace, private readonly options: DirtySyncOptions = {}) {
    const pageSize = options.pageSize ?? 4096n;
    if (typeof pageSize !== 'bigint' || pageSize < 4096n || (pageSize & (pageSize - 1n)) !== 0n) {
      throw new InvalidArgumentError('pageSize', `must be a bigint power of two of at least 4096, got ${String(pageSize)}`);
    }
  }

  get started(): boolean {
    return this.running;
  }

  get bitmap(): MigrationBitmap {
    if (!this.bitmapStore) throw new InvalidArgumentError('DirtySync', 'is not started');
    return this.bitmapStore;
  }

  /** The trackers now, per device: what tracks whom. */
  get sources(): { kind: string; name: string; devices: string[] }[] {
    return [
      ...this.trackers.map((t) => ({ kind: t.kind, name: t.name, devices: t.devices.map((d) => d.name) })),
      ...this.untracked.map((d) => ({ kind: 'none', name: `device ${d.name}`, devices: [d.name] })),
    ];
  }

  /** The guest memory regions the migration bitmap holds. */
  get regions(): readonly MemoryRegion[] {
    return this.bitmap.regions;
  }

  /**
   * Builds the migration bitmap and starts a tracker for every device; a failure stops the ones
   * started. A device nothing can track blocks the start (MigrationBlockedError) before any
   * ioctl, unless `allowUntrackedDevices`.
   */
  start(): Promise<void> {
    return this.serialize(async () => {
      if (this.running) throw new InvalidArgumentError('DirtySync', 'is already started');
      if (this.space.devices.length === 0) throw new InvalidArgumentError('DirtySync', 'the address space has no devices to track');
      if (this.space.mappings.length === 0) throw new InvalidArgumentError('DirtySync', 'the address space has nothing mapped');
      this.checkBlockers(this.space.devices);
      const pageSize = this.options.pageSize ?? 4096n;
      const memories = new Set<HostMemory>(this.space.mappings.map((m) => m.memory));
      const memoryBytes = [...memories].reduce((sum, m) => sum + m.length, 0n);
      const capacity = this.options.capacityBytes ?? (memoryBytes * 2n > 1n << 30n ? memoryBytes * 2n : 1n << 30n);
      if (capacity < memoryBytes) throw new InvalidArgumentError('capacityBytes', `0x${capacity.toString(16)} is less than the 0x${memoryBytes.toString(16)} bytes of memory mapped`);
      this.engine = this.options.engine ?? (await Engine.create({ workers: this.options.workers }));
      this.ownsEngine = !this.options.engine;
      try {
        this.bitmapStore = new MigrationBitmap(this.engine, pageSize, capacity);
        // Before any tracker starts: the state it makes the kernel keep can then sit in the
        // memory its bitmaps are read into.
        this.unshareMemory = this.space.kernel.shareProcessMemory?.(kernelShare(this.engine, capacityBitmapBytes(this.bitmapStore)));
        // In the address space's queue: no map, unmap, attach or detach is half done while the
        // mappings and devices are read and the observer joins.
        await this.space.exclusive(() => {
          this.checkBlockers(this.space.devices);
          const bitmap = this.bitmap;
          for (const mapping of this.space.mappings) bitmap.commit(bitmap.reserve(mapping));
          try {
            for (const device of this.space.devices) this.adopt(device, false);
          } catch (error) {
            this.stopTrackers();
            throw error;
          }
          if (this.options.initiallyDirty ?? true) for (const region of bitmap.regions) bitmap.markRegion(region);
          this.detachObserver = this.space.addObserver(this.observer());
        });
      } catch (error) {
        await this.teardown().catch(() => undefined);
        throw error;
      }
      this.running = true;
      this.stopping = false;
      this.roundIndex = 0;
      this.lastRoundEnd = performance.now();
    });
  }

  /** One sync round: query every source, merge, and hand the dirty runs over. */
  round(options: RoundOptions = {}): Promise<DirtyRound> {
    if (options === null || typeof options !== 'object') return Promise.reject(new InvalidArgumentError('round options', 'must be an object'));
    if (options.onRuns !== undefined && typeof options.onRuns !== 'function') {
      return Promise.reject(new InvalidArgumentError('onRuns', `must be a function (runs, count) => void, got ${typeof options.onRuns}`));
    }
    return this.serialize(() => this.roundNow(options));
  }

  /** Rounds until stop() is called. */
  async *rounds(options: RoundOptions = {}): AsyncGenerator<DirtyRound> {
    while (this.running && !this.stopping) yield await this.round(options);
  }

  /**
   * Gives pages back: the consumer could not send them. They are handed over again by the next
   * round. Takes a range from `rangesOfRun` (or any memory, offset and length).
   */
  redirty(range: { readonly memory: HostMemory; readonly offset: bigint; readonly length: bigint }): Promise<void> {
    return this.serialize(async () => {
      const bitmap = this.bitmap;
      const region = range && bitmap.regionOf(range.memory);
      if (!region) throw new InvalidArgumentError('redirty', 'the memory is not in the migration bitmap');
      if (typeof range.offset !== 'bigint' || typeof range.length !== 'bigint' || range.offset < 0n || range.length <= 0n || range.offset + range.length > range.memory.length) {
        throw new InvalidArgumentError('redirty', `offset and length must be bigints inside the memory's 0x${range.memory.length.toString(16)} bytes`);
      }
      const first = Number(range.offset / bitmap.pageSize);
      const end = Number((range.offset + range.length + bitmap.pageSize - 1n) / bitmap.pageSize);
      bitmap.markBits(region.bit + first, end - first);
    });
  }

  /**
   * @deprecated Rounds hand their pages over as they report them; nothing is left to clear.
   * Kept callable: it clears nothing (it used to clear bits no round had reported).
   */
  markSent(_bit: number, _length: number): void {}

  /**
   * @deprecated Rounds hand their pages over as they report them. Waits for earlier rounds and
   * clears nothing (it used to wipe bits that arrived after the round).
   */
  markAllSent(): Promise<void> {
    return this.serialize(async () => undefined);
  }

  /** The memory ranges (and IOVAs) of a run of the migration bitmap. */
  rangesOfRun(bit: number, length: number): DirtyRange[] {
    return this.bitmap.rangesOfRun(bit, length);
  }

  /** Stops every tracker. Call round() once more before, for the stop-and-copy round. */
  stop(): Promise<void> {
    this.stopping = true;
    return this.serialize(async () => {
      if (!this.running) return;
      this.running = false;
      await this.teardown();
    });
  }

  private serialize<T>(operation: () => Promise<T>): Promise<T> {
    const run = this.queue.then(operation);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Runs `body` in the queue and keeps the queue held until `release()`: no round runs between
   * a before-hook and its after-hook. If `body` throws, nothing is held.
   */
  private hold(body: () => void): Promise<void> {
    return new Promise<void>((entered, refused) => {
      void this.serialize(async () => {
        try {
          body();
        } catch (error) {
          refused(error);
          return;
        }
        const gate = new Promise<void>((open) => (this.gateOpen = open));
        entered();
        await gate;
      });
    });
  }

  private release(): void {
    const open = this.gateOpen;
    this.gateOpen = undefined;
    open?.();
  }

  private checkBlockers(devices: readonly Device[]): void {
    if (this.options.allowUntrackedDevices) return;
    const blocked = devices.filter((d) => d.dirtyTracker === 'none');
    if (blocked.length) throw new MigrationBlockedError(blocked.map((d) => ({ name: d.name, reason: untrackedReason(d) })));
  }

  private context(): TrackerContext {
    const bitmap = this.bitmap;
    return {
      bitmap,
      engine: this.engine!,
      failed: (tracker, placements, error) => {
        for (const p of placements) {
          this.failures.push({ tracker: tracker.name, iova: p.iova, length: p.size, error });
          bitmap.markPlacement(p);
        }
      },
    };
  }

  private windowFor(device: Device): DmaLoggingRange[] {
    if (this.options.dmaLoggingRanges) return [...this.options.dmaLoggingRanges];
    return loggingWindow(device.container.iovaRanges, this.bitmap.pageSize);
  }

  /**
   * Starts tracking a device: joins the tracker of its HWPT or container, or starts one. A new
   * tracker during migration marks all mapped memory dirty once (the device could write before
   * its tracker started).
   */
  private adopt(device: Device, markNew: boolean): void {
    const context = this.context();
    const markAll = () => {
      if (markNew) for (const p of this.bitmap.placements) this.bitmap.markPlacement(p);
    };
    switch (device.dirtyTracker) {
      case 'none':
        this.checkBlockers([device]);
        this.untracked.push(device);
        return;
      case 'iommu': {
        const container = device.container as IommufdContainer;
        const existing = this.trackers.find((t): t is IommuTracker => t instanceof IommuTracker && t.hwpt === device.hwpt);
        if (existing) {
          existing.devices.push(device);
          return;
        }
        const tracker = new IommuTracker(container, device.hwpt!, [device]);
        tracker.start();
        this.trackers.push(tracker);
        markAll();
        return;
      }
      case 'dma-logging': {
        const window = this.windowFor(device);
        // DMA outside the logged ranges would never be reported: refuse before logging starts.
        for (const mapping of this.space.mappings) {
          if (!rangesCover(window, mapping.iova, mapping.size)) {
            throw new InvalidArgumentError('dmaLoggingRanges', `0x${mapping.iova.toString(16)}+0x${mapping.size.toString(16)} is mapped but outside the IOVA ranges ${device.name} would log DMA for`);
          }
        }
        const tracker = new DeviceLoggingTracker(device, window, uapi.dmaLoggingMaxRanges(Number(this.space.kernel.systemPageSize ?? 4096n)));
        tracker.start(context);
        this.trackers.push(tracker);
        markAll();
        return;
      }
      case 'type1': {
        const container = device.container as LegacyContainer;
        const existing = this.trackers.find((t): t is Type1Tracker => t instanceof Type1Tracker && t.container === container);
        if (existing) {
          existing.devices.push(device);
          return;
        }
        const tracker = new Type1Tracker(container, [device]);
        tracker.start();
        this.trackers.push(tracker);
        markAll();
        return;
      }
    }
  }

  /**
   * Stops tracking a device. A tracker left with no device takes its last bits first (the device
   * is off its page table: nothing more can arrive) and retires.
   */
  private retire(device: Device, drain: boolean): void {
    this.untracked = this.untracked.filter((d) => d !== device);
    const context = this.context();
    for (const tracker of [...this.trackers]) {
      const at = tracker.devices.indexOf(device);
      if (at === -1) continue;
      tracker.devices.splice(at, 1);
      if (tracker.devices.length > 0) continue;
      if (drain) {
        const merges: ScratchMerge[] = [];
        tracker.query(context, this.bitmap.placements, merges);
        this.applyMergesNow(merges);
      }
      try {
        tracker.stop();
      } catch (error) {
        // Its bits were taken: a stop that fails loses nothing, but say so.
        this.failures.push({ tracker: tracker.name, iova: 0n, length: 0n, error: error as Error });
      }
      tracker.retired = true;
      this.trackers.splice(this.trackers.indexOf(tracker), 1);
    }
  }

  private spec(merge: ScratchMerge, target: BitmapPlacement): ResampleSpec {
    const bitmap = this.bitmap;
    bitmap.noteWritten(target);
    return {
      destination: target.buffer, destinationPageSize: bitmap.pageSize, destinationBit: target.bit, destinationBits: target.bits,
      source: merge.buffer, sourcePageSize: merge.pageSize, sourceBit: 0, sourceBits: merge.bits,
      sourceIovaOffset: merge.iova - target.iova,
    };
  }

  /** ORs scratch bitmaps in, in the workers; a target whose merge fails is marked all dirty. */
  private async applyMerges(merges: ScratchMerge[]): Promise<void> {
    const context = this.context();
    try {
      for (const merge of merges) {
        for (const target of merge.targets) {
          const spec = this.spec(merge, target);
          try {
            await this.engine!.resample(spec);
          } catch {
            // The workers failed: the bits are still in shared memory, do it on this thread.
            try {
              this.engine!.sync.resample(spec);
            } catch (error) {
              context.failed(merge.tracker, [target], error as Error);
            }
          }
        }
      }
    } finally {
      for (const merge of merges) merge.buffer.free();
    }
  }

  /** The same on this thread, for hooks that run while the queue is held. */
  private applyMergesNow(merges: ScratchMerge[]): void {
    const context = this.context();
    for (const merge of merges) {
      for (const target of merge.targets) {
        try {
          this.engine!.sync.resample(this.spec(merge, target));
        } catch (error) {
          context.failed(merge.tracker, [target], error as Error);
        }
      }
      merge.buffer.free();
    }
  }

  private async roundNow(options: RoundOptions): Promise<DirtyRound> {
    if (!this.running) throw new InvalidArgumentError('DirtySync', 'is not started');
    const engine = this.engine!;
    const bitmap = this.bitmap;
    const context = this.context();
    const placements = bitmap.placements;
    const begin = performance.now();

    // Query: each kernel writes straight into shared memory. Sources that only set bits (HWPT,
    // DMA logging) write into their memory's bits where a mapping sits on a word; the rest into
    // scratch buffers, ORed in below. Newly dirty = the count after the round less before it.
    let before = 0;
    // A segment handed over in full and not written since holds nothing: no pass to count it.
    for (const segment of bitmap.segments) {
      if (segment.buffer && segment.usedBits && !segment.clean) before += await countBits(engine, segment.buffer, segment.usedBits);
    }
    const merges: ScratchMerge[] = [];
    for (const tracker of this.trackers) tracker.query(context, placements, merges);
    if (this.untracked.length) for (const p of placements) bitmap.markPlacement(p);
    const queried = performance.now();

    try {
      await this.applyMerges(merges);
    } catch (error) {
      // Whatever broke after the queries: what they read is not known to be merged.
      for (const merge of merges) context.failed(merge.tracker, merge.targets, error as Error);
    }
    const mergedAt = performance.now();
    // A write while the runs are handed over (a consumer marking bits from onRuns) may leave bits
    // behind the spans: then no segment is known clean after this round.
    const writesBeforeScan = bitmap.writes;

    // Scan and hand over, segment by segment. Each chunk's span [first run start, last run end)
    // holds only its runs (and zeros): cleared once the consumer has taken the chunk.
    const handed: [ArenaBuffer, number, number][] = [];
    let dirtyPages = 0;
    let runCount = 0;
    // Spans hold only their runs' bits, so what a span clears is the pages it handed over.
    const clearHanded = (): number => {
      let cleared = 0;
      for (const [buffer, start, end] of handed) cleared += engine.sync.clearCounting(buffer, start, end);
      handed.length = 0;
      return cleared;
    };
    try {
      for (const segment of bitmap.segments) {
        const buffer = segment.buffer;
        const bits = segment.usedBits;
        if (!buffer || bits === 0) continue;
        const take = (runs: Uint32Array, count: number) => {
          if (count === 0) return;
          try {
            options.onRuns?.(runs, count, segment.base);
          } catch (error) {
            throw new ConsumerError(error);
          }
          runCount += count;
          handed.push([buffer, runs[0]!, runs[2 * (count - 1)]! + runs[2 * (count - 1) + 1]!]);
        };
        try {
          for await (const chunk of engine.scanRuns(buffer, bits)) take(chunk.runs, chunk.count);
        } catch (error) {
          if (error instanceof ConsumerError) throw error;
          // A worker failure the pool could not redo: clear what was handed over, scan the rest
          // of this segment on this thread (so no run is handed over twice).
          dirtyPages += clearHanded();
          const output = engine.arena.allocate(1 << 20, 64);
          try {
            for (let cursor = 0; cursor < bits; ) {
              const step = engine.sync.scanRuns(buffer, bits, cursor, output);
              cursor = step.cursor;
              take(step.runs, step.count);
            }
          } finally {
            output.free();
          }
        }
      }
    } catch (error) {
      clearHanded();
      if (error instanceof ConsumerError) throw error.error;
      throw error;
    }
    dirtyPages += clearHanded();
    // Every run of every segment was handed over and cleared: nothing is left below usedBits.
    if (bitmap.writes === writesBeforeScan) for (const segment of bitmap.segments) if (segment.buffer) bitmap.handedOver(segment);
    bitmap.releaseIdle();

    const newly = Math.max(0, dirtyPages - before);
    const end = performance.now();
    const sinceLast = (end - this.lastRoundEnd) / 1000;
    this.lastRoundEnd = end;
    const pageSize = bitmap.pageSize;
    const failures = this.failures;
    this.failures = [];
    return {
      index: this.roundIndex++,
      newlyDirtyPages: newly,
      dirtyPages,
      dirtyBytes: BigInt(dirtyPages) * pageSize,
      runCount,
      phases: { queryMs: queried - begin, mergeMs: mergedAt - queried, scanMs: end - mergedAt },
      durationMs: end - begin,
      dirtyRateBytesPerSecond: this.roundIndex > 1 && sinceLast > 0 ? (newly * Number(pageSize)) / sinceLast : 0,
      failures,
      untrackedDevices: this.untracked.map((d) => d.name),
    };
  }

  /**
   * Keeps dirty state across mapping and device changes during migration. Before-hooks hold the
   * queue until their after-hook, so no round sees a change half done; after-hooks run while
   * the queue is held and so never queue themselves.
   */
  private observer(): MappingObserver {
    const reservations = new Map<Mapping, Reservation>();
    const type1Scratch = new Map<LegacyContainer, { buffer: ArenaBuffer; span: IovaSpan; pageSize: bigint }>();
    const freeScratch = () => {
      for (const { buffer } of type1Scratch.values()) buffer.free();
      type1Scratch.clear();
    };
    const mergeType1 = (mappings: readonly Mapping[], bitmaps: ReadonlyMap<LegacyContainer, UnmapBitmap>) => {
      const merges: ScratchMerge[] = [];
      for (const [container] of bitmaps) {
        const scratch = type1Scratch.get(container);
        const tracker = this.trackers.find((t) => t instanceof Type1Tracker && t.container === container);
        if (!scratch || !tracker) continue;
        type1Scratch.delete(container);
        const targets = mappings.flatMap((m) => this.bitmap.placementsOf(m));
        merges.push({ tracker, buffer: scratch.buffer, pageSize: scratch.pageSize, iova: scratch.span.iova, bits: Number((scratch.span.size + scratch.pageSize - 1n) / scratch.pageSize), targets });
      }
      this.applyMergesNow(merges);
    };
    return {
      beforeMap: (mapping) =>
        this.hold(() => {
          if (!this.running) return;
          for (const tracker of this.trackers) {
            if (tracker instanceof DeviceLoggingTracker && !tracker.covers(mapping.iova, mapping.size)) {
              throw new InvalidArgumentError('map', `0x${mapping.iova.toString(16)}+0x${mapping.size.toString(16)} is outside the IOVA ranges ${tracker.device.name} logs DMA for; logging is never restarted during migration (widen dmaLoggingRanges)`);
            }
          }
          reservations.set(mapping, this.bitmap.reserve(mapping));
        }),
      mapAborted: (mapping) => {
        const reservation = reservations.get(mapping);
        reservations.delete(mapping);
        if (reservation && this.running) this.bitmap.cancel(reservation);
        this.release();
      },
      afterMap: (mapping) => {
        try {
          const reservation = reservations.get(mapping);
          reservations.delete(mapping);
          if (reservation && this.running) {
            this.bitmap.commit(reservation);
            // Memory never seen before has never been sent: all of it is dirty.
            if (reservation.newRegion) this.bitmap.markRegion(reservation.region);
          }
        } finally {
          this.release();
        }
      },
      beforeUnmap: (_span, mappings) =>
        this.hold(() => {
          if (!this.running) return;
          const placements = mappings.flatMap((m) => this.bitmap.placementsOf(m));
          const merges: ScratchMerge[] = [];
          for (const tracker of this.trackers) if (tracker instanceof IommuTracker) tracker.readBeforeUnmap(this.context(), placements, merges);
          this.applyMergesNow(merges);
        }),
      type1UnmapBitmap: (container, span) => {
        if (!this.running || !this.trackers.some((t) => t instanceof Type1Tracker && t.container === container)) return undefined;
        const pageSize = container.minimumPageSize;
        const pages = Number((span.size + pageSize - 1n) / pageSize);
        const buffer = scratch(this.engine!, pages);
        type1Scratch.set(container, { buffer, span, pageSize });
        return { pageSize, bitmap: buffer.bytes() };
      },
      unmapAborted: (_span, mappings, bitmaps) => {
        try {
          // Containers that did unmap read and cleared their dirty bits: keep them.
          if (this.running) mergeType1(mappings, bitmaps);
        } finally {
          freeScratch();
          this.release();
        }
      },
      afterUnmap: (_span, mappings, bitmaps) => {
        try {
          if (!this.running) return;
          mergeType1(mappings, bitmaps);
          // Device logs are read now (the device could DMA until the unmap), over every mapping
          // sharing a device page with what went: reading a device page clears it for all of them.
          const gone = new Set(mappings);
          const context = this.context();
          const merges: ScratchMerge[] = [];
          for (const tracker of this.trackers) {
            if (!(tracker instanceof DeviceLoggingTracker)) continue;
            const groups = tracker.groups(this.bitmap.placements).filter((g) => g.some((p) => gone.has(p.mapping)));
            if (groups.length) tracker.query(context, groups.flat(), merges);
          }
          this.applyMergesNow(merges);
          for (const mapping of mappings) this.bitmap.remove(mapping);
          this.bitmap.releaseIdle();
        } finally {
          freeScratch();
          this.release();
        }
      },
      afterAttach: (device) =>
        this.serialize(async () => {
          if (this.running) this.adopt(device, true);
        }),
      attachAborted: (device) =>
        this.serialize(async () => {
          if (this.running) this.retire(device, true);
        }),
      beforeDetach: () => this.hold(() => undefined),
      deviceLeaving: (device) => {
        if (this.running) this.retire(device, true);
      },
      detachAborted: (device) => {
        try {
          // The device is back where it was: track it again (its memory is marked dirty once).
          if (this.running && !this.sources.some((s) => s.devices.includes(device.name))) {
            try {
              this.adopt(device, true);
            } catch (error) {
              this.untracked.push(device);
              this.failures.push({ tracker: `device ${device.name}`, iova: 0n, length: 0n, error: error as Error });
            }
          }
        } finally {
          this.release();
        }
      },
      afterDetach: () => this.release(),
    };
  }

  private stopTrackers(): unknown[] {
    const errors: unknown[] = [];
    for (const tracker of [...this.trackers].reverse()) {
      try {
        tracker.stop();
      } catch (error) {
        errors.push(error);
      }
      tracker.retired = true;
    }
    this.trackers = [];
    this.untracked = [];
    return errors;
  }

  private async teardown(): Promise<void> {
    const errors = this.stopTrackers();
    this.detachObserver?.();
    this.detachObserver = undefined;
    // The kernel moves its state out before the engine's memory can go.
    try {
      this.unshareMemory?.();
    } catch (error) {
      errors.push(error);
    }
    this.unshareMemory = undefined;
    this.bitmapStore?.close();
    this.bitmapStore = undefined;
    if (this.ownsEngine) await this.engine?.close();
    this.engine = undefined;
    if (errors.length) throw errors[0];
  }
}

/** The most of an engine's memory the kernel may hold. */
const KERNEL_SHARE_BYTES = 1 << 30;
/** What the engine keeps free beyond the migration bitmap's full capacity: scan outputs, scratch bitmaps. */
const ENGINE_HEADROOM_BYTES = 512 << 20;
/** Bytes of an engine's memory lent to kernels, by engine (several DirtySyncs may share one). */
const lentBytes = new WeakMap<Engine, { held: number }>();

/** Bytes of every segment of the migration bitmap, allocated or not (they are allocated as regions need them). */
function capacityBitmapBytes(bitmap: MigrationBitmap): number {
  return bitmap.segments.reduce((total, segment) => total + segment.bits / 8, 0);
}

/**
 * The engine's memory as offered to the kernel: its arena, up to KERNEL_SHARE_BYTES per engine
 * and never into the room the migration bitmap may still need at its full capacity.
 */
function kernelShare(engine: Engine, bitmapBytes: number): ProcessMemory {
  let lent = lentBytes.get(engine);
  if (!lent) lentBytes.set(engine, (lent = { held: 0 }));
  const account = lent;
  const limit = Math.max(0, Math.min(KERNEL_SHARE_BYTES, MAXIMUM_BYTES - bitmapBytes - ENGINE_HEADROOM_BYTES));
  return {
    memory: engine.memory,
    allocate(bytes: number): ProcessMemoryBlock | undefined {
      if (account.held + bytes > limit) return undefined;
      let buffer: ArenaBuffer;
      try {
        buffer = engine.arena.allocate(bytes, 64);
      } catch {
        return undefined; // the arena is full: the kernel keeps its own arrays
      }
      account.held += buffer.byteLength;
      let freed = false;
      return {
        offset: buffer.offset,
        free() {
          if (freed) return;
          freed = true;
          account.held -= buffer.byteLength;
          buffer.free();
        },
      };
    },
  };
}

async function countBits(engine: Engine, buffer: ArenaBuffer, bits: number): Promise<number> {
  try {
    return await engine.popcount(buffer, 0, bits);
  } catch {
    return engine.sync.popcount(buffer, 0, bits);
  }
}
