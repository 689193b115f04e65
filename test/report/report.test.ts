// The --report pages as people see them: rendered from real runs (a small simulate run here,
// bench runs recorded with the real commands under test/fixtures/reports), opened in headless
// Chromium with the network cut, every chart checked for drawn marks, and a screenshot kept
// under test-artifacts/ (gitignored).
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enginePage, renderReport, syncPage } from '../../src/cli/report.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const artifacts = join(root, 'test-artifacts');
const fixture = (name: string) => JSON.parse(readFileSync(join(root, 'test', 'fixtures', 'reports', name), 'utf8'));

let browser: Browser;

beforeAll(async () => {
  execFileSync('bash', [join(root, 'test', 'report', 'chromium.sh')], { stdio: 'pipe' });
  mkdirSync(artifacts, { recursive: true });
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}, 300_000);

afterAll(async () => {
  await browser?.close();
});

/** Opens the page offline, checks each chart drew, keeps a screenshot; returns the chart titles. */
async function check(file: string, charts: number): Promise<string[]> {
  // A fresh profile per page: newContext is Chromium's fresh user data.
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const requests: string[] = [];
  await context.route('**/*', (route) => {
    requests.push(route.request().url());
    return route.request().url().startsWith('file:') ? route.continue() : route.abort();
  });
  const page = await context.newPage();
  await page.goto(pathToFileURL(file).href);
  const drawn = await page.$$eval('section.chart', (sections) => sections.map((section) => {
    const svg = section.querySelector('svg');
    const box = svg?.getBoundingClientRect();
    // Lines and bars the chart drew: an area, not a bar of no height or a line of no length.
    const marks = [...section.querySelectorAll('g.role-mark path, g.role-mark rect')].filter((mark) => {
      const b = (mark as unknown as { getBBox(): { width: number; height: number } }).getBBox();
      return b.width > 0 && b.height > 0;
    });
    return { title: section.querySelector('h2')?.textContent ?? '', width: box?.width ?? 0, height: box?.height ?? 0, marks: marks.length };
  }));
  await page.screenshot({ path: file.replace(/\.html$/, '.png'), fullPage: true });
  await context.close();
  expect(requests.filter((url) => !url.startsWith('file:'))).toEqual([]);
  expect(drawn).toHaveLength(charts);
  for (const chart of drawn) {
    expect(chart.width, chart.title).toBeGreaterThan(100);
    expect(chart.height, chart.title).toBeGreaterThan(100);
    expect(chart.marks, chart.title).toBeGreaterThan(0);
  }
  return drawn.map((c) => c.title);
}

describe('--report pages in headless Chromium', () => {
  it('simulate --report: dirty pages and downtime by round, from a real run', async () => {
    const file = join(artifacts, 'simulate.html');
    const run = spawnSync('node', [join(root, 'dist', 'src', 'cli', 'main.js'), 'simulate', '--guest-memory', '8GiB', '--workers', '1', '--json', '--report', file], { encoding: 'utf8' });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    const html = readFileSync(file, 'utf8');
    // The page carries the same document --json printed.
    const embedded = /<script type="application\/json" id="document">([\s\S]*?)<\/script>/.exec(html)![1]!;
    expect(JSON.parse(embedded).summary).toEqual(JSON.parse(run.stdout).summary);
    expect(await check(file, 2)).toEqual(['Dirty pages by round', 'Downtime if the guest stopped after each round']);
  });

  it('bench engine: throughput by size and density against C, JS and the memory limit', async () => {
    const file = join(artifacts, 'bench-engine.html');
    const report = fixture('bench-engine.json');
    const html = await renderReport(enginePage(report));
    for (const series of ['WASM, 2 workers', 'C -O3 -march=native, 1 thread', 'plain JS, 1 thread', 'memory limit']) expect(html).toContain(series);
    writeFileSync(file, html);
    expect(await check(file, 1)).toEqual(['Throughput by bitmap size and density']);
  });

  it('bench sync: round time by guest size', async () => {
    const file = join(artifacts, 'bench-sync.html');
    writeFileSync(file, await renderReport(syncPage(fixture('bench-sync.json'))));
    expect(await check(file, 1)).toEqual(['Round time by guest size']);
  });

  it('refuses a report path it cannot write before any work, as a usage error', () => {
    const run = spawnSync('node', [join(root, 'dist', 'src', 'cli', 'main.js'), 'simulate', '--report', '/nonexistent/folder/r.html'], { encoding: 'utf8' });
    expect(run.status).toBe(2);
    expect(run.stderr).toBe('vfio-iommufd: --report: the folder /nonexistent/folder does not exist\n');
  });
});
