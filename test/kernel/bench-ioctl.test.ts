// B. `vfio-iommufd bench ioctl` in the guest (virtio boot): the CLI from dist/ measures the
// library's ioctl round trip against its C loop on the same /dev/iommu fd. This checks what the
// run must show, never its timing: every case measured on every side, the C loop worked on the
// bench's own objects (same option value, same number of IOVA ranges, the same dirty marks found
// through the same HWPT, the last mapped page included), the 64 GiB request's mapping bounded by
// the mock aperture and said so. The table goes to bench-ioctl.txt in the boot's results, which
// report.mjs prints in the harness output; the JSON to bench-ioctl.json.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { formatIoctlReport, type IoctlBenchReport } from '../../src/cli/bench-ioctl.js';
import * as uapi from '../../src/uapi/index.js';
import { onVirtioIommu } from './harness/guest-env.js';
import { resultsDir } from './support/kernel.js';

const MAIN = fileURLToPath(new URL('../../dist/src/cli/main.js', import.meta.url));
const GiB = 1n << 30n;
/** What a mock HWPT can map from MOCK_APERTURE_START (iommufd_test.h): 2032 MiB. */
const APERTURE = uapi.MOCK_APERTURE_LAST + 1n - uapi.MOCK_APERTURE_START;

describe.runIf(onVirtioIommu)('bench ioctl on the real kernel', () => {
  it('measures IOMMU_OPTION, IOAS_IOVA_RANGES and GET_DIRTY_BITMAP at 1 GiB and 64 GiB on every side', () => {
    const run = spawnSync(process.execPath, [MAIN, 'bench', 'ioctl', '--json'], { encoding: 'utf8', maxBuffer: 16 << 20, timeout: 600_000 });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    const report = JSON.parse(run.stdout) as IoctlBenchReport;
    writeFileSync(join(resultsDir(), 'bench-ioctl.json'), JSON.stringify(report, null, 2) + '\n');
    writeFileSync(join(resultsDir(), 'bench-ioctl.txt'), formatIoctlReport(report) + '\n');

    expect(report.machine.gcc, 'gcc in the guest (the host root over 9p)').not.toBeNull();
    // The 64 GiB case: asked for 64 GiB, a mock HWPT maps its aperture. A kernel that fails a
    // request running into the hole (EINVAL, Linux 6.12.118) is asked for the aperture instead.
    const big = report.results.find((r) => r.op === 'IOMMU_HWPT_GET_DIRTY_BITMAP' && r.askedBytes === Number(64n * GiB));
    expect(big, 'a GET_DIRTY_BITMAP row asked for 64 GiB').toBeDefined();
    const refused = big!.requestBytes !== Number(64n * GiB);
    const bigLabel = refused ? '2032 MiB (64 GiB asked)' : '64 GiB';
    const cases = [
      ['IOMMU_OPTION', 'RLIMIT_MODE get'], ['IOMMU_IOAS_IOVA_RANGES', 'capacity 4'],
      ['IOMMU_HWPT_GET_DIRTY_BITMAP', '1 GiB'], ['IOMMU_HWPT_GET_DIRTY_BITMAP', bigLabel],
    ] as const;
    for (const [op, label] of cases) {
      const rows = report.results.filter((r) => r.op === op && r.label === label);
      expect(rows.map((r) => r.impl).sort(), `${op} ${label}`).toEqual(['c-reference', 'koffi-encode', 'koffi-ioctl', 'vfio-iommufd']);
      for (const r of rows) {
        expect(r.workers).toBe(0);
        expect(r.callsPerBatch).toBeGreaterThan(0);
        expect(r.batchUs).toHaveLength(9);
        expect(r.usPerCall).toBeGreaterThan(0);
      }
      const ratio = report.ratios.find((r) => r.op === op && r.label === label);
      expect(ratio?.goal).toBe(3);
      expect(ratio!.oursOverC).toBeGreaterThan(0);
    }
    const first = (op: string, label: string, impl: string) => report.results.find((r) => r.op === op && r.label === label && r.impl === impl)!.first;
    // RLIMIT_MODE is 0 or 1 (iommufd.h: 0 user based accounting, the default; 1 process based), the same to both sides.
    expect([0, 1]).toContain(first('IOMMU_OPTION', 'RLIMIT_MODE get', 'vfio-iommufd'));
    expect(first('IOMMU_OPTION', 'RLIMIT_MODE get', 'c-reference')).toBe(first('IOMMU_OPTION', 'RLIMIT_MODE get', 'vfio-iommufd'));
    // The mock's IOAS: its aperture, minus nothing reserved (a mock has no reserved regions): one range.
    expect(first('IOMMU_IOAS_IOVA_RANGES', 'capacity 4', 'vfio-iommufd')).toBe(1);
    expect(first('IOMMU_IOAS_IOVA_RANGES', 'capacity 4', 'c-reference')).toBe(1);

    for (const [label, request, mapped] of [['1 GiB', GiB, GiB], [bigLabel, refused ? APERTURE : 64n * GiB, APERTURE]] as const) {
      const rows = report.results.filter((r) => r.op === 'IOMMU_HWPT_GET_DIRTY_BITMAP' && r.label === label);
      for (const r of rows) {
        expect(r.requestBytes).toBe(Number(request));
        expect(r.mappedBytes).toBe(Number(mapped));
        // a 4 KiB page per bit, in whole u64 words
        expect(r.bitmapBytes).toBe(Number(request / 4096n / 8n));
      }
      // One mark per 64 MiB and one on the last mapped mock page, each in its own 4 KiB page: the
      // first read-and-clear of each side finds every one, so it walked the whole mapped range.
      const marks = Number((mapped + (64n << 20n) - 1n) / (64n << 20n)) + 1;
      for (const impl of ['vfio-iommufd', 'c-reference']) {
        const r = rows.find((x) => x.impl === impl)!;
        expect(r.marked, `${label} ${impl}: marked`).toBe(marks);
        expect(r.first, `${label} ${impl}: dirty bits found by the first call`).toBe(marks);
      }
    }
    expect(report.notes.some((n) => n.includes('64 GiB') && n.includes('MOCK_APERTURE_LAST') && (!refused || n.includes('EINVAL')))).toBe(true);
  }, 900_000);
});
