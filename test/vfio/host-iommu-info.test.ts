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

describe('SMMUv3 and AMD registers', () => {
  it('decodes HTTU from IDR0 and the output address size from IDR5', () => {
    expect(decodeSmmuV3([(2 << 6) | 0b11, 0, 0, 0, 0, 5], 0, 0)).toMatchObject({ stage1: true, stage2: true, httu: 'access-dirty', dirtyTracking: true, outputAddressBits: 48 });
    expect(decodeSmmuV3([(1 << 6) | 0b10, 0, 0, 0, 0, 2], 0, 0)).toMatchObject({ stage1: true, stage2: false, httu: 'access', dirtyTracking: false, outputAddressBits: 40 });
  });

  it('reads idr[] from iommu_hw_info_arm_smmuv3 vendor data', () => {
    const data = new Uint8Array(uapi.iommu_hw_info_arm_smmuv3.size);
    new DataView(data.buffer).setUint32(uapi.iommu_hw_info_arm_smmuv3.offsetOf('idr'), (2 << 6) | 1, true);
    const info = new HostIommuInfo({ type: uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3, capabilities: 1n, maxPasidLog2: 20, data });
    expect(info.smmuV3).toMatchObject({ httu: 'access-dirty', stage2: true, stage1: false });
    expect(info.capabilities.dirtyTracking).toBe(true);
  });

  it('decodes AMD HDSup and HASup', () => {
    expect(decodeAmd((1n << 52n) | (1n << 49n) | 4n, 0n)).toMatchObject({ hardwareDirty: true, hardwareAccessed: true, guestTranslation: true, dirtyTracking: true });
    expect(decodeAmd(1n << 49n, 0n).dirtyTracking).toBe(false);
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
