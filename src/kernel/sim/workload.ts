// A guest workload: devices writing guest memory by DMA at a given dirty rate, in one of four
// patterns, reproducible from a seed. It records the ground truth — every page written since the
// last take — as a bitmap (never an object per page), so a consumer can prove that no dirty page
// was lost by whatever dirty tracking it used.
import { z } from 'zod';
import { InvalidArgumentError } from '../errors.js';
import { ChunkedBitmap, testBit } from './bitmap.js';
import type { DmaSource, SimulatedKernel } from './kernel.js';
import { Xoshiro128 } from './prng.js';

const PositiveSize = z.union([z.bigint(), z.number().int().positive()]).transform((value) => BigInt(value));

export const WorkloadPatternSpec = z.discriminatedUnion('kind', [
  /** Every page equally likely. */
  z.object({ kind: z.literal('uniform') }).strict(),
  /** A hot set of `hotFraction` of the pages takes `hotProbability` of the writes. */
  z.object({
    kind: z.literal('hot-set'),
    hotFraction: z.number().gt(0).max(1).default(0.05),
    hotProbability: z.number().min(0).max(1).default(0.9),
  }).strict(),
  /** A sweep through memory, page after page, wrapping around. */
  z.object({ kind: z.literal('sequential') }).strict(),
  /** Runs of `burstPages` consecutive pages starting at random pages. */
  z.object({ kind: z.literal('bursts'), burstPages: z.number().int().min(1).default(64) }).strict(),
]);

export type WorkloadPattern = z.input<typeof WorkloadPatternSpec>;

export const GuestWorkloadSpec = z
  .object({
    /** Guest memory as the devices address it: page-aligned IOVA ranges (already mapped). */
    ranges: z.array(z.object({ iova: z.bigint().nonnegative(), length: PositiveSize }).strict()).min(1),
    /** Guest page size (default 4 KiB): the unit of writes and of the ground truth. */
    pageSize: PositiveSize.default(4096n),
    /** Devices issuing the writes, in turn. */
    devices: z.array(z.any()).min(1),
    pattern: WorkloadPatternSpec.default({ kind: 'uniform' }),
    seed: z.number().int().default(1),
    /** Pages written per simulated second. */
    dirtyRate: z.number().positive(),
  })
  .strict();

export type GuestWorkloadOptions = Omit<z.input<typeof GuestWorkloadSpec>, 'devices'> & { readonly devices: readonly DmaSource[] };

/** What one step of the workload did. */
export interface WorkloadStep {
  /** Page writes issued (a page may be written more than once). */
  readonly writes: number;
  /** Writes the IOMMU refused (the page is not mapped writeable for that device): not dirty. */
  readonly faulted: number;
  /** Pages that became dirty in this step (were clean in the ground truth before). */
  readonly newlyDirty: number;
}

/** How a dirty bitmap compares with the ground truth. */
export interface TruthComparison {
  /** Pages written but not reported: a lost dirty page (must be 0). */
  readonly lost: number;
  /** Pages reported but not written (allowed: coarse trackers over-report). */
  readonly extra: number;
  readonly firstLost: bigint | undefined;
}

interface RangeLayout {
  readonly iova: bigint;
  readonly firstPage: number;
  readonly pages: number;
}

export class GuestWorkload {
  readonly pageSize: bigint;
  /** Guest pages in all ranges. */
  readonly pages: number;
  readonly pattern: z.output<typeof WorkloadPatternSpec>;
  private readonly layout: RangeLayout[];
  private readonly devices: readonly DmaSource[];
  private readonly random: Xoshiro128;
  private readonly dirtyRate: number;
  private truth: ChunkedBitmap;
  private carry = 0;
  private cursor = 0;
  private nextDevice = 0;
  private readonly hotOffset: number;
  private readonly hotStride: number;
  private readonly hotPages: number;
  /** Every page write since the start. */
  totalWrites = 0;

  constructor(
    private readonly kernel: SimulatedKernel,
    options: GuestWorkloadOptions,
  ) {
    const result = GuestWorkloadSpec.safeParse(options);
    if (!result.success) {
      const issue = result.error.issues[0];
      throw new InvalidArgumentError(`workload${issue?.path.length ? `.${issue.path.join('.')}` : ''}`, issue?.message ?? 'invalid');
    }
    const spec = result.data;
    this.pageSize = spec.pageSize;
    this.pattern = spec.pattern;
    this.devices = options.devices;
    this.dirtyRate = spec.dirtyRate;
    this.random = new Xoshiro128(spec.seed);
    let firstPage = 0;
    this.layout = spec.ranges.map((range, index) => {
      if (range.iova % this.pageSize !== 0n || range.length % this.pageSize !== 0n) {
        throw new InvalidArgumentError(`workload.ranges[${index}]`, `must be aligned to the page size ${this.pageSize}`);
      }
      const pages = range.length / this.pageSize;
      if (pages + BigInt(firstPage) > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidArgumentError('workload.ranges', 'too many pages');
      const layout = { iova: range.iova, firstPage, pages: Number(pages) };
      firstPage += Number(pages);
      return layout;
    });
    this.pages = firstPage;
    this.truth = new ChunkedBitmap(this.pages);
    // The hot set: pages offset + i * stride (mod pages), spread through memory, no list kept.
    const hotFraction = this.pattern.kind === 'hot-set' ? this.pattern.hotFraction : 0;
    this.hotPages = Math.max(1, Math.floor(this.pages * hotFraction));
    this.hotOffset = this.random.nextBelow(this.pages);
    this.hotStride = this.hotPages >= this.pages ? 1 : Math.max(1, Math.floor(this.pages / this.hotPages)) | 1;
  }

  /** The IOVA of guest page `page`. */
  iovaOf(page: number): bigint {
    for (const range of this.layout) {
      if (page < range.firstPage + range.pages) return range.iova + BigInt(page - range.firstPage) * this.pageSize;
    }
    throw new RangeError(`page ${page} is outside the workload's ${this.pages} pages`);
  }

  private nextPage(): number {
    switch (this.pattern.kind) {
      case 'uniform':
        return this.random.nextBelow(this.pages);
      case 'hot-set':
        if (this.random.nextFloat() < this.pattern.hotProbability) {
          return (this.hotOffset + this.random.nextBelow(this.hotPages) * this.hotStride) % this.pages;
        }
        return this.random.nextBelow(this.pages);
      case 'sequential': {
        const page = this.cursor;
        this.cursor = (this.cursor + 1) % this.pages;
        return page;
      }
      case 'bursts':
        return this.random.nextBelow(this.pages);
    }
  }

  /** The pages of the next `count` writes, in order. */
  private generate(count: number): Float64Array {
    const pages = new Float64Array(count);
    let index = 0;
    while (index < count) {
      if (this.pattern.kind === 'bursts') {
        const start = this.random.nextBelow(this.pages);
        const length = Math.min(this.pattern.burstPages, count - index, this.pages - start);
        for (let page = 0; page < length; page++) pages[index++] = start + page;
      } else {
        pages[index++] = this.nextPage();
      }
    }
    return pages;
  }

  /** Advance the guest by `seconds` of simulated time at the dirty rate. */
  advance(seconds: number): WorkloadStep {
    const exact = this.dirtyRate * seconds + this.carry;
    const count = Math.floor(exact);
    this.carry = exact - count;
    return this.write(count);
  }

  /** Issue `count` page writes now. */
  write(count: number): WorkloadStep {
    const pages = this.generate(count);
    const deviceCount = this.devices.length;
    const perDevice: number[][][] = this.devices.map(() => this.layout.map(() => []));
    for (let index = 0; index < count; index++) {
      const page = pages[index]!;
      const device = (this.nextDevice + index) % deviceCount;
      const range = this.rangeIndex(page);
      perDevice[device]![range]!.push(page - this.layout[range]!.firstPage);
    }
    this.nextDevice = (this.nextDevice + count) % deviceCount;
    let faulted = 0;
    let newlyDirty = 0;
    const record = (page: number): void => {
      if (!this.truth.test(page)) {
        this.truth.set(page);
        newlyDirty++;
      }
    };
    perDevice.forEach((ranges, device) => {
      const source = this.devices[device]!;
      ranges.forEach((indexes, rangeIndex) => {
        if (indexes.length === 0) return;
        const range = this.layout[rangeIndex]!;
        const result = this.kernel.dmaWritePages(source, range.iova, this.pageSize, indexes);
        if (result.faulted === 0n) {
          for (const index of indexes) record(range.firstPage + index);
          return;
        }
        // Some writes faulted: redo page by page to know which reached memory (idempotent for dirty state).
        for (const index of indexes) {
          const one = this.kernel.dmaWrite(source, range.iova + BigInt(index) * this.pageSize, this.pageSize);
          if (one.faulted === 0n) record(range.firstPage + index);
          else faulted++;
        }
      });
    });
    this.totalWrites += count;
    return { writes: count, faulted, newlyDirty };
  }

  private rangeIndex(page: number): number {
    const layout = this.layout;
    if (layout.length === 1) return 0;
    let low = 0;
    let high = layout.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >>> 1;
      if (layout[middle]!.firstPage <= page) low = middle;
      else high = middle - 1;
    }
    return low;
  }

  /** Pages dirtied since the last take (or the start). */
  get dirtyPages(): number {
    return this.truth.count();
  }

  /** Bytes held by the ground truth bitmap. */
  get truthBytes(): number {
    return this.truth.allocatedBytes;
  }

  isDirty(page: number): boolean {
    return this.truth.test(page);
  }

  /** Calls `visit(firstPage, endPage)` for each run of dirty pages. */
  forEachDirtyRun(visit: (first: number, end: number) => void): void {
    this.truth.forEachSetRun(0, this.pages, visit);
  }

  /** Start a new round: returns the ground truth so far and clears it. */
  takeGroundTruth(): ChunkedBitmap {
    const taken = this.truth;
    this.truth = new ChunkedBitmap(this.pages);
    return taken;
  }

  /**
   * Compare a dirty bitmap (bit i = [iova + i * pageSize, + pageSize), any page size) with the
   * ground truth over the pages it covers: every dirty guest page must fall in a set bit. Counting
   * `extra` (over-reported bits) visits every set bit; skip it for huge all-ones bitmaps.
   * Offsets are computed in doubles: exact below 2^53 bytes between `iova` and the guest ranges.
   */
  compare(bitmap: Uint8Array, iova: bigint, pageSize: bigint, options: { truth?: ChunkedBitmap; extra?: boolean } = {}): TruthComparison {
    const truth = options.truth ?? this.truth;
    const guestPage = Number(this.pageSize);
    const reportPage = Number(pageSize);
    const bits = bitmap.length * 8;
    let lost = 0;
    let firstLost: bigint | undefined;
    for (const range of this.layout) {
      const base = Number(range.iova - iova); // byte offset of the range from the report's start
      const fromByte = Math.max(0, -base);
      const toByte = Math.min(range.pages * guestPage, bits * reportPage - base);
      if (toByte <= fromByte) continue;
      const from = range.firstPage + Math.floor(fromByte / guestPage);
      const to = range.firstPage + Math.ceil(toByte / guestPage);
      truth.forEachSetRun(from, to, (first, end) => {
        for (let page = first; page < end; page++) {
          const offset = base + (page - range.firstPage) * guestPage;
          if (!testBit(bitmap, Math.floor(offset / reportPage))) {
            lost++;
            firstLost ??= range.iova + BigInt(page - range.firstPage) * this.pageSize;
          }
        }
      });
    }
    let extra = 0;
    if (options.extra !== false) {
      for (let byte = 0; byte < bitmap.length; byte++) {
        const value = bitmap[byte]!;
        if (value === 0) continue;
        for (let bitIndex = 0; bitIndex < 8; bitIndex++) {
          if (!((value >>> bitIndex) & 1)) continue;
          const start = (byte * 8 + bitIndex) * reportPage;
          if (!this.anyDirty(truth, iova, start, start + reportPage)) extra++;
        }
      }
    }
    return { lost, extra, firstLost };
  }

  /**
   * Pages of the ground truth that none of `ranges` (IOVA byte ranges, any order) covers: the cost
   * is the truth's set pages and the ranges, never the guest's size.
   */
  lostAgainst(ranges: readonly { readonly iova: bigint; readonly length: bigint }[], truth: ChunkedBitmap = this.truth): number {
    const sorted = ranges.map((r) => [Number(r.iova), Number(r.iova + r.length)] as const).sort((a, b) => a[0] - b[0]);
    // Merge into disjoint ranges, then binary-search each dirty page.
    const starts: number[] = [];
    const ends: number[] = [];
    for (const [start, end] of sorted) {
      if (ends.length && start <= ends[ends.length - 1]!) ends[ends.length - 1] = Math.max(ends[ends.length - 1]!, end);
      else {
        starts.push(start);
        ends.push(end);
      }
    }
    const guestPage = Number(this.pageSize);
    let lost = 0;
    for (const range of this.layout) {
      const base = Number(range.iova);
      truth.forEachSetRun(range.firstPage, range.firstPage + range.pages, (first, end) => {
        for (let page = first; page < end; page++) {
          const at = base + (page - range.firstPage) * guestPage;
          let low = 0;
          let high = starts.length;
          while (low < high) {
            const middle = (low + high) >>> 1;
            if (starts[middle]! <= at) low = middle + 1;
            else high = middle;
          }
          if (low === 0 || ends[low - 1]! < at + guestPage) lost++;
        }
      });
    }
    return lost;
  }

  /** Whether a guest page in [iova + from, iova + to) bytes is dirty. */
  private anyDirty(truth: ChunkedBitmap, iova: bigint, from: number, to: number): boolean {
    const guestPage = Number(this.pageSize);
    for (const range of this.layout) {
      const base = Number(range.iova - iova);
      const first = Math.max(0, Math.floor((from - base) / guestPage));
      const end = Math.min(range.pages, Math.ceil((to - base) / guestPage));
      for (let page = first; page < end; page++) if (truth.test(range.firstPage + page)) return true;
    }
    return false;
  }
}

/** A seeded guest workload on `kernel` (validated: InvalidArgumentError on bad options). */
export function guestWorkload(kernel: SimulatedKernel, options: GuestWorkloadOptions): GuestWorkload {
  return new GuestWorkload(kernel, options);
}
