// simulate's no-loss check is real: when the consumer is handed fewer pages than the round
// reported (a page dropped between the scan and the send), the ground truth finds exactly the
// pages that went missing, in the round they went missing from; untouched, it finds none.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { parseDeviceOption, simulateMigration } from '../../src/cli/simulation.js';
import { DirtySync, type RoundOptions } from '../../src/dirty/dirty-sync.js';

const options = {
  guestMemory: 8n << 30n, workload: 'hotset' as const, dirtyRate: 32 * 2 ** 20, bandwidth: 1.25e9, downtimeMs: 300,
  seed: 7, workers: 1, maxRounds: 4, devices: ['nic0:iommu-dirty', 'gpu0:dma-logging'].map(parseDeviceOption),
};

afterEach(() => {
  vi.restoreAllMocks();
});

/** Rounds from `round` on hand the consumer every run but the last page of its first run. */
function dropPagesFrom(round: number): { dropped: number[] } {
  const dropped: number[] = [];
  const original = DirtySync.prototype.round;
  let index = 0;
  vi.spyOn(DirtySync.prototype, 'round').mockImplementation(function (this: DirtySync, roundOptions: RoundOptions = {}) {
    const mine = index++;
    dropped[mine] = 0;
    const onRuns = roundOptions.onRuns;
    if (mine < round || !onRuns) return original.call(this, roundOptions);
    let first = true;
    return original.call(this, {
      onRuns: (runs, count, base) => {
        if (first && count > 0) {
          first = false;
          const copy = runs.slice(0, 2 * count);
          copy[1] = copy[1]! - 1;
          dropped[mine] = 1;
          if (copy[1] === 0) return onRuns(copy.subarray(2), count - 1, base);
          return onRuns(copy, count, base);
        }
        onRuns(runs, count, base);
      },
    });
  });
  return { dropped };
}

describe('simulate finds lost pages', () => {
  it('reports 0 lost when every run is handed over', async () => {
    const result = await simulateMigration(options);
    expect(result.rounds.length).toBeGreaterThan(1);
    expect(result.summary.lostPages).toBe(0);
  });

  it('a page dropped from rounds 2 on is lost, one per round, and nowhere else', async () => {
    const { dropped } = dropPagesFrom(1);
    const result = await simulateMigration(options);
    expect(result.rounds.length).toBeGreaterThan(1);
    expect(result.rounds.map((r) => r.lostPages)).toEqual(result.rounds.map((_, i) => dropped[i]));
    expect(result.rounds[0]!.lostPages).toBe(0);
    expect(result.summary.lostPages).toBe(result.rounds.length - 1);
  });
});
