// `vfio-iommufd bench crossover`: where the engine's workers start to pay, per call
// (src/engine/crossover.ts); the engine's default inline thresholds come from it.
import type { Command } from 'commander';
import { availableParallelism } from 'node:os';
import { DEFAULT_INLINE_UP_TO_BYTES, ENGINE_CALLS, type EngineCall } from '../engine/engine.js';
import { formatBytes } from '../engine/bench.js';
import { DEFAULT_CROSSOVER_SIZES, measureCrossover } from '../engine/crossover.js';
import { printJson, progress, table } from './output.js';
import { UsageError, parseCount, parseDuration, parseSize } from './units.js';

interface CrossoverFlags { json?: boolean; sizes: string; density: string; workers: string; calls?: string; time: string }

export function registerBenchCrossover(bench: Command): Command {
  return bench
    .command('crossover')
    .description('per engine call, the bitmap size above which the workers finish before the calling thread (the engine\'s inline thresholds)')
    .option('--json', 'print one JSON document: { machine, density, workers, points, crossover, defaults }')
    .option('--sizes <list>', 'bitmap sizes, comma-separated', DEFAULT_CROSSOVER_SIZES.map((s) => formatBytes(s).replace(' ', '')).join(','))
    .option('--density <fraction>', 'dirty fraction of the bitmaps', '0.01')
    .option('--workers <n>', 'workers on the pooled side', String(availableParallelism()))
    .option('--calls <list>', `engine calls (${ENGINE_CALLS.join(', ')})`)
    .option('--time <duration>', 'time budget per measurement', '300ms')
    .action(async (flags: CrossoverFlags) => {
      const sizes = flags.sizes.split(',').map((part) => {
        const size = Number(parseSize('--sizes', part.trim()));
        if (size % 4096 !== 0 || size > 256 * 1024 * 1024) throw new UsageError(`--sizes: ${part} must be a multiple of 4KiB, at most 256MiB`);
        return size;
      });
      const density = Number(flags.density);
      if (!(density > 0 && density <= 0.5)) throw new UsageError(`--density: ${JSON.stringify(flags.density)} must be a fraction above 0 and at most 0.5`);
      const calls = flags.calls?.split(',').map((part) => {
        const call = part.trim() as EngineCall;
        if (!ENGINE_CALLS.includes(call)) throw new UsageError(`--calls: ${JSON.stringify(part)} is not one of ${ENGINE_CALLS.join(', ')}`);
        return call;
      });
      const workers = parseCount('--workers', flags.workers);
      let bar: ReturnType<typeof progress> | undefined;
      const report = await measureCrossover({
        sizes, density, workers, calls, timeMs: parseDuration('--time', flags.time),
        onProgress: (done, total, label) => {
          bar ??= progress(total, 'bench crossover', !flags.json);
          bar.update(done, label);
        },
      });
      bar?.stop();
      if (flags.json) return printJson({ ...report, defaults: DEFAULT_INLINE_UP_TO_BYTES });
      const m = report.machine;
      process.stdout.write(`${m.cores} cores; load ${m.loadAverage.start.toFixed(2)} -> ${m.loadAverage.end.toFixed(2)}; ` +
        `${(report.density * 100).toFixed(1)} % dirty; inline = the calling thread, workers = ${report.workers} workers; median ms per call\n`);
      const rows = report.points.map((p) => [
        p.call, formatBytes(p.sizeBytes), p.inlineMs.toFixed(3), p.workersMs.toFixed(3), `${(p.inlineMs / p.workersMs).toFixed(2)}x`,
        p.inlineMs <= p.workersMs ? 'inline' : 'workers',
      ]);
      process.stdout.write(`${table(['call', 'bitmap', 'inline ms', 'workers ms', 'inline / workers', 'faster'], rows)}\n`);
      const summary = Object.entries(report.crossover).map(([call, c]) => [
        call, c.workersNeverWon ? `>= ${formatBytes(c.inlineUpToBytes)} (the workers never won)` : c.inlineUpToBytes === 0 ? '0 (the workers always won)' : formatBytes(c.inlineUpToBytes),
        formatBytes(DEFAULT_INLINE_UP_TO_BYTES[call as EngineCall]),
      ]);
      process.stdout.write(`${table(['call', 'inline up to (measured)', 'engine default'], summary)}\n`);
    });
}
