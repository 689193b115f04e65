import { KernelError } from '../kernel/errors.js';
import { migrationStateName } from '../uapi/index.js';

/** What the library did after a failed MIG_DEVICE_STATE SET, as QEMU's vfio_migration_set_state does. */
export type MigrationRecovery =
  /** The recovery state was set: the device is in it. */
  | 'recovery-state'
  /** The recovery state failed too (or there was none): VFIO_DEVICE_RESET, the device is RUNNING. */
  | 'reset'
  /** Even the reset failed: the device's state is unknown (QEMU stops with hw_error here). */
  | 'failed';

/**
 * A migration state transition the kernel refused. Names the arc (`RUNNING -> STOP_COPY`), the
 * state the kernel reported right after the failure, and what recovery left the device in.
 */
export class MigrationTransitionError extends Error {
  override readonly name = 'MigrationTransitionError';

  constructor(
    readonly device: string,
    readonly from: number,
    readonly to: number,
    /** The state MIG_DEVICE_STATE GET reported right after the failed SET (undefined if GET failed too). */
    readonly reached: number | undefined,
    readonly recovery: MigrationRecovery,
    /** The state the device is in now (RUNNING after a reset; undefined when even that failed). */
    readonly state: number | undefined,
    /** The kernel's refusal, or undefined when the SET succeeded but GET read back another state. */
    override readonly cause: KernelError | undefined,
  ) {
    const arc = `${migrationStateName(from)} -> ${migrationStateName(to)}`;
    const after =
      recovery === 'recovery-state' ? `recovered to ${migrationStateName(state!)}`
        : recovery === 'reset' ? 'VFIO_DEVICE_RESET: the device is RUNNING'
          : 'recovery and VFIO_DEVICE_RESET failed: the device state is unknown';
    super(`${device}: migration state ${arc} failed (${cause ? cause.message : `MIG_DEVICE_STATE GET reported ${migrationStateName(reached ?? -1)} after the SET`}); the kernel reported ${reached === undefined ? 'no state' : migrationStateName(reached)}; ${after}`, { cause });
  }

  /** `FROM -> TO`. */
  get arc(): string {
    return `${migrationStateName(this.from)} -> ${migrationStateName(this.to)}`;
  }
}
