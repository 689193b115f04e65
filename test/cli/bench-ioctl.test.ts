// `vfio-iommufd bench ioctl` on a host: its arguments and its errors without a usable iommufd
// (the measurement itself runs in the harness guest: test/kernel/bench-ioctl.test.ts), and its
// C loop: built with -Wall -Werror, its copies of the uAPI structs checked against the Linux 6.12
// headers, and a failing ioctl reported instead of timed.
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'dist', 'src', 'cli', 'main.js');
const loopSource = join(root, 'src', 'cli', 'reference', 'ioctl-loop.c');
const inCi = process.env.CI === 'true';
const hasGcc = spawnSync('gcc', ['--version']).status === 0;

function run(...args: string[]) {
  const result = spawnSync('node', [bin, 'bench', 'ioctl', ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('vfio-iommufd bench ioctl without a usable iommufd', () => {
  it('exits 2 with one line saying what it needs when the iommufd node does not exist, with or without --json', () => {
    for (const json of [[], ['--json']]) {
      const { status, stdout, stderr } = run('--iommufd', '/nonexistent/iommu', ...json);
      expect(status).toBe(2);
      expect(stdout).toBe('');
      expect(stderr).toMatch(/^vfio-iommufd: \/nonexistent\/iommu does not exist: bench ioctl measures the real kernel's iommufd \(CONFIG_IOMMUFD, and CONFIG_IOMMUFD_TEST/);
      expect(stderr.trim().split('\n')).toHaveLength(1);
    }
  });

  it('exits 2 when the node answers no IOMMU_TEST_CMD (a kernel without CONFIG_IOMMUFD_TEST; here /dev/null: ENOTTY)', () => {
    const { status, stdout, stderr } = run('--iommufd', '/dev/null');
    expect(status).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toMatch(/^vfio-iommufd: \/dev\/null answers no IOMMU_TEST_CMD: bench ioctl needs a kernel built with CONFIG_IOMMUFD_TEST/);
  });

  it('rejects bad arguments with exit 2 before it looks for the device', () => {
    const cases: [string[], RegExp][] = [
      [['--sizes', '1000'], /^vfio-iommufd: --sizes: 1000 B must be a multiple of 4096 bytes/],
      [['--sizes', '1GiB,lots'], /^vfio-iommufd: --sizes: "lots" is not a size/],
      [['--sizes', '2TiB'], /^vfio-iommufd: --sizes: 2 TiB is more than 1TiB/],
      [['--batches', '0'], /^vfio-iommufd: --batches: "0" must be a whole number of at least 1/],
      [['--batches', '1001'], /^vfio-iommufd: --batches: 1001 is more than 1000/],
      [['--batch-time', 'soon'], /^vfio-iommufd: --batch-time: "soon" is not a duration/],
      [['--bogus'], /^vfio-iommufd: unknown option '--bogus'/],
    ];
    for (const [args, message] of cases) {
      // The node does not exist: an argument error must come first.
      const { status, stdout, stderr } = run(...args, '--iommufd', '/nonexistent/iommu');
      expect(status, args.join(' ')).toBe(2);
      expect(stdout).toBe('');
      expect(stderr, args.join(' ')).toMatch(message);
    }
  });

  it('--help names the ioctls, the options and their defaults', () => {
    const { status, stdout } = run('--help');
    expect(status).toBe(0);
    expect(stdout).toMatch(/IOMMU_OPTION, IOAS_IOVA_RANGES, HWPT_GET_DIRTY_BITMAP on a mock HWPT/);
    expect(stdout).toMatch(/--sizes <list>[\s\S]*\(default: "1GiB,64GiB"\)/);
    expect(stdout).toMatch(/--batches <n>[\s\S]*\(default: "9"\)/);
    expect(stdout).toMatch(/--iommufd <path>[\s\S]*\(default: "\/dev\/iommu"\)/);
  });
});

function kernelHeaders(): string | undefined {
  const result = spawnSync('bash', [join(root, 'test', 'uapi', 'kernel-headers.sh')], { encoding: 'utf8', env: process.env });
  if (result.status !== 0) {
    if (inCi) throw new Error(`kernel headers could not be installed:\n${result.stderr}`);
    return undefined;
  }
  return result.stdout.trim().split('\n').pop();
}
const include = hasGcc ? kernelHeaders() : undefined;

describe.skipIf(!hasGcc && !inCi)('the C loop (src/cli/reference/ioctl-loop.c)', () => {
  it.skipIf(!include && !inCi)('its structs and ioctl numbers are those of the Linux 6.12 headers (static asserts against <linux/iommufd.h>)', () => {
    expect(include, 'kernel headers (test/uapi/kernel-headers.sh)').toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'ioctl-loop-'));
    try {
      const built = spawnSync('gcc', ['-std=gnu11', '-Wall', '-Werror', '-DIOCTL_LOOP_CHECK_HEADERS', '-I', include!, '-o', join(dir, 'checked'), loopSource], { encoding: 'utf8' });
      expect(built.stderr).toBe('');
      expect(built.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('builds without kernel headers at -O3 -Wall -Wextra -Werror; a failing ioctl exits 1 naming it and the errno, bad usage exits 2', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ioctl-loop-'));
    const binary = join(dir, 'ioctl-loop');
    const built = spawnSync('gcc', ['-O3', '-Wall', '-Wextra', '-Werror', '-o', binary, loopSource], { encoding: 'utf8' });
    expect(built.stderr).toBe('');
    expect(built.status).toBe(0);
    const fd = openSync('/dev/null', 'r');
    try {
      const failed = spawnSync(binary, ['3', '10', '2', 'option'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe', fd] });
      expect(failed.status).toBe(1);
      expect(failed.stdout).toBe('');
      expect(failed.stderr).toMatch(/^ioctl-loop: option failed: .* \(errno 25\)\n$/); // ENOTTY
      for (const args of [[], ['3', '0', '1', 'option'], ['3', '1', '1', 'iova-ranges'], ['3', '1', '1', 'teleport']]) {
        expect(spawnSync(binary, args, { encoding: 'utf8' }).status, args.join(' ')).toBe(2);
      }
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
