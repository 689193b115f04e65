// The WASM dirty engine: shared-memory arena, kernels, worker pool, IOVA range set.
export {
  Engine, ENGINE_CALLS, DEFAULT_INLINE_UP_TO_BYTES, type EngineCall, type EngineOptions, type RunChunk, type MergeCountScanRound,
} from './engine.js';
export { Arena, ArenaBuffer, type AllocateOptions } from './arena.js';
export {
  Kernels, MAXIMUM_SOURCES, type IndexScanResult, type RunScanResult, type MergeCountScanResult,
} from './kernels.js';
export { IovaRangeSet, type IovaRangeSetOptions, type Mapping } from './range-set.js';
export type { ResampleSpec } from './resample.js';
export type { BitmapLike } from './validate.js';
export { EngineInputError, EngineWorkerError, EngineClosedError } from './errors.js';
export { INDEX_SLACK, MAXIMUM_BITS, MAXIMUM_BYTES } from './layout.js';
