// `--report FILE.html`: one self-contained page per run. Charts are vega-lite specs compiled
// and rendered to inline SVG here in Node by vega's headless renderer, so the page needs no
// network and no script to show them; the run's JSON document rides along in the page.
import { writeFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { BenchReport } from '../engine/bench.js';
import type { SyncBenchReport } from './bench-sync.js';
import type { SimulationResult } from './simulation.js';
import { UsageError } from './units.js';

export interface ReportChart {
  readonly id: string;
  readonly title: string;
  readonly caption: string;
  readonly spec: TopLevelSpec;
}

export interface ReportPage {
  readonly title: string;
  /** Lines under the title: the machine, the options, the outcome. */
  readonly summary: readonly string[];
  readonly charts: readonly ReportChart[];
  /** The run's JSON document, embedded for whoever wants the numbers. */
  readonly document: unknown;
}

/** Adds `--report <file>`; commands check the path with reportPath() before any work. */
export function addReportOption(command: Command): Command {
  return command.option('--report <file.html>', 'also write a self-contained HTML page with charts of this run');
}

/** The report's absolute path, refused before any work if it cannot be written there. */
export function reportPath(file: string | undefined): string | undefined {
  if (file === undefined) return undefined;
  if (!/\.html?$/i.test(file)) throw new UsageError(`--report: ${JSON.stringify(file)} must end in .html`);
  const path = resolve(file);
  let directory;
  try {
    directory = statSync(dirname(path));
  } catch {
    throw new UsageError(`--report: the folder ${dirname(path)} does not exist`);
  }
  if (!directory.isDirectory()) throw new UsageError(`--report: ${dirname(path)} is not a folder`);
  return path;
}

export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export async function renderReport(page: ReportPage): Promise<string> {
  const sections: string[] = [];
  for (const chart of page.charts) {
    sections.push(
      `<section class="chart" id="${escapeHtml(chart.id)}"><h2>${escapeHtml(chart.title)}</h2>${await renderSvg(chart.spec)}<p>${escapeHtml(chart.caption)}</p></section>`,
    );
  }
  // `<` escaped so the document cannot close the script element.
  const json = JSON.stringify(page.document, (_, value) => (typeof value === 'bigint' ? value.toString() : value), 2).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(page.title)}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<style>body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
.summary{color:#444}section.chart svg{max-width:100%;height:auto}section.chart p{color:#555;max-width:80ch}</style></head>
<body><h1>${escapeHtml(page.title)}</h1>
<ul class="summary">${page.summary.map((line) => `<li>${escapeHtml(line)}</li>`).join('')}</ul>
${sections.join('\n')}
<details><summary>The run as JSON</summary><script type="application/json" id="document">${json}</script><p>In this page's source, element #document.</p></details>
</body></html>
`;
}

export async function writeReport(path: string, page: ReportPage): Promise<void> {
  writeFileSync(path, await renderReport(page));
}

// ---- the pages ----

const WIDTH = 720;

/** simulate (and, when it lands, migrate: its rounds have the same shape): dirty pages and downtime by round. */
export function migrationPage(title: string, result: SimulationResult, options: readonly string[]): ReportPage {
  const rounds = result.rounds.map((r) => ({
    round: r.round, kind: r.kind, dirtyPages: r.dirtyPages, newlyDirtyPages: r.newlyDirtyPages,
    // What stopping the guest after this round would cost: this round's pages over the link.
    downtimeMs: r.sendSeconds * 1000 + r.durationMs,
  }));
  const downtimeLimit = result.summary.simulatedDowntimeMs;
  const s = result.summary;
  return {
    title,
    summary: [
      `guest ${Number(result.guestBytes) / 2 ** 30} GiB, ${result.devices.map((d) => `${d.name} (${d.tracker})`).join(', ')}`,
      s.converged ? `converged after ${s.rounds} rounds; simulated downtime ${s.simulatedDowntimeMs?.toFixed(1)} ms` : `did not converge: ${s.reason}`,
      `lost pages: ${s.lostPages}`,
      `options: ${options.join(' ') || '(defaults)'}`,
    ],
    charts: [
      {
        id: 'dirty-pages', title: 'Dirty pages by round', caption: 'Pages each round found dirty (sent) and those the guest newly dirtied since the round before (none before the first), log scale.',
        spec: {
          // A log scale has no 0: rounds with none (the first round's newly dirty) are left out.
          width: WIDTH, height: 260, data: { values: rounds.flatMap((r) => [
            { round: r.round, pages: r.dirtyPages, series: 'dirty (sent)' },
            { round: r.round, pages: r.newlyDirtyPages, series: 'newly dirty' },
          ]).filter((point) => point.pages > 0) },
          mark: { type: 'line', point: true },
          encoding: {
            x: { field: 'round', type: 'ordinal', title: 'round' },
            y: { field: 'pages', type: 'quantitative', scale: { type: 'log' }, title: 'pages (4 KiB)' },
            color: { field: 'series', type: 'nominal', title: null },
          },
        },
      },
      {
        id: 'downtime', title: 'Downtime if the guest stopped after each round', caption:
          `This round's pages over the link plus the round's own time; the run stops once it fits the downtime limit${downtimeLimit === null ? '' : ` (the final round: ${downtimeLimit.toFixed(1)} ms)`}.`,
        spec: {
          width: WIDTH, height: 260, data: { values: rounds },
          mark: { type: 'bar' },
          encoding: {
            x: { field: 'round', type: 'ordinal', title: 'round' },
            y: { field: 'downtimeMs', type: 'quantitative', title: 'downtime (ms)' },
            color: { field: 'kind', type: 'nominal', title: null },
          },
        },
      },
    ],
    document: result,
  };
}

/** bench engine: throughput by size and density, WASM against C, plain JS and the memory limit. */
export function enginePage(report: BenchReport): ReportPage {
  const label = (impl: string, workers: number) => (impl === 'wasm' ? `WASM, ${workers === 0 ? 'inline' : `${workers} worker${workers === 1 ? '' : 's'}`}` : impl === 'c-native' ? 'C -O3 -march=native, 1 thread' : impl === 'c-x86-64-v2' ? 'C -O3 x86-64-v2, 1 thread' : impl === 'js' ? 'plain JS, 1 thread' : `${impl}, ${workers}`);
  const rows = report.results.map((r) => ({ kernel: r.kernel, sizeMiB: r.sizeBytes / 2 ** 20, density: `${+(r.density * 100).toPrecision(3)} %`, series: label(r.impl, r.workers), gbPerSec: r.gbPerSec }));
  // The memory limit: the rate at which the kernel's traffic would take all the measured bandwidth.
  const limits = new Map<string, (typeof rows)[number]>();
  for (const r of report.results) {
    if (!(r.memoryShare > 0)) continue;
    const key = `${r.kernel}|${r.sizeBytes}|${r.density}`;
    if (!limits.has(key)) limits.set(key, { kernel: r.kernel, sizeMiB: r.sizeBytes / 2 ** 20, density: `${+(r.density * 100).toPrecision(3)} %`, series: 'memory limit', gbPerSec: r.gbPerSec / r.memoryShare });
  }
  const m = report.machine;
  return {
    title: 'vfio-iommufd bench engine',
    summary: [
      `${m.cpu}, ${m.cores} cores, node ${m.node}, ${m.gcc ?? 'no gcc'}; load ${m.loadAverage.start.toFixed(2)} -> ${m.loadAverage.end.toFixed(2)}; two-thread control ${m.twoThreadSpeedup.toFixed(2)}x`,
      `memory bandwidth (${report.memoryBandwidth.measuredBy}): read ${report.memoryBandwidth.readGBps.toFixed(1)} GB/s, read-modify-write ${report.memoryBandwidth.rmwGBps.toFixed(1)} GB/s`,
      ...report.notes.map((note) => `note: ${note}`),
    ],
    charts: [{
      id: 'throughput', title: 'Throughput by bitmap size and density',
      caption: 'GB of bitmap per second (log scale) for each kernel (rows) and density (columns): the WASM engine against C -O3 and plain JS measured in the same run, and the memory limit (dashed): the rate at which the kernel\'s memory traffic takes all the measured bandwidth, which bitmaps that fit in the caches can beat.',
      spec: {
        data: { values: [...rows, ...limits.values()] },
        facet: { row: { field: 'kernel', type: 'nominal', title: null }, column: { field: 'density', type: 'ordinal', title: 'dirty density' } },
        spec: {
          width: 200, height: 150,
          mark: { type: 'line', point: true },
          encoding: {
            x: { field: 'sizeMiB', type: 'quantitative', scale: { type: 'log' }, title: 'bitmap size (MiB)' },
            y: { field: 'gbPerSec', type: 'quantitative', scale: { type: 'log' }, title: 'GB/s' },
            color: { field: 'series', type: 'nominal', title: null, legend: { labelLimit: 320 } },
            strokeDash: { condition: { test: "datum.series === 'memory limit'", value: [4, 3] }, value: [1, 0] },
          },
        },
        resolve: { scale: { y: 'shared' } },
      } as TopLevelSpec,
    }],
    document: report,
  };
}

/** bench sync: one round's time by guest size, ours against C, per density. */
export function syncPage(report: SyncBenchReport): ReportPage {
  const m = report.machine;
  const values = report.results.map((r) => ({
    guestGiB: r.guestBytes / 2 ** 30, density: `${+(r.density * 100).toPrecision(3)} %`, impl: r.impl === 'c-reference' ? 'C -O3 -march=native, 1 thread' : `vfio-iommufd, ${m.workers} workers`, roundMs: r.roundMs,
  }));
  return {
    title: 'vfio-iommufd bench sync',
    summary: [
      `${m.cpu}, ${m.cores} cores, ${m.workers} engine workers, node ${m.node}, ${m.gcc ?? 'no gcc'}; load ${m.loadAverage.start.toFixed(2)} -> ${m.loadAverage.end.toFixed(2)}`,
      ...report.notes.map((note) => `note: ${note}`),
    ],
    charts: [{
      id: 'round-time', title: 'Round time by guest size',
      caption: 'Median time of one DirtySync round (query both sources, merge, scan) by guest size, log-log, one line per implementation and dirty density.',
      spec: {
        width: WIDTH, height: 300, data: { values },
        mark: { type: 'line', point: true },
        encoding: {
          x: { field: 'guestGiB', type: 'quantitative', scale: { type: 'log' }, title: 'guest memory (GiB)' },
          y: { field: 'roundMs', type: 'quantitative', scale: { type: 'log' }, title: 'round (ms)' },
          color: { field: 'impl', type: 'nominal', title: null, legend: { labelLimit: 320 } },
          strokeDash: { field: 'density', type: 'ordinal', title: 'dirty per source' },
        },
      },
    }],
    document: report,
  };
}
