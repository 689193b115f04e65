// A guest workload: devices writing guest memory by DMA at a given dirty rate, in one of four
// patterns, reproducible from a seed. It records the ground truth — every page written since the
// last take — as a bitmap (never an object per page), so a consumer can prove that no dirty page
// was lost by whatever dirty tracking it used.
import { z } from 'zod';
import { InvalidArgumentError } from '../errors.js';
import { ChunkedBitmap, testBit } from './bitmap.js';
import type { DmaSource, SimulatedKernel } from './kernel.js';
import { BinomialSampler, forEachDistinctWord } from './occupancy.js';
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
  /** Distinct pages each device wrote, summed over the devices: what reached the kernel. */
  readonly pages: number;
  /** Of those, pages the IOMMU refused (not mapped writeable for that device): not dirty. */
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
  private readonly binomial: BinomialSampler;
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
    this.binomial = new BinomialSampler(this.random);
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

  /** Advance the guest by `seconds` of simulated time at the dirty rate. */
  advance(seconds: number): WorkloadStep {
    const exact = this.dirtyRate * seconds + this.carry;
    const count = Math.floor(exact);
    this.carry = exact - count;
    return this.write(count);
  }

  /**
   * Issue `count` page writes now. The writes go to the devices in turn (device i of the turn
   * takes every n-th write), and what reaches the devices is each one's distinct pages, as runs:
   * the cost is the distinct pages (the runs for sweeps and bursts), never the writes.
   */
  write(count: number): WorkloadStep {
    if (!Number.isSafeInteger(count) || count < 0) throw new InvalidArgumentError('count', `must be a whole number of writes below 2^53, got ${count}`);
    const deviceCount = this.devices.length;
    const step = { faulted: 0, newlyDirty: 0, pages: 0 };
    for (let turn = 0; turn < deviceCount; turn++) {
      const device = (this.nextDevice + turn) % deviceCount;
      const writes = Math.floor(count / deviceCount) + (turn < count % deviceCount ? 1 : 0);
      if (writes > 0) this.writeFrom(device, writes, step);
    }
    this.nextDevice = (this.nextDevice + count) % deviceCount;
    this.totalWrites += count;
    return { writes: count, ...step };
  }

  /** One device's `writes` writes, in the pattern, applied as runs of its distinct pages. */
  private writeFrom(device: number, writes: number, step: { faulted: number; newlyDirty: number; pages: number }): void {
    const batch = new RunBatch((runs, count) => this.apply(device, runs, count, step));
    switch (this.pattern.kind) {
      case 'uniform':
        forEachDistinctWord(this.random, this.binomial, this.pages, writes, (first, mask) => batch.addMask(first, mask));
        break;
      case 'hot-set': {
        // Each write is hot with hotProbability: the hot writes' count is binomial, and the two
        // kinds are independent uniform writes into the hot set and into all of memory.
        const hot = this.binomial.sample(writes, this.pattern.hotProbability);
        const { hotOffset, hotStride, pages } = this;
        forEachDistinctWord(this.random, this.binomial, this.hotPages, hot, (first, mask) => {
          for (let bits = mask; bits !== 0; bits &= bits - 1) batch.add((hotOffset + (first + 31 - Math.clz32(bits & -bits)) * hotStride) % pages, 1);
        });
        batch.flush();
        forEachDistinctWord(this.random, this.binomial, this.pages, writes - hot, (first, mask) => batch.addMask(first, mask));
        break;
      }
      case 'sequential': {
        // The sweep goes on where it was; a device's share is a stretch of it.
        const distinct = Math.min(writes, this.pages);
        const first = Math.min(distinct, this.pages - this.cursor);
        batch.add(this.cursor, first);
        if (distinct > first) batch.add(0, distinct - first);
        this.cursor = (this.cursor + (writes % this.pages)) % this.pages;
        break;
      }
      case 'bursts':
        // A burst is one device's: it starts at a random page and is cut at the end of memory.
        for (let done = 0; done < writes; ) {
          const start = this.random.nextBelow(this.pages);
          const length = Math.min(this.pattern.burstPages, writes - done, this.pages - start);
          batch.add(start, length);
          done += length;
        }
        break;
    }
    batch.flush();
  }

  /** Runs of guest pages from one device: through the kernel per range, then into the truth. */
  private apply(device: number, runs: Float64Array, count: number, step: { faulted: number; newlyDirty: number; pages: number }): void {
    const source = this.devices[device]!;
    const layout = this.layout;
    // Split the runs by range (a run may cross from one range into the next).
    const local = (this.pieces ??= layout.map(() => new Float64Array(2 * (RunBatch.CAPACITY + layout.length))));
    const counts = (this.pieceCounts ??= new Array<number>(layout.length)).fill(0);
    let index = 0;
    for (let i = 0; i < count; i++) {
      let start = runs[2 * i]!;
      const end = start + runs[2 * i + 1]!;
      step.pages += end - start;
      while (start < end) {
        let range = layout[index]!;
        if (start < range.firstPage || start >= range.firstPage + range.pages) {
          index = this.rangeIndex(start);
          range = layout[index]!;
        }
        const stop = Math.min(end, range.firstPage + range.pages);
        const at = counts[index]!++;
        local[index]![2 * at] = start - range.firstPage;
        local[index]![2 * at + 1] = stop - start;
        start = stop;
      }
    }
    for (let r = 0; r < layout.length; r++) {
      const n = counts[r]!;
      if (n === 0) continue;
      const pieces = local[r]!;
      const range = layout[r]!;
      const result = this.kernel.dmaWriteRuns(source, range.iova, this.pageSize, pieces, n);
      if (result.faulted === 0n) {
        for (let i = 0; i < n; i++) step.newlyDirty += this.truth.setRangeCountingNew(range.firstPage + pieces[2 * i]!, range.firstPage + pieces[2 * i]! + pieces[2 * i + 1]!);
        continue;
      }
      // Some writes faulted: redo page by page to know which reached memory (idempotent for dirty state).
      for (let i = 0; i < n; i++) {
        for (let page = pieces[2 * i]!; page < pieces[2 * i]! + pieces[2 * i + 1]!; page++) {
          const one = this.kernel.dmaWrite(source, range.iova + BigInt(page) * this.pageSize, this.pageSize);
          if (one.faulted === 0n) step.newlyDirty += this.truth.setRangeCountingNew(range.firstPage + page, range.firstPage + page + 1);
          else step.faulted++;
        }
      }
    }
  }

  /** Per-range scratch for apply(). */
  private pieces: Float64Array[] | undefined;
  private pieceCounts: number[] | undefined;

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

  /** The guest pages wholly inside IOVA bytes [iova, iova + length), per range: where they start and their page index. */
  pagesIn(iova: number, length: number): { iova: number; page: number; pages: number }[] {
    const guestPage = Number(this.pageSize);
    const end = iova + length;
    const found: { iova: number; page: number; pages: number }[] = [];
    for (const range of this.layout) {
      const base = Number(range.iova);
      const from = Math.max(0, Math.ceil((iova - base) / guestPage));
      const to = Math.min(range.pages, Math.floor((end - base) / guestPage));
      if (from < to) found.push({ iova: base + from * guestPage, page: range.firstPage + from, pages: to - from });
    }
    return found;
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

/** Runs collected for the kernel, adjacent ones joined, handed on in bounded batches. */
class RunBatch {
  static readonly CAPACITY = 1 << 16;
  private readonly runs = new Float64Array(2 * RunBatch.CAPACITY);
  private count = 0;

  constructor(private readonly sink: (runs: Float64Array, count: number) => void) {}

  add(start: number, length: number): void {
    const runs = this.runs;
    const last = this.count - 1;
    if (last >= 0 && runs[2 * last]! + runs[2 * last + 1]! === start) {
      runs[2 * last + 1] = runs[2 * last + 1]! + length;
      return;
    }
    if (this.count === RunBatch.CAPACITY) this.flush();
    runs[2 * this.count] = start;
    runs[2 * this.count + 1] = length;
    this.count++;
  }

  /** The runs of ones of `mask`, bit i being page first + i. */
  addMask(first: number, mask: number): void {
    let bits = mask >>> 0;
    while (bits !== 0) {
      const low = 31 - Math.clz32(bits & -bits);
      const ones = ~(bits >>> low);
      const length = ones === 0 ? 32 - low : Math.min(32 - low, 31 - Math.clz32(ones & -ones));
      this.add(first + low, length);
      bits = length + low >= 32 ? 0 : (bits & ~(((1 << length) - 1) << low)) >>> 0;
    }
  }

  flush(): void {
    if (this.count === 0) return;
    const count = this.count;
    this.count = 0;
    this.sink(this.runs, count);
  }
}

/** A seeded guest workload on `kernel` (validated: InvalidArgumentError on bad options). */
export function guestWorkload(kernel: SimulatedKernel, options: GuestWorkloadOptions): GuestWorkload {
  return new GuestWorkload(kernel, options);
}
