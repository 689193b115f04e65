// The no-loss soak as `npm run soak` runs it: the compiled entry, real worker threads, faults that
// must fire. 3,000 rounds here; the note records a 100,000-round run.
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const run = promisify(execFile);

it('npm run soak: 3,000 rounds with events between round and send, lost 0, worker faults fired', async () => {
  const { stdout } = await run('node', [join(root, 'dist/src/cli/soak.js'), '--rounds', '3000', '--seed', '3', '--json'], { cwd: root });
  const result = JSON.parse(stdout) as { line: string; seconds: number; precision: number; rounds: number; lost: number; faultsFired: number } & Record<string, number | string>;
  console.log(`${result.line} (${result.seconds.toFixed(1)} s, precision ${(result.precision * 100).toFixed(1)}%)`);
  expect(result.rounds).toBe(3000);
  expect(result.lost).toBe(0);
  expect(result.faultsFired).toBeGreaterThan(0);
  // It did what it claims: each kind of event happened.
  for (const key of ['maps', 'unmaps', 'failedMaps', 'refusedMaps', 'failedUnmaps', 'hotPlugs', 'refusedPlugs', 'hotUnplugs', 'redirtied', 'consumerFailures', 'failedQueries']) {
    expect(result[key], key).toBeGreaterThan(0);
  }
  expect(result.line).toMatch(/^no-loss soak: 3000 rounds, \d+ events, \d+ worker faults fired, lost 0, extra \d+ pages$/);
}, 120_000);

it('npm run soak refuses a bad argument with exit 2', async () => {
  await expect(run('node', [join(root, 'dist/src/cli/soak.js'), '--rounds', 'many'], { cwd: root })).rejects.toMatchObject({ code: 2 });
});
