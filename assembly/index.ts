// The engine's WASM module: kernels over little-endian u64 bitmaps and the IOVA
// range set, all in an imported shared memory. Nothing here allocates: the host
// hands out every address (many worker instances share the one memory), and the
// lookup tables live in an area the host reserved (see tables.ts).
export { merge, mergeCount, mergeCountJournaled } from "./merge";
export {
  scanIndices, scanRuns, lastCursor, popcountRange, clearRange, clearRangeCounting, setRange,
  testBit, testAndSetBit, testAndClearBit, runLengthFrom,
} from "./scan";
export { mergeCountScanRuns } from "./fused";
export { resample } from "./resample";
export {
  rangeSetInit, rangeSetBytes, rangeSetInsert, rangeSetRemove, rangeSetOverlapping, rangeSetLookup,
} from "./rangeset";
export { buildTables, tableBytes } from "./tables";
export { setTables } from "./state";
import { runsWritten as runsWrittenImpl } from "./scan";

export function runsWritten(): u32 {
  return runsWrittenImpl();
}

// End of the module's own static data; the host keeps its arena above it.
export function staticDataEnd(): usize {
  return __heap_base;
}
