import { Engine, type ArenaBuffer, type BitmapLike } from '../engine/index.js';
import { InvalidArgumentError } from '../kernel/errors.js';
import type { AddressSpace, IovaSpan, MappingObserver } from '../vfio/address-space.js';
import type { Mapping, UnmapBitmap } from '../vfio/container.js';
import type { Device } from '../vfio/device.js';
import { IommufdContainer } from '../vfio/iommufd-container.js';
import { LegacyContainer } from '../vfio/legacy-container.js';
import { MigrationBitmap, type BitmapPlacement, type DirtyRange } from './migration-bitmap.js';
import {
  DeviceLoggingTracker, IommuTracker, Type1Tracker, type QueryFailure, type Tracker, type TrackerContext,
} from './trackers.js';

export interface DirtySyncOptions {
  /** An engine to use (shared with other users); otherwise one is created with `workers`. */
  readonly engine?: Engine;
  /** Worker threads of the engine DirtySync creates (default: available cores). */
  readonly workers?: number;
  /** Migration page size (default 4 KiB). */
  readonly pageSize?: bigint;
  /**
   * IOVA bytes the migration bitmap can hold (default: twice what is mapped at start, at
   * least 1 GiB): room for mappings added during migration. Fixed at start, so rounds never
   * allocate.
   */
  readonly capacityBytes?: bigint;
  /** Mark every mapped page dirty at start, so the first round sends all of memory (default true). */
  readonly initiallyDirty?: boolean;
}

export interface RoundPhases {
  /** Kernel queries: GET_DIRTY_BITMAP, DMA logging reports, type1 dirty pages. */
  readonly queryMs: number;
  /** Merge (and resample) into the migration bitmap, counting newly dirty pages. */
  readonly mergeMs: number;
  /** Scanning the migration bitmap into runs. */
  readonly scanMs: number;
}

export interface DirtyRound {
  readonly index: number;
  /** Pages that became dirty in this round (were clean in the migration bitmap before it). */
  readonly newlyDirtyPages: number;
  /** Dirty pages in the migration bitmap after the round: what is left to send. */
  readonly dirtyPages: number;
  readonly dirtyBytes: bigint;
  /** Runs of dirty pages, found by the round's scan. */
  readonly runCount: number;
  readonly phases: RoundPhases;
  readonly durationMs: number;
  /** Newly dirty bytes per second since the previous round (0 for the first). */
  readonly dirtyRateBytesPerSecond: number;
  /** Ranges whose source failed: reported all dirty, never skipped. */
  readonly failures: readonly QueryFailure[];
  /** Devices nothing can track: their ranges are all dirty every round, so migration cannot converge. */
  readonly untrackedDevices: readonly string[];
}

export interface RoundOptions {
  /**
   * Receives each chunk of runs as (start bit, length) pairs while it is valid (zero copy).
   * Translate with `rangesOfRun`.
   */
  readonly onRuns?: (runs: Uint32Array, count: number) => void;
}

/**
 * The precopy loop's dirty-page sync for every device of an address space. Each round asks
 * every tracker for the dirty pages of every mapped range, merges them into one migration
 * bitmap in the engine's workers, and returns what is dirty. The consumer sends pages and
 * clears what it sent.
 *
 * No dirty page is lost: a bit read (and cleared) from the kernel reaches the migration bitmap
 * or its whole range is marked dirty, whatever fails afterwards.
 */
export class DirtySync {
  private engine: Engine | undefined;
  private ownsEngine = false;
  private bitmapStore: MigrationBitmap | undefined;
  private trackers: Tracker[] = [];
  private untracked: Device[] = [];
  private failures: QueryFailure[] = [];
  /** Releases the round queue held from beforeUnmap to afterUnmap (or unmapAborted). */
  private unmapGate: (() => void) | undefined;
  private detachObserver: (() => void) | undefined;
  private roundIndex = 0;
  private lastRoundEnd = 0;
  private running = false;
  private stopping = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly space: AddressSpace, private readonly options: DirtySyncOptions = {}) {
    const pageSize = options.pageSize ?? 4096n;
    if (pageSize < 4096n || (pageSize & (pageSize - 1n)) !== 0n) {
      throw new InvalidArgumentError('pageSize', `must be a power of two of at least 4096, got ${pageSize}`);
    }
  }

  get started(): boolean {
    return this.running;
  }

  get bitmap(): MigrationBitmap {
    if (!this.bitmapStore) throw new InvalidArgumentError('DirtySync', 'is not started');
    return this.bitmapStore;
  }

  /** The trackers chosen at start, per device: what tracks whom. */
  get sources(): { kind: string; name: string; devices: string[] }[] {
    return [
      ...this.trackers.map((t) => ({ kind: t.kind, name: t.name, devices: t.devices.map((d) => d.name) })),
      ...this.untracked.map((d) => ({ kind: 'none', name: `device ${d.name}`, devices: [d.name] })),
    ];
  }

  /** Builds the migration bitmap and starts every tracker; a failure stops the ones started. */
  start(): Promise<void> {
    return this.serialize(async () => {
      if (this.running) throw new InvalidArgumentError('DirtySync', 'is already started');
      if (this.space.devices.length === 0) throw new InvalidArgumentError('DirtySync', 'the address space has no devices to track');
      if (this.space.mappings.length === 0) throw new InvalidArgumentError('DirtySync', 'the address space has nothing mapped');
      const pageSize = this.options.pageSize ?? 4096n;
      const mapped = this.space.mappings.reduce((sum, m) => sum + m.size, 0n);
      const capacity = this.options.capacityBytes ?? (mapped * 2n > 1n << 30n ? mapped * 2n : 1n << 30n);
      if (capacity < mapped) throw new InvalidArgumentError('capacityBytes', `0x${capacity.toString(16)} is less than the 0x${mapped.toString(16)} bytes mapped`);
      this.engine = this.options.engine ?? (await Engine.create({ workers: this.options.workers }));
      this.ownsEngine = !this.options.engine;
      const bitmap = new MigrationBitmap(this.engine, pageSize, capacity);
      this.bitmapStore = bitmap;
      try {
        for (const mapping of this.space.mappings) bitmap.place(mapping.iova, mapping.size);
        this.trackers = this.chooseTrackers();
        this.untracked = this.space.devices.filter((d) => d.dirtyTracker === 'none');
        const context = this.context();
        const started: Tracker[] = [];
        try {
          for (const tracker of this.trackers) {
            tracker.start(context);
            started.push(tracker);
          }
        } catch (error) {
          for (const tracker of started.reverse()) {
            try {
              tracker.stop();
            } catch {
              // rolling back: the first error is the one to report
            }
          }
          throw error;
        }
        if (this.options.initiallyDirty ?? true) for (const p of bitmap.mappings) this.engine.sync.setRange(bitmap.buffer, p.bit, p.bit + p.bits);
      } catch (error) {
        await this.teardown();
        throw error;
      }
      this.detachObserver = this.space.addObserver(this.observer());
      this.running = true;
      this.stopping = false;
      this.roundIndex = 0;
      this.lastRoundEnd = performance.now();
    });
  }

  /** One sync round. */
  round(options: RoundOptions = {}): Promise<DirtyRound> {
    return this.serialize(() => this.roundNow(options));
  }

  /** Rounds until stop() is called. */
  async *rounds(options: RoundOptions = {}): AsyncGenerator<DirtyRound> {
    while (this.running && !this.stopping) yield await this.round(options);
  }

  /** Clears pages the consumer has sent: bits [bit, bit + length) of the migration bitmap. */
  markSent(bit: number, length: number): void {
    this.engine!.sync.clear(this.bitmap.buffer, bit, bit + length);
    this.freeRetired();
  }

  /** Clears the whole migration bitmap: everything dirty was sent. */
  async markAllSent(): Promise<void> {
    const engine = this.engine!;
    await clearBuffer(engine, this.bitmap.buffer, this.bitmap.usedBits);
    this.freeRetired();
  }

  /** The IOVA ranges of a run of the migration bitmap. */
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

  private chooseTrackers(): Tracker[] {
    const trackers: Tracker[] = [];
    for (const container of this.space.containers) {
      const devices = [...container.devices];
      if (container instanceof IommufdContainer) {
        for (const hwpt of container.autoDomains.hwpts) {
          const tracked = devices.filter((d) => d.hwpt === hwpt && d.dirtyTracker === 'iommu');
          if (tracked.length) trackers.push(new IommuTracker(container, hwpt, tracked));
        }
      }
      if (container instanceof LegacyContainer) {
        const tracked = devices.filter((d) => d.dirtyTracker === 'type1');
        if (tracked.length) trackers.push(new Type1Tracker(container, tracked));
      }
      for (const device of devices) if (device.dirtyTracker === 'dma-logging') trackers.push(new DeviceLoggingTracker(device));
    }
    return trackers;
  }

  private context(): TrackerContext {
    const bitmap = this.bitmap;
    const engine = this.engine!;
    return {
      bitmap,
      engine,
      failed: (tracker, placement, error) => {
        this.failures.push({ tracker: tracker.name, iova: placement.iova, length: placement.size, error });
        engine.sync.setRange(bitmap.buffer, placement.bit, placement.bit + placement.bits);
      },
    };
  }

  private async roundNow(options: RoundOptions): Promise<DirtyRound> {
    if (!this.running) throw new InvalidArgumentError('DirtySync', 'is not started');
    const engine = this.engine!;
    const bitmap = this.bitmap;
    const context = this.context();
    const placements = bitmap.mappings;
    const begin = performance.now();
    this.failures = [];

    // Query: each kernel writes straight into shared memory. Sources that only set bits (HWPT,
    // DMA logging) at the migration page size write into the migration bitmap itself; newly
    // dirty pages are then the count after the round less the count before it. type1 overwrites
    // its words, so it writes into a buffer of its own, merged below.
    const bits = bitmap.usedBits;
    const before = await countBits(engine, bitmap.buffer, bits);
    for (const tracker of this.trackers) if (tracker.source) await clearBuffer(engine, tracker.source, bits);
    for (const tracker of this.trackers) tracker.query(context, placements);
    const queried = performance.now();

    // Merge: resample what has another page size, mark untracked devices' ranges, then OR the
    // remaining sources in and scan, fused, in the workers.
    for (const tracker of this.trackers) {
      if (!tracker.scratch) continue;
      for (const p of placements) await tracker.scratch.resampleInto(engine, bitmap, p);
    }
    if (this.untracked.length) for (const p of placements) engine.sync.setRange(bitmap.buffer, p.bit, p.bit + p.bits);
    const sources: BitmapLike[] = this.trackers.flatMap((t) => (t.source ? [t.source] : []));
    let dirtyPages = 0;
    let runCount = 0;
    const take = (runs: Uint32Array, count: number) => {
      for (let i = 0; i < count; i++) dirtyPages += runs[2 * i + 1]!;
      runCount += count;
      options.onRuns?.(runs, count);
    };
    let mergedAt: number;
    try {
      const fused = sources.length
        ? await engine.mergeCountScan(bitmap.buffer, sources, bits)
        : { newlySet: 0, runs: engine.scanRuns(bitmap.buffer, bits) };
      mergedAt = performance.now();
      for await (const chunk of fused.runs) take(chunk.runs, chunk.count);
    } catch {
      // A worker failure the pool could not redo: the sources are still in shared memory, so
      // merge and scan on this thread. Bits merged before the failure are set already.
      dirtyPages = 0;
      runCount = 0;
      if (sources.length) engine.sync.mergeAndCount(bitmap.buffer, sources, bits);
      mergedAt = performance.now();
      const output = engine.arena.allocate(1 << 20, 64);
      try {
        for (let cursor = 0; cursor < bits; ) {
          const step = engine.sync.scanRuns(bitmap.buffer, bits, cursor, output);
          cursor = step.cursor;
          take(step.runs, step.count);
        }
      } finally {
        output.free();
      }
    }
    // Bits are only ever set during a round (the consumer clears between rounds).
    const newly = dirtyPages - before;
    const end = performance.now();
    const sinceLast = (end - this.lastRoundEnd) / 1000;
    this.lastRoundEnd = end;
    const pageSize = bitmap.pageSize;
    return {
      index: this.roundIndex++,
      newlyDirtyPages: newly,
      dirtyPages,
      dirtyBytes: BigInt(dirtyPages) * pageSize,
      runCount,
      phases: { queryMs: queried - begin, mergeMs: mergedAt - queried, scanMs: end - mergedAt },
      durationMs: end - begin,
      dirtyRateBytesPerSecond: this.roundIndex > 1 && sinceLast > 0 ? (newly * Number(pageSize)) / sinceLast : 0,
      failures: this.failures,
      untrackedDevices: this.untracked.map((d) => d.name),
    };
  }

  /**
   * Keeps dirty state across mapping changes during migration. An unmap holds the round queue
   * from beforeUnmap until afterUnmap (or unmapAborted), so no round queries a range that is
   * half gone.
   */
  private observer(): MappingObserver {
    const type1Scratch = new Map<LegacyContainer, { buffer: ArenaBuffer; span: IovaSpan }>();
    const release = () => {
      for (const { buffer } of type1Scratch.values()) buffer.free();
      type1Scratch.clear();
      const gate = this.unmapGate;
      this.unmapGate = undefined;
      gate?.();
    };
    return {
      afterMap: (mapping: Mapping) =>
        this.serialize(async () => {
          if (!this.running) return;
          // Restarting DMA logging for the new range drops what the devices logged so far: read it first.
          await this.relayout(this.bitmap.mappings);
          const placement = this.bitmap.place(mapping.iova, mapping.size);
          // New memory has never been sent: all of it is dirty.
          this.engine!.sync.setRange(this.bitmap.buffer, placement.bit, placement.bit + placement.bits);
          this.restartLogging();
        }),
      beforeUnmap: (_span: IovaSpan, mappings: readonly Mapping[]) =>
        new Promise<void>((entered, refused) => {
          void this.serialize(async () => {
            try {
              if (this.running) {
                const context = this.context();
                for (const mapping of mappings) {
                  const placement = this.bitmap.placementOf(mapping.iova);
                  if (!placement) continue;
                  for (const tracker of this.trackers) if (tracker instanceof IommuTracker) tracker.readBeforeUnmap(context, placement);
                }
              }
            } catch (error) {
              refused(error);
              return;
            }
            const gate = new Promise<void>((open) => (this.unmapGate = open));
            entered();
            await gate;
          });
        }),
      type1UnmapBitmap: (container: LegacyContainer, span: IovaSpan): UnmapBitmap | undefined => {
        if (!this.running || !this.trackers.some((t) => t instanceof Type1Tracker && t.container === container)) return undefined;
        const pageSize = container.minimumPageSize;
        const pages = Number((span.size + pageSize - 1n) / pageSize);
        const buffer = this.engine!.arena.allocate(Math.ceil(pages / 64) * 8, 64);
        type1Scratch.set(container, { buffer, span });
        return { pageSize, bitmap: buffer.bytes() };
      },
      unmapAborted: () => release(),
      afterUnmap: async (_span: IovaSpan, mappings: readonly Mapping[], type1Bitmaps: ReadonlyMap<LegacyContainer, UnmapBitmap>) => {
        try {
          if (this.running) await this.collectUnmapped(mappings, type1Bitmaps, type1Scratch);
        } finally {
          release();
        }
      },
    };
  }

  /** After an unmap: device logs are read now (the device could DMA until the unmap), type1's came with the unmap. */
  private async collectUnmapped(
    mappings: readonly Mapping[],
    type1Bitmaps: ReadonlyMap<LegacyContainer, UnmapBitmap>,
    type1Scratch: ReadonlyMap<LegacyContainer, { buffer: ArenaBuffer; span: IovaSpan }>,
  ): Promise<void> {
    const context = this.context();
    const engine = this.engine!;
    for (const mapping of mappings) {
      const placement = this.bitmap.placementOf(mapping.iova);
      if (!placement) continue;
      for (const tracker of this.trackers) if (tracker instanceof DeviceLoggingTracker) await this.readLog(tracker, placement);
      for (const [container, scratch] of type1Scratch) {
        if (!type1Bitmaps.has(container)) continue;
        const pageSize = container.minimumPageSize;
        engine.sync.resample({
          destination: this.bitmap.buffer, destinationPageSize: this.bitmap.pageSize, destinationBit: placement.bit, destinationBits: placement.bits,
          source: scratch.buffer, sourcePageSize: pageSize, sourceBit: Number((placement.iova - scratch.span.iova) / pageSize),
          sourceBits: Number(placement.size / pageSize),
        });
      }
      // The mapping is gone but its dirty pages are not sent yet: keep its bits.
      this.bitmap.retire(placement);
    }
    // Logging restarts on the remaining ranges: read what they logged first.
    await this.relayout(this.bitmap.mappings);
    this.restartLogging();
  }

  /** Reads one placement of a device's log into the migration bitmap (now, outside a round). */
  private async readLog(tracker: DeviceLoggingTracker, placement: BitmapPlacement): Promise<void> {
    const context = this.context();
    if (!tracker.readAfterUnmap(context, placement)) {
      if (tracker.broken) context.failed(tracker, placement, tracker.broken);
    } else if (tracker.scratch) {
      await tracker.scratch.resampleInto(this.engine!, this.bitmap, placement);
    }
  }

  /**
   * Before the mappings change under DMA logging: drain every device log into the migration
   * bitmap, since restarting a log drops what it held.
   */
  private async relayout(drain: readonly BitmapPlacement[]): Promise<void> {
    for (const tracker of this.trackers) {
      if (tracker instanceof DeviceLoggingTracker) for (const placement of drain) await this.readLog(tracker, placement);
    }
  }

  /** Trackers' buffers follow the mappings; DMA logging restarts to log the new ranges. */
  private restartLogging(): void {
    const context = this.context();
    const live = this.bitmap.mappings;
    for (const tracker of this.trackers) {
      if (tracker instanceof DeviceLoggingTracker) tracker.restart(context);
      else if (tracker instanceof IommuTracker) tracker.layout(context, live, this.bitmap.pageSize);
      else if (tracker instanceof Type1Tracker) tracker.layout(context, live, tracker.pageSize);
    }
  }

  /** Retired placements whose pages were all sent give their bits back. */
  private freeRetired(): void {
    const engine = this.engine!;
    for (const p of [...this.bitmap.retired]) {
      if (engine.sync.popcount(this.bitmap.buffer, p.bit, p.bit + p.bits) === 0) this.bitmap.release(p);
    }
  }

  private async teardown(): Promise<void> {
    const errors: unknown[] = [];
    for (const tracker of [...this.trackers].reverse()) {
      try {
        tracker.stop();
      } catch (error) {
        errors.push(error);
      }
    }
    this.trackers = [];
    this.untracked = [];
    this.detachObserver?.();
    this.detachObserver = undefined;
    this.bitmapStore?.close();
    this.bitmapStore = undefined;
    if (this.ownsEngine) await this.engine?.close();
    this.engine = undefined;
    if (errors.length) throw errors[0];
  }
}

async function countBits(engine: Engine, buffer: ArenaBuffer, bits: number): Promise<number> {
  try {
    return await engine.popcount(buffer, 0, bits);
  } catch {
    return engine.sync.popcount(buffer, 0, bits);
  }
}

async function clearBuffer(engine: Engine, buffer: ArenaBuffer, bits: number): Promise<void> {
  try {
    await engine.clear(buffer, 0, bits);
  } catch {
    engine.sync.clear(buffer, 0, bits);
  }
}
