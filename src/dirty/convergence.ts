// Will precopy converge, and how long will the guest stop? From the measured dirty rate, the
// link bandwidth and the downtime limit: each round sends what is pending at the link's speed,
// and the guest dirties more meanwhile, so pending shrinks by dirtyRate / bandwidth per round.

export interface ConvergenceInput {
  /** Bytes still to send (dirty in the migration bitmap now). */
  readonly pendingBytes: number;
  /** Bytes the guest dirties per second. */
  readonly dirtyRateBytesPerSecond: number;
  readonly bandwidthBytesPerSecond: number;
  readonly downtimeLimitMs: number;
}

export interface ConvergenceEstimate {
  /** True when pending shrinks round over round (or already fits the downtime). */
  readonly converges: boolean;
  /** Precopy rounds still needed before the stop-and-copy round fits the limit (0: stop now). */
  readonly remainingRounds: number | undefined;
  /** Downtime of the stop-and-copy round when it comes: its pending bytes at the link's speed. */
  readonly expectedDowntimeMs: number | undefined;
  /** Why it does not converge, when it does not. */
  readonly reason: string | undefined;
}

const MAX_ROUNDS = 10_000;

export function estimateConvergence(input: ConvergenceInput): ConvergenceEstimate {
  const { pendingBytes, dirtyRateBytesPerSecond: rate, bandwidthBytesPerSecond: bandwidth, downtimeLimitMs } = input;
  if (!(bandwidth > 0) || !(downtimeLimitMs > 0)) throw new RangeError('bandwidth and downtime limit must be positive');
  const downtimeMs = (bytes: number) => (bytes / bandwidth) * 1000;
  if (downtimeMs(pendingBytes) <= downtimeLimitMs) {
    return { converges: true, remainingRounds: 0, expectedDowntimeMs: downtimeMs(pendingBytes), reason: undefined };
  }
  const ratio = rate / bandwidth;
  if (ratio >= 1) {
    return {
      converges: false,
      remainingRounds: undefined,
      expectedDowntimeMs: undefined,
      reason: `the guest dirties ${(rate / 2 ** 20).toFixed(0)} MiB/s, at least the link's ${(bandwidth / 2 ** 20).toFixed(0)} MiB/s: pending never shrinks`,
    };
  }
  let pending = pendingBytes;
  let rounds = 0;
  while (downtimeMs(pending) > downtimeLimitMs && rounds < MAX_ROUNDS) {
    pending *= ratio;
    rounds++;
  }
  return { converges: true, remainingRounds: rounds, expectedDowntimeMs: downtimeMs(pending), reason: undefined };
}
