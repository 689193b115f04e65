// Device-side DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*), as a migration driver such as
// mlx5 or pds implements log_start / log_stop / log_read_and_clear: the device records every
// page it writes inside the tracked ranges, at the page size it chose.
import { ChunkedBitmap, setBits } from './bitmap.js';
import type { KernelMemory } from './kernel-memory.js';
import { fail } from './failure.js';
import type { DmaLoggingModel } from './spec.js';

export interface LoggedRange {
  readonly iova: bigint;
  /** Inclusive. */
  readonly last: bigint;
}

interface TrackedRange extends LoggedRange {
  /** Page number (iova / pageSize) of the first tracked page. */
  readonly firstPage: bigint;
  readonly pages: ChunkedBitmap;
}

/**
 * vfio_combine_iova_ranges: merge the ranges with the smallest gaps until `limit` remain (with a
 * limit of one, a single range from the first start to the last end).
 */
export function combineRanges(ranges: readonly LoggedRange[], limit: number): LoggedRange[] {
  const nodes = [...ranges].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0)).map((range) => ({ ...range }));
  if (nodes.length <= limit) return nodes;
  if (limit === 1) return [{ iova: nodes[0]!.iova, last: nodes[nodes.length - 1]!.last }];
  while (nodes.length > limit) {
    let smallest: bigint | undefined;
    let at = -1;
    for (let index = 1; index < nodes.length; index++) {
      const gap = nodes[index]!.iova - nodes[index - 1]!.last;
      if (smallest === undefined || gap < smallest) {
        smallest = gap;
        at = index;
      }
    }
    nodes[at - 1]!.last = nodes[at]!.last;
    nodes.splice(at, 1);
  }
  return nodes;
}

/** The log of one device. */
export class DmaLog {
  private tracked: TrackedRange[] = [];
  private activePageSize: bigint | undefined;

  /** `memory`: where the logged pages may be kept (the kernel's memory); own arrays without it. */
  constructor(readonly model: DmaLoggingModel, private readonly memory?: KernelMemory) {}

  get active(): boolean {
    return this.activePageSize !== undefined;
  }

  get pageSize(): bigint | undefined {
    return this.activePageSize;
  }

  get ranges(): readonly LoggedRange[] {
    return this.tracked.map(({ iova, last }) => ({ iova, last }));
  }

  /** Bytes of page bitmaps held. */
  get allocatedBytes(): number {
    return this.tracked.reduce((total, range) => total + range.pages.allocatedBytes, 0);
  }

  /**
   * log_start: EINVAL when already started; more ranges than the device handles are combined or
   * refused (E2BIG) as the device declares; the page size is the hint clamped to what the device
   * supports (mlx5: ilog2 of the hint, clamped). Returns the page size chosen.
   */
  start(hint: bigint, ranges: readonly LoggedRange[]): bigint {
    if (this.active) fail('EINVAL');
    let effective = ranges;
    if (ranges.length > this.model.maxRanges) {
      if (this.model.tooManyRanges === 'reject') fail('E2BIG');
      effective = combineRanges(ranges, this.model.maxRanges);
    }
    let pageSize = this.model.pageSize;
    if (hint > 0n) {
      let floor = 1n;
      while (floor * 2n <= hint) floor *= 2n;
      pageSize = floor < this.model.pageSize ? this.model.pageSize : floor > this.model.maxPageSize ? this.model.maxPageSize : floor;
    }
    this.tracked = effective
      .filter((range) => range.last >= range.iova)
      .map((range) => {
        const firstPage = range.iova / pageSize;
        const pages = range.last / pageSize - firstPage + 1n;
        if (pages > BigInt(Number.MAX_SAFE_INTEGER)) fail('ENOMEM');
        return { iova: range.iova, last: range.last, firstPage, pages: new ChunkedBitmap(Number(pages), this.memory) };
      });
    this.activePageSize = pageSize;
    return pageSize;
  }

  /** log_stop: stopping a log that is not running succeeds. */
  stop(): void {
    for (const range of this.tracked) range.pages.reset();
    this.tracked = [];
    this.activePageSize = undefined;
  }

  /** The device wrote [iova, iova + length): log the tracked pages it touched. */
  record(iova: bigint, length: bigint): void {
    const pageSize = this.activePageSize;
    if (pageSize === undefined || length <= 0n) return;
    const last = iova + length - 1n;
    for (const range of this.tracked) {
      if (range.iova > last || range.last < iova) continue;
      const from = (iova > range.iova ? iova : range.iova) / pageSize - range.firstPage;
      const to = (last < range.last ? last : range.last) / pageSize - range.firstPage + 1n;
      range.pages.setRange(Number(from), Number(to));
    }
  }

  /**
   * The device wrote pages [base + index * pageSize, + pageSize) for each index: the batched form
   * of record(), in doubles when the write page size and the log page size divide each other.
   */
  recordPages(base: bigint, pageSize: bigint, indexes: ArrayLike<number>): void {
    this.recordSpans(base, pageSize, indexes, 1, indexes.length);
  }

  /** recordPages for runs: run i is pages [runs[2i], runs[2i] + runs[2i+1]) of `pageSize`. */
  recordRuns(base: bigint, pageSize: bigint, runs: ArrayLike<number>, count: number): void {
    this.recordSpans(base, pageSize, runs, 2, count);
  }

  /** Span i starts at page at[stride * i]: at[2i + 1] pages when stride is 2, one when it is 1. */
  private recordSpans(base: bigint, pageSize: bigint, at: ArrayLike<number>, stride: 1 | 2, count: number): void {
    const logPage = this.activePageSize;
    if (logPage === undefined) return;
    const fast = base % logPage === 0n && (pageSize % logPage === 0n || logPage % pageSize === 0n);
    if (!fast) {
      for (let i = 0; i < count; i++) this.record(base + BigInt(at[stride * i]!) * pageSize, (stride === 2 ? BigInt(at[2 * i + 1]!) : 1n) * pageSize);
      return;
    }
    const basePage = Number(base / logPage);
    const perWrite = pageSize >= logPage ? Number(pageSize / logPage) : 0;
    const writesPerPage = pageSize >= logPage ? 0 : Number(logPage / pageSize);
    for (const range of this.tracked) {
      const first = Number(range.firstPage);
      const end = first + range.pages.size;
      for (let i = 0; i < count; i++) {
        const start = at[stride * i]!;
        const after = start + (stride === 2 ? at[2 * i + 1]! : 1);
        // Log pages touched: a write smaller than a log page dirties the log page around it.
        const from = perWrite > 0 ? basePage + start * perWrite : basePage + Math.floor(start / writesPerPage);
        const to = perWrite > 0 ? basePage + after * perWrite : basePage + Math.floor((after - 1) / writesPerPage) + 1;
        // A write partly outside the range's pages is clipped, as record() does.
        if (to <= first || from >= end) continue;
        range.pages.setRange(Math.max(from, first) - first, Math.min(to, end) - first);
      }
    }
  }

  /**
   * log_read_and_clear into a caller's bitmap at `reportPageSize` (already checked: a power of two,
   * at least 4 KiB). EINVAL when logging is off. Bits are only set, never cleared.
   */
  readAndClear(iova: bigint, length: bigint, reportPageSize: bigint, bitmap: Uint8Array): void {
    const pageSize = this.activePageSize;
    if (pageSize === undefined) fail('EINVAL');
    if (length === 0n) return;
    const bits = (length + reportPageSize - 1n) / reportPageSize;
    if (BigInt(bitmap.byteLength) * 8n < bits) fail('EFAULT');
    const last = iova + length - 1n;
    const logPage = Number(pageSize);
    const reportPage = Number(reportPageSize);
    const lengthBytes = Number(length);
    for (const range of this.tracked) {
      if (range.iova > last || range.last < iova) continue;
      const fromPage = (iova > range.iova ? iova : range.iova) / pageSize - range.firstPage;
      const toPage = (last < range.last ? last : range.last) / pageSize - range.firstPage + 1n;
      const from = Number(fromPage);
      const to = Number(toPage);
      // Byte offset of the range's first log page from the report's start (exact below 2^53).
      const base = Number(range.firstPage * pageSize - iova);
      // Same page size and the log's pages on the report's bit grid: OR whole words.
      if (reportPage === logPage && base % logPage === 0 && range.pages.orInto(from, to, bitmap, base / logPage + from, true)) continue;
      range.pages.forEachSetRun(from, to, (first, after) => {
        // iova_bitmap_set(page iova, page size), clipped to the report's range.
        const start = Math.max(0, base + first * logPage);
        const end = Math.min(lengthBytes, base + after * logPage);
        setBits(bitmap, Math.floor(start / reportPage), Math.ceil(end / reportPage));
      });
      range.pages.clearRange(from, to);
    }
  }
}
