// The README's library example runs as written, against the compiled package (as a user runs
// it): its `js` block is written into the package and run with node, importing 'vfio-iommufd'.
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

it('the README example runs and prints what its comments say', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const example = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(example, 'a ```js block in README.md').toBeDefined();
  const file = join(root, 'dist', 'readme-example.mjs');
  writeFileSync(file, example!);
  try {
    const output = execFileSync('node', [file], { cwd: root, encoding: 'utf8' });
    // Each console.log line's comment, up to a colon, is exactly what it must print, in order.
    const expected = [...example!.matchAll(/console\.log\(.*\); \/\/ ([^\n:]+?)(?::.*)?$/gm)].map((m) => m[1]!.trim());
    expect(expected.length).toBeGreaterThanOrEqual(5);
    expect(output.trim().split('\n')).toEqual(expected);
  } finally {
    rmSync(file, { force: true });
  }
});
