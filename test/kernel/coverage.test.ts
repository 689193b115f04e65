// I. Which ioctls the suite drives. Every kernel test file runs its kernel through a recording
// Syscalls (support/kernel.ts) and, in its afterAll, adds what it issued to the boot's
// ioctl-coverage.json (in the harness's results folder for the boot): the ioctls the shim can
// issue, those the suite issued (with their results), and those missing. This file checks that
// the list of the shim's ioctls is still what src/kernel/linux issues.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { UAPI_TABLE } from '../../src/uapi/index.js';
import { inKernelGuest } from './harness/guest-env.js';
import { flushCoverage, ioctlName, kernel, SHIM_DETAILS, SHIM_IOCTLS } from './support/kernel.js';

afterAll(() => flushCoverage('coverage.test.ts'));

const SHIM_DIR = fileURLToPath(new URL('../../src/kernel/linux/', import.meta.url));

describe.runIf(inKernelGuest)('ioctl coverage', () => {
  it("the list of the shim's ioctls matches the request constants src/kernel/linux passes to its ioctl calls", () => {
    const issued = new Set<string>();
    for (const file of readdirSync(SHIM_DIR).filter((name) => name.endsWith('.ts'))) {
      const source = readFileSync(join(SHIM_DIR, file), 'utf8');
      // every call names the ioctl twice: call('NAME', uapi.NAME, ...) / issue('NAME', uapi.NAME, ...)
      for (const match of source.matchAll(/'([A-Z][A-Z0-9_]+)',\s*uapi\.([A-Z][A-Z0-9_]+)\b/g)) {
        expect(match[2], `${file}: ${match[0]}`).toBe(match[1]);
        issued.add(match[1]!);
      }
    }
    expect([...issued].sort()).toEqual([...SHIM_IOCTLS].sort());
    for (const name of SHIM_IOCTLS) expect(UAPI_TABLE.ioctls, name).toHaveProperty(name);
    expect(new Set(SHIM_DETAILS).size).toBe(SHIM_DETAILS.length);
  });

  it('names a request by the kind of file it went to (VFIO reuses numbers across fd kinds)', () => {
    const v17 = UAPI_TABLE.ioctls.VFIO_DEVICE_FEATURE!;
    expect(UAPI_TABLE.ioctls.VFIO_IOMMU_DIRTY_PAGES).toBe(v17);
    expect(ioctlName('device', v17)).toBe('VFIO_DEVICE_FEATURE');
    expect(ioctlName('container', v17)).toBe('VFIO_IOMMU_DIRTY_PAGES');
    expect(ioctlName('iommufd', UAPI_TABLE.ioctls.IOMMU_TEST_CMD!)).toBe('IOMMU_TEST_CMD');
    // and the recorder sees a real one: the test-command probe on /dev/iommu
    const fd = kernel().openIommufd();
    try {
      expect(fd.test!.available()).toBe(true);
    } finally {
      fd.close();
    }
  });
});
