// `bench crossover` as users run it: the compiled bin, its JSON document and its usage errors.
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
