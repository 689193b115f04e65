// `vfio-iommufd migrate` as users run it: the compiled CLI, a destination process over TCP.
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'dist/src/cli/main.js');
const run = promisify(execFile);

interface Summary {
  verified: boolean; mismatchedPages: number; ramBytesCompared: number; deviceStateBytes: number; downtimeMs: number;
  predictedDowntimeMs: number | null; rounds: number; transport: string; converged: boolean;
}

it('migrate --json: a child destination over TCP, verified byte for byte', async () => {
  const { stdout } = await run('node', [cli, 'migrate', '--guest-memory', '64MiB', '--dirty-rate', '20MiB/s', '--json'], { cwd: root });
  const result = JSON.parse(stdout) as { summary: Summary; rounds: { kind: string }[] };
  expect(result.summary).toMatchObject({ verified: true, mismatchedPages: 0, ramBytesCompared: 64 * 2 ** 20, transport: 'tcp' });
  expect(result.summary.rounds).toBe(result.rounds.length);
  expect(result.rounds[0]!.kind).toBe('bulk');
  expect(result.rounds.at(-1)!.kind).toBe('stop-and-copy');
  expect(result.summary.downtimeMs).toBeGreaterThan(0);
}, 120_000);

it('migrate with a mixed topology, devices with migration state and a burst workload verifies', async () => {
  const { stdout } = await run('node', [
    cli, 'migrate', '--guest-memory', '64MiB', '--workload', 'burst', '--dirty-rate', '50MiB/s', '--json',
    '--device', 'nic0:iommu-dirty+migration', '--device', 'gpu0:dma-logging', '--device', 'leg0:legacy+migration',
  ], { cwd: root });
  const result = JSON.parse(stdout) as { summary: Summary; devices: { name: string; tracker: string }[] };
  expect(result.devices.map((d) => d.tracker)).toEqual(['iommu', 'dma-logging', 'type1']);
  expect(result.summary).toMatchObject({ verified: true, mismatchedPages: 0 });
  // Both devices' state went over: the destination loaded it (a bad stream fails its RESUMING).
  expect(result.summary.deviceStateBytes).toBeGreaterThan(0);
}, 120_000);

it('migrate --listen and --connect run the two sides as separate processes', async () => {
  const destination = spawn('node', [cli, 'migrate', '--listen', '127.0.0.1:0', '--guest-memory', '32MiB'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = once(destination, 'exit');
  let err = '';
  destination.stderr.on('data', (c: Buffer) => (err += c.toString()));
  for (let i = 0; i < 600 && !/listening on [\d.]+:(\d+)/.test(err); i++) await new Promise((resolve) => setTimeout(resolve, 100));
  const port = /listening on [\d.]+:(\d+)/.exec(err)![1]!;
  const { stdout } = await run('node', [cli, 'migrate', '--connect', `127.0.0.1:${port}`, '--guest-memory', '32MiB', '--json'], { cwd: root });
  expect((JSON.parse(stdout) as { summary: Summary }).summary).toMatchObject({ verified: true, mismatchedPages: 0 });
  const [code] = await exited;
  expect(code).toBe(0);
}, 120_000);

it('migrate --report writes a self-contained page with its two charts drawn as SVG', async () => {
  const { mkdtempSync, readFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const file = join(mkdtempSync(join(tmpdir(), 'migrate-report-')), 'migrate.html');
  await run('node', [cli, 'migrate', '--guest-memory', '32MiB', '--report', file], { cwd: root });
  const page = readFileSync(file, 'utf8');
  expect(page.match(/<section class="chart"/g)).toHaveLength(2);
  expect(page.match(/<svg[^>]*>/g)).toHaveLength(2);
  // Marks drawn: the line and the bars are paths in the SVG.
  expect((page.match(/<path/g) ?? []).length).toBeGreaterThan(4);
  expect(page).not.toMatch(/<script src|https?:\/\/(?!www\.w3\.org)/);
}, 120_000);

it('migrate refuses a guest larger than it can hold, with exit 2 and the limit named', async () => {
  const error = await run('node', [cli, 'migrate', '--guest-memory', '64TiB'], { cwd: root }).catch((e: { code: number; stderr: string }) => e);
  expect(error).toMatchObject({ code: 2 });
  expect((error as { stderr: string }).stderr).toMatch(/is more than migrate holds on this machine \(.+: a quarter of its memory/);
});
