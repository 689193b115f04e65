export { Migration, MigrationTarget, MigrationFailedError, MigrationRefusedError } from './migration.js';
export type {
  DeviceStateSink, DeviceStateSource, MigrationOptions, MigrationRound, MigrationSummary, MigrationTargetOptions, MigrationTargetSummary,
} from './migration.js';
export { StreamFormatError, VERSION_MAJOR, VERSION_MINOR } from './stream-format.js';
