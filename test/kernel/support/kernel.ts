// What every real-kernel test file shares: one linuxKernel() whose Syscalls wrap libc and
// record every ioctl (its name, the fd kind it went to, its result), the coverage report built
// from those records, and the assertions on failing paths (the errno of a KernelError; an
// InvalidArgumentError with no ioctl issued).
//
// vitest isolates the modules of each test file, so the records cannot live in memory across
// files: each file's afterAll(flushCoverage) merges its records into a JSON file under /tmp (a
// fresh tmpfs in each boot) and rewrites ioctl-coverage.json in the boot's results folder. The
// file written by the last test file holds the whole suite.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';
import { InvalidArgumentError, KernelError } from '../../../src/kernel/errors.js';
import type { HostMemory } from '../../../src/kernel/types.js';
import { linuxKernel, type LinuxKernel } from '../../../src/kernel/linux/index.js';
import { libcSyscalls, MAP_FAILED, type IoctlArgument, type Syscalls } from '../../../src/kernel/linux/libc.js';
import * as uapi from '../../../src/uapi/index.js';
import { UAPI_TABLE } from '../../../src/uapi/index.js';
import { viommu } from '../harness/guest-env.js';

// ---- which ioctl a request is: request numbers collide across fd kinds ----

export type FdKind = 'iommufd' | 'container' | 'group' | 'device' | 'other';

function kindOfPath(path: string): FdKind {
  if (path === '/dev/iommu') return 'iommufd';
  if (path === '/dev/vfio/vfio') return 'container';
  if (/^\/dev\/vfio\/\d+$/.test(path)) return 'group';
  if (path.startsWith('/dev/vfio/devices/')) return 'device';
  return 'other';
}

/** The fd kind each UAPI_TABLE ioctl goes to. VFIO's numbers collide (V(17) is IOMMU_DIRTY_PAGES on a container, DEVICE_FEATURE on a device). */
function kindOfName(name: string): FdKind {
  if (name.startsWith('IOMMU_')) return 'iommufd';
  if (name.startsWith('VFIO_GROUP_')) return 'group';
  if (name.startsWith('VFIO_DEVICE_') || name === 'VFIO_MIG_GET_PRECOPY_INFO') return 'device';
  return 'container'; // VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU, VFIO_IOMMU_*
}

const NAMES = new Map<string, string>(
  Object.entries(UAPI_TABLE.ioctls).map(([name, request]) => [`${kindOfName(name)}:${request}`, name]),
);

export function ioctlName(kind: FdKind, request: number): string {
  return NAMES.get(`${kind}:${request}`) ?? `${kind}:0x${request.toString(16)}`;
}

/** The sub-operation an ioctl carries in its struct: the test op, the device feature, the dirty-pages flag. */
function detailOf(name: string, arg: IoctlArgument): string | undefined {
  if (!(arg instanceof Uint8Array) || arg.byteLength < 8) return undefined;
  const word = new DataView(arg.buffer, arg.byteOffset).getUint32(4, true);
  if (name === 'IOMMU_TEST_CMD') return `op ${TEST_OPS[word] ?? word}`;
  if (name === 'VFIO_DEVICE_FEATURE') {
    const ops = [
      word & uapi.VFIO_DEVICE_FEATURE_GET ? 'GET' : '', word & uapi.VFIO_DEVICE_FEATURE_SET ? 'SET' : '',
      word & uapi.VFIO_DEVICE_FEATURE_PROBE ? 'PROBE' : '',
    ].filter(Boolean).join('|');
    return `${FEATURES[word & uapi.VFIO_DEVICE_FEATURE_MASK] ?? word & uapi.VFIO_DEVICE_FEATURE_MASK} ${ops}`;
  }
  if (name === 'VFIO_IOMMU_DIRTY_PAGES') return DIRTY_FLAGS[word] ?? `flags ${word}`;
  if (name === 'VFIO_IOMMU_UNMAP_DMA') return word === 0 ? 'plain' : (UNMAP_FLAGS[word] ?? `flags ${word}`);
  if (name === 'IOMMU_HWPT_ALLOC') return word & uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING ? 'DIRTY_TRACKING' : 'plain';
  if (name === 'IOMMU_HWPT_GET_DIRTY_BITMAP') {
    const flags = new DataView(arg.buffer, arg.byteOffset).getUint32(8, true);
    return flags & uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR ? 'NO_CLEAR' : 'clear';
  }
  if (name === 'IOMMU_OPTION') {
    const op = new DataView(arg.buffer, arg.byteOffset).getUint16(8, true);
    return `${word === uapi.IOMMU_OPTION_HUGE_PAGES ? 'HUGE_PAGES' : word === uapi.IOMMU_OPTION_RLIMIT_MODE ? 'RLIMIT_MODE' : word} ${op === uapi.IOMMU_OPTION_OP_GET ? 'GET' : 'SET'}`;
  }
  return undefined;
}

const TEST_OPS: Record<number, string> = {
  [uapi.IOMMU_TEST_OP_MOCK_DOMAIN]: 'MOCK_DOMAIN', [uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS]: 'MOCK_DOMAIN_FLAGS',
  [uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE]: 'MOCK_DOMAIN_REPLACE', [uapi.IOMMU_TEST_OP_DIRTY]: 'DIRTY',
  [uapi.IOMMU_TEST_OP_ADD_RESERVED]: 'ADD_RESERVED', 0xffff: '0xffff (probe)',
};
const FEATURES: Record<number, string> = {
  [uapi.VFIO_DEVICE_FEATURE_MIGRATION]: 'MIGRATION', [uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE]: 'MIG_DEVICE_STATE',
  [uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START]: 'DMA_LOGGING_START', [uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP]: 'DMA_LOGGING_STOP',
  [uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT]: 'DMA_LOGGING_REPORT', [uapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE]: 'MIG_DATA_SIZE',
};
const DIRTY_FLAGS: Record<number, string> = {
  [uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_START]: 'START', [uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP]: 'STOP',
  [uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP]: 'GET_BITMAP',
};
const UNMAP_FLAGS: Record<number, string> = {
  [uapi.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP]: 'GET_DIRTY_BITMAP', [uapi.VFIO_DMA_UNMAP_FLAG_ALL]: 'ALL',
};

// ---- the recording Syscalls ----

export interface IoctlRecord {
  readonly name: string;
  readonly detail: string | undefined;
  readonly kind: FdKind;
  /** 'ok' or the errno code. */
  readonly result: string;
}

/**
 * Hook run on each ioctl before it reaches the kernel; it may rewrite the struct (used once, to
 * make the kernel answer IOMMU_IOAS_IOVA_RANGES with EMSGSIZE). Returns nothing.
 */
export type IoctlHook = (record: { name: string; arg: IoctlArgument }) => void;

export class RecordingSyscalls implements Syscalls {
  readonly records: IoctlRecord[] = [];
  private readonly kinds = new Map<number, FdKind>();
  private lastErrno = 0;
  hook: IoctlHook | undefined;

  constructor(private readonly real: Syscalls) {}

  /** File descriptors opened through this Syscalls and not closed yet, by kind. */
  openFds(): FdKind[] {
    return [...this.kinds.values()];
  }

  /** ioctls issued so far (to show a refused argument issued none). */
  get ioctlCount(): number {
    return this.records.length;
  }

  open(path: string, flags: number): number {
    const fd = this.real.open(path, flags);
    if (fd < 0) this.lastErrno = this.real.errno();
    else this.kinds.set(fd, kindOfPath(path));
    return fd;
  }

  close(fd: number): number {
    this.kinds.delete(fd);
    const rc = this.real.close(fd);
    if (rc < 0) this.lastErrno = this.real.errno();
    return rc;
  }

  ioctl(fd: number, request: number, arg: IoctlArgument, held: readonly Uint8Array[]): number {
    const kind = this.kinds.get(fd) ?? 'other';
    const name = ioctlName(kind, request);
    const detail = detailOf(name, arg);
    this.hook?.({ name, arg });
    const rc = this.real.ioctl(fd, request, arg, held);
    let result = 'ok';
    if (rc < 0) {
      this.lastErrno = this.real.errno();
      result = new KernelError(name, this.lastErrno).code;
    } else if (name === 'VFIO_GROUP_GET_DEVICE_FD') {
      this.kinds.set(rc, 'device');
    } else if (detail === 'MIG_DEVICE_STATE SET' && arg instanceof Uint8Array && arg.byteLength >= 16) {
      // A SET that returns a migration data fd: VFIO_MIG_GET_PRECOPY_INFO goes to it.
      const dataFd = new DataView(arg.buffer, arg.byteOffset).getInt32(12, true);
      if (dataFd >= 0) this.kinds.set(dataFd, 'device');
    }
    this.noteMigration(fd, name, detail, arg, result);
    this.records.push({ name, detail, kind, result });
    return rc;
  }

  errno(): number {
    return this.lastErrno;
  }

  address(view: Uint8Array): bigint {
    return this.real.address(view);
  }

  mmap(length: bigint, prot: number, flags: number, fd: number, offset: bigint): bigint {
    const address = this.real.mmap(length, prot, flags, fd, offset);
    if (address === MAP_FAILED) this.lastErrno = this.real.errno();
    return address;
  }

  munmap(address: bigint, length: bigint): number {
    const rc = this.real.munmap(address, length);
    if (rc < 0) this.lastErrno = this.real.errno();
    return rc;
  }

  view(address: bigint, length: number): Uint8Array {
    return this.real.view(address, length);
  }

  pread(fd: number, buffer: Uint8Array, offset: bigint): number {
    const n = this.real.pread(fd, buffer, offset);
    if (n < 0) this.lastErrno = this.real.errno();
    return n;
  }

  pwrite(fd: number, buffer: Uint8Array, offset: bigint): number {
    const n = this.real.pwrite(fd, buffer, offset);
    if (n < 0) this.lastErrno = this.real.errno();
    return n;
  }

  madvise(address: bigint, length: bigint, advice: number): number {
    const rc = this.real.madvise(address, length, advice);
    if (rc < 0) this.lastErrno = this.real.errno();
    return rc;
  }

  pageSize(): number {
    return this.real.pageSize();
  }

  deviceNumber(fd: number): string | undefined {
    return this.real.deviceNumber(fd);
  }
  /** Migration arcs asked of the kernel: `FROM -> TO` (FROM as last read, set or reset) -> result -> count. */
  readonly migrationArcs = new Map<string, Map<string, number>>();
  private readonly migrationStates = new Map<number, number | undefined>();

  private noteMigration(fd: number, name: string, detail: string | undefined, arg: IoctlArgument, result: string): void {
    if (name === 'VFIO_DEVICE_RESET' && result === 'ok') this.migrationStates.set(fd, uapi.VFIO_DEVICE_STATE_RUNNING);
    // GET and SET carry vfio_device_feature_mig_state after the header; PROBE carries nothing.
    if (!(arg instanceof Uint8Array) || arg.byteLength < 16 || (detail !== 'MIG_DEVICE_STATE GET' && detail !== 'MIG_DEVICE_STATE SET')) return;
    const state = new DataView(arg.buffer, arg.byteOffset).getUint32(8, true);
    if (detail === 'MIG_DEVICE_STATE GET') {
      if (result === 'ok') this.migrationStates.set(fd, state);
      return;
    }
    const from = this.migrationStates.get(fd);
    const arc = `${from === undefined ? '?' : uapi.migrationStateName(from)} -> ${uapi.migrationStateName(state)}`;
    const row = this.migrationArcs.get(arc) ?? new Map<string, number>();
    row.set(result, (row.get(result) ?? 0) + 1);
    this.migrationArcs.set(arc, row);
    // After a refusal the state is what the next GET says.
    this.migrationStates.set(fd, result === 'ok' ? state : undefined);
  }

  /** Bytes read from and written to migration data fds. */
  dataBytesRead = 0;
  dataBytesWritten = 0;

  read(fd: number, buffer: Uint8Array): number {
    const n = this.real.read(fd, buffer);
    if (n < 0) this.lastErrno = this.real.errno();
    else this.dataBytesRead += n;
    return n;
  }

  write(fd: number, buffer: Uint8Array): number {
    const n = this.real.write(fd, buffer);
    if (n < 0) this.lastErrno = this.real.errno();
    else this.dataBytesWritten += n;
    return n;
  }

  fcntl(fd: number, command: number, argument: number): number {
    const rc = this.real.fcntl(fd, command, argument);
    if (rc < 0) this.lastErrno = this.real.errno();
    return rc;
  }
}

let shared: { syscalls: RecordingSyscalls; kernel: LinuxKernel } | undefined;

/** The recording Syscalls of this test file (created on first use, so host runs never load libc for skipped files). */
export function syscalls(): RecordingSyscalls {
  return suiteKernel().syscalls;
}

/** linuxKernel({ syscalls }) over the recording Syscalls. */
export function kernel(): LinuxKernel {
  return suiteKernel().kernel;
}

function suiteKernel(): { syscalls: RecordingSyscalls; kernel: LinuxKernel } {
  if (!shared) {
    const recording = new RecordingSyscalls(libcSyscalls());
    shared = { syscalls: recording, kernel: linuxKernel({ syscalls: recording }) };
  }
  return shared;
}

// ---- coverage ----

/**
 * Every ioctl the shim (src/kernel/linux) can issue, named as in UAPI_TABLE.ioctls: the
 * `uapi.X` request constants passed to its ioctl calls, by reading iommufd.ts, device.ts and
 * legacy.ts. coverage.test.ts checks this list against the shim's source.
 */
export const SHIM_IOCTLS = [
  // iommufd.ts: LinuxIommufd and its IOMMU_TEST_CMD ops
  'IOMMU_DESTROY', 'IOMMU_IOAS_ALLOC', 'IOMMU_IOAS_ALLOW_IOVAS', 'IOMMU_IOAS_COPY', 'IOMMU_IOAS_IOVA_RANGES',
  'IOMMU_IOAS_MAP', 'IOMMU_IOAS_UNMAP', 'IOMMU_OPTION', 'IOMMU_HWPT_ALLOC', 'IOMMU_GET_HW_INFO',
  'IOMMU_HWPT_SET_DIRTY_TRACKING', 'IOMMU_HWPT_GET_DIRTY_BITMAP', 'IOMMU_TEST_CMD',
  // device.ts: LinuxDevice (cdev, or a device fd from a group)
  'VFIO_DEVICE_BIND_IOMMUFD', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'VFIO_DEVICE_DETACH_IOMMUFD_PT', 'VFIO_DEVICE_GET_INFO',
  'VFIO_DEVICE_GET_REGION_INFO', 'VFIO_DEVICE_RESET', 'VFIO_DEVICE_FEATURE',
  'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', 'VFIO_DEVICE_PCI_HOT_RESET',
  // migration-data.ts: LinuxMigrationData (the data fd a MIG_DEVICE_STATE SET returns)
  'VFIO_MIG_GET_PRECOPY_INFO',
  // legacy.ts: LinuxLegacyContainer and LinuxGroup
  'VFIO_GET_API_VERSION', 'VFIO_CHECK_EXTENSION', 'VFIO_SET_IOMMU', 'VFIO_IOMMU_GET_INFO', 'VFIO_IOMMU_MAP_DMA',
  'VFIO_IOMMU_UNMAP_DMA', 'VFIO_IOMMU_DIRTY_PAGES', 'VFIO_GROUP_GET_STATUS', 'VFIO_GROUP_SET_CONTAINER',
  'VFIO_GROUP_UNSET_CONTAINER', 'VFIO_GROUP_GET_DEVICE_FD',
] as const;

/** Sub-operations of the shim's multiplexed ioctls, as detailOf() names them. */
export const SHIM_DETAILS = [
  'IOMMU_TEST_CMD op 0xffff (probe)', 'IOMMU_TEST_CMD op MOCK_DOMAIN', 'IOMMU_TEST_CMD op MOCK_DOMAIN_FLAGS',
  'IOMMU_TEST_CMD op MOCK_DOMAIN_REPLACE', 'IOMMU_TEST_CMD op DIRTY',
  'IOMMU_OPTION HUGE_PAGES GET', 'IOMMU_OPTION HUGE_PAGES SET',
  'IOMMU_HWPT_ALLOC plain', 'IOMMU_HWPT_ALLOC DIRTY_TRACKING',
  'IOMMU_HWPT_GET_DIRTY_BITMAP clear', 'IOMMU_HWPT_GET_DIRTY_BITMAP NO_CLEAR',
  'VFIO_DEVICE_FEATURE DMA_LOGGING_START SET|PROBE', 'VFIO_DEVICE_FEATURE DMA_LOGGING_START SET',
  'VFIO_DEVICE_FEATURE DMA_LOGGING_STOP SET', 'VFIO_DEVICE_FEATURE DMA_LOGGING_REPORT GET',
  'VFIO_DEVICE_FEATURE MIGRATION GET', 'VFIO_DEVICE_FEATURE MIG_DEVICE_STATE GET', 'VFIO_DEVICE_FEATURE MIG_DEVICE_STATE SET',
  'VFIO_DEVICE_FEATURE MIG_DATA_SIZE GET',
  'VFIO_IOMMU_DIRTY_PAGES START', 'VFIO_IOMMU_DIRTY_PAGES STOP', 'VFIO_IOMMU_DIRTY_PAGES GET_BITMAP',
  'VFIO_IOMMU_UNMAP_DMA plain', 'VFIO_IOMMU_UNMAP_DMA GET_DIRTY_BITMAP', 'VFIO_IOMMU_UNMAP_DMA ALL',
] as const;

/** Why an ioctl (or sub-operation) cannot succeed in this guest, when the suite only reaches its failing path. */
export const KNOWN_GAPS: Record<string, string> = {
  VFIO_DEVICE_FEATURE:
    "succeeds on the mtty mdevs (virtio boot: migration); in the intel boot edu has none of the features the library asks for (migration, DMA logging: vfio-pci variant drivers only), so every call is ENOTTY; the SET-only LOW_POWER features vfio-pci gives every device are probed with GET by featureProbe(), which the kernel refuses (EINVAL)",
  'VFIO_DEVICE_FEATURE DMA_LOGGING_START SET':
    'succeeds on mtty (virtio boot), whose log ops accept any range and report nothing; real DMA logging needs mlx5/pds/hisi vfio-pci variant drivers, which QEMU does not emulate (edu answers ENOTTY)',
  'VFIO_DEVICE_FEATURE DMA_LOGGING_STOP SET': 'as DMA_LOGGING_START: edu answers ENOTTY',
  'VFIO_DEVICE_FEATURE DMA_LOGGING_REPORT GET': 'as DMA_LOGGING_START: edu answers ENOTTY',
};

interface CoverageFile {
  boot: string | undefined;
  files: string[];
  /** name -> result -> count */
  ioctls: Record<string, Record<string, number>>;
  /** "NAME detail" -> result -> count */
  details: Record<string, Record<string, number>>;
  /** Migration arcs "FROM -> TO" -> result -> count (MIG_DEVICE_STATE SET). */
  migrationArcs?: Record<string, Record<string, number>>;
  migrationDataBytes?: { read: number; written: number };
}

const RECORD_DIR = '/tmp/vfio-iommufd-kernel-suite';

/** The boot's results folder: the harness's results share in the guest, else /tmp/out. */
export function resultsDir(): string {
  const dir = process.env.VFIO_IOMMUFD_RESULTS_DIR ?? (existsSync('/run/results/guest.log') ? '/run/results' : '/tmp/out');
  mkdirSync(dir, { recursive: true });
  return dir;
}

function count(table: Record<string, Record<string, number>>, key: string, result: string): void {
  const row = (table[key] ??= {});
  row[result] = (row[result] ?? 0) + 1;
}

/** Merges this file's records into the suite's and rewrites ioctl-coverage.json. Call in afterAll. */
export function flushCoverage(file: string): void {
  if (!shared) return;
  mkdirSync(RECORD_DIR, { recursive: true });
  const path = join(RECORD_DIR, `records-${viommu ?? 'host'}.json`);
  const merged: CoverageFile = existsSync(path)
    ? (JSON.parse(readFileSync(path, 'utf8')) as CoverageFile)
    : { boot: viommu, files: [], ioctls: {}, details: {} };
  if (!merged.files.includes(file)) merged.files.push(file);
  for (const record of shared.syscalls.records.splice(0)) {
    count(merged.ioctls, record.name, record.result);
    if (record.detail) count(merged.details, `${record.name} ${record.detail}`, record.result);
  }
  merged.migrationArcs ??= {};
  for (const [arc, results] of shared.syscalls.migrationArcs) {
    for (const [result, n] of results) for (let i = 0; i < n; i++) count(merged.migrationArcs, arc, result);
  }
  shared.syscalls.migrationArcs.clear();
  merged.migrationDataBytes ??= { read: 0, written: 0 };
  merged.migrationDataBytes.read += shared.syscalls.dataBytesRead;
  merged.migrationDataBytes.written += shared.syscalls.dataBytesWritten;
  shared.syscalls.dataBytesRead = 0;
  shared.syscalls.dataBytesWritten = 0;
  writeFileSync(path, JSON.stringify(merged, null, 2));
  writeFileSync(join(resultsDir(), 'ioctl-coverage.json'), JSON.stringify(coverageReport(merged), null, 2) + '\n');
}

export function coverageReport(merged: CoverageFile) {
  const succeeded = (row: Record<string, number> | undefined) => (row?.ok ?? 0) > 0;
  const entry = (name: string, row: Record<string, number> | undefined) => ({
    name,
    issued: row !== undefined,
    succeeded: succeeded(row),
    results: row ?? {},
    ...(KNOWN_GAPS[name] ? { gap: KNOWN_GAPS[name] } : {}),
  });
  const shim = SHIM_IOCTLS.map((name) => entry(name, merged.ioctls[name]));
  const details = SHIM_DETAILS.map((name) => entry(name, merged.details[name]));
  return {
    boot: merged.boot,
    testFiles: merged.files,
    shimIoctls: SHIM_IOCTLS,
    issued: Object.keys(merged.ioctls).sort(),
    missing: SHIM_IOCTLS.filter((name) => !merged.ioctls[name]),
    neverSucceeded: SHIM_IOCTLS.filter((name) => merged.ioctls[name] && !succeeded(merged.ioctls[name])),
    notInShimList: Object.keys(merged.ioctls).filter((name) => !(SHIM_IOCTLS as readonly string[]).includes(name)),
    ioctls: shim,
    subOperations: details,
    subOperationsMissing: SHIM_DETAILS.filter((name) => !merged.details[name]),
    otherSubOperations: Object.keys(merged.details).filter((name) => !(SHIM_DETAILS as readonly string[]).includes(name)),
    migrationArcs: Object.fromEntries(Object.entries(merged.migrationArcs ?? {}).sort(([a], [b]) => a.localeCompare(b))),
    migrationDataBytes: merged.migrationDataBytes ?? { read: 0, written: 0 },
  };
}

// ---- assertions for failing paths ----

/** Runs `action`, expecting a KernelError from `ioctl` with errno `code`; returns it. */
export function expectKernelError(action: () => unknown, ioctl: string, code: string): KernelError {
  let caught: unknown;
  try {
    action();
  } catch (error) {
    caught = error;
  }
  expect(caught, `${ioctl} should fail with ${code}`).toBeInstanceOf(KernelError);
  const error = caught as KernelError;
  expect({ ioctl: error.ioctl, code: error.code }).toEqual({ ioctl, code });
  return error;
}

export async function expectKernelErrorAsync(action: () => Promise<unknown>, ioctl: string, code: string): Promise<KernelError> {
  let caught: unknown;
  try {
    await action();
  } catch (error) {
    caught = error;
  }
  expect(caught, `${ioctl} should fail with ${code}`).toBeInstanceOf(KernelError);
  const error = caught as KernelError;
  expect({ ioctl: error.ioctl, code: error.code }).toEqual({ ioctl, code });
  return error;
}

/** Runs `action`, expecting the library to refuse `argument` before any ioctl. */
export function expectRefused(action: () => unknown, argument: string | RegExp): InvalidArgumentError {
  const before = syscalls().ioctlCount;
  let caught: unknown;
  try {
    action();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(InvalidArgumentError);
  const error = caught as InvalidArgumentError;
  if (typeof argument === 'string') expect(error.argument).toBe(argument);
  else expect(error.argument).toMatch(argument);
  expect(syscalls().ioctlCount, 'no ioctl may be issued for a refused argument').toBe(before);
  return error;
}

// ---- small helpers ----

export const MiB = 1n << 20n;

/** Bit `index` of a little-endian bitmap. */
export function testBit(bitmap: Uint8Array, index: number): boolean {
  return ((bitmap[index >> 3]! >> (index & 7)) & 1) === 1;
}

export function setBit(bitmap: Uint8Array, index: number): void {
  bitmap[index >> 3] = bitmap[index >> 3]! | (1 << (index & 7));
}

/** Indexes of the set bits among the first `bits`. */
export function setBits(bitmap: Uint8Array, bits: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < bits; i++) if (testBit(bitmap, i)) out.push(i);
  return out;
}

/**
 * What a test opens, given back after it whatever happened: handles closed newest first, then
 * host memory released (a mapping must be gone before its memory is).
 */
export function perTestCleanup(): {
  track<T extends { close(): void }>(handle: T): T;
  memory(length: bigint): HostMemory;
  keep(memory: HostMemory): HostMemory;
} {
  const open: { close(): void }[] = [];
  const memories: HostMemory[] = [];
  afterEach(() => {
    for (const handle of open.splice(0).reverse()) handle.close();
    for (const m of memories.splice(0)) m.release();
  });
  const keep = (m: HostMemory) => {
    memories.push(m);
    return m;
  };
  return {
    track: (handle) => {
      open.push(handle);
      return handle;
    },
    memory: (length) => keep(kernel().allocateHostMemory(length)),
    keep,
  };
}
