// The package as users get it: `npm pack`, installed from the tarball into a fresh project,
// compiled by TypeScript under both module resolutions people use, and run.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version: string }> };
const versionOf = (name: string) => lock.packages[`node_modules/${name}`]!.version;

// Everything a user would write: the names the README documents, the errors thrown at them.
const consumer = `
import {
  simulatedKernel, guestWorkload, estimateConvergence, AddressSpace, DirtySync,
  EngineInputError, InvalidArgumentError, KernelError, type ConvergenceEstimate,
} from 'vfio-iommufd';
import { UAPI_TABLE } from 'vfio-iommufd/uapi';

const estimate: ConvergenceEstimate = estimateConvergence({
  pendingBytes: 1 << 30, dirtyRateBytesPerSecond: 0, bandwidthBytesPerSecond: 1 << 30, downtimeLimitMs: 300,
});
const kernel = simulatedKernel({ devices: [{ name: 'nic0', iommuDirtyTracking: true }] });
const space = new AddressSpace(kernel);
await space.map({ iova: 0n, size: 1n << 21n });
const nic = await space.attach('nic0');
const workload = guestWorkload(kernel, { ranges: [{ iova: 0n, length: 1n << 21n }], devices: ['nic0'], pattern: { kind: 'uniform' }, dirtyRate: 100, seed: 1 });
workload.write(10);
let refused = '';
try { await space.map(null as never); } catch (error) { if (error instanceof InvalidArgumentError) refused = error.name; }
const attached = space.devices.map((d) => d.name).concat(nic.name);
await space.close();
await space.close();
console.log(JSON.stringify({
  converges: estimate.converges, attached, refused,
  errors: [EngineInputError.name, InvalidArgumentError.name, KernelError.name, typeof DirtySync],
  uapi: Object.keys(UAPI_TABLE).length > 0,
}));
`;

let project = '';
let tarball = '';

beforeAll(() => {
  project = mkdtempSync(join(tmpdir(), 'vfio-iommufd-consumer-'));
  // dist/ is built by `npm test`; --ignore-scripts keeps pack from building it again.
  const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', project], { cwd: root, encoding: 'utf8' }));
  tarball = join(project, packed[0].filename);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  // The tarball from disk; its dependencies (and TypeScript) from the npm cache, the registry only for a miss.
  execFileSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', tarball,
    `typescript@${versionOf('typescript')}`, `@types/node@${versionOf('@types/node')}`], { cwd: project, encoding: 'utf8', stdio: 'pipe' });
  writeFileSync(join(project, 'consumer.ts'), consumer);
}, 120_000);

afterAll(() => {
  if (project) rmSync(project, { recursive: true, force: true });
});

describe('the packed tarball', () => {
  it('ships the library, the CLI and the workers but not the compiled tests', () => {
    const files = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).split('\n');
    expect(files).toContain('package/dist/src/index.js');
    expect(files).toContain('package/dist/src/cli/main.js');
    expect(files.some((f) => f.startsWith('package/dist/workers/'))).toBe(true);
    expect(files.some((f) => f.startsWith('package/build/') && f.endsWith('.wasm'))).toBe(true);
    expect(files.filter((f) => f.startsWith('package/dist/test/'))).toEqual([]);
  });

  for (const [resolution, module] of [['node16', 'node16'], ['node', 'esnext']] as const) {
    it(`compiles a TypeScript consumer under moduleResolution ${resolution} and runs it`, () => {
      const outDir = `out-${resolution}`;
      writeFileSync(join(project, `tsconfig.${resolution}.json`), JSON.stringify({
        compilerOptions: { target: 'ES2022', module, moduleResolution: resolution, strict: true, outDir, types: ['node'], skipLibCheck: true },
        files: ['consumer.ts'],
      }));
      const tsc = spawnSync('node', [join(project, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', `tsconfig.${resolution}.json`], { cwd: project, encoding: 'utf8' });
      expect(tsc.stdout + tsc.stderr).toBe('');
      expect(tsc.status).toBe(0);
      const run = spawnSync('node', [join(outDir, 'consumer.js')], { cwd: project, encoding: 'utf8' });
      expect(run.stderr).toBe('');
      expect(JSON.parse(run.stdout)).toEqual({
        converges: true, attached: ['nic0', 'nic0'], refused: 'InvalidArgumentError',
        errors: ['EngineInputError', 'InvalidArgumentError', 'KernelError', 'function'], uapi: true,
      });
    });
  }

  it('installs the bin: --version prints the package version', () => {
    const run = spawnSync(join(project, 'node_modules', '.bin', 'vfio-iommufd'), ['--version'], { encoding: 'utf8' });
    expect(run.status).toBe(0);
    expect(run.stdout.trim()).toBe(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version);
  });
});
