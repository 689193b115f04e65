export { Migration, MigrationTarget, MigrationFailedError, MigrationRefusedError } from './migration.js';
export type {
  DeviceStateSink, DeviceStateSource, MigrationOptions, MigrationRound, MigrationSummary, MigrationTargetOptions, MigrationTargetSummary,
} from './migration.js';
export { StreamFormatError, VERSION_MAJOR, VERSION_MINOR } from './stream-format.js';
// Device state: VFIO migration v2 on top of the kernel seam (src/kernel), one DeviceMigration per
// device. The state machine itself is src/uapi/vfio-migration.ts (the kernel's table), shared
// with the simulated kernel, which sits below this layer.
export { DeviceMigration, saveDevices, MIGRATION_MAX_CHUNK, MIGRATION_UNKNOWN_DATA_SIZE } from './device-migration.js';
export type { DeviceChunk, DeviceMigrationOptions, MigrationCounters } from './device-migration.js';
export { MigrationTransitionError } from './errors.js';
export type { MigrationRecovery } from './errors.js';
export { MIGRATION_STATE_NAMES, migrationPath, migrationStateName, migrationStateSupported, nextMigrationState } from '../uapi/vfio-migration.js';
export { DeviceMigrationSink, DeviceMigrationSource } from './device-state.js';
