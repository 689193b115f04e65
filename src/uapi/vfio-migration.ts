// The VFIO migration v2 state machine as the kernel defines it: vfio_mig_get_next_state() in
// drivers/vfio/vfio_main.c (Linux 6.12). It lives with the uAPI because both kernels' sides need
// it: the simulated kernel walks it as a driver does, and src/migration plans with it.
import {
  VFIO_DEVICE_STATE_ERROR as ERROR,
  VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P as PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING as RESUMING,
  VFIO_DEVICE_STATE_RUNNING as RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP as STOP,
  VFIO_DEVICE_STATE_STOP_COPY as STOP_COPY,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
} from './vfio.js';

/** `enum vfio_device_mig_state` by value, as the kernel spells the names (without the prefix). */
export const MIGRATION_STATE_NAMES = ['ERROR', 'STOP', 'RUNNING', 'STOP_COPY', 'RESUMING', 'RUNNING_P2P', 'PRE_COPY', 'PRE_COPY_P2P'] as const;
export type MigrationStateName = (typeof MIGRATION_STATE_NAMES)[number];
export const MIGRATION_STATE_COUNT = MIGRATION_STATE_NAMES.length;

export function migrationStateName(state: number): string {
  return MIGRATION_STATE_NAMES[state] ?? `state ${state}`;
}

// vfio_from_fsm_table[cur][new]: the next state on the way from cur to new, indexed by value.
// Row and column order: ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P.
const FROM_FSM_TABLE: readonly (readonly number[])[] = [
  /* ERROR */ [ERROR, ERROR, ERROR, ERROR, ERROR, ERROR, ERROR, ERROR],
  /* STOP */ [ERROR, STOP, RUNNING_P2P, STOP_COPY, RESUMING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P],
  /* RUNNING */ [ERROR, RUNNING_P2P, RUNNING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P, PRE_COPY, RUNNING_P2P],
  /* STOP_COPY */ [ERROR, STOP, STOP, STOP_COPY, STOP, STOP, ERROR, ERROR],
  /* RESUMING */ [ERROR, STOP, STOP, STOP, RESUMING, STOP, STOP, STOP],
  /* RUNNING_P2P */ [ERROR, STOP, RUNNING, STOP, STOP, RUNNING_P2P, RUNNING, PRE_COPY_P2P],
  /* PRE_COPY */ [ERROR, RUNNING, RUNNING, PRE_COPY_P2P, RUNNING, RUNNING, PRE_COPY, PRE_COPY_P2P],
  /* PRE_COPY_P2P */ [ERROR, RUNNING_P2P, RUNNING_P2P, STOP_COPY, RUNNING_P2P, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P],
];

// state_flags_table: the migration flags a device needs for a state to exist on it (ERROR: ~0U, never).
const STATE_FLAGS: readonly number[] = [
  /* ERROR */ 0xffff_ffff,
  /* STOP */ VFIO_MIGRATION_STOP_COPY,
  /* RUNNING */ VFIO_MIGRATION_STOP_COPY,
  /* STOP_COPY */ VFIO_MIGRATION_STOP_COPY,
  /* RESUMING */ VFIO_MIGRATION_STOP_COPY,
  /* RUNNING_P2P */ VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
  /* PRE_COPY */ VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
  /* PRE_COPY_P2P */ VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
];

/** The `VFIO_MIGRATION_*` flags `state` needs (ERROR needs all of u32: no device has it). */
export function migrationStateFlags(state: number): number {
  return STATE_FLAGS[state] ?? 0xffff_ffff;
}

/** True when a device with `flags` (VFIO_DEVICE_FEATURE_MIGRATION) has `state`. */
export function migrationStateSupported(flags: number, state: number): boolean {
  if (!Number.isInteger(state) || state < 0 || state >= MIGRATION_STATE_COUNT) return false;
  const need = STATE_FLAGS[state]!;
  return ((need & flags) >>> 0) === need >>> 0;
}

/**
 * vfio_mig_get_next_state(): the state the driver steps to next on the way from `current` to
 * `target`, skipping states the device lacks; undefined where the kernel returns -EINVAL.
 */
export function nextMigrationState(flags: number, current: number, target: number): number | undefined {
  if (!migrationStateSupported(flags, current)) return undefined;
  if (!migrationStateSupported(flags, target)) return undefined;
  let next = FROM_FSM_TABLE[current]![target]!;
  while (next !== ERROR && !migrationStateSupported(flags, next)) next = FROM_FSM_TABLE[next]![target]!;
  return next === ERROR ? undefined : next;
}

/**
 * Every state a driver steps through from `current` to `target` (target last; empty when they
 * are equal), as the drivers' set_state loops walk vfio_mig_get_next_state; undefined when the
 * kernel refuses the request (EINVAL).
 */
export function migrationPath(flags: number, current: number, target: number): number[] | undefined {
  const path: number[] = [];
  let state = current;
  while (state !== target) {
    const next = nextMigrationState(flags, state, target);
    if (next === undefined) return undefined;
    path.push(next);
    state = next;
    if (path.length > MIGRATION_STATE_COUNT) throw new Error('vfio_from_fsm_table does not converge');
  }
  return path;
}
