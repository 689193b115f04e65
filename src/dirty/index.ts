export { DirtySync } from './dirty-sync.js';
export type { DirtyRound, DirtySyncOptions, RoundOptions, RoundPhases } from './dirty-sync.js';
export { MigrationBitmap } from './migration-bitmap.js';
export type { BitmapPlacement, DirtyRange } from './migration-bitmap.js';
export { DeviceLoggingTracker, IommuTracker, Type1Tracker, Tracker, combineRanges, DMA_LOGGING_MAX_RANGES } from './trackers.js';
export type { QueryFailure, TrackerKind } from './trackers.js';
export { estimateConvergence } from './convergence.js';
export type { ConvergenceEstimate, ConvergenceInput } from './convergence.js';
