// The host IOMMU behind a device, from IOMMU_GET_HW_INFO: type, capability bits and the vendor
// registers decoded into named fields. Kept on the Device; skipped for mdevs (no IOMMU of their own).
import type { HwInfo, IovaRange } from '../kernel/types.js';
import * as uapi from '../uapi/index.js';

const bit = (value: bigint, n: number): boolean => ((value >> BigInt(n)) & 1n) === 1n;
const bits = (value: bigint, low: number, width: number): number => Number((value >> BigInt(low)) & ((1n << BigInt(width)) - 1n));

/** Intel VT-d capability and extended capability registers (VT-d spec 11.4.2/11.4.3; Linux intel/iommu.h). */
export interface VtdRegisters {
  readonly capReg: bigint;
  readonly ecapReg: bigint;
  /** Number of domains supported. */
  readonly numberOfDomains: number;
  readonly cachingMode: boolean;
  /** Supported adjusted guest address widths: page-table levels (bit 1: 3-level/39-bit, 2: 4-level/48-bit, 3: 5-level/57-bit). */
  readonly sagaw: number;
  readonly supportedAddressWidths: number[];
  /** Maximum guest address width, in bits. */
  readonly mgaw: number;
  /** Number of fault-recording registers. */
  readonly nfr: number;
  /** Second-level large pages: 2 MiB, 1 GiB. */
  readonly secondLevelLargePages: { twoMiB: boolean; oneGiB: boolean };
  /** First-level 1 GiB pages. */
  readonly fl1gp: boolean;
  readonly pageSelectiveInvalidation: boolean;
  readonly queuedInvalidation: boolean;
  readonly interruptRemapping: boolean;
  readonly passThrough: boolean;
  readonly nesting: boolean;
  readonly pasid: boolean;
  /** PASID size supported, in bits (PSS + 1), when PASID is. */
  readonly pasidBits: number;
  readonly scalableMode: boolean;
  readonly firstLevelTranslation: boolean;
  readonly secondLevelTranslation: boolean;
  /** Second-level (second-stage) accessed/dirty support: SLADS, called SSADS in newer specs. */
  readonly slads: boolean;
  /** Dirty tracking as Linux enables it: scalable mode with second-stage A/D bits. */
  readonly dirtyTracking: boolean;
}

export function decodeVtd(capReg: bigint, ecapReg: bigint): VtdRegisters {
  const sagaw = bits(capReg, 8, 5);
  const widths = [30, 39, 48, 57, 64].filter((_, level) => (sagaw >> level) & 1);
  const scalableMode = bit(ecapReg, 43);
  const slads = bit(ecapReg, 45);
  const pasid = bit(ecapReg, 40);
  return {
    capReg,
    ecapReg,
    numberOfDomains: 2 ** (4 + 2 * bits(capReg, 0, 3)),
    cachingMode: bit(capReg, 7),
    sagaw,
    supportedAddressWidths: widths,
    mgaw: bits(capReg, 16, 6) + 1,
    nfr: bits(capReg, 40, 8) + 1,
    secondLevelLargePages: { twoMiB: bit(capReg, 34), oneGiB: bit(capReg, 35) },
    fl1gp: bit(capReg, 56),
    pageSelectiveInvalidation: bit(capReg, 39),
    queuedInvalidation: bit(ecapReg, 1),
    interruptRemapping: bit(ecapReg, 3),
    passThrough: bit(ecapReg, 6),
    nesting: bit(ecapReg, 26),
    pasid,
    pasidBits: pasid ? bits(ecapReg, 35, 5) + 1 : 0,
    scalableMode,
    firstLevelTranslation: bit(ecapReg, 47),
    secondLevelTranslation: bit(ecapReg, 46),
    slads,
    dirtyTracking: scalableMode && slads,
  };
}

/** Arm SMMUv3 ID registers (SMMUv3 spec 6.3.1; Linux arm-smmu-v3.h). */
export interface SmmuV3Registers {
  readonly idr: readonly number[];
  readonly iidr: number;
  readonly aidr: number;
  readonly stage1: boolean;
  readonly stage2: boolean;
  /** Hardware translation table update: none, access flag, or access flag and dirty state. */
  readonly httu: 'none' | 'access' | 'access-dirty';
  readonly dirtyTracking: boolean;
  /** Output address size, in bits, from IDR5.OAS (the largest physical address the SMMU emits). */
  readonly outputAddressBits: number;
}

// IDR5.OAS encodings (SMMUv3 spec 6.3.6; arm-smmu-v3.h IDR5_OAS_32_BIT .. IDR5_OAS_52_BIT).
const SMMU_OAS_BITS = [32, 36, 40, 42, 44, 48, 52];

export function decodeSmmuV3(idr: readonly number[], iidr: number, aidr: number): SmmuV3Registers {
  const idr0 = idr[0] ?? 0;
  const httuField = (idr0 >>> 6) & 3;
  const httu = httuField === 2 ? 'access-dirty' : httuField === 1 ? 'access' : 'none';
  return {
    idr: [...idr],
    iidr,
    aidr,
    stage1: ((idr0 >>> 1) & 1) === 1,
    stage2: (idr0 & 1) === 1,
    httu,
    dirtyTracking: httu === 'access-dirty',
    outputAddressBits: SMMU_OAS_BITS[(idr[5] ?? 0) & 7] ?? 0,
  };
}

/** AMD IOMMU extended feature registers (AMD IOMMU spec 3.4.12; Linux amd_iommu_types.h). */
export interface AmdRegisters {
  readonly efr: bigint;
  readonly efr2: bigint;
  /** GTSup, EFR bit 4 (FEATURE_GT). */
  readonly guestTranslation: boolean;
  /** HATS, EFR bits 11:10 (FEATURE_HATS): host page-table levels 4, 5 or 6. */
  readonly hostPageTableLevels: number;
  /** The IOVA width the host page table covers: 12 + 9 bits per level, at most 64. */
  readonly hostAddressBits: number;
  /** HASup, EFR bit 49. */
  readonly hardwareAccessed: boolean;
  /** HDSup: host dirty-bit support, what Linux's dirty tracking needs. */
  readonly hardwareDirty: boolean;
  readonly dirtyTracking: boolean;
}

export function decodeAmd(efr: bigint, efr2: bigint): AmdRegisters {
  const hardwareDirty = bit(efr, 52);
  // The kernel's amd_iommu_hpt_level: PAGE_MODE_4_LEVEL + HATS (HATS 3 is reserved).
  const hostPageTableLevels = 4 + bits(efr, 10, 2);
  return {
    efr, efr2, guestTranslation: bit(efr, 4), hostPageTableLevels, hostAddressBits: Math.min(64, 12 + 9 * hostPageTableLevels),
    hardwareAccessed: bit(efr, 49), hardwareDirty, dirtyTracking: hardwareDirty,
  };
}

/** What a vIOMMU will ask of the host IOMMU behind an assigned device. */
export interface ViommuRequirements {
  /** The guest's IOVA width (QEMU intel-iommu `aw-bits`: 39 or 48; virtio-iommu's input range). */
  readonly addressWidth: number;
  /** Migration needs the host to track DMA writes in the IOMMU (IOMMU_HW_CAP_DIRTY_TRACKING). */
  readonly dirtyTracking?: boolean;
  /** A guest first-stage table nested on the host (VT-d scalable mode with ECAP.NEST, SMMUv3 stage 1 and 2). */
  readonly nesting?: boolean;
  /** PASIDs of at least this many bits (VT-d ECAP.PSS + 1, the kernel's max_pasid_log2). */
  readonly pasidBits?: number;
}

export interface CompatibilityAnswer {
  readonly supported: boolean;
  /** Why not, one line per unmet requirement, in the words of the register or capability. */
  readonly reasons: string[];
  /** The host's address width used: the smaller of the IOMMU registers' and the IOVA ranges' (64 when neither says). */
  readonly hostAddressWidth: number;
}

/** Bits needed to address the last usable IOVA (QEMU's vfio_device_get_aw_bits: range_get_last_bit + 1). */
export function addressWidthOfRanges(ranges: readonly IovaRange[]): number | undefined {
  if (ranges.length === 0) return undefined;
  const last = ranges.reduce((max, range) => (range.last > max ? range.last : max), 0n);
  return last === 0n ? 1 : last.toString(2).length;
}

export type HostIommuType = 'none' | 'intel-vtd' | 'arm-smmuv3' | 'amd' | 'selftest' | 'unknown';

const TYPE_NAMES: Record<number, HostIommuType> = {
  [uapi.IOMMU_HW_INFO_TYPE_NONE]: 'none',
  [uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD]: 'intel-vtd',
  [uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3]: 'arm-smmuv3',
  [uapi.IOMMU_HW_INFO_TYPE_AMD]: 'amd',
  [uapi.IOMMU_HW_INFO_TYPE_SELFTEST]: 'selftest',
};

export class HostIommuInfo {
  readonly type: HostIommuType;
  readonly typeNumber: number;
  readonly capabilities: { readonly dirtyTracking: boolean; readonly pasidExec: boolean; readonly pasidPriv: boolean; readonly raw: bigint };
  readonly maxPasidLog2: number;
  readonly vtd: VtdRegisters | undefined;
  readonly smmuV3: SmmuV3Registers | undefined;
  readonly amd: AmdRegisters | undefined;

  constructor(info: HwInfo) {
    this.typeNumber = info.type;
    this.type = TYPE_NAMES[info.type] ?? 'unknown';
    const caps = info.capabilities;
    this.capabilities = {
      dirtyTracking: (caps & BigInt(uapi.IOMMU_HW_CAP_DIRTY_TRACKING)) !== 0n,
      pasidExec: (caps & BigInt(uapi.IOMMU_HW_CAP_PCI_PASID_EXEC)) !== 0n,
      pasidPriv: (caps & BigInt(uapi.IOMMU_HW_CAP_PCI_PASID_PRIV)) !== 0n,
      raw: caps,
    };
    this.maxPasidLog2 = info.maxPasidLog2;
    const data = info.data;
    const has = (layout: uapi.StructLayout) => data.byteLength >= layout.size;
    this.vtd = this.type === 'intel-vtd' && has(uapi.iommu_hw_info_vtd)
      ? decodeVtd(uapi.iommu_hw_info_vtd.readBigint(data, 'cap_reg'), uapi.iommu_hw_info_vtd.readBigint(data, 'ecap_reg'))
      : undefined;
    this.smmuV3 = this.type === 'arm-smmuv3' && has(uapi.iommu_hw_info_arm_smmuv3)
      ? decodeSmmuV3(
          Array.from({ length: 6 }, (_, i) => new DataView(data.buffer, data.byteOffset).getUint32(uapi.iommu_hw_info_arm_smmuv3.offsetOf('idr') + 4 * i, true)),
          uapi.iommu_hw_info_arm_smmuv3.readNumber(data, 'iidr'),
          uapi.iommu_hw_info_arm_smmuv3.readNumber(data, 'aidr'),
        )
      : undefined;
    this.amd = this.type === 'amd' && has(uapi.iommu_hw_info_amd)
      ? decodeAmd(uapi.iommu_hw_info_amd.readBigint(data, 'efr'), uapi.iommu_hw_info_amd.readBigint(data, 'efr2'))
      : undefined;
  }

  /**
   * IOVA bits the host IOMMU's page table translates, from its registers: VT-d MGAW, AMD HATS.
   * Undefined where the registers do not say it (SMMUv3's IDR5.OAS is the output side;
   * virtio-iommu and the selftest have no vendor data): the IOVA ranges then bound it.
   */
  get addressWidth(): number | undefined {
    return this.vtd?.mgaw ?? this.amd?.hostAddressBits;
  }

  /**
   * Whether this host IOMMU can back a vIOMMU with `requirements` (QEMU's vtd_check_hiod: the
   * guest's aw-bits must not exceed the host's; then the features the vIOMMU would use).
   * `iovaRanges` are the container's usable ranges after attach; they bound the width too.
   */
  check(requirements: ViommuRequirements, iovaRanges: readonly IovaRange[] = []): CompatibilityAnswer {
    const reasons: string[] = [];
    const fromRanges = addressWidthOfRanges(iovaRanges);
    const hostAddressWidth = Math.min(this.addressWidth ?? 64, fromRanges ?? 64);
    const wanted = requirements.addressWidth;
    if (!Number.isInteger(wanted) || wanted < 1 || wanted > 64) throw new RangeError(`addressWidth: must be an integer from 1 to 64, got ${wanted}`);
    if (wanted > hostAddressWidth) {
      const source = this.addressWidth !== undefined && this.addressWidth === hostAddressWidth
        ? (this.vtd ? 'VT-d CAP_REG.MGAW' : 'AMD EFR.HATS')
        : 'the usable IOVA ranges';
      reasons.push(`aw-bits ${wanted} > host aw-bits ${hostAddressWidth} (${source})`);
    }
    if (requirements.dirtyTracking && !this.capabilities.dirtyTracking) {
      reasons.push('no IOMMU dirty tracking (IOMMU_HW_CAP_DIRTY_TRACKING not set): migration needs device DMA logging instead');
    }
    if (requirements.nesting) {
      if (this.vtd) {
        if (!this.vtd.scalableMode) reasons.push('nesting needs VT-d scalable mode (ECAP.SMTS)');
        if (!this.vtd.nesting) reasons.push('nesting needs VT-d ECAP.NEST');
      } else if (this.smmuV3) {
        if (!this.smmuV3.stage1 || !this.smmuV3.stage2) reasons.push('nesting needs SMMUv3 stage 1 and stage 2 (IDR0.S1P and IDR0.S2P)');
      } else {
        reasons.push(`nesting is not available on a ${this.type} host IOMMU`);
      }
    }
    if (requirements.pasidBits !== undefined && requirements.pasidBits > 0) {
      const hostPasid = this.vtd?.pasidBits || this.maxPasidLog2;
      if (hostPasid < requirements.pasidBits) reasons.push(`PASID of ${requirements.pasidBits} bits > host's ${hostPasid}`);
    }
    return { supported: reasons.length === 0, reasons, hostAddressWidth };
  }

  /** Whether an IOMMU HWPT for this device can track dirty pages: the kernel's capability bit decides. */
  get dirtyTracking(): boolean {
    return this.capabilities.dirtyTracking;
  }

  toJSON(): Record<string, unknown> {
    const registers = this.vtd ?? this.smmuV3 ?? this.amd;
    return {
      type: this.type,
      addressWidth: this.addressWidth,
      capabilities: { dirtyTracking: this.capabilities.dirtyTracking, pasidExec: this.capabilities.pasidExec, pasidPriv: this.capabilities.pasidPriv },
      maxPasidLog2: this.maxPasidLog2,
      registers: registers ? JSON.parse(JSON.stringify(registers, (_, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v))) : undefined,
    };
  }
}
