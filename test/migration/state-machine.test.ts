// The state machine against the kernel's own table: vfio_mig_get_next_state() read from
// drivers/vfio/vfio_main.c of Debian's linux-source-6.12 (extracted into a cache outside the repo
// by kernel-source.sh; kernel source is never committed). The test parses
// vfio_from_fsm_table, state_flags_table and the comment's list of multi-step paths out of that C
// text, and checks every (flags, current, target) against the library's nextMigrationState and
// migrationPath. State values come from the uAPI constants (checked against the headers in test/uapi).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as uapi from '../../src/uapi/index.js';
import { MIGRATION_STATE_NAMES, migrationPath, migrationStateSupported, nextMigrationState } from '../../src/uapi/vfio-migration.js';

const vfioMain = readFileSync(execFileSync('bash', [new URL('./kernel-source.sh', import.meta.url).pathname], { encoding: 'utf8' }).trim(), 'utf8');
/** The function, from its signature to the closing brace at the start of a line. */
const source = /^int vfio_mig_get_next_state\([\s\S]*?\n\}\n/m.exec(vfioMain)![0];
const stateValue = (name: string): number => {
  const value = (uapi as unknown as Record<string, number>)[`VFIO_DEVICE_STATE_${name}`];
  if (typeof value !== 'number') throw new Error(`no VFIO_DEVICE_STATE_${name}`);
  return value;
};
const flagValue = (name: string): number => (uapi as unknown as Record<string, number>)[`VFIO_MIGRATION_${name}`]!;

function parseTable(): Map<number, Map<number, number>> {
  const body = /vfio_from_fsm_table\[[^\]]+\]\[[^\]]+\] = \{([\s\S]*?)\n\t\};/.exec(source)![1]!;
  const table = new Map<number, Map<number, number>>();
  for (const row of body.matchAll(/\[VFIO_DEVICE_STATE_(\w+)\] = \{([\s\S]*?)\}/g)) {
    const entries = new Map<number, number>();
    for (const cell of row[2]!.matchAll(/\[VFIO_DEVICE_STATE_(\w+)\] = VFIO_DEVICE_STATE_(\w+)/g)) entries.set(stateValue(cell[1]!), stateValue(cell[2]!));
    table.set(stateValue(row[1]!), entries);
  }
  return table;
}

function parseStateFlags(): Map<number, number> {
  const body = /state_flags_table\[[^\]]+\] = \{([\s\S]*?)\};/.exec(source)![1]!;
  const flags = new Map<number, number>();
  for (const entry of body.matchAll(/\[VFIO_DEVICE_STATE_(\w+)\] =\s*([^,]+),/g)) {
    const expression = entry[2]!.trim();
    const value = expression === '~0U' ? 0xffff_ffff : expression.split('|').reduce((acc, part) => acc | flagValue(part.trim().replace('VFIO_MIGRATION_', '')), 0);
    flags.set(stateValue(entry[1]!), value >>> 0);
  }
  return flags;
}

const table = parseTable();
const stateFlags = parseStateFlags();
const STATES = [...Array(MIGRATION_STATE_NAMES.length).keys()];
const ALL_FLAGS = [0, 1, 2, 3, 4, 5, 6, 7].map((bits) =>
  (bits & 1 ? uapi.VFIO_MIGRATION_STOP_COPY : 0) | (bits & 2 ? uapi.VFIO_MIGRATION_P2P : 0) | (bits & 4 ? uapi.VFIO_MIGRATION_PRE_COPY : 0));

/** The C function's body, run on the parsed tables: -1 for -EINVAL. */
function kernelNext(flags: number, current: number, target: number): number {
  const has = (state: number) => ((stateFlags.get(state)! & flags) >>> 0) === stateFlags.get(state);
  if (!has(current) || !has(target)) return -1;
  let next = table.get(current)!.get(target)!;
  while (next !== uapi.VFIO_DEVICE_STATE_ERROR && !has(next)) next = table.get(next)!.get(target)!;
  return next === uapi.VFIO_DEVICE_STATE_ERROR ? -1 : next;
}

describe('vfio_mig_get_next_state, transcribed from the kernel', () => {
  it('the kernel\'s function holds the whole 8 x 8 table and all 8 state flags', () => {
    expect(table.size).toBe(8);
    for (const row of table.values()) expect(row.size).toBe(8);
    expect(stateFlags.size).toBe(8);
  });

  it('nextMigrationState agrees with the kernel for every flag set, current and target state (512 cases)', () => {
    let cases = 0;
    for (const flags of ALL_FLAGS) {
      for (const current of STATES) {
        for (const target of STATES) {
          expect(nextMigrationState(flags, current, target) ?? -1, `flags ${flags} ${MIGRATION_STATE_NAMES[current]} -> ${MIGRATION_STATE_NAMES[target]}`).toBe(kernelNext(flags, current, target));
          cases++;
        }
      }
      for (const state of STATES) expect(migrationStateSupported(flags, state)).toBe(((stateFlags.get(state)! & flags) >>> 0) === stateFlags.get(state));
    }
    expect(cases).toBe(512);
  });

  it("migrationPath walks the kernel's comment's multi-step paths, all features on", () => {
    const all = uapi.VFIO_MIGRATION_STOP_COPY | uapi.VFIO_MIGRATION_P2P | uapi.VFIO_MIGRATION_PRE_COPY;
    const comment = /The coding will step through multiple states[\s\S]*?The following transitions are blocked:([\s\S]*?)\*\//.exec(source)!;
    const paths = [...comment[0].matchAll(/^\s*\*\s+([A-Z_P2]+(?: -> [A-Z_P2]+)+)\s*$/gm)].map((m) => m[1]!.split(' -> ').map(stateValue));
    const blocked = paths.filter((path) => path.length === 2);
    const multi = paths.filter((path) => path.length > 2);
    expect(multi.length).toBe(25);
    for (const path of multi) expect(migrationPath(all, path[0]!, path.at(-1)!), path.map((s) => MIGRATION_STATE_NAMES[s]).join(' -> ')).toEqual(path.slice(1));
    expect(blocked.map((path) => path.map((s) => MIGRATION_STATE_NAMES[s]))).toEqual([['STOP_COPY', 'PRE_COPY'], ['STOP_COPY', 'PRE_COPY_P2P']]);
    for (const [from, to] of blocked) expect(migrationPath(all, from!, to!)).toBeUndefined();
  });

  it('every path ends at its target through supported states only, or is refused exactly where the kernel refuses a step', () => {
    for (const flags of ALL_FLAGS) {
      for (const current of STATES) {
        for (const target of STATES) {
          const path = migrationPath(flags, current, target);
          // The kernel's walk: step until there, or until a step is -EINVAL.
          let state = current;
          const walked: number[] = [];
          let refused = false;
          while (state !== target) {
            const next = kernelNext(flags, state, target);
            if (next < 0) {
              refused = true;
              break;
            }
            walked.push(next);
            state = next;
          }
          expect(path, `flags ${flags} ${MIGRATION_STATE_NAMES[current]} -> ${MIGRATION_STATE_NAMES[target]}`).toEqual(refused ? undefined : walked);
        }
      }
    }
  });
});
