// The engine around the kernels: the compiled worker is found from both the
// sources and the build, workers that die are replaced and their shard's work
// redone exactly, bad input is refused before any work, the arena hands out
// aligned zeroed buffers.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type ArenaBuffer, DEFAULT_INLINE_UP_TO_BYTES, Engine, EngineClosedError, EngineInputError } from '../../src/engine/index.js';
import { packageRoot, workerPath } from '../../src/engine/module.js';
import { referenceMergeAndCount, referenceResample, referenceScanIndices, referenceScanRuns } from '../../src/engine/reference.js';
import { resampleGeometry } from '../../src/engine/resample.js';
import { fillBuffer, firstDifference, snapshot } from './helpers.js';

describe('finding the compiled worker', () => {
  test('the package root is the same from src/engine and from dist/src/engine', () => {
    const root = packageRoot();
    expect(existsSync(join(root, 'package.json'))).toBe(true);
    const fromDist = pathToFileURL(join(root, 'dist', 'src', 'engine', 'module.js'));
    expect(packageRoot(fromDist)).toBe(root);
    expect(workerPath()).toBe(join(root, 'dist', 'workers', 'engine-worker.js'));
    expect(existsSync(workerPath())).toBe(true);
  });

  test('the built package starts its workers and merges through them', () => {
    const script = `
      const { Engine } = await import(${JSON.stringify(pathToFileURL(join(packageRoot(), 'dist', 'src', 'engine', 'index.js')).href)});
      const engine = await Engine.create({ workers: 2, minimumShardBytes: 4096, inlineUpToBytes: 4096 });
      const a = engine.arena.allocate(65536), d = engine.arena.allocate(65536);
      a.u32().fill(0x01010101);
      const n = await engine.mergeAndCount(d, [a], 65536 * 8);
      console.log(JSON.stringify({ workers: engine.workers, n }));
      await engine.close();`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    // 0x01010101 sets one bit in eight.
    expect(JSON.parse(out)).toEqual({ workers: 2, n: 65536 });
  });
});

describe('a worker that dies', () => {
  let engine: Engine;
  const live: ArenaBuffer[] = [];
  const bits = 4 * 1024 * 1024 * 8; // 4 MiB bitmaps: two shards of 512 journal blocks

  function bitmap(pattern: 'half' | 'sparse' | 'runs', seed: number, bitCount = bits): ArenaBuffer {
    const buffer = engine.arena.allocate(bitCount / 8, 64);
    fillBuffer(buffer, pattern, seed);
    live.push(buffer);
    return buffer;
  }

  beforeAll(async () => {
    engine = await Engine.create({ workers: 2, memoryBytes: 96 * 1024 * 1024, minimumShardBytes: 1024 * 1024, inlineUpToBytes: 1024 * 1024 });
  });

  afterAll(async () => {
    while (live.length > 0) live.pop()!.free();
    await engine.close();
  });

  test('half-way through merge-and-count: the replacement finishes from the journal, counting nothing twice', async () => {
    const dst = bitmap('sparse', 1);
    const sources = [bitmap('half', 2), bitmap('sparse', 3)];
    const expected = snapshot(dst);
    const count = referenceMergeAndCount(expected, sources.map(snapshot), bits);
    const started = engine.testing.workersStarted();
    engine.testing.injectFault(1, 300); // dies half-way through ORing block 300 of its shard
    expect(await engine.mergeAndCount(dst, sources, bits)).toBe(count);
    expect(firstDifference(snapshot(dst), expected)).toBeUndefined();
    expect(engine.testing.workersStarted()).toBe(started + 1);
  });

  test('half-way through the fused round: the count and the runs come out exact', async () => {
    const dst = bitmap('runs', 4);
    const sources = [bitmap('runs', 5)];
    const expected = snapshot(dst);
    const count = referenceMergeAndCount(expected, sources.map(snapshot), bits);
    const started = engine.testing.workersStarted();
    engine.testing.injectFault(0, 17);
    const round = await engine.mergeCountScan(dst, sources, bits);
    expect(round.newlySet).toBe(count);
    const runs: number[] = [];
    const chunks: Array<[number, number[]]> = [];
    for await (const chunk of round.runs) chunks.push([chunk.runs[0]!, [...chunk.runs]]);
    chunks.sort((a, b) => a[0] - b[0]);
    for (const [, values] of chunks) runs.push(...values);
    const reference = referenceScanRuns(expected, 0, bits, bits, Infinity).values;
    expect(runs.length).toBe(reference.length);
    expect(firstDifference(Uint32Array.from(runs), Uint32Array.from(reference))).toBeUndefined();
    expect(engine.testing.workersStarted()).toBe(started + 1);
  });

  test('half-way through a resample: exact', async () => {
    const dst = bitmap('sparse', 6);
    const src = bitmap('sparse', 7, bits / 16);
    const spec = {
      destination: dst, destinationPageSize: 4096, destinationBits: bits - 100,
      source: src, sourcePageSize: 65536, sourceBits: bits / 16, sourceIovaOffset: 3 * 4096,
    };
    const expected = snapshot(dst);
    const count = referenceResample(expected, snapshot(src), resampleGeometry(spec));
    engine.testing.injectFault(0, 40);
    const started = engine.testing.workersStarted();
    expect(await engine.resample(spec)).toBe(count);
    expect(firstDifference(snapshot(dst), expected)).toBeUndefined();
    expect(engine.testing.workersStarted()).toBe(started + 1);
  });

  test('killed from outside at any moment of a merge-and-count: exact', async () => {
    const dst = bitmap('sparse', 8);
    const sources = [bitmap('half', 9), bitmap('half', 10)];
    const expected = snapshot(dst);
    const count = referenceMergeAndCount(expected, sources.map(snapshot), bits);
    const started = engine.testing.workersStarted();
    const call = engine.mergeAndCount(dst, sources, bits);
    // Whenever this lands (before, during or after the shard's task), the result must be exact.
    await new Promise((resolve) => setTimeout(resolve, 1));
    await engine.testing.terminateWorker(1);
    expect(await call).toBe(count);
    expect(firstDifference(snapshot(dst), expected)).toBeUndefined();
    // The next call on that slot notices the death if the call above did not.
    await engine.popcount(dst, 0, bits);
    expect(engine.testing.workersStarted()).toBe(started + 1);
  });
});

describe('the debug build', () => {
  test('loads and computes what the release build computes', async () => {
    const release = await Engine.create({ workers: 0 });
    const debug = await Engine.create({ workers: 0, wasm: 'debug' });
    try {
      const results = [release, debug].map((engine) => {
        const src = engine.arena.allocate(4096);
        const dst = engine.arena.allocate(4096);
        fillBuffer(src, 'runs', 11);
        fillBuffer(dst, 'sparse', 12);
        const count = engine.sync.mergeAndCount(dst, [src], 4096 * 8 - 3);
        return { count, bits: [...snapshot(dst)] };
      });
      expect(results[1]).toEqual(results[0]);
    } finally {
      await release.close();
      await debug.close();
    }
  });
});

describe('small calls', () => {
  test('run on the calling thread up to inlineUpToBytes, on the workers above it', async () => {
    const engine = await Engine.create({ workers: 1, minimumShardBytes: 64 * 1024, inlineUpToBytes: 64 * 1024 });
    try {
      const small = engine.arena.allocate(64 * 1024);
      const large = engine.arena.allocate(128 * 1024);
      const dst = engine.arena.allocate(128 * 1024);
      small.u32().fill(1);
      large.u32().fill(1);
      const started = engine.testing.workersStarted();
      // A fault armed on the only worker fires only if the call reaches it.
      engine.testing.injectFault(0, 0);
      expect(await engine.mergeAndCount(dst, [small], 64 * 1024 * 8)).toBe(16 * 1024);
      expect(engine.testing.workersStarted()).toBe(started);
      expect(await engine.mergeAndCount(dst, [large], 128 * 1024 * 8)).toBe(16 * 1024);
      expect(engine.testing.workersStarted()).toBe(started + 1);
    } finally {
      await engine.close();
    }
  });
});

describe('scans hand out chunks while the workers scan the next ones', () => {
  let engine: Engine;
  beforeAll(async () => {
    // 100 runs a chunk: a dense bitmap takes many chunks per shard.
    engine = await Engine.create({ workers: 2, minimumShardBytes: 4096, inlineUpToBytes: 0, outputEntries: 100 });
  });
  afterAll(async () => {
    await engine.close();
  });

  test('a chunk stays as it was handed out until the next one is asked for', async () => {
    const bits = 64 * 1024 * 8;
    const map = engine.arena.allocate(bits / 8, 64);
    fillBuffer(map, 'half', 11);
    const expected = referenceScanRuns(snapshot(map), 0, bits, bits, Infinity).values;
    const got: number[] = [];
    let chunks = 0;
    for await (const chunk of engine.scanRuns(map, bits)) {
      const copy = Array.from(chunk.runs.subarray(0, chunk.count * 2));
      if (chunks++ < 8) {
        // Long enough for the workers to finish the next batch into their other chunk.
        await new Promise((resolve) => setTimeout(resolve, 5));
        expect(Array.from(chunk.runs.subarray(0, chunk.count * 2))).toEqual(copy);
      }
      got.push(...copy);
    }
    expect(chunks).toBeGreaterThan(8);
    const pairs = (flat: ArrayLike<number>) => Array.from({ length: flat.length / 2 }, (_, i) => [flat[2 * i]!, flat[2 * i + 1]!] as const);
    expect(pairs(got).sort((a, b) => a[0] - b[0])).toEqual(pairs(expected));
    map.free();
  });

  test('index chunks too: each stays as handed out while the workers fill their other chunk', async () => {
    const bits = 64 * 1024 * 8;
    const map = engine.arena.allocate(bits / 8, 64);
    fillBuffer(map, 'half', 14);
    const expected = referenceScanIndices(snapshot(map), 0, bits, Infinity).values;
    const got: number[] = [];
    const offsets = new Set<number>();
    let chunks = 0;
    for await (const chunk of engine.scanIndices(map, bits)) {
      const copy = Array.from(chunk);
      offsets.add(chunk.byteOffset);
      if (chunks++ < 8) {
        await new Promise((resolve) => setTimeout(resolve, 5));
        expect(Array.from(chunk)).toEqual(copy);
      }
      got.push(...copy);
    }
    // Two workers, each alternating between its two chunks: four places, not two.
    expect(offsets.size).toBe(4);
    expect(got.sort((a, b) => a - b)).toEqual(expected);
    map.free();
  });

  test('after a scan left early, the next scan is exact', async () => {
    const bits = 64 * 1024 * 8;
    const first = engine.arena.allocate(bits / 8, 64);
    const second = engine.arena.allocate(bits / 8, 64);
    fillBuffer(first, 'runs', 12);
    fillBuffer(second, 'half', 13);
    for await (const _ of engine.scanRuns(first, bits)) break;
    const got: number[] = [];
    for await (const chunk of engine.scanRuns(second, bits)) got.push(...chunk.runs.subarray(0, chunk.count * 2));
    const expected = referenceScanRuns(snapshot(second), 0, bits, bits, Infinity).values;
    const pairs = (flat: ArrayLike<number>) => Array.from({ length: flat.length / 2 }, (_, i) => [flat[2 * i]!, flat[2 * i + 1]!] as const);
    expect(pairs(got).sort((a, b) => a[0] - b[0])).toEqual(pairs(expected));
    first.free();
    second.free();
  });
});

describe('worker CPUs', () => {
  // The kernel's own account of where this process may run, not the library's.
  function allowedCpus(): number[] {
    const line = readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith('Cpus_allowed_list:'))!;
    return line.split(':')[1]!.trim().split(',').flatMap((part) => {
      const [a, b] = part.split('-').map(Number);
      return Array.from({ length: (b ?? a!) - a! + 1 }, (_, i) => a! + i);
    });
  }

  test('each worker runs on a CPU of its own from the process\'s set; pinWorkers: false leaves them the whole set', async () => {
    const allowed = allowedCpus();
    const pinned = await Engine.create({ workers: 2 });
    try {
      const a = await pinned.testing.workerAffinity(0);
      const b = await pinned.testing.workerAffinity(1);
      if (allowed.length >= 2) {
        expect(a.cpus).toEqual([a.pinned]);
        expect(b.cpus).toEqual([b.pinned]);
        expect(a.pinned).not.toBe(b.pinned);
        expect(allowed).toContain(a.pinned);
        expect(allowed).toContain(b.pinned);
      } else {
        expect(a.pinned).toBeUndefined();
      }
    } finally {
      await pinned.close();
    }
    const free = await Engine.create({ workers: 2, pinWorkers: false });
    try {
      expect((await free.testing.workerAffinity(0)).pinned).toBeUndefined();
    } finally {
      await free.close();
    }
  });
});

describe('inline thresholds per call', () => {
  test('an object sets one call and leaves the others at their default, never below minimumShardBytes', async () => {
    const engine = await Engine.create({ workers: 1, minimumShardBytes: 512 * 1024 * 1024, inlineUpToBytes: { mergeAndCount: 0 } });
    try {
      expect(engine.inlineUpToBytes.mergeAndCount).toBe(0);
      expect(engine.inlineUpToBytes.popcount).toBe(512 * 1024 * 1024);
      const bitmap = engine.arena.allocate(64 * 1024);
      const dst = engine.arena.allocate(64 * 1024);
      bitmap.u32().fill(0xffffffff);
      const started = engine.testing.workersStarted();
      // The fault fires only where a call reaches the worker: popcount stays here, the merge goes.
      engine.testing.injectFault(0, 0);
      expect(await engine.popcount(bitmap, 0, 64 * 1024 * 8)).toBe(64 * 1024 * 8);
      expect(engine.testing.workersStarted()).toBe(started);
      expect(await engine.mergeAndCount(dst, [bitmap], 64 * 1024 * 8)).toBe(64 * 1024 * 8);
      expect(engine.testing.workersStarted()).toBe(started + 1);
    } finally {
      await engine.close();
    }
  });

  test('without the option, each call gets its default', async () => {
    const engine = await Engine.create({ workers: 1, minimumShardBytes: 4096 });
    try {
      expect(engine.inlineUpToBytes).toEqual(DEFAULT_INLINE_UP_TO_BYTES);
    } finally {
      await engine.close();
    }
  });

  test('an unknown call or a bad size is refused', async () => {
    await expect(Engine.create({ workers: 0, inlineUpToBytes: { scan: 1 } as never })).rejects.toThrow(/inlineUpToBytes.scan is not an engine call/);
    await expect(Engine.create({ workers: 0, inlineUpToBytes: { popcount: -1 } })).rejects.toThrow(/inlineUpToBytes.popcount/);
  });
});

describe('bad input is refused before any work', () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.create({ workers: 1 });
  });
  afterAll(async () => {
    await engine.close();
  });

  test('lengths, offsets, page sizes and outputs', async () => {
    const a = engine.arena.allocate(64);
    const b = engine.arena.allocate(128);
    a.u32().fill(7);
    const before = snapshot(b);
    await expect(engine.mergeAndCount(b, [a], 1024)).rejects.toThrow(/source 0 holds 512 bits/);
    await expect(engine.merge(b, [], 64)).rejects.toThrow(/at least one source/);
    expect(snapshot(b)).toEqual(before);
    expect(() => engine.sync.popcount(a, 10, 5)).toThrow(/start 10 is past its end 5/);
    expect(() => engine.sync.clear(a, 0, 513)).toThrow(/goes past its 512 bits/);
    expect(() => engine.sync.testBit(a, 512)).toThrow(EngineInputError);
    expect(() => engine.sync.mergeAndCount({ offset: a.offset + 4, byteLength: 32 }, [a], 64)).toThrow(/8-byte boundary/);
    expect(() => engine.sync.merge(b, [a], 1.5)).toThrow(/non-negative integer/);
    expect(() => engine.sync.scanIndices(a, 512, 0, engine.arena.allocate(64))).toThrow(/at least 144 entries/);
    expect(() => engine.scanRuns(a, 512, { from: 513 })).toThrow(/from is 513/);
    const resample = { destination: b, destinationPageSize: 4096, source: a, sourceBits: 512 };
    expect(() => engine.sync.resample({ ...resample, sourcePageSize: 3 * 4096 })).toThrow(/power of two/);
    expect(() => engine.sync.resample({ ...resample, sourcePageSize: 2 ** 21 })).toThrow(/pass destinationBits to clip/);
    expect(() => engine.sync.resample({ ...resample, sourcePageSize: 8192, sourceIovaOffset: 100 })).toThrow(/multiple of the smaller page size/);
    expect(snapshot(b)).toEqual(before);
  });

  test('a closed engine says so', async () => {
    const closing = await Engine.create({ workers: 1 });
    await closing.close();
    await closing.close();
    expect(() => closing.createRangeSet({ pageSize: 4096 })).toThrow(EngineClosedError);
    const buffer = { offset: 1 << 20, byteLength: 64 };
    await expect(closing.popcount(buffer, 0, 8)).rejects.toThrow(EngineClosedError);
  });
});

describe('the arena', () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.create({ workers: 0, memoryBytes: 1024 * 1024 });
  });
  afterAll(async () => {
    await engine.close();
  });

  test('aligned, zeroed, reused after free, and growing the memory when needed', () => {
    const first = engine.arena.allocate(100, 4096);
    expect(first.offset % 4096).toBe(0);
    first.bytes().fill(0xaa);
    const offset = first.offset;
    first.free();
    expect(() => first.bytes()).toThrow(/freed/);
    const again = engine.arena.allocate(100, 4096);
    expect(again.offset).toBe(offset);
    expect([...again.bytes()].every((x) => x === 0)).toBe(true);
    const size = engine.memory.buffer.byteLength;
    const big = engine.arena.allocate(8 * 1024 * 1024, 64);
    expect(engine.memory.buffer.byteLength).toBeGreaterThan(size);
    expect(big.offset + big.byteLength).toBeLessThanOrEqual(engine.memory.buffer.byteLength);
    expect(() => engine.arena.allocate(64, 3)).toThrow(/power of two/);
    expect(() => engine.arena.allocate(5 * 2 ** 30)).toThrow(/4 GiB/);
    big.free();
    again.free();
  });
});
