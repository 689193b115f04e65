// `bench crossover` and `bench sync` as users run them: the compiled bin, JSON documents, usage errors.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'dist', 'src', 'cli', 'main.js');

function run(...args: string[]) {
  const result = spawnSync('node', [bin, ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('vfio-iommufd bench crossover', () => {
  it('--json measures every call at every size on both sides and names the crossover it found', () => {
    const { status, stdout, stderr } = run('bench', 'crossover', '--sizes', '64KiB,256KiB', '--calls', 'popcount,scanRuns', '--workers', '2', '--time', '20ms', '--json');
    expect(stderr).toBe('');
    expect(status).toBe(0);
    const document = JSON.parse(stdout);
    expect(document.workers).toBe(2);
    expect(document.points.map((p: { call: string; sizeBytes: number }) => `${p.call}@${p.sizeBytes}`)).toEqual([
      'popcount@65536', 'popcount@262144', 'scanRuns@65536', 'scanRuns@262144',
    ]);
    for (const point of document.points) {
      expect(point.inlineMs).toBeGreaterThan(0);
      expect(point.workersMs).toBeGreaterThan(0);
      expect(point.workers).toBe(2);
    }
    expect(Object.keys(document.crossover)).toEqual(['popcount', 'scanRuns']);
    for (const [call, found] of Object.entries(document.crossover) as [string, { inlineUpToBytes: number; workersNeverWon: boolean }][]) {
      const mine = document.points.filter((p: { call: string }) => p.call === call);
      // The crossover is the last size where the calling thread was at least as fast.
      const inlineWins = mine.filter((p: { inlineMs: number; workersMs: number }) => p.inlineMs <= p.workersMs).map((p: { sizeBytes: number }) => p.sizeBytes);
      expect(found.inlineUpToBytes).toBe(inlineWins.length ? Math.max(...inlineWins) : 0);
      expect(found.workersNeverWon).toBe(inlineWins.length === mine.length);
    }
    expect(Object.keys(document.defaults)).toContain('mergeCountScan');
  });

  for (const [args, message] of [
    [['--sizes', '1000'], /--sizes: 1000 must be a multiple of 4KiB/],
    [['--calls', 'teleport'], /--calls: "teleport" is not one of merge, mergeAndCount/],
    [["--workers", "0"], /--workers: "0" must be/],
    [['--density', '0.9'], /--density: "0.9" must be a fraction above 0 and at most 0.5/],
  ] as const) {
    it(`bench crossover ${args.join(' ')} is a usage error`, () => {
      const { status, stdout, stderr } = run('bench', 'crossover', ...args);
      expect(stdout).toBe('');
      expect(stderr).toMatch(message);
      expect(status).toBe(2);
    });
  }
});

describe('vfio-iommufd bench sync', () => {
  it('--json has a row per worker count and one C row per case, and ratios computed from them', () => {
    const { status, stdout, stderr } = run('bench', 'sync', '--guest', '8GiB', '--density', '0.01', '--workers', '0,2', '--iterations', '1', '--json');
    expect(stderr).toBe('');
    expect(status).toBe(0);
    const document = JSON.parse(stdout);
    const ours = document.results.filter((r: { impl: string }) => r.impl === 'vfio-iommufd');
    const c = document.results.find((r: { impl: string }) => r.impl === 'c-reference');
    expect(ours.map((r: { workers: number }) => r.workers)).toEqual([0, 2]);
    expect(c.workers).toBe(0);
    // The reference ran before and after ours (at least 3 rounds each): its medians are over both.
    expect(c.samples).toBe(6);
    expect(c.drift.beforeMs).toBeGreaterThan(0);
    expect(c.drift.afterMs).toBeGreaterThan(0);
    expect(c.roundMs).toBeGreaterThanOrEqual(Math.min(c.drift.beforeMs, c.drift.afterMs) * 0.5);
    // Both sides found the same amount of work: 2 sources at 1 % of 8 GiB less the collisions.
    for (const r of [...ours, c]) expect(Math.abs(r.dirtyPages / (2 * 0.01 * 2 ** 21) - 1)).toBeLessThan(0.05);
    expect(document.comparisons).toHaveLength(2);
    for (const row of document.comparisons) {
      const mine = ours.find((r: { workers: number }) => r.workers === row.workers);
      expect(row.roundRatio).toBeCloseTo(mine.roundMs / c.roundMs, 9);
      expect(row.afterQueryRatio).toBeCloseTo((mine.roundMs - mine.phases.queryMs) / (c.roundMs - c.phases.queryMs), 9);
    }
  });
});
