import { describe, expect, it } from 'vitest';
import * as uapi from '../../src/uapi/index.js';
import { HostIommuInfo, decodeAmd, decodeSmmuV3, decodeVtd } from '../../src/vfio/host-iommu-info.js';
import { UndoStack } from '../../src/vfio/undo.js';

describe('VT-d registers', () => {
  it('decodes the registers QEMU 7.2 intel-iommu reported in the harness', () => {
    // GET_HW_INFO on edu behind `-device intel-iommu,intremap=on,caching-mode=on`.
    const vtd = decodeVtd(0xd2008c22260286n, 0xf00f4an);
    expect(vtd).toMatchObject({
      numberOfDomains: 65536,
      cachingMode: true,
      sagaw: 0b00010,
      supportedAddressWidths: [39],
      mgaw: 39,
      nfr: 1,
      secondLevelLargePages: { twoMiB: true, oneGiB: true },
      fl1gp: false,
      pageSelectiveInvalidation: true,
      queuedInvalidation: true,
      interruptRemapping: true,
      passThrough: true,
      nesting: false,
      pasid: false,
      scalableMode: false,
      slads: false,
      dirtyTracking: false,
    });
  });

  it('sees dirty tracking, nesting and PASID on a scalable-mode IOMMU with SLADS', () => {
    const ecap = (1n << 43n) | (1n << 45n) | (1n << 26n) | (1n << 40n) | (19n << 35n);
    const cap = (1n << 56n) | (0b00110n << 8n) | (47n << 16n) | (7n << 40n);
    const vtd = decodeVtd(cap, ecap);
    expect(vtd).toMatchObject({ dirtyTracking: true, nesting: true, pasid: true, pasidBits: 20, fl1gp: true, supportedAddressWidths: [39, 48], mgaw: 48, nfr: 8 });
  });

  it('HostIommuInfo reads the vendor data laid out as iommu_hw_info_vtd', () => {
    const data = uapi.iommu_hw_info_vtd.encode({ cap_reg: 0xd2008c22260286n, ecap_reg: 0xf00f4an });
    const info = new HostIommuInfo({ type: uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD, capabilities: 0n, maxPasidLog2: 0, data });
    expect(info.type).toBe('intel-vtd');
    expect(info.vtd?.mgaw).toBe(39);
    expect(info.dirtyTracking).toBe(false);
    expect(info.toJSON()).toMatchObject({ type: 'intel-vtd', registers: { capReg: '0xd2008c22260286', mgaw: 39 } });
  });
});

// Field positions from the kernel's drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h (IDR0_S2P BIT(0),
// IDR0_S1P BIT(1), IDR0_HTTU GENMASK(7, 6) with IDR0_HTTU_ACCESS 1 and IDR0_HTTU_ACCESS_DIRTY 2,
// IDR5_OAS GENMASK(2, 0) with IDR5_OAS_32_BIT 0 .. IDR5_OAS_52_BIT 6) and from
// drivers/iommu/amd/amd_iommu_types.h (FEATURE_X2APIC BIT_ULL(2), FEATURE_GT BIT_ULL(4),
// FEATURE_HATS GENMASK_ULL(11, 10), FEATURE_HASUP BIT_ULL(49), FEATURE_HDSUP BIT_ULL(52)).
const IDR0_S2P = 1 << 0;
const IDR0_S1P = 1 << 1;
const IDR0_HTTU_ACCESS = 1 << 6;
const IDR0_HTTU_ACCESS_DIRTY = 2 << 6;
const IDR5_OAS = { 0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52 } as const;
const FEATURE_X2APIC = 1n << 2n;
const FEATURE_GT = 1n << 4n;
const FEATURE_HATS_SHIFT = 10n;
const FEATURE_HASUP = 1n << 49n;
const FEATURE_HDSUP = 1n << 52n;

describe('SMMUv3 and AMD registers', () => {
  it('decodes HTTU and the stages from IDR0', () => {
    expect(decodeSmmuV3([IDR0_HTTU_ACCESS_DIRTY | IDR0_S1P | IDR0_S2P, 0, 0, 0, 0, 0], 0, 0)).toMatchObject({ stage1: true, stage2: true, httu: 'access-dirty', dirtyTracking: true });
    expect(decodeSmmuV3([IDR0_HTTU_ACCESS | IDR0_S1P, 0, 0, 0, 0, 0], 0, 0)).toMatchObject({ stage1: true, stage2: false, httu: 'access', dirtyTracking: false });
  });

  it('decodes every IDR5.OAS encoding as the output address size', () => {
    for (const [field, bitsWide] of Object.entries(IDR5_OAS)) {
      // Bits above OAS (GRAN4K, GRAN64K, VAX) must not change it.
      expect(decodeSmmuV3([0, 0, 0, 0, 0, Number(field) | (1 << 4) | (1 << 6) | (1 << 10)], 0, 0).outputAddressBits).toBe(bitsWide);
    }
  });

  it('reads idr[] from iommu_hw_info_arm_smmuv3 vendor data', () => {
    const data = new Uint8Array(uapi.iommu_hw_info_arm_smmuv3.size);
    new DataView(data.buffer).setUint32(uapi.iommu_hw_info_arm_smmuv3.offsetOf('idr'), IDR0_HTTU_ACCESS_DIRTY | IDR0_S2P, true);
    new DataView(data.buffer).setUint32(uapi.iommu_hw_info_arm_smmuv3.offsetOf('idr') + 20, 4, true);
    const info = new HostIommuInfo({ type: uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3, capabilities: 1n, maxPasidLog2: 20, data });
    expect(info.smmuV3).toMatchObject({ httu: 'access-dirty', stage2: true, stage1: false, outputAddressBits: IDR5_OAS[4] });
    expect(info.capabilities.dirtyTracking).toBe(true);
  });

  it('reads AMD GTSup from EFR bit 4, not X2APIC at bit 2', () => {
    expect(decodeAmd(FEATURE_GT, 0n).guestTranslation).toBe(true);
    expect(decodeAmd(FEATURE_X2APIC, 0n).guestTranslation).toBe(false);
  });

  it('decodes AMD HDSup, HASup and the host page-table levels (HATS)', () => {
    expect(decodeAmd(FEATURE_HDSUP | FEATURE_HASUP, 0n)).toMatchObject({ hardwareDirty: true, hardwareAccessed: true, guestTranslation: false, dirtyTracking: true });
    expect(decodeAmd(FEATURE_HASUP, 0n).dirtyTracking).toBe(false);
    // HATS 0, 1, 2: 4-, 5- and 6-level host page tables (48, 57 and 64 bits of IOVA).
    expect([0n, 1n, 2n].map((hats) => decodeAmd(hats << FEATURE_HATS_SHIFT, 0n)).map((r) => [r.hostPageTableLevels, r.hostAddressBits])).toEqual([[4, 48], [5, 57], [6, 64]]);
  });

  it('names unknown types instead of guessing', () => {
    expect(new HostIommuInfo({ type: 77, capabilities: 0n, maxPasidLog2: 0, data: new Uint8Array() }).type).toBe('unknown');
  });
});

describe('UndoStack', () => {
  it('undoes in reverse order and rethrows the original error', () => {
    const done: string[] = [];
    const failure = new Error('step 3 failed');
    expect(() =>
      new UndoStack().run((undo) => {
        undo.push('one', () => done.push('undo one'));
        undo.push('two', () => done.push('undo two'));
        throw failure;
      }),
    ).toThrow(failure);
    expect(done).toEqual(['undo two', 'undo one']);
  });

  it('keeps undoing past a failing undo and says so', () => {
    const done: string[] = [];
    let caught: Error | undefined;
    try {
      new UndoStack().run((undo) => {
        undo.push('one', () => done.push('undo one'));
        undo.push('two', () => {
          throw new Error('EBUSY');
        });
        throw new Error('boom');
      });
    } catch (error) {
      caught = error as Error;
    }
    expect(done).toEqual(['undo one']);
    expect(caught?.message).toBe('boom (and undoing failed: two: EBUSY)');
  });

  it('unwinds only back to a mark', () => {
    const done: string[] = [];
    const undo = new UndoStack();
    undo.push('kept', () => done.push('kept'));
    const mark = undo.mark;
    undo.push('dropped', () => done.push('dropped'));
    expect(undo.unwindTo(mark)).toEqual([]);
    expect(done).toEqual(['dropped']);
    undo.commit();
    expect(undo.mark).toBe(0);
  });
});

// QEMU's vtd_check_hiod: the vIOMMU's aw-bits must not exceed the host's. Register fields from
// drivers/iommu/intel/iommu.h: cap_mgaw(c) = ((c >> 16) & 0x3f) + 1; ecap_nest bit 26,
// ecap_smts bit 43, ecap_pasid bit 40, ecap_pss(e) = (e >> 35) & 0x1f; IOMMU_HW_CAP_DIRTY_TRACKING
// is 1 << 0 in include/uapi/linux/iommufd.h.
describe('host IOMMU compatibility with a vIOMMU', () => {
  const vtd = (capReg: bigint, ecapReg: bigint, capabilities = 0n) => {
    const data = uapi.iommu_hw_info_vtd.encode({ flags: 0, cap_reg: capReg, ecap_reg: ecapReg });
    return new HostIommuInfo({ type: uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD, capabilities, maxPasidLog2: 0, data });
  };
  const MGAW_39 = 38n << 16n;
  const MGAW_48 = 47n << 16n;
  const NEST = 1n << 26n;
  const SMTS = 1n << 43n;
  const PASID_20 = (1n << 40n) | (19n << 35n);

  it('refuses aw-bits above the host MGAW, with QEMU\'s words', () => {
    const host = vtd(MGAW_39, 0n);
    expect(host.addressWidth).toBe(39);
    expect(host.check({ addressWidth: 39 })).toEqual({ supported: true, reasons: [], hostAddressWidth: 39 });
    expect(host.check({ addressWidth: 48 })).toEqual({ supported: false, reasons: ['aw-bits 48 > host aw-bits 39 (VT-d CAP_REG.MGAW)'], hostAddressWidth: 39 });
    expect(vtd(MGAW_48, 0n).check({ addressWidth: 48 }).supported).toBe(true);
  });

  it('the IOVA ranges bound the width where they are narrower (vfio_device_get_aw_bits)', () => {
    const ranges = [{ start: 0n, last: 0xfedf_ffffn }, { start: 0xfef0_0000n, last: (1n << 39n) - 1n }];
    const answer = vtd(MGAW_48, 0n).check({ addressWidth: 48 }, ranges);
    expect(answer).toMatchObject({ supported: false, hostAddressWidth: 39 });
    expect(answer.reasons[0]).toMatch(/usable IOVA ranges/);
  });

  it('names each missing feature: dirty tracking, nesting, PASID width', () => {
    const host = vtd(MGAW_48, PASID_20);
    const answer = host.check({ addressWidth: 48, dirtyTracking: true, nesting: true, pasidBits: 20 });
    expect(answer.supported).toBe(false);
    expect(answer.reasons).toEqual([
      expect.stringMatching(/IOMMU_HW_CAP_DIRTY_TRACKING/),
      expect.stringMatching(/scalable mode \(ECAP.SMTS\)/),
      expect.stringMatching(/ECAP.NEST/),
    ]);
    expect(vtd(MGAW_48, SMTS | NEST | PASID_20, 1n).check({ addressWidth: 48, dirtyTracking: true, nesting: true, pasidBits: 20 }).supported).toBe(true);
    expect(vtd(MGAW_48, PASID_20).check({ addressWidth: 48, pasidBits: 21 }).reasons).toEqual(['PASID of 21 bits > host\'s 20']);
  });

  it('SMMUv3 nesting needs both stages (IDR0.S1P bit 1, IDR0.S2P bit 0)', () => {
    const smmu = (idr0: number) => {
      const data = new Uint8Array(uapi.iommu_hw_info_arm_smmuv3.size);
      new DataView(data.buffer).setUint32(uapi.iommu_hw_info_arm_smmuv3.offsetOf('idr'), idr0, true);
      return new HostIommuInfo({ type: uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3, capabilities: 0n, maxPasidLog2: 0, data });
    };
    expect(smmu(0b11).check({ addressWidth: 48, nesting: true }).supported).toBe(true);
    expect(smmu(0b10).check({ addressWidth: 48, nesting: true }).reasons).toEqual([expect.stringMatching(/IDR0.S1P and IDR0.S2P/)]);
  });
});
