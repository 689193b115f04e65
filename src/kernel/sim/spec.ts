// Simulated devices, declared as data and validated with zod: what a device is (name, PCI
// address, group), what its IOMMU can do (type, page sizes, aperture, reserved regions, dirty
// tracking, vendor registers) and what the device itself can do (DMA logging, mdev).
import { z } from 'zod';
import {
  IOMMU_HW_CAP_DIRTY_TRACKING,
  IOMMU_HW_INFO_TYPE_AMD,
  IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
  IOMMU_HW_INFO_TYPE_INTEL_VTD,
  IOMMU_HW_INFO_TYPE_NONE,
  iommu_hw_info_amd,
  iommu_hw_info_arm_smmuv3,
  iommu_hw_info_vtd,
} from '../../uapi/index.js';
import { InvalidArgumentError } from '../errors.js';
import { MigrationSpec, migrationModel, type MigrationModel } from './migration.js';

const U64_MAX = (1n << 64n) - 1n;

/** A u64 given as a bigint, a safe integer, or a decimal or 0x-hex string (so specs can be JSON). */
const U64 = z
  .union([z.bigint(), z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER), z.string().regex(/^(0x[0-9a-f]+|[0-9]+)$/i)])
  .transform((value) => BigInt(value))
  .refine((value) => value >= 0n && value <= U64_MAX, 'must be from 0 to 2^64-1');

const PowerOfTwo = U64.refine((value) => value > 0n && (value & (value - 1n)) === 0n, 'must be a power of two');
const U32 = z.number().int().min(0).max(0xffff_ffff);
const U16 = z.number().int().min(0).max(0xffff);

export const IOMMU_TYPES = ['none', 'intel-vtd', 'arm-smmuv3', 'amd'] as const;
export type IommuType = (typeof IOMMU_TYPES)[number];

/** Kinds of `struct iommu_resv_region` that matter to iommufd and type1. */
export const RESERVED_REGION_TYPES = ['msi', 'sw-msi', 'reserved', 'direct', 'direct-relaxable'] as const;

export const ReservedRegionSpec = z
  .object({
    start: U64,
    length: U64.refine((value) => value > 0n, 'must not be zero'),
    type: z.enum(RESERVED_REGION_TYPES).default('reserved'),
  })
  .strict()
  .refine((region) => region.start + region.length - 1n <= U64_MAX, 'start + length overflows past 2^64');

export const DmaLoggingSpec = z
  .object({
    /** Ranges the device can track at once (its own limit; the VFIO core refuses more than 256 with E2BIG). */
    maxRanges: z.number().int().min(1).default(256),
    /** The smallest page size the device logs at; START's page-size hint is raised to it. */
    pageSize: PowerOfTwo.refine((value) => value >= 4096n, 'must be at least 4096').default(4096n),
    /** The largest page size the device logs at (default: pageSize, i.e. a fixed page size). */
    maxPageSize: PowerOfTwo.optional(),
    /**
     * More ranges than maxRanges: `combine` merges the closest ones as mlx5 and pds do
     * (vfio_combine_iova_ranges), `reject` refuses START with E2BIG.
     */
    tooManyRanges: z.enum(['combine', 'reject']).default('combine'),
  })
  .strict();

/** Vendor registers reported by IOMMU_GET_HW_INFO; only those of the device's iommuType may be given. */
export const VendorRegistersSpec = z
  .object({
    /** intel-vtd: `iommu_hw_info_vtd.flags` (IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17). */
    vtdFlags: U32.optional(),
    capReg: U64.optional(),
    ecapReg: U64.optional(),
    /** arm-smmuv3: IDR0..IDR5, IIDR, AIDR. */
    idr: z.array(U32).length(6).optional(),
    iidr: U32.optional(),
    aidr: U32.optional(),
    /** amd: extended feature registers. */
    efr: U64.optional(),
    efr2: U64.optional(),
  })
  .strict();

const REGISTERS_OF: Record<IommuType, readonly string[]> = {
  none: [],
  'intel-vtd': ['vtdFlags', 'capReg', 'ecapReg'],
  'arm-smmuv3': ['idr', 'iidr', 'aidr'],
  amd: ['efr', 'efr2'],
};

export const SimulatedDeviceSpec = z
  .object({
    /** How the device is found (`kernel.locateDevice(name)`), e.g. `nic0`. */
    name: z.string().min(1).max(64).regex(/^[A-Za-z0-9_.:-]+$/, 'letters, digits, _ . : - only'),
    /** `DDDD:BB:DD.F`; generated when omitted (mdevs have none). */
    pciAddress: z.string().regex(/^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/, 'must look like 0000:00:05.0').optional(),
    pciId: z.object({ vendor: U16, device: U16 }).strict().default({ vendor: 0x1b36, device: 0x0010 }),
    /** The device's IOMMU can track dirty IOPTEs (IOMMU_HW_CAP_DIRTY_TRACKING). */
    iommuDirtyTracking: z.boolean().default(false),
    /** Device-side DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*), or false. */
    dmaLogging: z.union([z.literal(false), DmaLoggingSpec]).default(false),
    /** A mediated device: no IOMMU of its own; binds as an iommufd access and attaches to an IOAS only. */
    mdev: z.boolean().default(false),
    /** No VFIO cdev: reachable only through its group and the legacy type1 container. */
    legacyOnly: z.boolean().default(false),
    iommuType: z.enum(IOMMU_TYPES).default('intel-vtd'),
    vendorRegisters: VendorRegistersSpec.optional(),
    /** IOMMU group; devices sharing a group attach together. Generated when omitted. */
    groupId: z.number().int().min(0).max(0x7fff_ffff).optional(),
    /** Reserved IOVA regions (default per iommuType: the x86 MSI window, or the ARM SW MSI window). */
    reservedRegions: z.array(ReservedRegionSpec).optional(),
    /** IOMMU page sizes: the smallest is the IOPTE granule, the larger ones huge IOPTEs (default 4K, 2M, 1G). */
    pageSizes: z.array(PowerOfTwo).min(1).optional(),
    /** IOVA width the IOMMU translates: the aperture is [0, 2^addressWidth - 1] (default 48, 64 for none). */
    addressWidth: z.number().int().min(20).max(64).optional(),
    /** Size of BAR0 (region 0), readable and writable through the device fd. */
    bar0Size: PowerOfTwo.default(4096n),
    /**
     * PCI hot reset: `bus` (a secondary bus reset, which resets every device on its segment:bus)
     * or `none` (no slot or bus reset, as for a device alone on a root bus: ENODEV).
     */
    pciReset: z.enum(['bus', 'none']).default('bus'),
    /** VFIO migration v2 (its state is BAR0), or false. */
    migration: z.union([z.literal(false), MigrationSpec]).default(false),
  })
  .strict()
  .superRefine((spec, context) => {
    if (spec.mdev && spec.iommuDirtyTracking) {
      context.addIssue({ code: 'custom', path: ['iommuDirtyTracking'], message: 'an mdev has no IOMMU of its own' });
    }
    if (spec.vendorRegisters) {
      const allowed = REGISTERS_OF[spec.iommuType];
      for (const [key, value] of Object.entries(spec.vendorRegisters)) {
        if (value !== undefined && !allowed.includes(key)) {
          context.addIssue({
            code: 'custom',
            path: ['vendorRegisters', key],
            message: `not a register of iommuType ${spec.iommuType} (allowed: ${allowed.join(', ') || 'none'})`,
          });
        }
      }
    }
    if (spec.dmaLogging && spec.dmaLogging.maxPageSize !== undefined && spec.dmaLogging.maxPageSize < spec.dmaLogging.pageSize) {
      context.addIssue({ code: 'custom', path: ['dmaLogging', 'maxPageSize'], message: 'must be at least pageSize' });
    }
  });

export type SimulatedDeviceSpecInput = z.input<typeof SimulatedDeviceSpec>;
export type SimulatedDeviceSpecParsed = z.output<typeof SimulatedDeviceSpec>;

export type ReservedRegionType = (typeof RESERVED_REGION_TYPES)[number];

export interface ReservedRegion {
  readonly start: bigint;
  readonly last: bigint;
  readonly type: ReservedRegionType;
}

/** What IOMMU_GET_HW_INFO answers for a device. */
export interface HwInfoModel {
  readonly type: number;
  readonly data: Uint8Array;
  readonly capabilities: bigint;
}

/** The IOMMU side of a device: what an iommu_domain allocated for it looks like. */
export interface IommuModel {
  readonly type: IommuType | 'selftest';
  readonly dirtyTracking: boolean;
  /** Ascending; the first is the IOPTE granule. */
  readonly pageSizes: readonly bigint[];
  readonly apertureStart: bigint;
  readonly apertureLast: bigint;
  readonly reservedRegions: readonly ReservedRegion[];
  readonly hwInfo: HwInfoModel | undefined;
  /** The driver implements domain_alloc_user (HWPT_ALLOC with flags); virtio-iommu does not. */
  readonly domainAllocUser: boolean;
}

export interface DmaLoggingModel {
  readonly maxRanges: number;
  readonly pageSize: bigint;
  readonly maxPageSize: bigint;
  readonly tooManyRanges: 'combine' | 'reject';
}

/** A validated device with every default filled in. */
export interface SimulatedDeviceModel {
  readonly name: string;
  readonly pciAddress: string | undefined;
  readonly pciId: { readonly vendor: number; readonly device: number };
  readonly groupId: number;
  readonly mdev: boolean;
  readonly legacyOnly: boolean;
  /** The n of `/dev/vfio/devices/vfioN`, or undefined without a cdev. */
  readonly cdevIndex: number | undefined;
  readonly iommu: IommuModel | undefined;
  readonly dmaLogging: DmaLoggingModel | undefined;
  readonly bar0Size: bigint;
  readonly pciReset: 'bus' | 'none';
  readonly migration: MigrationModel | undefined;
}

const KIB = 1024n;
const MIB = 1024n * KIB;
const GIB = 1024n * MIB;
const X86_MSI_WINDOW: ReservedRegion = { start: 0xfee0_0000n, last: 0xfeef_ffffn, type: 'msi' };
/** MSI_IOVA_BASE / MSI_IOVA_LENGTH of the ARM SMMU drivers. */
const ARM_SW_MSI_WINDOW: ReservedRegion = { start: 0x800_0000n, last: 0x80f_ffffn, type: 'sw-msi' };
/** AMD's HyperTransport range (amd_iommu_get_resv_regions). */
const AMD_HT_RANGE: ReservedRegion = { start: 0xfd_0000_0000n, last: 0xff_ffff_ffffn, type: 'reserved' };

function defaultReservedRegions(type: IommuType): ReservedRegion[] {
  switch (type) {
    case 'intel-vtd':
    case 'none':
      return [X86_MSI_WINDOW];
    case 'amd':
      return [X86_MSI_WINDOW, AMD_HT_RANGE];
    case 'arm-smmuv3':
      return [ARM_SW_MSI_WINDOW];
  }
}

const HW_INFO_TYPE: Record<IommuType, number> = {
  none: IOMMU_HW_INFO_TYPE_NONE,
  'intel-vtd': IOMMU_HW_INFO_TYPE_INTEL_VTD,
  'arm-smmuv3': IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
  amd: IOMMU_HW_INFO_TYPE_AMD,
};

// Illustrative register defaults. The dirty-tracking bits the Linux drivers look at are set when
// the device declares iommuDirtyTracking and the register is not given explicitly:
//   VT-d ECAP.SMTS (bit 43) + ECAP.SLADS (bit 45; intel/iommu.h ecap_slads), SMMUv3 IDR0.HTTU = 2 (bits 7:6), AMD EFR.HDSUP (bit 52).
const VTD_CAP_DEFAULT = 0x00d2_008c_2226_0206n;
const VTD_ECAP_DEFAULT = 0x0000_0000_00f0_101en;
const VTD_ECAP_DIRTY = (1n << 43n) | (1n << 45n);
const SMMU_IDR0_DEFAULT = 0x0b00_5a3b;
const SMMU_IDR0_HTTU_MASK = 0b11 << 6;
const SMMU_IDR0_HTTU_ACCESS_DIRTY = 0b10 << 6;
const AMD_EFR_DEFAULT = 0x0000_2000_0000_0a5an;
const AMD_EFR_HDSUP = 1n << 52n;

function encodeVendorData(spec: SimulatedDeviceSpecParsed): Uint8Array {
  const registers = spec.vendorRegisters ?? {};
  const dirty = spec.iommuDirtyTracking;
  switch (spec.iommuType) {
    case 'none':
      return new Uint8Array(0);
    case 'intel-vtd':
      return iommu_hw_info_vtd.encode({
        flags: registers.vtdFlags ?? 0,
        cap_reg: registers.capReg ?? VTD_CAP_DEFAULT,
        ecap_reg: registers.ecapReg ?? (dirty ? VTD_ECAP_DEFAULT | VTD_ECAP_DIRTY : VTD_ECAP_DEFAULT),
      });
    case 'arm-smmuv3': {
      const data = iommu_hw_info_arm_smmuv3.encode({
        flags: 0,
        iidr: registers.iidr ?? 0x0000_043b,
        aidr: registers.aidr ?? 0x0000_0002,
      });
      const idr = registers.idr ?? [
        dirty ? (SMMU_IDR0_DEFAULT & ~SMMU_IDR0_HTTU_MASK) | SMMU_IDR0_HTTU_ACCESS_DIRTY : SMMU_IDR0_DEFAULT & ~SMMU_IDR0_HTTU_MASK,
        0x0e60_0002, 0, 0, 0, 0x0000_0075,
      ];
      const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
      const base = iommu_hw_info_arm_smmuv3.offsetOf('idr');
      idr.forEach((value, index) => view.setUint32(base + index * 4, value >>> 0, true));
      return data;
    }
    case 'amd':
      return iommu_hw_info_amd.encode({
        efr: registers.efr ?? (dirty ? AMD_EFR_DEFAULT | AMD_EFR_HDSUP : AMD_EFR_DEFAULT),
        efr2: registers.efr2 ?? 0n,
      });
  }
}

/**
 * Validates device specs and fills in defaults: PCI addresses `0000:00:NN.0` from slot 3 on,
 * group IDs from 100 on (one group per device unless given), cdev indexes in declaration order.
 * Throws InvalidArgumentError naming the device and field on a bad spec or a duplicate.
 */
export function resolveDeviceSpecs(inputs: readonly SimulatedDeviceSpecInput[]): SimulatedDeviceModel[] {
  const parsed: SimulatedDeviceSpecParsed[] = inputs.map((input, index) => {
    const result = SimulatedDeviceSpec.safeParse(input);
    if (!result.success) {
      const issue = result.error.issues[0];
      const where = issue ? issue.path.join('.') : '';
      throw new InvalidArgumentError(
        `devices[${index}]${where ? `.${where}` : ''}`,
        `${issue?.message ?? 'invalid device spec'} (device ${JSON.stringify((input as { name?: unknown }).name)})`,
      );
    }
    return result.data;
  });
  const names = new Set<string>();
  const addresses = new Set<string>();
  const usedGroups = new Set<number>();
  for (const spec of parsed) {
    if (names.has(spec.name)) throw new InvalidArgumentError('devices', `two devices are named ${spec.name}`);
    names.add(spec.name);
    if (spec.pciAddress !== undefined) {
      if (addresses.has(spec.pciAddress)) throw new InvalidArgumentError('devices', `two devices have PCI address ${spec.pciAddress}`);
      addresses.add(spec.pciAddress);
    }
    if (spec.groupId !== undefined) usedGroups.add(spec.groupId);
  }
  let nextSlot = 3;
  let nextGroup = 100;
  let nextCdev = 0;
  return parsed.map((spec) => {
    let pciAddress = spec.pciAddress;
    if (pciAddress === undefined && !spec.mdev) {
      do {
        pciAddress = `0000:00:${(nextSlot++).toString(16).padStart(2, '0')}.0`;
      } while (addresses.has(pciAddress));
      addresses.add(pciAddress);
    }
    let groupId = spec.groupId;
    if (groupId === undefined) {
      while (usedGroups.has(nextGroup)) nextGroup++;
      groupId = nextGroup++;
    }
    const pageSizes = [...new Set(spec.pageSizes ?? [4n * KIB, 2n * MIB, 1n * GIB])].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const width = spec.addressWidth ?? (spec.iommuType === 'none' ? 64 : 48);
    const reserved = spec.reservedRegions
      ? spec.reservedRegions.map((region) => ({ start: region.start, last: region.start + region.length - 1n, type: region.type }))
      : defaultReservedRegions(spec.iommuType);
    const iommu: IommuModel | undefined = spec.mdev
      ? undefined
      : {
          type: spec.iommuType,
          dirtyTracking: spec.iommuDirtyTracking,
          pageSizes,
          apertureStart: 0n,
          apertureLast: (1n << BigInt(width)) - 1n,
          reservedRegions: reserved,
          hwInfo: {
            type: HW_INFO_TYPE[spec.iommuType],
            data: encodeVendorData(spec),
            capabilities: spec.iommuDirtyTracking ? BigInt(IOMMU_HW_CAP_DIRTY_TRACKING) : 0n,
          },
          domainAllocUser: spec.iommuType !== 'none',
        };
    const logging = spec.dmaLogging;
    return {
      name: spec.name,
      pciAddress,
      pciId: spec.pciId,
      groupId,
      mdev: spec.mdev,
      legacyOnly: spec.legacyOnly,
      cdevIndex: spec.legacyOnly ? undefined : nextCdev++,
      iommu,
      dmaLogging: logging
        ? {
            maxRanges: logging.maxRanges,
            pageSize: logging.pageSize,
            maxPageSize: logging.maxPageSize ?? logging.pageSize,
            tooManyRanges: logging.tooManyRanges,
          }
        : undefined,
      bar0Size: spec.bar0Size,
      pciReset: spec.pciReset,
      migration: spec.migration ? migrationModel(spec.migration) : undefined,
    };
  });
}
