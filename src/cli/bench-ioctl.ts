// `vfio-iommufd bench ioctl`: the library's ioctl round trip on the real kernel against a C loop
// doing the same ioctl on the same open /dev/iommu (the C program inherits the fd, so both sides
// see the same objects): IOMMU_OPTION get, IOMMU_IOAS_IOVA_RANGES, and IOMMU_HWPT_GET_DIRTY_BITMAP
// on a dirty-tracking HWPT of a kernel test mock device (CONFIG_IOMMUFD_TEST) over each requested
// IOVA size. Both sides run on one thread (the calling thread; the C loop single-threaded), the
// same number of calls per batch, and the median batch gives µs per call. Two more columns split
// our overhead, both through the library's own koffi binding (Syscalls.ioctl): on a struct encoded
// once (the koffi call and the kernel), and on a struct encoded afresh each call as the wrapper
// does (encodeSlice: a view cut from a slab, and the encoding); the rest of ours is the wrapper's
// own work.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { median } from 'simple-statistics';
import { packageRoot } from '../engine/module.js';
import { KernelError } from '../kernel/errors.js';
import { linuxKernel } from '../kernel/linux/index.js';
import { libcSyscalls } from '../kernel/linux/libc.js';
import type { DeviceHandle, HostMemory, IommufdHandle } from '../kernel/types.js';
import * as uapi from '../uapi/index.js';
import { printJson, progress, table } from './output.js';
import { formatBytes, parseCount, parseDuration, parseSize, UsageError } from './units.js';

/** The goal of issue 13: the library's call at most 3 times the C loop's. */
export const IOCTL_GOAL_RATIO = 3;
export const DEFAULT_IOCTL_SIZES = [1n << 30n, 64n << 30n];
/** The bitmap's page: the host page, as the library's dirty trackers ask for it. */
const BITMAP_PAGE = 4096n;
/** One buffer mapped at consecutive IOVAs: the mock domain needs IOVA, not memory. */
const BUFFER_BYTES = 16n << 20n;
/** IOMMU_IOAS_IOVA_RANGES's array: the library's first guess, and the C loop's fixed size. */
const RANGES_CAPACITY = 4;
/** One dirty mark per this much IOVA (and one on the last mock page) to check the walk covered the range. */
const MARK_EVERY = 64n << 20n;

/**
 * vfio-iommufd: the library's call (LinuxIommufd). koffi-ioctl: Syscalls.ioctl on a ready struct.
 * koffi-encode: Syscalls.ioctl on a struct encoded each call as the wrapper does (uapi encodeSlice).
 * c-reference: the C loop.
 */
export type IoctlImpl = 'vfio-iommufd' | 'koffi-ioctl' | 'koffi-encode' | 'c-reference';

export interface IoctlBenchCase {
  readonly op: 'IOMMU_OPTION' | 'IOMMU_IOAS_IOVA_RANGES' | 'IOMMU_HWPT_GET_DIRTY_BITMAP';
  /** What the call carries: `RLIMIT_MODE get`, `capacity 4`, `1 GiB`. */
  readonly label: string;
  /** GET_DIRTY_BITMAP: the IOVA length requested, the part of it mapped, the bitmap's bytes. */
  readonly requestBytes?: number;
  /**
   * GET_DIRTY_BITMAP: the size the run was asked for (--sizes). Larger than requestBytes where
   * the kernel refuses a request past the mapping (EINVAL at the hole, Linux 6.12.118).
   */
  readonly askedBytes?: number;
  readonly mappedBytes?: number;
  readonly bitmapBytes?: number;
  /** GET_DIRTY_BITMAP: pages IOMMU_TEST_OP_DIRTY marked before each side's first (untimed) call. */
  readonly marked?: number;
}

export interface IoctlBenchResult extends IoctlBenchCase {
  readonly impl: IoctlImpl;
  /** Threads besides the calling one: 0 on every row (the C loop is one thread too). */
  readonly workers: 0;
  readonly callsPerBatch: number;
  readonly batches: number;
  /** Median over the batches of a batch's time / callsPerBatch. */
  readonly usPerCall: number;
  readonly batchUs: number[];
  /**
   * What the kernel answered to the first (untimed) call: the option's value, the number of IOVA
   * ranges, the dirty bits found (the marks, read and cleared). null for koffi-ioctl and koffi-encode
   * (the same call as ours).
   */
  readonly first: number | null;
}

export interface IoctlBenchRatio {
  readonly op: IoctlBenchCase['op'];
  readonly label: string;
  readonly oursOverC: number;
  readonly koffiOverC: number;
  readonly goal: number;
  readonly withinGoal: boolean;
}

export interface IoctlBenchReport {
  readonly machine: {
    cpu: string; cores: number; node: string; kernel: string; gcc: string | null;
    /** Threads on each side: 0 besides the calling thread (ours), one thread (C). */
    workers: 0;
    loadAverage: { start: number; end: number };
  };
  readonly iommufd: string;
  readonly results: IoctlBenchResult[];
  readonly ratios: IoctlBenchRatio[];
  readonly notes: string[];
}

export interface IoctlBenchOptions {
  /** `/dev/iommu` by default. */
  readonly iommufd?: string;
  /** GET_DIRTY_BITMAP request sizes. */
  readonly sizes?: readonly bigint[];
  readonly batches?: number;
  /** Calls per batch: as many as the library makes in this time (at least one). */
  readonly batchMs?: number;
  readonly onStep?: (label: string) => void;
}

/** `1 GiB`, `64 GiB`, `2032 MiB`: whole units where the size has them (formatBytes prints `1.00 GiB`). */
function sizeLabel(size: number | bigint): string {
  const bytes = BigInt(size);
  for (const [unit, shift] of [['TiB', 40n], ['GiB', 30n], ['MiB', 20n], ['KiB', 10n]] as const) {
    if (bytes >= 1n << shift && bytes % (1n << shift) === 0n) return `${bytes >> shift} ${unit}`;
  }
  return `${bytes} B`;
}

const MEDIAN_NOTE = 'µs per call: the median over the batches of batch time / calls; the same calls per batch on every side, the sides taking turns batch by batch.';

/** Runs `call` for at least `ms` milliseconds (and at least once); returns the calls made. Also warms the JIT. */
function calibrate(call: () => void, ms: number): number {
  const until = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
  let calls = 0;
  do {
    call();
    calls++;
  } while (process.hrtime.bigint() < until);
  return calls;
}

function timeBatches(call: () => void, calls: number, batches: number): number[] {
  const batchUs: number[] = [];
  for (let b = 0; b < batches; b++) {
    const start = process.hrtime.bigint();
    for (let c = 0; c < calls; c++) call();
    batchUs.push(Number(process.hrtime.bigint() - start) / 1e3);
  }
  return batchUs;
}

function popcount(bytes: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < bytes.length; i++) {
    let b = bytes[i]!;
    while (b) {
      b &= b - 1;
      n++;
    }
  }
  return n;
}

function buildReference(directory: string, notes: string[]): { binary: string | undefined; gcc: string | null } {
  const version = spawnSync('gcc', ['--version'], { encoding: 'utf8' });
  if (version.status !== 0) {
    notes.push('C reference skipped: gcc was not found');
    return { binary: undefined, gcc: null };
  }
  const binary = join(directory, 'ioctl-loop');
  const built = spawnSync('gcc', ['-O3', '-o', binary, join(packageRoot(), 'src', 'cli', 'reference', 'ioctl-loop.c')], { encoding: 'utf8' });
  if (built.status !== 0) {
    notes.push(`C reference skipped: gcc failed: ${built.stderr.split('\n')[0]}`);
    return { binary: undefined, gcc: version.stdout.split('\n')[0] ?? 'gcc' };
  }
  return { binary, gcc: version.stdout.split('\n')[0] ?? 'gcc' };
}

/** The C loop on the caller's iommufd (its fd 3). */
function runReference(binary: string, fd: number, calls: number, batches: number, args: string[]): { batchUs: number[]; first: number } {
  const run = spawnSync(binary, ['3', String(calls), String(batches), ...args], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe', fd], maxBuffer: 1 << 20,
  });
  if (run.status !== 0) throw new Error(`the C loop failed (${args[0]}): ${run.stderr.trim() || `exit ${run.status ?? run.signal}`}`);
  const out = JSON.parse(run.stdout.trim()) as { batchNs: number[]; first: number };
  return { batchUs: out.batchNs.map((ns) => ns / 1e3), first: out.first };
}

/** The objects the bitmap calls need: an IOAS, a mock device on a dirty-tracking HWPT (tracking on), IOVA mapped. */
interface DirtyFixture {
  ioas: number;
  mock: DeviceHandle;
  hwpt: number;
  /** IOVA mapped from MOCK_APERTURE_START, contiguous. */
  mappedBytes: bigint;
  /** The IOAS's usable IOVA from MOCK_APERTURE_START on, as the kernel reports it with the mock attached. */
  usableBytes: bigint;
}

function setUpDirty(iommufd: IommufdHandle, buffer: HostMemory, want: bigint): DirtyFixture {
  const test = iommufd.test!;
  const ioas = iommufd.ioasAlloc();
  // The mock first, then the HWPT and the mapping: the auto domain is left before anything is
  // mapped, so only the dirty HWPT holds the mock's per-page entries.
  const mock = test.mockDomain(ioas);
  const hwpt = iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas, flags: uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
  mock.attachPt(hwpt);
  iommufd.hwptSetDirtyTracking(hwpt, true);
  const start = uapi.MOCK_APERTURE_START;
  const range = iommufd.ioasIovaRanges(ioas).ranges.find((r) => r.start <= start && start <= r.last);
  const usableBytes = range ? range.last + 1n - start : 0n;
  const target = want < usableBytes ? want : usableBytes;
  let mappedBytes = 0n;
  while (mappedBytes < target) {
    const length = target - mappedBytes < BUFFER_BYTES ? target - mappedBytes : BUFFER_BYTES;
    iommufd.ioasMap({ ioasId: ioas, memory: buffer, length, iova: start + mappedBytes });
    mappedBytes += length;
  }
  return { ioas, mock, hwpt, mappedBytes, usableBytes };
}

/** Marks one mock page per MARK_EVERY and the last one of [start, start + bytes); returns what the kernel marked. */
function markDirty(iommufd: IommufdHandle, hwpt: number, bytes: bigint): number {
  const pages = Number(bytes / uapi.MOCK_IO_PAGE_SIZE);
  const marks = new Uint8Array(Math.ceil(pages / 64) * 8);
  const every = Number(MARK_EVERY / uapi.MOCK_IO_PAGE_SIZE);
  const set = (i: number) => (marks[i >> 3]! |= 1 << (i & 7));
  for (let i = 0; i < pages; i += every) set(i);
  set(pages - 1);
  return Number(iommufd.test!.markDirty(hwpt, { iova: uapi.MOCK_APERTURE_START, length: bytes, pageSize: uapi.MOCK_IO_PAGE_SIZE, bitmap: marks }));
}

export async function runIoctlBench(options: IoctlBenchOptions = {}): Promise<IoctlBenchReport> {
  const path = options.iommufd ?? '/dev/iommu';
  const sizes = options.sizes ?? DEFAULT_IOCTL_SIZES;
  const batches = options.batches ?? 9;
  const batchMs = options.batchMs ?? 100;
  if (!existsSync(path)) {
    throw new UsageError(`${path} does not exist: bench ioctl measures the real kernel's iommufd (CONFIG_IOMMUFD, and CONFIG_IOMMUFD_TEST for its mock devices); ` +
      'run it on such a kernel, e.g. in the harness guest (npm run test:kernel, test/kernel/bench-ioctl.test.ts)');
  }
  const kernel = linuxKernel({ iommuPath: path });
  const iommufd = kernel.openIommufd();
  const notes: string[] = [MEDIAN_NOTE];
  const directory = mkdtempSync(join(tmpdir(), 'vfio-iommufd-ioctl-'));
  const loadStart = loadavg()[0]!;
  const results: IoctlBenchResult[] = [];
  const ratios: IoctlBenchRatio[] = [];
  let buffer: HostMemory | undefined;
  let gcc: string | null = null;
  try {
    if (!iommufd.test?.available()) {
      throw new UsageError(`${path} answers no IOMMU_TEST_CMD: bench ioctl needs a kernel built with CONFIG_IOMMUFD_TEST (its mock devices give the dirty-tracking HWPT); ` +
        'the harness guest has one (npm run test:kernel)');
    }
    const reference = buildReference(directory, notes);
    gcc = reference.gcc;
    const sys = libcSyscalls();
    const fd = iommufd.fd;
    const maxSize = sizes.reduce((a, b) => (a > b ? a : b), 0n);
    buffer = kernel.allocateHostMemory(BUFFER_BYTES);
    const fixture = setUpDirty(iommufd, buffer, maxSize);
    const { ioas, hwpt } = fixture;

    /**
     * Measures one case on every side: `ours` is the library's call; `koffi` the bare Syscalls.ioctl
     * on a struct encoded once; `koffiEncode` the same on a struct encoded each call. The sides take
     * turns batch by batch (the C loop one batch per run), so a change of the machine's speed
     * (TCG, a busy host) falls on all of them alike. `mark` (GET_DIRTY_BITMAP) marks pages dirty
     * before ours' first call and before the C loop's first run, and returns the count.
     */
    const measure = (
      c: IoctlBenchCase,
      ours: () => number,
      koffi: () => void,
      koffiEncode: () => void,
      cArgs: string[],
      mark?: () => number,
    ): void => {
      options.onStep?.(`${c.op} ${c.label}`);
      const oursMarked = mark?.();
      const oursFirst = ours();
      const calls = calibrate(ours, batchMs);
      calibrate(koffi, batchMs / 5);
      calibrate(koffiEncode, batchMs / 5);
      const oursUs: number[] = [];
      const koffiUs: number[] = [];
      const koffiEncodeUs: number[] = [];
      const cUs: number[] = [];
      let cFirst = 0;
      let cMarked: number | undefined;
      for (let b = 0; b < batches; b++) {
        oursUs.push(...timeBatches(ours, calls, 1));
        koffiUs.push(...timeBatches(koffi, calls, 1));
        koffiEncodeUs.push(...timeBatches(koffiEncode, calls, 1));
        if (!reference.binary) continue;
        if (b === 0) cMarked = mark?.();
        const run = runReference(reference.binary, fd, calls, 1, cArgs);
        cUs.push(...run.batchUs);
        if (b === 0) cFirst = run.first;
      }
      const row = (impl: IoctlImpl, batchUs: number[], first: number | null, marked?: number): IoctlBenchResult => ({
        ...c, ...(marked === undefined ? {} : { marked }), impl, workers: 0, callsPerBatch: calls, batches,
        usPerCall: median(batchUs) / calls, batchUs, first,
      });
      const oursRow = row('vfio-iommufd', oursUs, oursFirst, oursMarked);
      const koffiRow = row('koffi-ioctl', koffiUs, null);
      results.push(oursRow, koffiRow, row('koffi-encode', koffiEncodeUs, null));
      if (!reference.binary) return;
      const cRow = row('c-reference', cUs, cFirst, cMarked);
      results.push(cRow);
      const oursOverC = oursRow.usPerCall / cRow.usPerCall;
      ratios.push({
        op: c.op, label: c.label, oursOverC, koffiOverC: koffiRow.usPerCall / cRow.usPerCall,
        goal: IOCTL_GOAL_RATIO, withinGoal: oursOverC <= IOCTL_GOAL_RATIO,
      });
    };

    const check = (rc: number, name: string, objects: Record<string, number | bigint>) => {
      if (rc < 0) throw new KernelError(name, sys.errno(), objects);
    };

    // IOMMU_OPTION get of RLIMIT_MODE (a global option: object 0).
    {
      const encode = () => uapi.iommu_option.encodeSlice({
        size: uapi.iommu_option.size, option_id: uapi.IOMMU_OPTION_RLIMIT_MODE, op: uapi.IOMMU_OPTION_OP_GET, object_id: 0,
      });
      const s = encode();
      measure(
        { op: 'IOMMU_OPTION', label: 'RLIMIT_MODE get' },
        () => Number(iommufd.optionGet(uapi.IOMMU_OPTION_RLIMIT_MODE, 0)),
        () => check(sys.ioctl(fd, uapi.IOMMU_OPTION, s, []), 'IOMMU_OPTION', { option_id: uapi.IOMMU_OPTION_RLIMIT_MODE }),
        () => check(sys.ioctl(fd, uapi.IOMMU_OPTION, encode(), []), 'IOMMU_OPTION', { option_id: uapi.IOMMU_OPTION_RLIMIT_MODE }),
        ['option'],
      );
    }

    // IOMMU_IOAS_IOVA_RANGES of the mock's IOAS, into an array of RANGES_CAPACITY.
    {
      const array = new Uint8Array(new ArrayBuffer(RANGES_CAPACITY * uapi.iommu_iova_range.size));
      const held = [array];
      const address = sys.address(array);
      const encode = () => uapi.iommu_ioas_iova_ranges.encodeSlice({
        size: uapi.iommu_ioas_iova_ranges.size, ioas_id: ioas, num_iovas: RANGES_CAPACITY, allowed_iovas: address,
      });
      const s = encode();
      measure(
        { op: 'IOMMU_IOAS_IOVA_RANGES', label: `capacity ${RANGES_CAPACITY}` },
        () => iommufd.ioasIovaRanges(ioas).ranges.length,
        () => {
          // The kernel writes the count back; the next call asks for the whole array again.
          uapi.iommu_ioas_iova_ranges.write(s, { num_iovas: RANGES_CAPACITY });
          check(sys.ioctl(fd, uapi.IOMMU_IOAS_IOVA_RANGES, s, held), 'IOMMU_IOAS_IOVA_RANGES', { ioas_id: ioas });
        },
        () => check(sys.ioctl(fd, uapi.IOMMU_IOAS_IOVA_RANGES, encode(), held), 'IOMMU_IOAS_IOVA_RANGES', { ioas_id: ioas }),
        ['iova-ranges', String(ioas), String(RANGES_CAPACITY)],
      );
    }

    // IOMMU_HWPT_GET_DIRTY_BITMAP (read and clear) over each size, from the aperture's start.
    for (const asked of sizes) {
      const mapped = asked < fixture.mappedBytes ? asked : fixture.mappedBytes;
      // A request past the mapping runs into a hole. Linux 6.12.118 fails that with EINVAL (its
      // iova_bitmap_for_each returns the walk's error; earlier 6.12 returned 0 after the mapped
      // part): there the request is what the mock HWPT can map, and the note says so.
      let size = asked;
      if (mapped < asked) {
        const probe = new Uint8Array(new ArrayBuffer(Number((asked / BITMAP_PAGE + 63n) / 64n) * 8));
        try {
          iommufd.hwptGetDirtyBitmap({ hwptId: hwpt, iova: uapi.MOCK_APERTURE_START, length: asked, pageSize: BITMAP_PAGE, bitmap: probe });
        } catch (error) {
          if (!(error instanceof KernelError) || error.code !== 'EINVAL') throw error;
          size = mapped;
        }
      }
      const bitmap = new Uint8Array(new ArrayBuffer(Number((size / BITMAP_PAGE + 63n) / 64n) * 8));
      const held = [bitmap];
      const start = uapi.MOCK_APERTURE_START;
      const data = sys.address(bitmap);
      const encode = () => uapi.iommu_hwpt_get_dirty_bitmap.encodeSlice({
        size: uapi.iommu_hwpt_get_dirty_bitmap.size, hwpt_id: hwpt, flags: 0, iova: start, length: size, page_size: BITMAP_PAGE, data,
      });
      const s = encode();
      const c: IoctlBenchCase = {
        op: 'IOMMU_HWPT_GET_DIRTY_BITMAP', label: size === asked ? sizeLabel(size) : `${sizeLabel(size)} (${sizeLabel(asked)} asked)`,
        requestBytes: Number(size), mappedBytes: Number(mapped), bitmapBytes: bitmap.byteLength, askedBytes: Number(asked),
      };
      let first = true;
      measure(
        c,
        () => {
          iommufd.hwptGetDirtyBitmap({ hwptId: hwpt, iova: start, length: size, pageSize: BITMAP_PAGE, bitmap });
          if (!first) return 0;
          first = false;
          const found = popcount(bitmap);
          bitmap.fill(0);
          return found;
        },
        () => check(sys.ioctl(fd, uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, s, held), 'IOMMU_HWPT_GET_DIRTY_BITMAP', { hwpt_id: hwpt }),
        () => check(sys.ioctl(fd, uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, encode(), held), 'IOMMU_HWPT_GET_DIRTY_BITMAP', { hwpt_id: hwpt }),
        ['dirty-bitmap', String(hwpt), String(start), String(size), String(BITMAP_PAGE)],
        () => markDirty(iommufd, hwpt, mapped),
      );
      if (size < asked) {
        notes.push(
          `IOMMU_HWPT_GET_DIRTY_BITMAP ${sizeLabel(asked)}: a mock HWPT maps at most ${sizeLabel(mapped)} (its aperture, MOCK_APERTURE_START 16 MiB .. ` +
          'MOCK_APERTURE_LAST 2 GiB - 1, drivers/iommu/iommufd/iommufd_test.h), and this kernel fails a request that runs into the unmapped rest with EINVAL ' +
          '(Linux 6.12.118: iova_bitmap_for_each returns the walk\'s -EINVAL at the hole; earlier 6.12 dropped it and returned 0). ' +
          `So both sides ask for the ${sizeLabel(mapped)} mapped: the largest GET_DIRTY_BITMAP a mock HWPT answers.`,
        );
      } else if (mapped < size) {
        notes.push(
          `IOMMU_HWPT_GET_DIRTY_BITMAP ${sizeLabel(size)}: the request covers ${sizeLabel(size)} (a ${sizeLabel(bitmap.byteLength)} bitmap at ${BITMAP_PAGE} B pages), ` +
          `but only ${sizeLabel(mapped)} of it is mapped: the mock domain's aperture (MOCK_APERTURE_START 16 MiB .. MOCK_APERTURE_LAST 2 GiB - 1, ` +
          `drivers/iommu/iommufd/iommufd_test.h; the IOAS reports ${sizeLabel(fixture.usableBytes)} usable from its start) bounds every mock HWPT, not the guest's memory ` +
          `(one ${sizeLabel(BUFFER_BYTES)} buffer is mapped at consecutive IOVAs). The kernel walks the mapped areas and stops at the first unmapped IOVA; ` +
          'Linux 6.12 iommu_read_and_clear_dirty() drops that walk\'s -EINVAL, so the call returns 0. Both sides make the same request.',
        );
      }
    }
  } finally {
    // Closing the iommufd destroys every object made on it (mock device, HWPT, IOAS, mappings)
    // and drops the library's hold on the buffer, which can then go.
    try {
      iommufd.close();
      buffer?.release();
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  }
  const cpu = cpus()[0]?.model ?? 'unknown';
  if (/QEMU|TCG/i.test(cpu)) notes.push(`the CPU is ${cpu}: under QEMU's emulation (TCG in the harness) absolute µs are slow; the ratios are what compare`);
  for (const r of ratios) {
    if (r.withinGoal) continue;
    const get = (impl: IoctlImpl) => results.find((x) => x.impl === impl && x.op === r.op && x.label === r.label)!.usPerCall;
    const ours = get('vfio-iommufd');
    const koffi = get('koffi-ioctl');
    const encoded = get('koffi-encode');
    const c = get('c-reference');
    const us = (x: number) => `${x.toFixed(2)} µs`;
    const noisy = koffi < c || encoded < koffi || ours < encoded;
    notes.push(
      `${r.op} ${r.label}: ${r.oursOverC.toFixed(2)}x C, above the goal of ${IOCTL_GOAL_RATIO}x. Of the ${us(ours - c)} over C: ` +
      `${us(koffi - c)} koffi's call (Syscalls.ioctl on a ready struct, ${r.koffiOverC.toFixed(2)}x C: the variadic ioctl through koffi's trampoline), ` +
      `${us(encoded - koffi)} a struct encoded for each call as the wrapper does (uapi encodeSlice: a view cut from a slab, the fields written), ` +
      `${us(ours - encoded)} the rest of the wrapper (argument checks, the error's object IDs, decoding the answer` +
      `${r.op === 'IOMMU_IOAS_IOVA_RANGES' ? ', a new range array per call' : ''})` +
      (noisy ? ' (a part below 0 is the run\'s noise: the machine\'s speed changed between batches)' : '') +
      (r.koffiOverC > IOCTL_GOAL_RATIO ? `; koffi's call alone is above ${IOCTL_GOAL_RATIO}x C here, so no wrapper meets the goal on this machine.` : '.'),
    );
  }
  return {
    machine: { cpu, cores: cpus().length, node: process.version, kernel: release(), gcc, workers: 0, loadAverage: { start: loadStart, end: loadavg()[0]! } },
    iommufd: path,
    results: results.map((r) => ({ ...r })),
    ratios,
    notes,
  };
}

/** The human table (and its notes) of a report. */
export function formatIoctlReport(report: IoctlBenchReport): string {
  const m = report.machine;
  const lines = [
    `${m.cpu}, ${m.cores} cores, kernel ${m.kernel}, node ${m.node}, ${m.gcc ?? 'no gcc'}; load ${m.loadAverage.start.toFixed(2)} -> ${m.loadAverage.end.toFixed(2)}`,
    `one ${report.iommufd} fd; every side one thread: ours and the koffi columns on the calling thread (workers 0), C one thread (-O3). goal: ours <= ${IOCTL_GOAL_RATIO}x C per call.`,
  ];
  const rows: (string | number)[][] = [];
  const seen = new Set<string>();
  for (const r of report.results) {
    const key = `${r.op} ${r.label}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const get = (impl: IoctlImpl) => report.results.find((x) => x.impl === impl && x.op === r.op && x.label === r.label);
    const ours = get('vfio-iommufd');
    const koffi = get('koffi-ioctl');
    const encoded = get('koffi-encode');
    const c = get('c-reference');
    const ratio = report.ratios.find((x) => x.op === r.op && x.label === r.label);
    const us = (x: IoctlBenchResult | undefined) => (x ? x.usPerCall.toFixed(x.usPerCall < 100 ? 2 : 0) : '-');
    rows.push([
      r.op, r.mappedBytes !== undefined && r.mappedBytes !== r.requestBytes ? `${r.label} (${sizeLabel(r.mappedBytes)} mapped)` : r.label,
      `${r.callsPerBatch} x ${r.batches}`, us(ours), us(koffi), us(encoded), us(c),
      ratio ? `${ratio.oursOverC.toFixed(2)}x` : '-', ratio ? `${ratio.koffiOverC.toFixed(2)}x` : '-',
      ratio ? (ratio.withinGoal ? 'yes' : 'NO') : '-',
    ]);
  }
  lines.push('ours: the library\'s call (LinuxIommufd); koffi ioctl: its Syscalls.ioctl on a struct encoded once (koffi and the kernel); ' +
    'koffi + encode: the same on a struct encoded each call, as the wrapper does (encodeSlice); C: src/cli/reference/ioctl-loop.c on the same fd.');
  lines.push(table(['ioctl', 'case', 'calls x batches', 'ours µs/call', 'koffi ioctl µs/call', 'koffi + encode µs/call', 'C µs/call', 'ours / C', 'koffi / C', `<= ${IOCTL_GOAL_RATIO}x`], rows));
  for (const note of report.notes) lines.push(`note: ${note}`);
  return lines.join('\n');
}

export function registerBenchIoctl(bench: Command): void {
  bench
    .command('ioctl')
    .description('the library\'s ioctl round trip (koffi) against a C loop on the same /dev/iommu fd: IOMMU_OPTION, IOAS_IOVA_RANGES, HWPT_GET_DIRTY_BITMAP on a mock HWPT (real kernel with CONFIG_IOMMUFD_TEST)')
    .option('--sizes <list>', 'IOVA sizes of the GET_DIRTY_BITMAP requests, comma-separated', DEFAULT_IOCTL_SIZES.map((s) => sizeLabel(s).replace(' ', '')).join(','))
    .option('--batches <n>', 'timed batches per side (the sides take turns)', '9')
    .option('--batch-time <duration>', 'calls per batch: as many as the library makes in this time (at least one)', '100ms')
    .option('--iommufd <path>', 'the iommufd device node', '/dev/iommu')
    .option('--json', 'print one JSON document: { machine, iommufd, results, ratios, notes }')
    .action(async (flags: { sizes: string; batches: string; batchTime: string; iommufd: string; json?: boolean }) => {
      const sizes = flags.sizes.split(',').map((text) => parseSize('--sizes', text));
      for (const size of sizes) {
        if (size % BITMAP_PAGE !== 0n) throw new UsageError(`--sizes: ${sizeLabel(size)} must be a multiple of ${BITMAP_PAGE} bytes (the bitmap's page)`);
        // IOMMU_TEST_OP_DIRTY takes at most 16M * 8 mock pages; the bitmap for the request stays under 64 MiB.
        if (size > 1n << 40n) throw new UsageError(`--sizes: ${sizeLabel(size)} is more than 1TiB`);
      }
      const batches = parseCount('--batches', flags.batches, 1, 1000);
      const batchMs = parseDuration('--batch-time', flags.batchTime);
      const bar = progress(2 + sizes.length, 'bench ioctl', !flags.json);
      let done = 0;
      let report: IoctlBenchReport;
      try {
        report = await runIoctlBench({ iommufd: flags.iommufd, sizes, batches, batchMs, onStep: (label) => bar.update(done++, label) });
      } finally {
        bar.stop();
      }
      if (flags.json) return printJson(report);
      process.stdout.write(`${formatIoctlReport(report)}\n`);
    });
}
