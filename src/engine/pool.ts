// The worker pool: N workers on the one shared memory, each in a slot that owns
// its private areas (source list, journal block scratch, journal word, two scan
// output chunks). A worker that dies is replaced in its slot and the slot's task
// is run again: every input is still in shared memory, and journaled tasks pick
// up exactly where the dead worker's journal says it stopped.
import { Worker } from 'node:worker_threads';
import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import type { Arena, ArenaBuffer } from './arena.js';
import { EngineClosedError, EngineWorkerError } from './errors.js';
import { JOURNAL_BLOCK_WORDS, WORK_BYTES } from './layout.js';
import { MAXIMUM_SOURCES } from './kernels.js';
import { workerPath } from './module.js';
import type { EngineWorkerApi, EngineWorkerData } from '../../workers/engine-worker.js';

/** A task is tried this many times in all before the pool gives up on it. */
const ATTEMPTS = 4;

export class WorkerDiedError extends Error {
  override name = 'WorkerDiedError';
}

/** What a task gets: its slot's worker and areas. */
export interface SlotContext {
  readonly index: number;
  readonly api: Comlink.Remote<EngineWorkerApi>;
  readonly sourceList: number;
  readonly block: number;
  readonly work: number;
  readonly journal: number;
  /** Two output chunks: a scan fills one while the calling thread takes the other. */
  readonly output: ArenaBuffer;
  /** Output entries of 8 bytes (runs) one chunk holds; twice as many u32 indices. */
  readonly outputEntries: number;
  /** Where chunk 0 and chunk 1 start. */
  readonly chunks: readonly [number, number];
  /** 0 on the first try; a retry runs on a fresh worker. */
  readonly attempt: number;
  /** Test hook: block after which a journaled kernel should stop as if killed, or -1. */
  readonly faultAfterBlock: number;
}

interface Slot {
  index: number;
  worker: Worker;
  api: Comlink.Remote<EngineWorkerApi>;
  /** Rejects when this worker dies; replaced with the worker. */
  died: Promise<never>;
  generation: number;
  areas: ArenaBuffer;
  output: ArenaBuffer;
  pendingFault: number;
}

export interface PoolOptions {
  size: number;
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  arena: Arena;
  tables: number;
  outputEntries: number;
  /** Pin each worker to its own CPU (slot i to the i-th CPU the process may use). */
  pinWorkers: boolean;
}

// Layout of a slot's private area.
const SOURCE_LIST_BYTES = MAXIMUM_SOURCES * 4;
const BLOCK_BYTES = JOURNAL_BLOCK_WORDS * 8;
const WORK_OFFSET = SOURCE_LIST_BYTES + BLOCK_BYTES;
const JOURNAL_OFFSET = WORK_OFFSET + WORK_BYTES;
const AREA_BYTES = JOURNAL_OFFSET + 64;

export class WorkerPool {
  readonly #slots: Slot[] = [];
  #closing = false;
  #replaced = 0;
  readonly #options: PoolOptions;
  /** Every worker started, replacements included. */
  started = 0;

  private constructor(options: PoolOptions) {
    this.#options = options;
  }

  static async create(options: PoolOptions): Promise<WorkerPool> {
    const pool = new WorkerPool(options);
    try {
      for (let i = 0; i < options.size; i++) {
        const areas = options.arena.allocate(AREA_BYTES, 64);
        const output = options.arena.allocate(options.outputEntries * 16, 64);
        pool.#slots.push(pool.#spawn(i, areas, output, 0));
      }
      await Promise.all(pool.#slots.map((slot) => pool.#ready(slot)));
    } catch (error) {
      await pool.close();
      throw error;
    }
    return pool;
  }

  get size(): number {
    return this.#slots.length;
  }

  /** Worker generation of a slot: how many times it was replaced. */
  generation(index: number): number {
    return this.#slot(index).generation;
  }

  #slot(index: number): Slot {
    const slot = this.#slots[index];
    if (!slot) throw new RangeError(`no worker slot ${index}`);
    return slot;
  }

  #spawn(index: number, areas: ArenaBuffer, output: ArenaBuffer, generation: number): Slot {
    const data: EngineWorkerData = {
      module: this.#options.module, memory: this.#options.memory, tables: this.#options.tables,
      pinToSlot: this.#options.pinWorkers ? index : undefined,
    };
    // Flags about the main script (--input-type, --eval...) are not valid for a worker.
    const execArgv = process.execArgv.filter((flag) => !/^--(input-type|eval|print)\b/.test(flag) && flag !== '-e' && flag !== '-p');
    const worker = new Worker(workerPath('engine-worker'), { workerData: data, execArgv });
    this.started++;
    const api = Comlink.wrap<EngineWorkerApi>(nodeEndpoint(worker));
    const died = new Promise<never>((_, reject) => {
      worker.once('error', (error) => reject(new WorkerDiedError(`worker ${index} failed: ${error.message}`)));
      worker.once('exit', (code) => reject(new WorkerDiedError(`worker ${index} exited with code ${code}`)));
    });
    died.catch(() => undefined); // observed through races; never unhandled
    return { index, worker, api, died, generation, areas, output, pendingFault: -1 };
  }

  async #ready(slot: Slot): Promise<void> {
    await Promise.race([slot.api.ping(), slot.died]);
  }

  async #replace(slot: Slot): Promise<void> {
    await slot.worker.terminate().catch(() => undefined);
    const next = this.#spawn(slot.index, slot.areas, slot.output, slot.generation + 1);
    next.pendingFault = -1;
    this.#slots[slot.index] = next;
    await this.#ready(next);
  }

  /**
   * Runs a task on a slot's worker; if the worker dies first, replaces it and
   * runs the task again on the new one.
   */
  async run<T>(index: number, task: (context: SlotContext) => Promise<T>, options: { journaled?: boolean } = {}): Promise<T> {
    let lastError: unknown;
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      if (this.#closing) throw new EngineClosedError();
      const slot = this.#slot(index);
      // An injected fault waits for a task that can honour it (a journaled one).
      const fault = options.journaled ? slot.pendingFault : -1;
      if (options.journaled) slot.pendingFault = -1;
      const context: SlotContext = {
        index,
        api: slot.api,
        sourceList: slot.areas.offset,
        block: slot.areas.offset + SOURCE_LIST_BYTES,
        work: slot.areas.offset + WORK_OFFSET,
        journal: slot.areas.offset + JOURNAL_OFFSET,
        output: slot.output,
        outputEntries: Math.floor(slot.output.byteLength / 16),
        chunks: [slot.output.offset, slot.output.offset + Math.floor(slot.output.byteLength / 16) * 8],
        attempt,
        faultAfterBlock: fault,
      };
      try {
        return await Promise.race([task(context), slot.died]);
      } catch (error) {
        if (!(error instanceof WorkerDiedError)) throw error;
        if (this.#closing) throw new EngineClosedError();
        lastError = error;
        this.#replaced++;
        try {
          await this.#replace(slot);
        } catch (spawnError) {
          throw new EngineWorkerError(`could not replace worker ${index}: ${(spawnError as Error).message}`);
        }
      }
    }
    throw new EngineWorkerError(`worker ${index} died ${ATTEMPTS} times on the same task: ${(lastError as Error).message}`);
  }

  /** Test hook: the next journaled task on this slot stops after `block` blocks and its worker exits. */
  injectFault(index: number, block: number): void {
    this.#slot(index).pendingFault = block;
  }

  /** Test hook: faults injected and not yet taken by a journaled task. */
  pendingFaults(): number {
    return this.#slots.filter((s) => s.pendingFault >= 0).length;
  }

  /** Workers replaced after dying mid-task. */
  get replaced(): number {
    return this.#replaced;
  }

  /** Test hook: the CPU a slot's worker was pinned to and the CPUs it may run on. */
  async affinity(index: number): Promise<{ pinned: number | undefined; cpus: number[] | undefined }> {
    return await this.#slot(index).api.affinity();
  }

  /** Test hook: kills a slot's worker now, as a crash would. */
  async terminateWorker(index: number): Promise<void> {
    await this.#slot(index).worker.terminate();
  }

  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    await Promise.all(
      this.#slots.map(async (slot) => {
        try {
          slot.api[Comlink.releaseProxy]();
        } catch {
          // the worker is gone already
        }
        await slot.worker.terminate().catch(() => undefined);
        slot.areas.free();
        slot.output.free();
      }),
    );
  }
}
