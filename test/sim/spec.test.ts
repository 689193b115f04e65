// Simulated devices declared as data: validation (zod), defaults, and what GET_HW_INFO encodes
// for each IOMMU type, in the iommu_hw_info_* layouts of src/uapi.
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/kernel/errors.js';
import { resolveDeviceSpecs, simulatedKernel } from '../../src/kernel/sim/index.js';
import {
  IOMMU_HW_CAP_DIRTY_TRACKING,
  IOMMU_HW_INFO_TYPE_AMD,
  IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
  IOMMU_HW_INFO_TYPE_INTEL_VTD,
  IOMMU_HW_INFO_TYPE_NONE,
  iommu_hw_info_amd,
  iommu_hw_info_arm_smmuv3,
  iommu_hw_info_vtd,
} from '../../src/uapi/index.js';

function refusal(specs: unknown[]): InvalidArgumentError {
  try {
    resolveDeviceSpecs(specs as never);
  } catch (error) {
    if (error instanceof InvalidArgumentError) return error;
    throw error;
  }
  throw new Error('expected the specs to be refused');
}

describe('SimulatedDeviceSpec', () => {
  it('fills in PCI addresses, groups and cdevs, and per-type reserved regions, page sizes and apertures', () => {
    const [nic, arm, mdev, legacy] = resolveDeviceSpecs([
      { name: 'nic0' },
      { name: 'smmu0', iommuType: 'arm-smmuv3', pageSizes: [4096n, 65536n, '0x200000'] },
      { name: 'mdev0', mdev: true },
      { name: 'old0', legacyOnly: true, groupId: 100 },
    ]);
    expect(nic).toMatchObject({ pciAddress: '0000:00:03.0', groupId: 101, cdevIndex: 0, mdev: false });
    expect(nic!.iommu).toMatchObject({ type: 'intel-vtd', apertureLast: (1n << 48n) - 1n, pageSizes: [4096n, 2097152n, 1073741824n] });
    expect(nic!.iommu!.reservedRegions).toEqual([{ start: 0xfee00000n, last: 0xfeefffffn, type: 'msi' }]);
    expect(arm!.iommu!.reservedRegions).toEqual([{ start: 0x8000000n, last: 0x80fffffn, type: 'sw-msi' }]);
    expect(arm!.iommu!.pageSizes).toEqual([4096n, 65536n, 2097152n]);
    expect(mdev).toMatchObject({ pciAddress: undefined, iommu: undefined, cdevIndex: 2 });
    expect(legacy).toMatchObject({ groupId: 100, cdevIndex: undefined, legacyOnly: true });
  });

  it('refuses bad specs with InvalidArgumentError naming the device and the field', () => {
    expect(refusal([{ name: 'a', pciAddress: '00:03.0' }]).message).toMatch(/devices\[0\]\.pciAddress.*"a"/);
    expect(refusal([{ name: 'a' }, { name: 'a' }]).message).toMatch(/two devices are named a/);
    expect(refusal([{ name: 'a', mdev: true, iommuDirtyTracking: true }]).argument).toBe('devices[0].iommuDirtyTracking');
    expect(refusal([{ name: 'a', iommuType: 'amd', vendorRegisters: { capReg: 1n } }]).argument).toBe('devices[0].vendorRegisters.capReg');
    expect(refusal([{ name: 'a', dmaLogging: { pageSize: 1024n } }]).argument).toBe('devices[0].dmaLogging.pageSize');
    expect(refusal([{ name: 'a', pageSizes: [3000n] }]).argument).toBe('devices[0].pageSizes.0');
    expect(refusal([{ name: 'a', surprise: true }]).argument).toBe('devices[0]');
    expect(() => simulatedKernel({ devices: [{ name: 'a', groupId: 7 }, { name: 'b', groupId: 7, mdev: true }] })).toThrow(/mixes mdevs/);
  });

  it('accepts numbers and hex strings for sizes, so specs can be JSON', () => {
    const [device] = resolveDeviceSpecs([JSON.parse('{"name":"x","bar0Size":"0x100000","dmaLogging":{"pageSize":8192,"maxRanges":2}}')]);
    expect(device!.bar0Size).toBe(0x100000n);
    expect(device!.dmaLogging).toEqual({ maxRanges: 2, pageSize: 8192n, maxPageSize: 8192n, tooManyRanges: 'combine' });
  });
});

describe('IOMMU_GET_HW_INFO of simulated devices', () => {
  function hwInfo(spec: object) {
    const kernel = simulatedKernel({ devices: [{ name: 'd', ...spec }] });
    const iommufd = kernel.openIommufd();
    const device = kernel.openDevice('d');
    const info = iommufd.getHwInfo(device.bindIommufd(iommufd));
    device.close();
    iommufd.close();
    kernel.assertClean();
    return info;
  }

  it('intel-vtd: iommu_hw_info_vtd with the given registers, the dirty capability when declared', () => {
    const info = hwInfo({ iommuType: 'intel-vtd', iommuDirtyTracking: true, vendorRegisters: { capReg: 0x1234n, ecapReg: 0x5678n, vtdFlags: 1 } });
    expect(info.type).toBe(IOMMU_HW_INFO_TYPE_INTEL_VTD);
    expect(info.capabilities).toBe(BigInt(IOMMU_HW_CAP_DIRTY_TRACKING));
    expect(iommu_hw_info_vtd.decode(info.data)).toMatchObject({ flags: 1, cap_reg: 0x1234n, ecap_reg: 0x5678n });
    expect(info.data.byteLength).toBe(iommu_hw_info_vtd.size);
  });

  it('intel-vtd defaults: ECAP.SLADS (bit 45) set exactly when the device declares dirty tracking', () => {
    // drivers/iommu/intel/iommu.h: #define ecap_slads(e) (((e) >> 45) & 0x1); bit 47 is ecap_flts.
    const slads = (info: { data: Uint8Array }) => (iommu_hw_info_vtd.readBigint(info.data, 'ecap_reg') >> 45n) & 1n;
    expect(slads(hwInfo({ iommuType: 'intel-vtd', iommuDirtyTracking: true }))).toBe(1n);
    expect(slads(hwInfo({ iommuType: 'intel-vtd' }))).toBe(0n);
  });

  it('arm-smmuv3: IDR0..5, IIDR, AIDR; IDR0.HTTU = 2 (access and dirty) by default when dirty tracking', () => {
    const info = hwInfo({ iommuType: 'arm-smmuv3', vendorRegisters: { idr: [1, 2, 3, 4, 5, 6], iidr: 7, aidr: 8 } });
    expect(info.type).toBe(IOMMU_HW_INFO_TYPE_ARM_SMMUV3);
    const view = new DataView(info.data.buffer, info.data.byteOffset);
    const idr = Array.from({ length: 6 }, (_, index) => view.getUint32(iommu_hw_info_arm_smmuv3.offsetOf('idr') + index * 4, true));
    expect(idr).toEqual([1, 2, 3, 4, 5, 6]);
    expect(iommu_hw_info_arm_smmuv3.decode(info.data)).toMatchObject({ iidr: 7, aidr: 8 });
    const dirty = hwInfo({ iommuType: 'arm-smmuv3', iommuDirtyTracking: true });
    expect((new DataView(dirty.data.buffer, dirty.data.byteOffset).getUint32(iommu_hw_info_arm_smmuv3.offsetOf('idr'), true) >> 6) & 3).toBe(2);
  });

  it('amd: EFR and EFR2; EFR.HDSUP (bit 52) by default when dirty tracking', () => {
    const info = hwInfo({ iommuType: 'amd', vendorRegisters: { efr: 0xabcn, efr2: 0xdefn } });
    expect(info.type).toBe(IOMMU_HW_INFO_TYPE_AMD);
    expect(iommu_hw_info_amd.decode(info.data)).toEqual({ efr: 0xabcn, efr2: 0xdefn });
    const dirty = hwInfo({ iommuType: 'amd', iommuDirtyTracking: true });
    expect((iommu_hw_info_amd.readBigint(dirty.data, 'efr') >> 52n) & 1n).toBe(1n);
  });

  it('none (virtio-iommu-like): no hw_info, type NONE, no data', () => {
    const info = hwInfo({ iommuType: 'none' });
    expect(info).toEqual({ type: IOMMU_HW_INFO_TYPE_NONE, capabilities: 0n, maxPasidLog2: 0, data: new Uint8Array(0) });
  });
});
