// simulate's exit code with and without --json when the ground truth found lost pages. A real
// run loses none (that is what the other tests check), so the simulation's result is replaced
// here with one that lost pages; the command's own parsing, printing and exit code are real.
import { Command } from 'commander';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { SimulationResult } from '../../src/cli/simulation.js';

vi.mock('../../src/cli/simulation.js', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../../src/cli/simulation.js')>();
  return {
    ...actual,
    simulateMigration: async (): Promise<SimulationResult> => ({
      guestBytes: 2n << 30n, pageSize: 4096, topology: { containers: [], devices: [] }, devices: [{ name: 'nic0', tracker: 'iommu' }], rounds: [],
      summary: { converged: true, reason: null, rounds: 2, predictedDowntimeMs: 1, simulatedDowntimeMs: 2, totalSentBytes: 4096, deviceStateBytes: 0, lostPages: 3 },
    }),
  };
});

const { registerSimulate } = await import('../../src/cli/simulate.js');

async function exitCodeOf(...args: string[]): Promise<number | undefined> {
  const program = new Command('vfio-iommufd').exitOverride();
  registerSimulate(program);
  const write = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  try {
    await program.parseAsync(['node', 'vfio-iommufd', 'simulate', '--workers', '1', ...args]);
    return process.exitCode as number | undefined;
  } finally {
    write.mockRestore();
  }
}

afterEach(() => {
  process.exitCode = undefined;
});

describe('simulate with lost pages', () => {
  it('exits 1 for humans', async () => {
    expect(await exitCodeOf()).toBe(1);
  });

  it('exits 1 with --json too', async () => {
    expect(await exitCodeOf('--json')).toBe(1);
  });
});
