// The benchmark's plumbing, not its figures: one tiny run must produce the
// documented JSON schema, cover every kernel and implementation, and find the
// WASM, JS and C implementations computing the same counts on the same bits.
import { spawnSync } from 'node:child_process';
import { describe, expect, test } from 'vitest';
import { BENCH_KERNELS, evaluateCriteria, runEngineBench } from '../../src/engine/bench.js';

const hasGcc = spawnSync('gcc', ['--version']).status === 0;

describe('bench engine', () => {
  test('a tiny run reports every kernel for every implementation, with agreeing checks', async () => {
    const report = await runEngineBench({ sizes: [4096, 8192], densities: [0.05, 0.5], timeMs: 5, workers: 2 });
    expect(Object.keys(report).sort()).toEqual(['machine', 'memoryBandwidth', 'notes', 'results']);
    expect(report.memoryBandwidth.readGBps).toBeGreaterThan(0);
    expect(report.memoryBandwidth.rmwGBps).toBeGreaterThan(0);
    const impls = hasGcc ? ['c-native', 'c-per-bit', 'c-x86-64-v2', 'js', 'wasm'] : ['js', 'wasm'];
    expect([...new Set(report.results.map((r) => r.impl))].sort()).toEqual(impls);
    // Every kernel has tuned JS (the oracle is the tests' only); the per-bit C only the scan to runs.
    expect([...new Set(report.results.filter((r) => r.impl === 'js').map((r) => r.kernel))].sort()).toEqual([...BENCH_KERNELS].sort());
    if (hasGcc) expect([...new Set(report.results.filter((r) => r.impl === 'c-per-bit').map((r) => r.kernel))]).toEqual(['scan-runs']);
    expect([...new Set(report.results.map((r) => r.kernel))].sort()).toEqual([...BENCH_KERNELS].sort());
    expect([...new Set(report.results.filter((r) => r.impl === 'wasm').map((r) => r.workers))].sort()).toEqual([0, 1, 2]);
    for (const r of report.results) {
      expect(Object.keys(r)).toEqual(expect.arrayContaining(['kernel', 'sizeBytes', 'density', 'impl', 'workers', 'gbPerSec', 'nsPerWord', 'limitGBps']));
      expect(r.gbPerSec).toBeGreaterThan(0);
      expect(r.nsPerWord).toBeCloseTo((r.medianMs * 1e6) / (r.sizeBytes / 8), 6);
    }
    // Every implementation computed the same count on the same bits.
    expect(report.notes.filter((n) => n.startsWith('check mismatch'))).toEqual([]);
    if (!hasGcc) expect(report.notes).toContain('C reference skipped: gcc was not found');
    // No 4 MiB or 32 MiB sizes here, so no targets to read.
    expect(evaluateCriteria(report)).toEqual([]);
  });

  test('refuses sizes and densities it cannot run, before running anything', async () => {
    await expect(runEngineBench({ sizes: [100] })).rejects.toThrow(/multiples of 64 bytes/);
    await expect(runEngineBench({ sizes: [4096], densities: [0.9] })).rejects.toThrow(/densities must be in/);
  });
});
