// `simulate` with a migratable device: its state goes with the RAM, PRE_COPY passes while the
// guest runs (the device dirtying its state meanwhile) and the stop-copy stream in the downtime.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { DEVICE_STATE_SIZE, parseDeviceOption, simulateMigration } from '../../src/cli/simulation.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const options = {
  guestMemory: 1n << 30n, workload: 'hotset' as const, dirtyRate: 64 * 2 ** 20, bandwidth: 1.25e9, downtimeMs: 300,
  seed: 7, workers: 1, maxRounds: 10,
};

describe('simulate: device state (migration)', () => {
  it('sends the device state in precopy passes and the stop-copy stream, counts it in the pending estimate and the downtime, and loses no page', async () => {
    const result = await simulateMigration({ ...options, devices: [parseDeviceOption('nic0:iommu-dirty+migration')] });
    const s = result.summary;
    expect(s.converged).toBe(true);
    expect(s.lostPages).toBe(0);
    const first = result.rounds[0]!;
    // The first pass: header, record header and the whole state.
    expect(first.deviceStatePendingBytes).toBe(24 + 8 + Number(DEVICE_STATE_SIZE));
    expect(first.deviceStateSentBytes).toBe(first.deviceStatePendingBytes);
    expect(first.estimate).toBeDefined();
    const last = result.rounds.at(-1)!;
    expect(last.kind).toBe('stop-and-copy');
    expect(last.deviceStateSentBytes).toBeGreaterThan(0);
    // The device dirtied its state while the guest ran: later passes carry dirty chunks.
    expect(result.rounds.slice(1, -1).every((round) => round.deviceStateSentBytes > 0) || result.rounds.length === 2).toBe(true);
    const sent = result.rounds.reduce((sum, round) => sum + round.deviceStateSentBytes, 0);
    expect(s.deviceStateBytes).toBe(sent);
    expect(s.simulatedDowntimeMs!).toBeGreaterThanOrEqual(((last.sentPages * 4096 + last.deviceStateSentBytes) / options.bandwidth) * 1000);
    expect(s.totalSentBytes).toBe(result.rounds.reduce((sum, round) => sum + round.sentPages * 4096 + round.deviceStateSentBytes, 0));
  });

  it('without the word, no device state', async () => {
    const result = await simulateMigration({ ...options, devices: [parseDeviceOption('nic0:iommu-dirty')] });
    expect(result.summary.deviceStateBytes).toBe(0);
    expect(result.rounds.every((round) => round.deviceStatePendingBytes === 0 && round.deviceStateSentBytes === 0)).toBe(true);
  });

  it('the CLI: simulate --device nic0:iommu-dirty+migration --json reports deviceStateBytes > 0 and 0 lost', () => {
    const run = spawnSync('node', [join(root, 'dist', 'src', 'cli', 'main.js'), 'simulate', '--device', 'nic0:iommu-dirty+migration', '--workers', '1', '--json'], { cwd: root, encoding: 'utf8' });
    expect(run.status, run.stderr).toBe(0);
    const document = JSON.parse(run.stdout) as { summary: { deviceStateBytes: number; lostPages: number }; rounds: { deviceStateSentBytes: number }[] };
    expect(document.summary.deviceStateBytes).toBeGreaterThan(0);
    expect(document.summary.lostPages).toBe(0);
    expect(document.rounds[0]!.deviceStateSentBytes).toBeGreaterThan(0);
  });
});
