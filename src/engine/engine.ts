// The engine: one shared WebAssembly memory, an arena in it, the kernels on the
// calling thread (`sync`), and a pool of workers running the same kernels on
// shards of a bitmap (word ranges), with typed results.
import { availableParallelism } from 'node:os';
import { Arena, type ArenaBuffer } from './arena.js';
import { EngineClosedError, EngineInputError } from './errors.js';
import { Kernels, MAXIMUM_SOURCES, wordsOf } from './kernels.js';
import {
  ARENA_START, INDEX_SLACK, JOURNAL_BLOCK_WORDS, STATIC_RESERVED_BYTES, TABLES_BYTES, TABLES_OFFSET, WORK_BYTES,
  createSharedMemory,
} from './layout.js';
import { type KernelExports, type WasmFlavour, instantiate, loadModule } from './module.js';
import { type SlotContext, WorkerPool } from './pool.js';
import { IovaRangeSet, type IovaRangeSetOptions } from './range-set.js';
import { type ResampleSpec, resampleGeometry } from './resample.js';
import { type BitmapLike, checkBits, checkCount, checkMerge, checkRange } from './validate.js';

export interface EngineOptions {
  /** Worker threads (default: available cores). 0 runs every call on the calling thread. */
  workers?: number;
  /** Shared memory to reserve up front, in bytes (default 64 MiB; it grows on allocation up to 4 GiB). */
  memoryBytes?: number;
  /** Scan output chunk of each worker, in entries (runs of 8 bytes; twice as many indices). Default 1 Mi. */
  outputEntries?: number;
  /**
   * Smallest shard, in bitmap bytes (default 4 MiB): a worker round trip costs
   * 50 to 100 us, so each task should carry at least a millisecond or so of work.
   */
  minimumShardBytes?: number;
  /**
   * Calls over at most this many bitmap bytes run on the calling thread instead
   * of the workers. A number applies to every call (0 sends every call to the
   * workers); an object sets it per call and leaves the others at their default.
   * Default: {@link DEFAULT_INLINE_UP_TO_BYTES}, the sizes below which the
   * workers' round trip cost more than the work they saved, as `bench crossover`
   * measured them; never less than minimumShardBytes.
   */
  inlineUpToBytes?: number | Partial<Record<EngineCall, number>>;
  /** Which build of the module to load (default release). */
  wasm?: WasmFlavour;
  /**
   * Pin worker i to the i-th CPU the process may run on (default true, on Linux; elsewhere
   * nothing happens). Workers woken together otherwise often share the waker's CPU for
   * milliseconds; false leaves them to the scheduler.
   */
  pinWorkers?: boolean;
}

/** The engine calls that may run on the workers. */
export const ENGINE_CALLS = ['merge', 'mergeAndCount', 'popcount', 'clear', 'resample', 'scanIndices', 'scanRuns', 'mergeCountScan'] as const;
export type EngineCall = (typeof ENGINE_CALLS)[number];

/**
 * Bitmap bytes up to which a call runs on the calling thread by default: for
 * each call, the largest size at which the calling thread was still at least as
 * fast as 2 workers in `vfio-iommufd bench crossover` on a quiet 2-core machine
 * (sizes 256 KiB to 128 MiB, 1 % dirty; the note of issue 13 has the table).
 * Below it the workers' round trip (a message each way and a wake-up, 0.1 to
 * 1 ms) costs more than the work they share. mergeAndCount never won on the
 * workers up to 128 MiB (its journaled blocks cost more than a second core
 * saves), so it stays here up to the largest bitmap a round has.
 */
export const DEFAULT_INLINE_UP_TO_BYTES: Readonly<Record<EngineCall, number>> = {
  merge: 4 * 1024 * 1024,
  mergeAndCount: 256 * 1024 * 1024,
  popcount: 16 * 1024 * 1024,
  clear: 64 * 1024 * 1024,
  resample: 4 * 1024 * 1024,
  scanIndices: 4 * 1024 * 1024,
  scanRuns: 4 * 1024 * 1024,
  mergeCountScan: 4 * 1024 * 1024,
};

/** A chunk of runs from a sharded scan: (start, length) pairs, valid until the next engine call. */
export interface RunChunk {
  runs: Uint32Array;
  count: number;
  /** The shard (worker slot) it came from; chunks of one shard arrive in order. */
  shard: number;
}

export interface MergeCountScanRound {
  /** Destination bits that went from 0 to 1. */
  newlySet: number;
  /** The runs of the merged bitmap; iterate it before the next scan. */
  runs: AsyncIterable<RunChunk>;
}

interface Shard {
  /** Slot index. */
  slot: number;
  start: number;
  end: number;
}

interface ShardScan extends Shard {
  cursor: number;
  done: boolean;
  /** The first pass's output, after boundary fix-ups. */
  view: Uint32Array;
}

const DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024;
const DEFAULT_OUTPUT_ENTRIES = 1 << 20;
const DEFAULT_MINIMUM_SHARD_BYTES = 4 * 1024 * 1024;
/** Shards start on whole journal blocks (4 KiB of bitmap). */
const SHARD_ALIGN_BITS = JOURNAL_BLOCK_WORDS * 64;
const WARM_UP_WORDS = 4096;

function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}

export class Engine {
  /** The kernels on the calling thread, synchronous. */
  readonly sync: Kernels;
  readonly arena: Arena;
  readonly memory: WebAssembly.Memory;
  readonly #exports: KernelExports;
  readonly #pool: WorkerPool | undefined;
  readonly #minimumShardBits: number;
  readonly #inlineUpToBits: Readonly<Record<EngineCall, number>>;
  #parallelism: number;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;
  /** Output of the scans that run on the calling thread, made on first use. */
  #syncOutput?: ArenaBuffer;

  private constructor(
    memory: WebAssembly.Memory, arena: Arena, exports: KernelExports, sync: Kernels,
    pool: WorkerPool | undefined, minimumShardBytes: number, inlineUpToBytes: Readonly<Record<EngineCall, number>>,
  ) {
    this.memory = memory;
    this.arena = arena;
    this.#exports = exports;
    this.sync = sync;
    this.#pool = pool;
    this.#parallelism = pool?.size ?? 0;
    this.#inlineUpToBits = Object.fromEntries(ENGINE_CALLS.map((call) => [call, inlineUpToBytes[call] * 8])) as Record<EngineCall, number>;
    this.#minimumShardBits = Math.max(SHARD_ALIGN_BITS, Math.ceil((minimumShardBytes * 8) / SHARD_ALIGN_BITS) * SHARD_ALIGN_BITS);
  }

  static async create(options: EngineOptions = {}): Promise<Engine> {
    const workers = options.workers ?? availableParallelism();
    checkCount('workers', workers, 256);
    const memoryBytes = options.memoryBytes ?? DEFAULT_MEMORY_BYTES;
    checkCount('memoryBytes', memoryBytes, 2 ** 32);
    const outputEntries = options.outputEntries ?? DEFAULT_OUTPUT_ENTRIES;
    checkCount('outputEntries', outputEntries, 2 ** 28);
    if (outputEntries < INDEX_SLACK) throw new EngineInputError(`outputEntries must be at least ${INDEX_SLACK}, got ${outputEntries}`);
    const minimumShardBytes = options.minimumShardBytes ?? DEFAULT_MINIMUM_SHARD_BYTES;
    checkCount('minimumShardBytes', minimumShardBytes, 2 ** 32);
    const inlineUpToBytes = inlineThresholds(options.inlineUpToBytes, minimumShardBytes);

    const module = loadModule(options.wasm ?? 'release');
    const memory = createSharedMemory(memoryBytes);
    const exports = instantiate(module, memory);
    if (exports.staticDataEnd() > STATIC_RESERVED_BYTES || exports.tableBytes() > TABLES_BYTES || TABLES_OFFSET + TABLES_BYTES > ARENA_START) {
      throw new Error('the WASM module does not fit the memory layout in src/engine/layout.ts');
    }
    exports.buildTables(TABLES_OFFSET);
    const arena = new Arena(memory);
    const scratch = arena.allocate(MAXIMUM_SOURCES * 4 + JOURNAL_BLOCK_WORDS * 8 + WORK_BYTES, 64);
    const sync = new Kernels(exports, memory, {
      sourceList: scratch.offset,
      block: scratch.offset + MAXIMUM_SOURCES * 4,
      work: scratch.offset + MAXIMUM_SOURCES * 4 + JOURNAL_BLOCK_WORDS * 8,
    });
    const pool = workers > 0
      ? await WorkerPool.create({ size: workers, module, memory, arena, tables: TABLES_OFFSET, outputEntries, pinWorkers: options.pinWorkers ?? true })
      : undefined;
    const engine = new Engine(memory, arena, exports, sync, pool, minimumShardBytes, inlineUpToBytes);
    await engine.#warmUp();
    return engine;
  }

  /** Worker threads in the pool (0: calls run on the calling thread). */
  get workers(): number {
    return this.#pool?.size ?? 0;
  }

  /** How many workers one call may use (default: all of them). */
  get parallelism(): number {
    return this.#parallelism;
  }

  set parallelism(value: number) {
    checkCount('parallelism', value, this.workers);
    if (value < 1 && this.workers > 0) throw new EngineInputError('parallelism must be at least 1');
    this.#parallelism = value;
  }

  /** Test hooks for the pool's failure handling. */
  get testing(): {
    injectFault(slot: number, afterBlock: number): void; terminateWorker(slot: number): Promise<void>; workersStarted(): number;
    workerAffinity(slot: number): Promise<{ pinned: number | undefined; cpus: number[] | undefined }>;
    /** Injected faults no journaled task has taken yet. */
    pendingFaults(): number;
    /** Workers replaced after dying mid-task (injected faults that fired, crashes). */
    workersReplaced(): number;
  } {
    const pool = this.#requirePool();
    return {
      injectFault: (slot, afterBlock) => pool.injectFault(slot, afterBlock),
      pendingFaults: () => pool.pendingFaults(),
      workersReplaced: () => pool.replaced,
      terminateWorker: (slot) => pool.terminateWorker(slot),
      workersStarted: () => pool.started,
      workerAffinity: (slot: number) => pool.affinity(slot),
    };
  }

  /** A new IOVA range set in the shared memory, run on the calling thread. */
  createRangeSet(options: IovaRangeSetOptions): IovaRangeSet {
    this.#check();
    return new IovaRangeSet(this.#exports, this.arena, options);
  }

  /** Sharded dst |= every source over bits [0, bits). */
  async merge(dst: BitmapLike, sources: readonly BitmapLike[], bits: number): Promise<void> {
    this.#check();
    checkMerge(dst, sources, bits, MAXIMUM_SOURCES);
    const pool = this.#poolFor('merge', bits);
    if (!pool || bits === 0) return this.sync.merge(dst, sources, bits);
    const addresses = sources.map((s) => s.offset);
    await this.#exclusive(() =>
      Promise.all(
        this.#plan(0, bits).map((shard) =>
          pool.run(shard.slot, (c) => {
            const { firstWord, words, lastBits } = shardWords(shard);
            return c.api.merge(dst.offset, addresses, c.sourceList, firstWord, words, lastBits);
          }),
        ),
      ),
    );
  }

  /** Sharded merge, returning how many destination bits went from 0 to 1. */
  async mergeAndCount(dst: BitmapLike, sources: readonly BitmapLike[], bits: number): Promise<number> {
    this.#check();
    checkMerge(dst, sources, bits, MAXIMUM_SOURCES);
    const pool = this.#poolFor('mergeAndCount', bits);
    if (!pool || bits === 0) return this.sync.mergeAndCount(dst, sources, bits);
    const addresses = sources.map((s) => s.offset);
    const counts = await this.#exclusive(() =>
      Promise.all(
        this.#plan(0, bits).map((shard) =>
          pool.run(shard.slot, (c) => {
            this.#startJournal(c);
            const { firstWord, words, lastBits } = shardWords(shard);
            return c.api.mergeCount(dst.offset, addresses, c.sourceList, firstWord, words, lastBits, c.block, c.journal, c.faultAfterBlock);
          }, { journaled: true }),
        ),
      ),
    );
    return sum(counts);
  }

  /** Sharded count of the set bits in [start, end). */
  async popcount(bitmap: BitmapLike, start: number, end: number): Promise<number> {
    this.#check();
    checkRange('bitmap', bitmap, start, end);
    const pool = this.#poolFor('popcount', end - start);
    if (!pool) return this.sync.popcount(bitmap, start, end);
    const counts = await this.#exclusive(() =>
      Promise.all(this.#plan(start, end).map((s) => pool.run(s.slot, (c) => c.api.popcount(bitmap.offset, s.start, s.end)))),
    );
    return sum(counts);
  }

  /** Sharded clear of [start, end). */
  async clear(bitmap: BitmapLike, start: number, end: number): Promise<void> {
    this.#check();
    checkRange('bitmap', bitmap, start, end);
    const pool = this.#poolFor('clear', end - start);
    if (!pool) return this.sync.clear(bitmap, start, end);
    await this.#exclusive(() =>
      Promise.all(this.#plan(start, end).map((s) => pool.run(s.slot, (c) => c.api.clear(bitmap.offset, s.start, s.end)))),
    );
  }

  /** Sharded resample (see ResampleSpec); returns the destination bits newly set. */
  async resample(spec: ResampleSpec): Promise<number> {
    this.#check();
    const g = resampleGeometry(spec);
    const pool = this.#poolFor('resample', g.dstEnd - g.dstStart);
    if (!pool) return this.sync.resample(spec);
    const counts = await this.#exclusive(() =>
      Promise.all(
        this.#plan(g.dstStart, g.dstEnd).map((s) =>
          pool.run(s.slot, (c) => {
            this.#startJournal(c);
            return c.api.resample(g.dst, s.start, s.end, g.src, g.srcStart, g.srcEnd, g.shift, g.delta, c.work, c.block, c.journal, c.faultAfterBlock);
          }, { journaled: true }),
        ),
      ),
    );
    return sum(counts);
  }

  /**
   * Indices of the set bits of [from, bits), in chunks (views valid until the
   * next engine call). Chunks of one shard come in order; shards interleave.
   */
  scanIndices(bitmap: BitmapLike, bits: number, options: { from?: number } = {}): AsyncIterable<Uint32Array> {
    this.#check();
    checkBits('bitmap', bitmap, bits);
    const from = options.from ?? 0;
    checkCount('from', from, bits);
    const pool = this.#poolFor('scanIndices', bits - from);
    if (!pool) return this.#syncIndexChunks(bitmap, bits, from);
    return this.#indexChunks(pool, bitmap, from, bits);
  }

  /**
   * Runs of set bits (start, length) starting in [from, bits), in chunks (views
   * valid until the next engine call). Runs are whole even across shards; chunks
   * of one shard come in order, shards interleave.
   */
  scanRuns(bitmap: BitmapLike, bits: number, options: { from?: number } = {}): AsyncIterable<RunChunk> {
    this.#check();
    checkBits('bitmap', bitmap, bits);
    const from = options.from ?? 0;
    checkCount('from', from, bits);
    const pool = this.#poolFor('scanRuns', bits - from);
    if (!pool) return this.#syncRunChunks(bitmap, bits, from);
    const first = async (): Promise<ShardScan[]> =>
      this.#exclusive(() =>
        Promise.all(
          this.#plan(from, bits).map((s) =>
            pool.run(s.slot, async (c) => {
              const step = await c.api.scanRuns(bitmap.offset, s.start, s.end, s.end, c.output.offset, c.outputEntries);
              return this.#shardScan(s, c, step.count, step.cursor);
            }),
          ),
        ),
      );
    return this.#runChunks(pool, bitmap, bits, first);
  }

  /**
   * The fused round: merge the sources into dst, count the newly set bits, and
   * scan the runs of the merged bitmap, each worker on its shard while its
   * blocks are in cache. The count is known when this resolves; iterate `runs`
   * for the runs.
   */
  async mergeCountScan(dst: BitmapLike, sources: readonly BitmapLike[], bits: number): Promise<MergeCountScanRound> {
    this.#check();
    checkMerge(dst, sources, bits, MAXIMUM_SOURCES);
    const pool = this.#poolFor('mergeCountScan', bits);
    if (!pool || bits === 0) {
      const newlySet = this.sync.mergeAndCount(dst, sources, bits);
      return { newlySet, runs: this.#syncRunChunks(dst, bits, 0) };
    }
    const addresses = sources.map((s) => s.offset);
    let newlySet = 0;
    const firstPass = await this.#exclusive(() =>
      Promise.all(
        this.#plan(0, bits).map((s) =>
          pool.run(s.slot, async (c) => {
            this.#startJournal(c);
            const { firstWord, words, lastBits } = shardWords(s);
            const step = await c.api.mergeCountScan(
              dst.offset, addresses, c.sourceList, firstWord, words, lastBits, c.block, c.journal, c.faultAfterBlock,
              c.output.offset, c.outputEntries,
            );
            newlySet += step.newlySet;
            return this.#shardScan(s, c, step.count, step.cursor);
          }, { journaled: true }),
        ),
      ),
    );
    return { newlySet, runs: this.#runChunks(pool, dst, bits, async () => firstPass) };
  }

  /** Stops the workers and frees the memory's users. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#queue.catch(() => undefined);
    await this.#pool?.close();
  }

  // ---- internals ----

  #check(): void {
    if (this.#closed) throw new EngineClosedError();
  }

  /** The pool, unless the call is small enough to run here (see inlineUpToBytes). */
  #poolFor(call: EngineCall, bits: number): WorkerPool | undefined {
    return bits <= this.#inlineUpToBits[call] ? undefined : this.#pool;
  }

  /** Bitmap bytes up to which each call runs on the calling thread. */
  get inlineUpToBytes(): Readonly<Record<EngineCall, number>> {
    return Object.fromEntries(ENGINE_CALLS.map((call) => [call, this.#inlineUpToBits[call] / 8])) as Record<EngineCall, number>;
  }

  #requirePool(): WorkerPool {
    if (!this.#pool) throw new EngineInputError('this engine has no workers');
    return this.#pool;
  }

  /** Pool calls run one at a time: they share the slots' areas. */
  #exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(() => {
      this.#check();
      return work();
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #startJournal(c: SlotContext): void {
    // A retry keeps the journal: it is how the new worker knows what is done.
    if (c.attempt === 0) new BigUint64Array(this.memory.buffer, c.journal, 1)[0] = 0n;
  }

  /** Splits [start, end) into at most one shard per worker, cut on whole journal blocks. */
  #plan(start: number, end: number): Shard[] {
    const slots = Math.max(1, this.#parallelism);
    const total = end - start;
    const count = Math.max(1, Math.min(slots, Math.floor(total / this.#minimumShardBits)));
    const per = Math.ceil(total / count / SHARD_ALIGN_BITS) * SHARD_ALIGN_BITS;
    const shards: Shard[] = [];
    for (let i = 0, at = start; i < count && at < end; i++) {
      // Later cuts are absolute multiples of the alignment, so shard starts are word-aligned.
      const cut = i === count - 1 ? end : Math.min(end, Math.ceil((start + per * (i + 1)) / SHARD_ALIGN_BITS) * SHARD_ALIGN_BITS);
      shards.push({ slot: i, start: at, end: cut });
      at = cut;
    }
    if (shards.length === 0) shards.push({ slot: 0, start, end });
    return shards;
  }

  #shardScan(shard: Shard, c: SlotContext, count: number, cursor: number): ShardScan {
    return {
      ...shard,
      cursor,
      done: cursor >= shard.end,
      view: new Uint32Array(this.memory.buffer, c.output.offset, count * 2),
    };
  }

  /**
   * Each shard's first pass clips runs at its edges; join the pieces of a run
   * that crosses a boundary so that every run comes out whole, once.
   */
  #joinBoundaries(bitmap: BitmapLike, scans: ShardScan[], bits: number): void {
    for (let i = 1; i < scans.length; i++) {
      const boundary = scans[i]!.start;
      const crosses = this.#exports.testBit(bitmap.offset, boundary - 1) === 1 && this.#exports.testBit(bitmap.offset, boundary) === 1;
      if (!crosses) continue;
      // The run belongs to the shard where it starts.
      const next = scans[i]!;
      if (next.view.length >= 2 && next.view[0] === boundary) next.view = next.view.subarray(2);
      const previous = scans[i - 1]!;
      const n = previous.view.length;
      // A finished shard ends with the clipped piece: extend it through the
      // following shards. An unfinished one extends it when its scan resumes.
      if (previous.done && n >= 2 && previous.view[n - 2]! + previous.view[n - 1]! === boundary) {
        previous.view[n - 1] = previous.view[n - 1]! + (this.#exports.runLengthFrom(bitmap.offset, boundary, bits) >>> 0);
      }
    }
  }

  async *#runChunks(
    pool: WorkerPool, bitmap: BitmapLike, bits: number, firstPass: () => Promise<ShardScan[]>,
  ): AsyncGenerator<RunChunk> {
    const scans = await firstPass();
    this.#joinBoundaries(bitmap, scans, bits);
    let batch: { scan: ShardScan; view: Uint32Array }[] = scans.map((scan) => ({ scan, view: scan.view }));
    // Double buffered: while this thread hands out a batch of chunks (one per unfinished shard),
    // the workers already scan the next batch into their other chunk. Resumed scans may follow
    // their last run past the shard's end: every shard is merged by now.
    let chunk = 1;
    while (batch.length > 0) {
      const pending = batch.filter((b) => !b.scan.done).map((b) => b.scan);
      const into = chunk;
      const next = pending.length === 0 ? undefined : this.#exclusive(() =>
        Promise.all(
          pending.map((s) =>
            pool.run(s.slot, async (c) => {
              const out = into === 0 ? c.chunks[0] : c.chunks[1];
              const step = await c.api.scanRuns(bitmap.offset, s.cursor, s.end, bits, out, c.outputEntries);
              return { scan: s, step, view: new Uint32Array(this.memory.buffer, out, step.count * 2) };
            }),
          ),
        ),
      );
      next?.catch(() => undefined); // awaited below, or abandoned with the scan
      try {
        for (const { scan, view } of batch) if (view.length > 0) yield { runs: view, count: view.length / 2, shard: scan.slot };
      } finally {
        // A consumer that stops early gets control back once no worker reads its bitmap any more
        // (it may free it); later pool calls would queue behind the prefetch anyway.
        if (next) await next.then(() => undefined, () => undefined);
      }
      if (!next) return;
      const steps = await next;
      for (const { scan, step } of steps) {
        scan.cursor = step.cursor;
        scan.done = step.cursor >= scan.end;
      }
      batch = steps.filter((s) => s.step.count > 0 || !s.scan.done);
      chunk ^= 1;
    }
  }

  async *#indexChunks(pool: WorkerPool, bitmap: BitmapLike, from: number, bits: number): AsyncGenerator<Uint32Array> {
    type Cursor = Shard & { cursor: number };
    const scan = (shards: Cursor[], into: 0 | 1) =>
      this.#exclusive(() =>
        Promise.all(
          shards.map((s) =>
            pool.run(s.slot, async (c) => {
              const out = c.chunks[into];
              const step = await c.api.scanIndices(bitmap.offset, s.cursor, s.end, out, c.outputEntries * 2);
              return { shard: s, step, view: new Uint32Array(this.memory.buffer, out, step.count) };
            }),
          ),
        ),
      );
    let batch = await scan(this.#plan(from, bits).map((s) => ({ ...s, cursor: s.start })), 0);
    // Double buffered, as the run scan: while this thread hands out a batch, the workers scan
    // the next one into their other chunk.
    let into: 0 | 1 = 1;
    for (;;) {
      for (const { shard, step } of batch) shard.cursor = step.cursor;
      const unfinished = batch.map((b) => b.shard).filter((s) => s.cursor < s.end);
      const next = unfinished.length === 0 ? undefined : scan(unfinished, into);
      next?.catch(() => undefined); // awaited below, or abandoned with the scan
      try {
        for (const { view } of batch) if (view.length > 0) yield view;
      } finally {
        // Leaving early waits for the prefetch: nothing reads the bitmap afterwards.
        if (next) await next.then(() => undefined, () => undefined);
      }
      if (!next) return;
      batch = await next;
      into = into === 0 ? 1 : 0;
    }
  }

  #output(): ArenaBuffer {
    this.#syncOutput ??= this.arena.allocate(DEFAULT_OUTPUT_ENTRIES * 8, 64);
    return this.#syncOutput;
  }

  async *#syncRunChunks(bitmap: BitmapLike, bits: number, from: number): AsyncGenerator<RunChunk> {
    for (let cursor = from; cursor < bits; ) {
      const step = this.sync.scanRuns(bitmap, bits, cursor, this.#output());
      cursor = step.cursor;
      if (step.count > 0) yield { runs: step.runs, count: step.count, shard: 0 };
    }
  }

  async *#syncIndexChunks(bitmap: BitmapLike, bits: number, from: number): AsyncGenerator<Uint32Array> {
    for (let cursor = from; cursor < bits; ) {
      const step = this.sync.scanIndices(bitmap, bits, cursor, this.#output());
      cursor = step.cursor;
      if (step.indices.length > 0) yield step.indices;
    }
  }

  async #warmUp(): Promise<void> {
    const words = WARM_UP_WORDS;
    const dst = this.arena.allocate(words * 8, 64);
    const src = this.arena.allocate(words * 8, 64);
    const out = this.arena.allocate(words * 64 * 4 + INDEX_SLACK * 4, 64);
    // A fixed pattern of mixed density, so every scan path runs.
    const halves = src.u32();
    let state = 0x9e3779b9;
    for (let i = 0; i < halves.length; i++) {
      state = (Math.imul(state ^ (state >>> 15), 0x2c1b3c6d) + i) >>> 0;
      halves[i] = i % 7 === 0 ? state : state & (state >>> 3) & (state >>> 7);
    }
    const bits = words * 64;
    for (let i = 0; i < 20; i++) {
      this.sync.mergeCountScan(dst, [src], bits, out);
      this.sync.scanIndices(src, bits, 0, out);
      this.sync.popcount(dst, 1, bits - 1);
      this.sync.clear(dst, 0, bits);
    }
    const pool = this.#pool;
    if (pool) {
      const capacity = Math.floor(out.byteLength / 8);
      await Promise.all(
        Array.from({ length: pool.size }, (_, slot) =>
          pool.run(slot, async (c) => {
            // Each worker gets its own destination: they run at once.
            const own = this.arena.allocate(words * 8, 64);
            try {
              await c.api.warmUp(own.offset, src.offset, words, c.sourceList, c.block, c.work, c.journal, c.output.offset, Math.min(capacity, c.outputEntries));
            } finally {
              own.free();
            }
          }),
        ),
      );
    }
    dst.free();
    src.free();
    out.free();
  }
}

function shardWords(shard: { start: number; end: number }): { firstWord: number; words: number; lastBits: number } {
  // Merge shards start on a word (plan() cuts on journal blocks, and merges start at bit 0).
  const firstWord = shard.start / 64;
  const { words, lastBits } = wordsOf(shard.end - shard.start);
  return { firstWord, words, lastBits };
}

function inlineThresholds(option: EngineOptions['inlineUpToBytes'], minimumShardBytes: number): Record<EngineCall, number> {
  if (typeof option === 'number') {
    checkCount('inlineUpToBytes', option, 2 ** 32);
    return Object.fromEntries(ENGINE_CALLS.map((call) => [call, option])) as Record<EngineCall, number>;
  }
  if (option !== undefined && (typeof option !== 'object' || option === null)) {
    throw new EngineInputError(`inlineUpToBytes must be a number or an object of numbers per call, got ${typeof option}`);
  }
  const out = {} as Record<EngineCall, number>;
  for (const call of ENGINE_CALLS) {
    const given = option?.[call];
    if (given !== undefined) checkCount(`inlineUpToBytes.${call}`, given, 2 ** 32);
    out[call] = given ?? Math.max(DEFAULT_INLINE_UP_TO_BYTES[call], minimumShardBytes);
  }
  for (const key of Object.keys(option ?? {})) {
    if (!(ENGINE_CALLS as readonly string[]).includes(key)) throw new EngineInputError(`inlineUpToBytes.${key} is not an engine call (${ENGINE_CALLS.join(', ')})`);
  }
  return out;
}
