// A worker of the engine's pool: instantiates the WASM kernels on the shared
// memory it is given and exposes them through comlink. The host checks every
// input and owns every address; calls here are thin.
// Started as dist/workers/engine-worker.js (Node 20 cannot start a .ts worker).
import { parentPort, threadId, workerData } from 'node:worker_threads';
import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { instantiate } from '../src/engine/module.js';
import { pinThreadToSlot, threadCpus } from '../src/engine/affinity.js';

export interface EngineWorkerData {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  /** Address of the lookup tables the host built. */
  tables: number;
  /** Pin this worker to the CPU of this slot (see src/engine/affinity.ts); undefined: leave it to the scheduler. */
  pinToSlot?: number;
}

export interface ScanStep {
  count: number;
  cursor: number;
}

export interface MergeCountScanStep extends ScanStep {
  newlySet: number;
}

const data = workerData as EngineWorkerData;
if (!parentPort || !data?.memory || !data.module) {
  throw new Error('engine-worker must be started by the engine pool with a module and a shared memory');
}
const memory = data.memory;
const pinnedCpu = data.pinToSlot === undefined ? undefined : pinThreadToSlot(data.pinToSlot);
const kernels = instantiate(data.module, memory);
kernels.setTables(data.tables);

function writeSources(list: number, sources: readonly number[]): void {
  new Uint32Array(memory.buffer, list, sources.length).set(sources);
}

// A journaled kernel returns -1 only when a test asked it to stop as if killed:
// end the thread the way a crash would, leaving the journal behind.
function exitIfFaulted(result: number): number {
  if (result < 0) process.exit(70);
  return result;
}

const api = {
  ping(): number {
    return threadId;
  },

  /** The CPU this worker was pinned to, and the CPUs it may run on now. */
  affinity(): { pinned: number | undefined; cpus: number[] | undefined } {
    return { pinned: pinnedCpu, cpus: threadCpus() };
  },

  merge(dst: number, sources: number[], list: number, firstWord: number, words: number, lastBits: number): void {
    writeSources(list, sources);
    kernels.merge(dst, list, sources.length, firstWord, words, lastBits);
  },

  mergeCount(
    dst: number, sources: number[], list: number, firstWord: number, words: number, lastBits: number,
    block: number, journal: number, faultAfterBlock: number,
  ): number {
    writeSources(list, sources);
    return exitIfFaulted(
      kernels.mergeCountJournaled(dst, list, sources.length, firstWord, words, lastBits, block, journal, faultAfterBlock),
    );
  },

  mergeCountScan(
    dst: number, sources: number[], list: number, firstWord: number, words: number, lastBits: number,
    block: number, journal: number, faultAfterBlock: number, out: number, capacity: number,
  ): MergeCountScanStep {
    writeSources(list, sources);
    const newlySet = exitIfFaulted(
      kernels.mergeCountScanRuns(dst, list, sources.length, firstWord, words, lastBits, block, journal, faultAfterBlock, out, capacity),
    );
    return { newlySet, count: kernels.runsWritten() >>> 0, cursor: kernels.lastCursor() >>> 0 };
  },

  popcount(bitmap: number, start: number, end: number): number {
    return kernels.popcountRange(bitmap, start, end);
  },

  clear(bitmap: number, start: number, end: number): void {
    kernels.clearRange(bitmap, start, end);
  },

  scanIndices(bitmap: number, cursor: number, end: number, out: number, capacity: number): ScanStep {
    const count = kernels.scanIndices(bitmap, cursor, end, out, capacity) >>> 0;
    return { count, cursor: kernels.lastCursor() >>> 0 };
  },

  scanRuns(bitmap: number, cursor: number, end: number, limit: number, out: number, capacity: number): ScanStep {
    const count = kernels.scanRuns(bitmap, cursor, end, limit, out, capacity) >>> 0;
    return { count, cursor: kernels.lastCursor() >>> 0 };
  },

  resample(
    dst: number, dstStart: number, dstEnd: number, src: number, srcStart: number, srcEnd: number,
    shift: number, delta: number, work: number, block: number, journal: number, faultAfterBlock: number,
  ): number {
    return exitIfFaulted(
      kernels.resample(dst, dstStart, dstEnd, src, srcStart, srcEnd, shift, delta, work, block, journal, faultAfterBlock),
    );
  },

  /**
   * First calls run 1.3 to 1.5x slower until V8 tiers the code up: run each
   * kernel enough times on a small area at start, off the hot path.
   */
  warmUp(dst: number, src: number, words: number, list: number, block: number, work: number, journal: number, out: number, capacity: number): void {
    writeSources(list, [src, src]);
    const bits = words * 64;
    for (let i = 0; i < 40; i++) {
      kernels.merge(dst, list, 2, 0, words, 64);
      kernels.mergeCount(dst, list, 1, 0, words, 64);
      new BigUint64Array(memory.buffer, journal, 1)[0] = 0n;
      kernels.mergeCountJournaled(dst, list, 1, 0, words, 64, block, journal, -1);
      kernels.mergeCountScanRuns(dst, list, 1, 0, words, 64, block, 0, -1, out, capacity);
      kernels.popcountRange(dst, 1, bits - 1);
      kernels.scanIndices(src, 0, bits, out, capacity);
      kernels.scanRuns(src, 0, bits, bits, out, capacity);
      kernels.resample(dst, 3, bits - 1, src, 0, bits >>> 4, 4, 3, work, 0, 0, -1);
      kernels.resample(dst, 0, bits >>> 4, src, 0, bits, -4, 5, work, 0, 0, -1);
      kernels.clearRange(dst, 0, bits);
    }
  },
};

export type EngineWorkerApi = typeof api;

Comlink.expose(api, nodeEndpoint(parentPort));
