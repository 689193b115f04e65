// probe on the simulated kernel: it binds each cdev before asking for features (a cdev answers
// EINVAL to everything but VFIO_DEVICE_BIND_IOMMUFD until bound), and shows each device's IOMMU
// type, address width and dirty capability. Register values follow the VT-d spec (CAP_REG.MGAW,
// bits 21:16, is the width minus one) and amd_iommu_types.h (FEATURE_HATS GENMASK_ULL(11, 10)).
import { describe, expect, it } from 'vitest';
import { probe, simulatedProbeKernel } from '../../src/cli/probe.js';
import { simulatedKernel } from '../../src/kernel/sim/index.js';

const VTD_CAP_MGAW_SHIFT = 16n;
const AMD_FEATURE_HATS_SHIFT = 10n;

describe('probe on the simulated kernel', () => {
  it('binds first, then reads the IOMMU, its address width, dirty tracking and DMA logging', () => {
    const kernel = simulatedKernel({
      devices: [
        { name: 'vtd48', iommuType: 'intel-vtd', iommuDirtyTracking: true, vendorRegisters: { capReg: 47n << VTD_CAP_MGAW_SHIFT, ecapReg: 0n } },
        { name: 'amd57', iommuType: 'amd', dmaLogging: { pageSize: 4096n, maxRanges: 256 }, vendorRegisters: { efr: 1n << AMD_FEATURE_HATS_SHIFT, efr2: 0n } },
        { name: 'smmu', iommuType: 'arm-smmuv3', iommuDirtyTracking: true },
        { name: 'viommu', iommuType: 'none' },
      ],
    });
    const report = probe({ kernel });
    expect(report.kernel).toBe('simulated');
    expect(report.iommufd).toMatchObject({ present: true, accessible: true });
    const byName = Object.fromEntries(report.devices.map((d) => [d.name, d]));
    expect(byName.vtd48).toMatchObject({ iommuType: 'intel-vtd', addressWidth: 48, iommuDirtyTracking: true, dmaLogging: false });
    expect(byName.amd57).toMatchObject({ iommuType: 'amd', addressWidth: 57, iommuDirtyTracking: false, dmaLogging: true });
    expect(byName.smmu).toMatchObject({ iommuType: 'arm-smmuv3', addressWidth: undefined, iommuDirtyTracking: true });
    expect(byName.viommu).toMatchObject({ iommuType: 'none', iommuDirtyTracking: false });
    for (const device of report.devices) expect(device.problems.join('; ')).not.toMatch(/Invalid argument|EINVAL|failed/);
  });

  it('probe --simulated without devices shows one of each kind', () => {
    const report = probe({ kernel: simulatedProbeKernel() });
    expect(report.devices.map((d) => d.iommuType)).toEqual(['intel-vtd', 'intel-vtd', 'arm-smmuv3', 'amd', 'none', 'mdev (none of its own)', undefined]);
    expect(report.devices.find((d) => d.name === 'legacy0')?.problems[0]).toMatch(/no VFIO cdev/);
  });
});
