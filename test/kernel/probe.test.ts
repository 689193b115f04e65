// probe in the intel boot: edu's cdev is bound before its features are probed, and its IOMMU
// type, address width and dirty capability are read from the emulated VT-d. QEMU 7.2's
// intel-iommu defaults to aw-bits 39 (VTD_HOST_AW_39BIT: CAP_REG.MGAW 38) and has no
// second-stage A/D bits (no ECAP.SLADS), so no IOMMU dirty tracking; edu has no DMA logging.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { probe } from '../../src/cli/probe.js';
import { edu, onIntelIommu } from './harness/guest-env.js';
import { kernel } from './support/kernel.js';

describe.runIf(onIntelIommu)('probe on the emulated VT-d', () => {
  it('shows edu as intel-vtd, 39 address bits, no IOMMU dirty tracking, no DMA logging, no bind error', () => {
    const report = probe({ kernel: kernel() });
    const device = report.devices.find((d) => d.name === edu.bdf);
    expect(device).toMatchObject({ cdev: edu.cdev, iommuType: 'intel-vtd', addressWidth: 39, iommuDirtyTracking: false, dmaLogging: false });
    expect(device!.problems.join('; ')).not.toMatch(/Invalid argument|failed/);
    // The command as users run it, for the harness log.
    const human = execFileSync(process.execPath, ['dist/src/cli/main.js', 'probe'], { encoding: 'utf8' });
    process.stderr.write(`vfio-iommufd probe (intel boot):\n${human}`);
    expect(human).toMatch(new RegExp(`${edu.bdf}.*intel-vtd.*39`));
  });
});
