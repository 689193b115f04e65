// `vfio-iommufd bench sync`: one DirtySync round end to end (simulated kernel -> engine -> runs)
// for large guests with two dirty sources, against the same work in C (-O3 -march=native, one
// thread), measured in the same run: ours on the calling thread (workers 0) and on the default
// workers, each against the single-threaded C, and the physical limit (the bitmap bytes a round
// must read and the run bytes it must write, at the bandwidth the C side measures in the same
// run). Statistics by tinybench (round) and simple-statistics (phases).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { median } from 'simple-statistics';
import { Bench } from 'tinybench';
import { DirtySync, type RoundPhases } from '../dirty/dirty-sync.js';
import { packageRoot } from '../engine/module.js';
import { simulatedKernel, Xoshiro128 } from '../kernel/sim/index.js';
import { AddressSpace } from '../vfio/address-space.js';
import { printJson, progress, table } from './output.js';
import { addReportOption, reportPath, syncPage, writeReport } from './report.js';
import { guestRanges } from './simulation.js';
import { formatBytes, parseCount, parseSize, UsageError } from './units.js';

export interface SyncBenchResult {
  readonly guestBytes: number;
  readonly density: number;
  readonly sources: number;
  readonly impl: 'vfio-iommufd' | 'c-reference';
  /** Engine worker threads: 0 = everything on the calling thread (the C reference: 0, one thread). */
  readonly workers: number;
  /** Runs the round's scan wrote. */
  readonly runs: number;
  /** Median time of one round. */
  readonly roundMs: number;
  /** Median time of each phase. */
  readonly phases: RoundPhases;
  readonly samples: number;
  /** Pages the round found dirty (both implementations must agree in kind, not bit for bit: their random pages differ). */
  readonly dirtyPages: number;
  /**
   * The C reference only: it runs just before and just after ours (a shared machine drifts by
   * tens of percent within minutes); its round median in each run. roundMs and phases are the
   * medians of both runs' samples together.
   */
  readonly drift?: { readonly beforeMs: number; readonly afterMs: number };
}

/**
 * The physical limit of one round of a case: each source's kernel bitmap and the migration
 * bitmap read once, the runs written once (8 bytes each), at the bandwidth measured by the C
 * side in the same run (one thread, one stream).
 */
export interface SyncBenchLimit {
  readonly guestBytes: number;
  readonly density: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly readGBps: number;
  readonly writeGBps: number;
  readonly limitMs: number;
}

export interface SyncBenchReport {
  readonly machine: {
    cpu: string; cores: number; node: string; gcc: string | null;
    /** The worker counts measured (0 = the calling thread). */
    workers: number[];
    loadAverage: { start: number; end: number };
  };
  readonly results: SyncBenchResult[];
  readonly limits: SyncBenchLimit[];
  readonly notes: string[];
}

const PAGE = 4096n;
export const DEFAULT_GUESTS = [64n << 30n, 1n << 40n, 4n << 40n];
export const DEFAULT_DENSITIES = [0.001, 0.01, 0.05];

/** Uniformly random page indexes of one guest range, sorted (a device's writes in one round). */
function randomPages(random: Xoshiro128, pages: number, count: number): Uint32Array {
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = random.nextBelow(pages);
  return out.sort();
}

async function benchOurs(guestBytes: bigint, density: number, workers: number, iterations: number): Promise<SyncBenchResult> {
  const kernel = simulatedKernel({ devices: [{ name: 'nic0', iommuDirtyTracking: true }, { name: 'gpu0', dmaLogging: { pageSize: 4096n } }] });
  const space = new AddressSpace(kernel);
  const ranges = guestRanges(guestBytes);
  for (const range of ranges) await space.map({ iova: range.iova, size: range.length });
  await space.attach('nic0');
  await space.attach('gpu0');
  const sync = new DirtySync(space, { workers, initiallyDirty: false, capacityBytes: guestBytes });
  await sync.start();
  const random = new Xoshiro128(7);
  // Each source dirties `density` of every range, independently (as the C reference does).
  const writes = ['nic0', 'gpu0'].map((device) =>
    ranges.map((range) => {
      const pages = Number(range.length / PAGE);
      return { device, base: range.iova, indexes: randomPages(random, pages, Math.round(pages * density)) };
    }),
  );
  const phases: RoundPhases[] = [];
  let dirtyPages = 0;
  let runs = 0;
  const bench = new Bench({ iterations, time: 0, warmupIterations: 1, warmupTime: 0, throws: true });
  bench.add('round', async () => {
    const round = await sync.round();
    phases.push(round.phases);
    dirtyPages = round.dirtyPages;
    runs = round.runCount;
  }, {
    // Untimed: the consumer sent the last round, the guest dirtied its pages again.
    beforeEach: async () => {
      await sync.markAllSent();
      for (const source of writes) for (const w of source) kernel.dmaWritePages(w.device, w.base, PAGE, w.indexes);
    },
  });
  try {
    await bench.run();
  } finally {
    await sync.stop();
    await space.close();
  }
  const result = bench.tasks[0]!.result;
  if (!result || !('latency' in result)) throw new Error('the sync round benchmark did not complete');
  const measured = phases.slice(-result.latency.samplesCount);
  return {
    guestBytes: Number(guestBytes), density, sources: 2, impl: 'vfio-iommufd', workers, runs,
    roundMs: result.latency.p50 ?? result.latency.mean,
    phases: {
      queryMs: median(measured.map((p) => p.queryMs)),
      mergeMs: median(measured.map((p) => p.mergeMs)),
      scanMs: median(measured.map((p) => p.scanMs)),
    },
    samples: result.latency.samplesCount,
    dirtyPages,
  };
}

function buildReference(directory: string, notes: string[]): string | undefined {
  const version = spawnSync('gcc', ['--version'], { encoding: 'utf8' });
  if (version.status !== 0) {
    notes.push('C reference skipped: gcc was not found');
    return undefined;
  }
  const binary = join(directory, 'sync-round');
  const built = spawnSync('gcc', ['-O3', '-march=native', '-o', binary, join(packageRoot(), 'src', 'dirty', 'reference', 'sync-round.c')], { encoding: 'utf8' });
  if (built.status !== 0) {
    notes.push(`C reference skipped: gcc failed: ${built.stderr.split('\n')[0]}`);
    return undefined;
  }
  return binary;
}

interface ReferenceRun {
  roundSamplesMs: number[]; querySamplesMs: number[]; scanSamplesMs: number[];
  roundMs: number; newlyDirtyPages: number; runs: number; readGBps: number; writeGBps: number;
}

function runReference(binary: string, guestBytes: bigint, density: number, iterations: number): ReferenceRun {
  // The guest's pages, without the x86 hole (the C side has one flat bitmap of the same size).
  const run = spawnSync(binary, [String(guestBytes / PAGE), String(density), '2', String(Math.max(3, iterations)), '7'], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (run.status !== 0) throw new Error(`the C reference failed: ${run.stderr}`);
  return JSON.parse(run.stdout.trim()) as ReferenceRun;
}

/** The C reference's runs before and after ours as one result: medians of all their samples. */
function combineReference(guestBytes: bigint, density: number, runs: readonly ReferenceRun[]): { result: SyncBenchResult; limit: SyncBenchLimit } {
  const pages = guestBytes / PAGE;
  const all = (key: 'roundSamplesMs' | 'querySamplesMs' | 'scanSamplesMs') => runs.flatMap((r) => r[key]);
  const last = runs[runs.length - 1]!;
  const bitmapBytes = Number((pages + 63n) / 64n) * 8;
  const bytesRead = bitmapBytes * 3; // two sources' kernel bitmaps and the migration bitmap
  const bytesWritten = last.runs * 8;
  const readGBps = median(runs.map((r) => r.readGBps));
  const writeGBps = median(runs.map((r) => r.writeGBps));
  return {
    result: {
      guestBytes: Number(guestBytes), density, sources: 2, impl: 'c-reference', workers: 0, runs: last.runs,
      roundMs: median(all('roundSamplesMs')),
      phases: { queryMs: median(all('querySamplesMs')), mergeMs: 0, scanMs: median(all('scanSamplesMs')) },
      samples: all('roundSamplesMs').length, dirtyPages: last.newlyDirtyPages,
      drift: { beforeMs: runs[0]!.roundMs, afterMs: last.roundMs },
    },
    limit: {
      guestBytes: Number(guestBytes), density, bytesRead, bytesWritten, readGBps, writeGBps,
      limitMs: (bytesRead / (readGBps * 1e9) + bytesWritten / (writeGBps * 1e9)) * 1e3,
    },
  };
}

export async function runSyncBench(options: { guests: bigint[]; densities: number[]; workers: number | number[]; iterations: number; onStep?: (label: string) => void }): Promise<SyncBenchReport> {
  const workerCounts = typeof options.workers === 'number' ? [options.workers] : options.workers;
  const notes: string[] = [];
  const directory = mkdtempSync(join(tmpdir(), 'vfio-iommufd-sync-'));
  const loadStart = loadavg()[0]!;
  const gcc = spawnSync('gcc', ['--version'], { encoding: 'utf8' });
  try {
    const binary = buildReference(directory, notes);
    const results: SyncBenchResult[] = [];
    const limits: SyncBenchLimit[] = [];
    for (const guest of options.guests) {
      for (const density of options.densities) {
        // The reference just before and just after ours, so that drift of the machine shows and
        // weighs on both sides alike.
        const before = binary ? runReference(binary, guest, density, options.iterations) : undefined;
        for (const workers of workerCounts) {
          options.onStep?.(`${formatBytes(guest)} at ${(density * 100).toFixed(1)} %, ${workers} workers`);
          results.push(await benchOurs(guest, density, workers, options.iterations));
        }
        if (binary && before) {
          const reference = combineReference(guest, density, [before, runReference(binary, guest, density, options.iterations)]);
          results.push(reference.result);
          limits.push(reference.limit);
        }
      }
    }
    return {
      machine: {
        cpu: cpus()[0]?.model ?? 'unknown', cores: availableParallelism(), node: process.version,
        gcc: gcc.status === 0 ? (gcc.stdout.split('\n')[0] ?? 'gcc') : null, workers: workerCounts,
        loadAverage: { start: loadStart, end: loadavg()[0]! },
      },
      results,
      limits,
      notes,
    };
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

/** Ours against C in one run, per case and worker count: the whole round, and what follows the kernels' query. */
export interface SyncBenchComparison {
  readonly guestBytes: number;
  readonly density: number;
  /** Our engine workers (0 = the calling thread); the C side is one thread. */
  readonly workers: number;
  readonly roundRatio: number;
  /** (round - query) over C's (round - query): the library's merge, scan and hand-over against the same in C. */
  readonly afterQueryRatio: number;
  readonly limitRatio: number | undefined;
}

export function compare(report: SyncBenchReport): SyncBenchComparison[] {
  const out: SyncBenchComparison[] = [];
  for (const ours of report.results.filter((r) => r.impl === 'vfio-iommufd')) {
    const c = report.results.find((r) => r.impl === 'c-reference' && r.guestBytes === ours.guestBytes && r.density === ours.density);
    if (!c) continue;
    const limit = report.limits.find((l) => l.guestBytes === ours.guestBytes && l.density === ours.density);
    out.push({
      guestBytes: ours.guestBytes, density: ours.density, workers: ours.workers,
      roundRatio: ours.roundMs / c.roundMs,
      afterQueryRatio: (ours.roundMs - ours.phases.queryMs) / (c.roundMs - c.phases.queryMs),
      limitRatio: limit ? ours.roundMs / limit.limitMs : undefined,
    });
  }
  return out;
}

// --quick: the smallest guests and two densities, for a fast look or report.
const QUICK = { guest: '8GiB,64GiB,256GiB', density: '0.001,0.01', iterations: '2' };

export function registerBenchSync(bench: Command): void {
  const command = bench
    .command('sync')
    .description('one DirtySync round end to end (simulated kernel -> engine -> runs), 2 sources, against the same work in C')
    .option('--guest <sizes>', 'guest sizes, comma-separated', '64GiB,1TiB,4TiB')
    .option('--density <fractions>', 'dirty fractions per source, comma-separated', '0.001,0.01,0.05')
    .option('--workers <list>', 'engine worker threads to measure, comma-separated (0 = the calling thread)', `0,${availableParallelism()}`)
    .option('--iterations <n>', 'measured rounds per case', '5')
    .option('--json', 'print one JSON document')
    .option('--quick', `a small subset for a fast report: --guest ${QUICK.guest} --density ${QUICK.density} --iterations ${QUICK.iterations} unless given`);
  addReportOption(command).action(async (flags: { guest: string; density: string; workers: string; iterations: string; json?: boolean; quick?: boolean; report?: string }) => {
      const reportFile = reportPath(flags.report);
      if (flags.quick) {
        for (const key of ['guest', 'density', 'iterations'] as const) if (command.getOptionValueSource(key) === 'default') flags[key] = QUICK[key];
      }
      const guests = flags.guest.split(',').map((text) => parseSize('--guest', text));
      for (const guest of guests) if (guest < 8n << 30n || guest % (2n << 20n) !== 0n) throw new UsageError('--guest: each size must be at least 8GiB and a multiple of 2MiB');
      const densities = flags.density.split(',').map(Number);
      for (const d of densities) if (!(d > 0 && d <= 0.5)) throw new UsageError(`--density: ${d} must be a fraction in (0, 0.5]`);
      const workerCounts = [...new Set(flags.workers.split(',').map((text) => (text.trim() === '0' ? 0 : parseCount('--workers', text.trim()))))];
      const steps = guests.length * densities.length * workerCounts.length;
      const bar = progress(steps, 'bench sync', !flags.json);
      let done = 0;
      let report: SyncBenchReport;
      try {
        report = await runSyncBench({
          guests, densities, workers: workerCounts, iterations: parseCount('--iterations', flags.iterations),
          onStep: (label) => bar.update(done++, label),
        });
      } finally {
        bar.stop();
      }
      if (reportFile) await writeReport(reportFile, syncPage(report));
      const comparisons = compare(report);
      if (flags.json) return printJson({ machine: report.machine, results: report.results, limits: report.limits, comparisons, notes: report.notes });
      const rows: (string | number)[][] = [];
      for (const ours of report.results.filter((r) => r.impl === 'vfio-iommufd')) {
        const c = report.results.find((r) => r.impl === 'c-reference' && r.guestBytes === ours.guestBytes && r.density === ours.density);
        const limit = report.limits.find((l) => l.guestBytes === ours.guestBytes && l.density === ours.density);
        const ratio = comparisons.find((x) => x.guestBytes === ours.guestBytes && x.density === ours.density && x.workers === ours.workers);
        rows.push([
          formatBytes(ours.guestBytes), `${(ours.density * 100).toFixed(1)} %`, ours.workers === 0 ? '0 (calling thread)' : String(ours.workers), ours.roundMs.toFixed(1),
          `${ours.phases.queryMs.toFixed(1)} / ${ours.phases.mergeMs.toFixed(1)} / ${ours.phases.scanMs.toFixed(1)}`,
          c ? c.roundMs.toFixed(1) : '-', c?.drift ? `${c.drift.beforeMs.toFixed(1)} / ${c.drift.afterMs.toFixed(1)}` : '-',
          c ? `${c.phases.queryMs.toFixed(1)} / ${c.phases.mergeMs.toFixed(1)} / ${c.phases.scanMs.toFixed(1)}` : '-',
          ratio?.roundRatio !== undefined ? `${ratio.roundRatio.toFixed(2)}x` : '-',
          ratio?.afterQueryRatio !== undefined ? `${ratio.afterQueryRatio.toFixed(2)}x` : '-',
          limit ? limit.limitMs.toFixed(1) : '-', limit ? `${(ours.roundMs / limit.limitMs).toFixed(2)}x` : '-',
        ]);
      }
      const m = report.machine;
      process.stdout.write(`${m.cpu}, ${m.cores} cores, node ${m.node}, ${m.gcc ?? 'no gcc'}; load ${m.loadAverage.start.toFixed(2)} -> ${m.loadAverage.end.toFixed(2)}\n`);
      process.stdout.write('C: one thread, run just before and just after ours (its round median each time; C round ms: the median of both). after query: merge, scan and hand-over only, without the kernels\' read-and-clear (the simulated kernel\'s in WASM over the engine\'s memory, the C one\'s in C). ' +
        'limit: the bitmaps read and the runs written once, at the bandwidth the C side measured in this run.\n');
      process.stdout.write(`${table(['guest', 'dirty/source', 'workers', 'round ms', 'query/merge/scan ms', 'C round ms', 'C before / after ours', 'C query/merge/scan ms', 'ours / C', 'after query: ours / C', 'limit ms', 'ours / limit'], rows)}\n`);
      for (const note of report.notes) process.stdout.write(`note: ${note}\n`);
    });
}
