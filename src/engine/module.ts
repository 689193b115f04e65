// Finding and loading the compiled WASM module and the compiled worker entry.
// Both are looked up from the package root, found by walking up from this file,
// so the same code works from src/engine/*.ts (vitest) and dist/src/engine/*.js.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The folder holding package.json above `from` (a file URL or path). */
export function packageRoot(from: string | URL = import.meta.url): string {
  let dir = dirname(typeof from === 'string' && !from.startsWith('file:') ? from : fileURLToPath(from));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${String(from)}`);
    dir = parent;
  }
}

export type WasmFlavour = 'release' | 'debug';

export function wasmPath(flavour: WasmFlavour = 'release'): string {
  const file = flavour === 'release' ? 'engine.wasm' : 'engine.debug.wasm';
  return join(packageRoot(), 'build', file);
}

/** The compiled worker entry (Node 20 cannot start a .ts worker). */
export function workerPath(name = 'engine-worker'): string {
  return join(packageRoot(), 'dist', 'workers', `${name}.js`);
}

const compiled = new Map<string, WebAssembly.Module>();

export function loadModule(flavour: WasmFlavour = 'release'): WebAssembly.Module {
  const path = wasmPath(flavour);
  let module = compiled.get(path);
  if (module) return module;
  if (!existsSync(path)) {
    throw new Error(`the engine's WASM module is missing at ${path}: run \`npm run build:wasm\``);
  }
  module = new WebAssembly.Module(readFileSync(path));
  compiled.set(path, module);
  return module;
}

/** The module's exports, as the kernels in assembly/ declare them. */
export interface KernelExports {
  staticDataEnd(): number;
  tableBytes(): number;
  buildTables(base: number): void;
  setTables(base: number): void;
  merge(dst: number, sourceList: number, k: number, firstWord: number, wordCount: number, lastBits: number): void;
  mergeCount(dst: number, sourceList: number, k: number, firstWord: number, wordCount: number, lastBits: number): number;
  mergeCountJournaled(
    dst: number, sourceList: number, k: number, firstWord: number, wordCount: number, lastBits: number,
    scratch: number, journal: number, faultAfterBlock: number,
  ): number;
  mergeCountScanRuns(
    dst: number, sourceList: number, k: number, firstWord: number, wordCount: number, lastBits: number,
    scratch: number, journal: number, faultAfterBlock: number, out: number, capacity: number,
  ): number;
  scanIndices(bitmap: number, cursor: number, end: number, out: number, capacity: number): number;
  scanRuns(bitmap: number, cursor: number, end: number, limit: number, out: number, capacity: number): number;
  runsWritten(): number;
  lastCursor(): number;
  popcountRange(bitmap: number, start: number, end: number): number;
  clearRange(bitmap: number, start: number, end: number): void;
  clearRangeCounting(bitmap: number, start: number, end: number): number;
  setRange(bitmap: number, start: number, end: number): number;
  testBit(bitmap: number, bit: number): number;
  testAndSetBit(bitmap: number, bit: number): number;
  testAndClearBit(bitmap: number, bit: number): number;
  runLengthFrom(bitmap: number, bit: number, limit: number): number;
  resample(
    dst: number, dstStart: number, dstEnd: number, src: number, srcStart: number, srcEnd: number,
    shift: number, delta: number, work: number, undo: number, journal: number, faultAfterBlock: number,
  ): number;
  rangeSetInit(set: number, capacity: number, pageShift: number): void;
  rangeSetBytes(capacity: number): number;
  rangeSetInsert(set: number, iova: bigint, length: bigint, offset: bigint): number;
  rangeSetRemove(set: number, iova: bigint, length: bigint, out: number, capacity: number): number;
  rangeSetOverlapping(set: number, iova: bigint, length: bigint, out: number, capacity: number): number;
  rangeSetLookup(set: number, iova: bigint): bigint;
}

/** Instantiates the kernels on a shared memory (one instance per thread). */
export function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): KernelExports {
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  return instance.exports as unknown as KernelExports;
}
