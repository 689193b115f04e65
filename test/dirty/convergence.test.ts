import { describe, expect, it } from 'vitest';
import { estimateConvergence } from '../../src/dirty/convergence.js';

const MiB = 2 ** 20;

describe('estimateConvergence', () => {
  it('stops now when pending fits the downtime', () => {
    expect(estimateConvergence({ pendingBytes: 100 * MiB, dirtyRateBytesPerSecond: 50 * MiB, bandwidthBytesPerSecond: 1000 * MiB, downtimeLimitMs: 300 })).toEqual({
      converges: true, remainingRounds: 0, expectedDowntimeMs: 100, reason: undefined,
    });
  });

  it('counts the rounds a shrinking pending set needs', () => {
    // 4000 MiB pending, ratio 0.1: 400, 40 MiB -> 40 ms at 1000 MiB/s after 2 rounds.
    const estimate = estimateConvergence({ pendingBytes: 4000 * MiB, dirtyRateBytesPerSecond: 100 * MiB, bandwidthBytesPerSecond: 1000 * MiB, downtimeLimitMs: 300 });
    expect(estimate.remainingRounds).toBe(2);
    expect(estimate.expectedDowntimeMs).toBeCloseTo(40, 6);
  });

  it('says why it cannot converge when the guest dirties faster than the link sends', () => {
    const estimate = estimateConvergence({ pendingBytes: 4000 * MiB, dirtyRateBytesPerSecond: 2000 * MiB, bandwidthBytesPerSecond: 1000 * MiB, downtimeLimitMs: 300 });
    expect(estimate).toMatchObject({ converges: false, remainingRounds: undefined });
    expect(estimate.reason).toMatch(/dirties 2000 MiB\/s, at least the link's 1000 MiB\/s/);
  });
});
