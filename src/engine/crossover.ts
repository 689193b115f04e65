// Where the workers start to pay: each engine call at growing bitmap sizes, on
// the calling thread and on the workers, in the same run. The crossover is the
// smallest measured size from which the workers finish first at every larger
// size; below it their round trip costs more than the work they share. The
// engine's defaults (DEFAULT_INLINE_UP_TO_BYTES) come from this measurement.
import { availableParallelism, loadavg } from 'node:os';
import type { ArenaBuffer } from './arena.js';
import { ENGINE_CALLS, Engine, type EngineCall } from './engine.js';
import { fillRandom, measure } from './bench.js';

export const DEFAULT_CROSSOVER_SIZES = [256 * 1024, 1024 * 1024, 4 * 1024 * 1024, 16 * 1024 * 1024, 64 * 1024 * 1024];

export interface CrossoverPoint {
  call: EngineCall;
  sizeBytes: number;
  /** Median ms on the calling thread (workers 0). */
  inlineMs: number;
  /** Median ms on the workers. */
  workersMs: number;
  workers: number;
  samples: number;
}

export interface CrossoverReport {
  machine: { cores: number; loadAverage: { start: number; end: number } };
  density: number;
  workers: number;
  points: CrossoverPoint[];
  /** Per call: bytes up to which the calling thread is as fast (the largest measured size when the workers never win). */
  crossover: Record<EngineCall, { inlineUpToBytes: number; workersNeverWon: boolean }>;
}

export interface CrossoverOptions {
  sizes?: number[];
  /** Dirty fraction of the bitmaps (default 1 %, as `bench sync`). */
  density?: number;
  workers?: number;
  timeMs?: number;
  calls?: readonly EngineCall[];
  onProgress?: (done: number, total: number, label: string) => void;
}

interface Buffers { dst: ArenaBuffer; a: ArenaBuffer; b: ArenaBuffer; pristine: Uint32Array }

/** One call on `engine` over `bytes` of bitmap; the destination is restored before it. */
function task(engine: Engine, call: EngineCall, buffers: Buffers, bytes: number): () => Promise<number | void> {
  const bits = bytes * 8;
  const { dst, a, b, pristine } = buffers;
  const restore = () => dst.u32().subarray(0, bytes / 4).set(pristine.subarray(0, bytes / 4));
  const drain = async (chunks: AsyncIterable<unknown>) => {
    let n = 0;
    for await (const _ of chunks) n++;
    return n;
  };
  switch (call) {
    case 'merge': return () => engine.merge(dst, [a, b], bits);
    case 'mergeAndCount': return () => engine.mergeAndCount(dst, [a, b], bits);
    case 'popcount': return () => engine.popcount(a, 0, bits);
    case 'clear': return () => engine.clear(dst, 0, bits);
    // A device's 64 KiB DMA-logging pages into the 4 KiB migration bitmap (the size is the destination's).
    case 'resample': return () => (restore(), engine.resample({
      destination: dst, destinationPageSize: 4096, source: a, sourcePageSize: 65536, sourceBits: Math.floor(bits / 16),
    }));
    case 'scanIndices': return () => drain(engine.scanIndices(a, bits));
    case 'scanRuns': return () => drain(engine.scanRuns(a, bits));
    case 'mergeCountScan': return async () => {
      restore();
      const round = await engine.mergeCountScan(dst, [a, b], bits);
      return drain(round.runs);
    };
  }
}

/** Measures every call on the calling thread and on `workers` workers, size by size. */
export async function measureCrossover(options: CrossoverOptions = {}): Promise<CrossoverReport> {
  const sizes = options.sizes ?? DEFAULT_CROSSOVER_SIZES;
  const density = options.density ?? 0.01;
  const workers = options.workers ?? availableParallelism();
  const timeMs = options.timeMs ?? 300;
  const calls = options.calls ?? ENGINE_CALLS;
  for (const size of sizes) {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0 || size > 256 * 1024 * 1024) {
      throw new RangeError(`crossover sizes must be multiples of 4 KiB up to 256 MiB, got ${size}`);
    }
  }
  if (!(density > 0 && density <= 0.5)) throw new RangeError(`the density must be in (0, 0.5], got ${density}`);
  if (!Number.isInteger(workers) || workers < 1) throw new RangeError(`the crossover needs at least one worker, got ${workers}`);
  const largest = Math.max(...sizes);
  const start = loadavg()[0]!;
  // Two engines: one with no workers, one that sends every call to its workers.
  const memoryBytes = largest * 4 + 64 * 1024 * 1024;
  const inline = await Engine.create({ workers: 0, memoryBytes });
  const pooled = await Engine.create({ workers, memoryBytes, inlineUpToBytes: 0 });
  const points: CrossoverPoint[] = [];
  try {
    const prepare = (engine: Engine): Buffers => {
      const buffers = {
        dst: engine.arena.allocate(largest, 64), a: engine.arena.allocate(largest, 64), b: engine.arena.allocate(largest, 64),
        pristine: new Uint32Array(largest / 4),
      };
      fillRandom(buffers.a.u32(), density, 1);
      fillRandom(buffers.b.u32(), density, 2);
      fillRandom(buffers.pristine, density, 3);
      buffers.dst.u32().set(buffers.pristine);
      return buffers;
    };
    const here = prepare(inline);
    const there = prepare(pooled);
    const total = calls.length * sizes.length;
    let done = 0;
    for (const call of calls) {
      for (const size of sizes) {
        options.onProgress?.(done++, total, `${call} at ${size / 1024} KiB`);
        const mine = task(inline, call, here, size);
        const theirs = task(pooled, call, there, size);
        const a = await measure(timeMs, 5, async () => (await mine()) ?? 0);
        const b = await measure(timeMs, 5, async () => (await theirs()) ?? 0);
        points.push({ call, sizeBytes: size, inlineMs: a.medianMs, workersMs: b.medianMs, workers, samples: Math.min(a.samples, b.samples) });
      }
    }
    options.onProgress?.(total, total, 'done');
  } finally {
    await inline.close();
    await pooled.close();
  }
  const crossover = {} as CrossoverReport['crossover'];
  for (const call of calls) {
    const mine = points.filter((p) => p.call === call).sort((x, y) => x.sizeBytes - y.sizeBytes);
    // The last size where the calling thread was at least as fast; the workers must win at every size above.
    let upTo = 0;
    for (const p of mine) if (p.inlineMs <= p.workersMs) upTo = p.sizeBytes;
    crossover[call] = { inlineUpToBytes: upTo, workersNeverWon: mine.every((p) => p.inlineMs <= p.workersMs) };
  }
  return { machine: { cores: availableParallelism(), loadAverage: { start, end: loadavg()[0]! } }, density, workers, points, crossover };
}
