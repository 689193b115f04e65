export { DirtySync, MigrationBlockedError } from './dirty-sync.js';
export type { DirtyRound, DirtySyncOptions, RoundOptions, RoundPhases } from './dirty-sync.js';
export { MigrationBitmap, MemoryRegion } from './migration-bitmap.js';
export type { BitmapPlacement, DirtyRange, Reservation } from './migration-bitmap.js';
export { DeviceLoggingTracker, IommuTracker, Type1Tracker, Tracker, combineRanges, loggingWindow, DMA_LOGGING_MAX_RANGES } from './trackers.js';
export type { QueryFailure, ScratchMerge, TrackerKind } from './trackers.js';
export { estimateConvergence } from './convergence.js';
export type { ConvergenceEstimate, ConvergenceInput } from './convergence.js';
