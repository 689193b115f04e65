// Where things sit in the shared memory. The module keeps its own static data
// (none in release; assertion strings in debug) below STATIC_RESERVED_BYTES,
// the lookup tables the kernels use come next, and the arena takes the rest.
export const PAGE_BYTES = 65536;
export const STATIC_RESERVED_BYTES = 64 * 1024;
export const TABLES_OFFSET = STATIC_RESERVED_BYTES;
export const TABLES_BYTES = 8192;
export const ARENA_START = 128 * 1024;
/** 4 GiB: the wasm32 limit; declared up front because shared memories cannot exceed their maximum. */
export const MAXIMUM_PAGES = 65536;
export const MAXIMUM_BYTES = MAXIMUM_PAGES * PAGE_BYTES;
/** Per-thread work area for per-call tables (assembly/resample.ts). */
export const WORK_BYTES = 4096;
/** Words per journal block, as assembly/merge.ts JOURNAL_BLOCK_WORDS. */
export const JOURNAL_BLOCK_WORDS = 512;
/** Scan outputs need this many entries of room past the last real one (assembly/scan.ts INDEX_SLACK). */
export const INDEX_SLACK = 72;
/** Bit positions are u32 in the kernels: a bitmap holds at most 2^32 - 1 bits (512 MiB, 16 TiB at 4 KiB). */
export const MAXIMUM_BITS = 2 ** 32 - 1;

export function createSharedMemory(bytes: number): WebAssembly.Memory {
  const pages = Math.max(Math.ceil(Math.max(bytes, ARENA_START) / PAGE_BYTES), 2);
  return new WebAssembly.Memory({ initial: pages, maximum: MAXIMUM_PAGES, shared: true });
}
