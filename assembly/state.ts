// Per-instance state. Each worker has its own instance (its own globals) on the
// one shared memory, so these never race.

// Address of the lookup tables the host reserved and built once (see tables.ts).
export let tables: usize = 0;
export function setTables(base: usize): void {
  tables = base;
}

// Second results of the resumable scans, read back by the host after a call.
export let resultCursor: u32 = 0;
export function setResultCursor(value: u32): void {
  resultCursor = value;
}
