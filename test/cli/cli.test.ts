// The command line as users run it: the compiled bin, its JSON documents and its errors.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'dist', 'src', 'cli', 'main.js');

function run(...args: string[]) {
  const result = spawnSync('node', [bin, ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('vfio-iommufd simulate', () => {
  it('--json prints one document with the topology as built, the trackers, the rounds and a summary with no lost page', () => {
    const { status, stdout, stderr } = run('simulate', '--guest-memory', '8GiB', '--device', 'nic0:iommu-dirty', '--device', 'nic1:iommu-dirty',
      '--device', 'old0', '--device', 'gpu0:dma-logging', '--device', 'vf0:mdev', '--device', 'leg0:legacy', '--max-rounds', '3', '--workers', '1', '--json');
    expect(stderr).toBe('');
    expect(status).toBe(0);
    const document = JSON.parse(stdout);
    expect(document.topology.containers).toEqual([
      {
        backend: 'iommufd', ioasId: expect.any(Number),
        hwpts: [
          { id: expect.any(Number), dirtyTracking: true, devices: ['nic0', 'nic1'] },
          { id: expect.any(Number), dirtyTracking: false, devices: ['old0', 'gpu0'] },
        ],
        ioasDevices: ['vf0'],
        iovaRanges: expect.any(Array),
      },
      { backend: 'legacy', groups: [expect.any(Number)], devices: ['leg0'], type1DirtyTracking: true, iovaRanges: expect.any(Array) },
    ]);
    expect(document.devices).toEqual([
      { name: 'nic0', tracker: 'iommu' }, { name: 'nic1', tracker: 'iommu' }, { name: 'old0', tracker: 'none' },
      { name: 'gpu0', tracker: 'dma-logging' }, { name: 'vf0', tracker: 'none' }, { name: 'leg0', tracker: 'type1' },
    ]);
    expect(document.rounds).toHaveLength(3);
    for (const round of document.rounds) {
      expect(round).toMatchObject({ dirtyPages: expect.any(Number), newlyDirtyPages: expect.any(Number), sentPages: expect.any(Number), lostPages: 0 });
      expect(Object.keys(round.phases).sort()).toEqual(['mergeMs', 'queryMs', 'scanMs']);
    }
    // Untracked devices make every round all dirty: it cannot converge, and says why.
    expect(document.rounds.every((r: { dirtyPages: number }) => r.dirtyPages === 8 * 262144)).toBe(true);
    expect(document.summary).toMatchObject({ converged: false, lostPages: 0, simulatedDowntimeMs: null });
    expect(document.summary.reason).toMatch(/old0 has no dirty page tracking.*vf0 has no dirty page tracking.*leg0 is tracked by type1/);
  });

  it('converges with tracked devices and prints the table and lost pages: 0 for humans', () => {
    const { status, stdout } = run('simulate', '--guest-memory', '4GiB', '--dirty-rate', '50MiB/s', '--workers', '1');
    expect(status).toBe(0);
    expect(stdout).toMatch(/converged after \d+ rounds/);
    expect(stdout).toMatch(/│ round │ kind\s+│ dirty pages │/);
    expect(stdout).toMatch(/stop-and-copy/);
    expect(stdout).toMatch(/^lost pages: 0$/m);
  });

  for (const [flag, value, message] of [
    ['--guest-memory', 'lots', /--guest-memory: "lots" is not a size; write it like 64GiB/],
    ['--dirty-rate', '5 potatoes', /--dirty-rate: "5 potatoes" is not a rate; write it like 1GiB\/s/],
    ['--bandwidth', '10Gbit', /--bandwidth: "10Gbit" is not a rate/],
    ['--downtime', 'soon', /--downtime: "soon" is not a duration/],
    ['--device', 'nic0:teleport', /unknown word "teleport" \(allowed: iommu-dirty, dma-logging, mdev, legacy, migration\)/],
    ['--workload', 'chaos', /--workload: "chaos" is not one of uniform, hotset, sweep, burst/],
    ['--max-rounds', '0', /--max-rounds: "0" must be a whole number of at least 1/],
  ] as const) {
    it(`refuses ${flag} ${value} with a clear message and exit code 2`, () => {
      const { status, stderr, stdout } = run('simulate', flag, value);
      expect(status).toBe(2);
      expect(stdout).toBe('');
      expect(stderr).toMatch(message);
    });
  }

  it('accepts bandwidth in bits and rates in IEC units', () => {
    const { status, stdout } = run('simulate', '--guest-memory', '2GiB', '--bandwidth', '1Gbit/s', '--dirty-rate', '10MiB/s', '--downtime', '1s', '--workers', '0', '--json');
    expect(status).toBe(0);
    expect(JSON.parse(stdout).summary.converged).toBe(true);
  });
});

// Exit codes: 0 success, 1 a failed migration or check, 2 a usage error; errors are one line
// on stderr, never a stack trace.
describe('the CLI matrix: bad input is one line on stderr and exit code 2', () => {
  for (const [args, message] of [
    [['simulate', '--guest-memory', '64TiB', '--workers', '1'], /--guest-memory 64.00 TiB: too large for the dirty-page tracker: .*the migration bitmap holds at most 3 GiB of bits/],
    [['simulate', '--guest-memory', '1PiB', '--workers', '1'], /--guest-memory 1.00 PiB: .*beyond the 48-bit address width of nic0's IOMMU/],
    [['simulate', '--dirty-rate', '1000PiB/s', '--workers', '1'], /--dirty-rate 1000.00 PiB\/s with --bandwidth .*the simulator counts at most 2\^53 - 1 writes a round/],
    [['simulate', '--bandwidth', '1B/s', '--dirty-rate', '1TiB/s', '--workers', '1'], /--bandwidth 1.00 B\/s: .*at most 2\^53 - 1 writes a round/],
    [['simulate', '--workers', '1000'], /--workers: 1000 is more than 256, the most worker threads the engine runs/],
    [['simulate', '--workers', '1.5'], /--workers: "1.5" must be a whole number/],
    [['simulate', '--bogus'], /^vfio-iommufd: unknown option '--bogus' \(see --help\)\n$/],
    [['simulate', '--guest-memory'], /^vfio-iommufd: option '--guest-memory <size>' argument missing/],
    [['teleport'], /^vfio-iommufd: unknown command 'teleport'/],
    [['bench', 'teleport'], /^vfio-iommufd: unknown command 'teleport'/],
    [['simulate', 'extra'], /^vfio-iommufd: too many arguments for 'simulate'/],
  ] as const) {
    it(`${args.join(' ')}`, () => {
      const { status, stdout, stderr } = run(...args);
      expect(stdout).toBe('');
      expect(stderr).toMatch(message);
      expect(stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(stderr).not.toMatch(/\n\s+at /);
      expect(status).toBe(2);
    });
  }

  it('--debug adds the stack to the one-line error', () => {
    const { status, stderr } = run('simulate', '--workers', '1000', '--debug');
    expect(status).toBe(2);
    expect(stderr.split('\n')[0]).toBe('vfio-iommufd: --workers: 1000 is more than 256, the most worker threads the engine runs');
    expect(stderr).toMatch(/\n\s+at /);
  });

  it('--version prints the package version and exits 0; --help exits 0', () => {
    const version = run('--version');
    expect(version.status).toBe(0);
    expect(version.stdout.trim()).toBe(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version);
    const help = run('simulate', '--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/--guest-memory <size>/);
  });
});

describe('vfio-iommufd probe', () => {
  it('says plainly when the host has no VFIO, and exits 0', () => {
    const { status, stdout } = run('probe', '--json');
    expect(status).toBe(0);
    const report = JSON.parse(stdout);
    expect(report).toMatchObject({ iommufd: { present: expect.any(Boolean) }, legacyContainer: { present: expect.any(Boolean) }, devices: expect.any(Array) });
    if (!report.vfio) {
      expect(report.advice.length).toBeGreaterThan(0);
      const human = run('probe');
      expect(human.status).toBe(0);
      expect(human.stdout).toMatch(/This host has no VFIO/);
    }
  });
});
