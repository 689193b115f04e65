// `vfio-iommufd bench engine`: the WASM dirty engine's kernels against plain JS
// and C, with the machine's memory bandwidth, in one run (src/engine/bench.ts).
import type { Command } from 'commander';
import {
  BENCH_KERNELS, type BenchKernel, type BenchReport, DEFAULT_DENSITIES, DEFAULT_SIZES, evaluateCriteria, formatBytes,
  runEngineBench,
} from '../engine/bench.js';
import { printJson, progress, table } from './output.js';
import { addReportOption, enginePage, reportPath, writeReport } from './report.js';
import { UsageError, parseCount, parseDuration, parseSize } from './units.js';

interface BenchEngineOptions {
  json?: boolean;
  sizes?: string;
  densities?: string;
  kernels?: string;
  workers?: string;
  time?: string;
  jsMaxSize?: string;
  c: boolean;
  report?: string;
}

function parseDensities(text: string): number[] {
  return text.split(',').map((part) => {
    const trimmed = part.trim();
    const value = trimmed.endsWith('%') ? Number(trimmed.slice(0, -1)) / 100 : Number(trimmed);
    if (!(value > 0 && value <= 0.5)) {
      throw new UsageError(`--densities: ${JSON.stringify(trimmed)} must be a fraction or percentage above 0 and at most 50%, like 0.1%,1%,5%,50%`);
    }
    return value;
  });
}

function parseKernels(text: string): BenchKernel[] {
  return text.split(',').map((part) => {
    const kernel = part.trim() as BenchKernel;
    if (!BENCH_KERNELS.includes(kernel)) throw new UsageError(`--kernels: ${JSON.stringify(part)} is not one of ${BENCH_KERNELS.join(', ')}`);
    return kernel;
  });
}

function parseSizes(text: string): number[] {
  return text.split(',').map((part) => {
    const size = Number(parseSize('--sizes', part));
    if (size % 64 !== 0 || size > 256 * 1024 * 1024) throw new UsageError(`--sizes: ${part} must be a multiple of 64 bytes, at most 256MiB`);
    return size;
  });
}

const ratio = (a: number | undefined, b: number | undefined): string => (a && b ? `${(a / b).toFixed(2)}x` : '-');
const rate = (value: number | undefined): string => (value === undefined ? '-' : value.toFixed(2));

/** The human report: one table per size, GB/s of bitmap and the ratios. */
export function formatReport(report: BenchReport, workers: number): string {
  const lines: string[] = [];
  const m = report.machine;
  lines.push(`${m.cpu}, ${m.cores} cores, node ${m.node}, ${m.gcc ?? 'no gcc'}; load average ${m.loadAverage.start.toFixed(2)} -> ${m.loadAverage.end.toFixed(2)}; two threads ${m.twoThreadSpeedup.toFixed(2)}x one (CPU control)`);
  lines.push(
    `memory bandwidth (${report.memoryBandwidth.measuredBy}, one stream at 256 MiB): read ${report.memoryBandwidth.readGBps.toFixed(1)} GB/s, ` +
      `read-modify-write ${report.memoryBandwidth.rmwGBps.toFixed(1)} GB/s; "of bandwidth" is the kernel's time at those rates over its time ` +
      '(above 100%: the bitmaps sit partly in cache, or several streams draw more than one)',
  );
  const sizes = [...new Set(report.results.map((r) => r.sizeBytes))];
  for (const size of sizes) {
    const rows: string[][] = [];
    const cases = [...new Set(report.results.filter((r) => r.sizeBytes === size).map((r) => `${r.kernel}|${r.density}`))];
    for (const key of cases) {
      const [kernel, densityText] = key.split('|');
      const density = Number(densityText);
      const get = (impl: string, w: number): number | undefined =>
        report.results.find((r) => r.sizeBytes === size && r.kernel === kernel && r.density === density && r.impl === impl && r.workers === w)?.gbPerSec;
      const one = report.results.find((r) => r.sizeBytes === size && r.kernel === kernel && r.density === density && r.impl === 'wasm' && r.workers === 1);
      // Tuned JS where there is one; the oracle (marked *) otherwise.
      const js = get('js', 0) !== undefined ? rate(get('js', 0)) : get('js-oracle', 0) !== undefined ? `${rate(get('js-oracle', 0))}*` : '-';
      const jsRate = get('js', 0) ?? get('js-oracle', 0);
      rows.push([
        kernel!, `${+(density * 100).toPrecision(3)}%`, rate(get('wasm', 0)), rate(get('wasm', 1)), workers > 1 ? rate(get('wasm', workers)) : '-',
        js, rate(get('c-native', 0)), rate(get('c-x86-64-v2', 0)), rate(get('c-per-bit', 0)), one ? one.limitGBps.toFixed(2) : '-',
        ratio(get('wasm', 1), get('c-native', 0)), ratio(get('wasm', 0), get('c-native', 0)), ratio(get('wasm', 1), get('c-x86-64-v2', 0)),
        ratio(get('wasm', 0), get('c-per-bit', 0)), ratio(get('wasm', 1), jsRate), workers > 1 ? ratio(get('wasm', workers), get('wasm', 1)) : '-',
        one ? one.nsPerWord.toFixed(3) : '-', one ? `${(one.memoryShare * 100).toFixed(0)}%` : '-',
      ]);
    }
    lines.push(`\n${formatBytes(size)} bitmaps (GB/s of bitmap; wasm 0 = calling thread, 1 = one worker, ${workers} = ${workers} workers; ` +
      'js = tuned JS on the calling thread, * = the test oracle where no tuned JS exists; C single-threaded; c per-bit = the per-bit scan to runs; ' +
      'limit = bitmap and output traffic at the measured bandwidth)');
    lines.push(table(
      ['kernel', 'density', 'wasm 0', 'wasm 1', `wasm ${workers}`, 'js', 'c native', 'c v2', 'c per-bit', 'limit', 'w1/c', 'w0/c', 'w1/v2', 'w0/per-bit', 'w1/js', `w${workers}/w1`, 'ns/word w1', 'of bandwidth'],
      rows,
    ));
  }
  const criteria = evaluateCriteria(report);
  if (criteria.length) {
    lines.push('\ntargets (wasm 1 = one worker, wasm 0 = calling thread):');
    for (const c of criteria) {
      lines.push(`  ${c.met ? 'met  ' : 'SHORT'} ${c.requirement}: ${c.kernel} at ${+(c.density * 100).toPrecision(3)}%, wasm ${c.wasmWorkers}: ${c.ratio.toFixed(2)}x (needs ${c.required}x)`);
    }
  }
  for (const note of report.notes) lines.push(`note: ${note}`);
  return lines.join('\n');
}

/** Adds `engine` to the CLI's `bench` command. */
export function registerBenchEngine(bench: Command): Command {
  return addReportOption(bench
    .command('engine'))
    .description('the WASM dirty engine: every kernel at several sizes and densities, against tuned plain JS and C, with the memory bandwidth')
    .option('--json', 'print one JSON document: { machine, memoryBandwidth, results, notes, criteria }')
    .option('--sizes <list>', 'bitmap sizes', DEFAULT_SIZES.map((s) => formatBytes(s).replace(' ', '')).join(','))
    .option('--densities <list>', 'fractions of dirty bits', DEFAULT_DENSITIES.map((d) => `${d * 100}%`).join(','))
    .option('--kernels <list>', `kernels (${BENCH_KERNELS.join(', ')})`)
    .option('--workers <n>', 'N for the N-worker runs (default: available cores)')
    .option('--time <duration>', 'time budget per measurement', '400ms')
    .option('--js-max-size <size>', 'largest size the plain JS runs at', '32MiB')
    .option('--no-c', 'skip the C reference')
    .action(async (options: BenchEngineOptions) => {
      const reportFile = reportPath(options.report);
      const sizes = options.sizes ? parseSizes(options.sizes) : DEFAULT_SIZES;
      const densities = options.densities ? parseDensities(options.densities) : DEFAULT_DENSITIES;
      const kernels = options.kernels ? parseKernels(options.kernels) : undefined;
      const workers = options.workers ? parseCount('--workers', options.workers) : undefined;
      const timeMs = parseDuration('--time', options.time ?? '400ms');
      const jsMaxBytes = Number(parseSize('--js-max-size', options.jsMaxSize ?? '32MiB'));
      let bar: ReturnType<typeof progress> | undefined;
      const report = await runEngineBench({
        sizes, densities, kernels, workers, timeMs, jsMaxBytes, skipC: !options.c,
        onProgress: (done, total, label) => {
          bar ??= progress(total, 'bench engine', !options.json);
          bar.update(done, label);
        },
      });
      bar?.stop();
      if (reportFile) await writeReport(reportFile, enginePage(report));
      if (options.json) return printJson({ ...report, criteria: evaluateCriteria(report) });
      const n = workers ?? Math.max(...report.results.map((r) => r.workers));
      process.stdout.write(`${formatReport(report, n)}\n`);
    });
}
