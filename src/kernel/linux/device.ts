import * as uapi from '../../uapi/index.js';
import { InvalidArgumentError, isKernelError } from '../errors.js';
import type {
  DeviceHandle, DeviceInfo, DirtyBitmapRequest, DmaLoggingRange, IommufdHandle, KernelOptions, MigrationDataHandle, PciHotResetInfo, RegionInfo,
} from '../types.js';
import { checkBitmapHeld, checkBitmapRequest, checkLength, checkPageSize, checkRange, checkU32, checkU64 } from '../validate.js';
import { KernelAnswerError } from './errors.js';
import { IoctlIssuer, structBytes } from './ioctl.js';
import type { Syscalls } from './libc.js';
import { LinuxMigrationData } from './migration-data.js';

const {
  vfio_device_bind_iommufd, vfio_device_attach_iommufd_pt, vfio_device_detach_iommufd_pt, vfio_device_info,
  vfio_region_info, vfio_device_feature, vfio_device_feature_dma_logging_control, vfio_device_feature_dma_logging_range,
  vfio_device_feature_dma_logging_report, vfio_device_feature_migration, vfio_device_feature_mig_state,
  vfio_device_feature_mig_data_size,
} = uapi;

/** @deprecated The limit depends on the page size: uapi.dmaLoggingMaxRanges(pageSize). This is its 4 KiB value. */
export const DMA_LOGGING_MAX_RANGES = uapi.dmaLoggingMaxRanges(4096);

/** Decodes VFIO_DEVICE_GET_PCI_HOT_RESET_INFO's struct and its `count` devices. */
export function decodeHotResetInfo(bytes: Uint8Array): PciHotResetInfo {
  const flags = uapi.vfio_pci_hot_reset_info.readNumber(bytes, 'flags');
  const count = uapi.vfio_pci_hot_reset_info.readNumber(bytes, 'count');
  const header = uapi.vfio_pci_hot_reset_info.size;
  const entry = uapi.vfio_pci_dependent_device.size;
  if (header + count * entry > bytes.byteLength) throw new KernelAnswerError('VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', `${count} devices do not fit ${bytes.byteLength} bytes`);
  const byDevId = (flags & uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID) !== 0;
  const devices = Array.from({ length: count }, (_, index) => {
    const base = header + index * entry;
    const id = uapi.vfio_pci_dependent_device.readNumber(bytes, 'group_id', base);
    const segment = uapi.vfio_pci_dependent_device.readNumber(bytes, 'segment', base);
    const bus = uapi.vfio_pci_dependent_device.readNumber(bytes, 'bus', base);
    const devfn = uapi.vfio_pci_dependent_device.readNumber(bytes, 'devfn', base);
    const hex = (value: number, width: number) => value.toString(16).padStart(width, '0');
    return {
      groupId: byDevId ? undefined : id,
      devId: byDevId ? id : undefined,
      pciAddress: `${hex(segment, 4)}:${hex(bus, 2)}:${hex(devfn >> 3, 2)}.${devfn & 7}`,
    };
  });
  return { flags, devices };
}

/** The highest `enum vfio_device_mig_state` value in 6.12 (PRE_COPY_P2P). */
const LAST_MIGRATION_STATE = uapi.VFIO_DEVICE_STATE_PRE_COPY_P2P;

/** A VFIO device fd: a cdev (`/dev/vfio/devices/vfioN`) or one from VFIO_GROUP_GET_DEVICE_FD. */
export class LinuxDevice implements DeviceHandle {
  private boundDevId: number | undefined;
  private readonly regions = new Map<number, RegionInfo>();
  private isClosed = false;
  private readonly io: IoctlIssuer;
  private readonly validate: boolean;

  constructor(
    sys: Syscalls,
    readonly name: string,
    readonly kind: 'cdev' | 'group',
    readonly fd: number,
    options: KernelOptions = {},
  ) {
    this.io = new IoctlIssuer(sys);
    this.validate = options.validateArguments ?? true;
  }

  get devId(): number | undefined {
    return this.boundDevId;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  bindIommufd(iommufd: IommufdHandle): number {
    if (this.validate && iommufd.closed) throw new InvalidArgumentError('iommufd', 'is closed');
    // The 6.12 size: newer kernels' token_uuid_ptr is only sent with VFIO_DEVICE_BIND_FLAG_TOKEN.
    const size = vfio_device_bind_iommufd.sizeBefore('token_uuid_ptr');
    const s = vfio_device_bind_iommufd.encode({ argsz: size, iommufd: iommufd.fd }, size);
    this.call('VFIO_DEVICE_BIND_IOMMUFD', uapi.VFIO_DEVICE_BIND_IOMMUFD, s, { iommufd: iommufd.fd });
    this.boundDevId = vfio_device_bind_iommufd.readNumber(s, 'out_devid');
    return this.boundDevId;
  }

  attachPt(ptId: number): number {
    if (this.validate) checkU32('ptId', ptId);
    const size = vfio_device_attach_iommufd_pt.sizeBefore('pasid');
    const s = vfio_device_attach_iommufd_pt.encode({ argsz: size, pt_id: ptId }, size);
    this.call('VFIO_DEVICE_ATTACH_IOMMUFD_PT', uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, s, { dev_id: this.boundDevId ?? -1, pt_id: ptId });
    return vfio_device_attach_iommufd_pt.readNumber(s, 'pt_id');
  }

  detachPt(): void {
    const size = vfio_device_detach_iommufd_pt.sizeBefore('pasid');
    const s = vfio_device_detach_iommufd_pt.encode({ argsz: size }, size);
    this.call('VFIO_DEVICE_DETACH_IOMMUFD_PT', uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, s, { dev_id: this.boundDevId ?? -1 });
  }

  getInfo(): DeviceInfo {
    const s = vfio_device_info.encode({ argsz: vfio_device_info.size });
    this.call('VFIO_DEVICE_GET_INFO', uapi.VFIO_DEVICE_GET_INFO, s, {});
    return {
      flags: vfio_device_info.readNumber(s, 'flags'),
      numRegions: vfio_device_info.readNumber(s, 'num_regions'),
      numIrqs: vfio_device_info.readNumber(s, 'num_irqs'),
    };
  }

  getRegionInfo(index: number): RegionInfo {
    if (this.validate) checkU32('index', index);
    const known = this.regions.get(index);
    if (known) return known;
    const s = vfio_region_info.encode({ argsz: vfio_region_info.size, index });
    this.call('VFIO_DEVICE_GET_REGION_INFO', uapi.VFIO_DEVICE_GET_REGION_INFO, s, { index });
    const region = {
      index,
      flags: vfio_region_info.readNumber(s, 'flags'),
      size: vfio_region_info.readBigint(s, 'size'),
      offset: vfio_region_info.readBigint(s, 'offset'),
    };
    // Fixed for the life of the fd: region accesses (DMA polling) need not ask every time.
    this.regions.set(index, region);
    return region;
  }

  regionRead(index: number, offset: bigint, length: number): Uint8Array {
    const region = this.regionSpan(index, offset, BigInt(length));
    const buffer = structBytes(length);
    const n = this.io.check(this.io.sys.pread(this.fd, buffer, region + offset), 'pread', { index, offset });
    if (n !== length) throw new KernelAnswerError('pread', `region ${index} gave ${n} of ${length} bytes at 0x${offset.toString(16)}`);
    return buffer;
  }

  regionWrite(index: number, offset: bigint, data: Uint8Array): void {
    const region = this.regionSpan(index, offset, BigInt(data.byteLength));
    const n = this.io.check(this.io.sys.pwrite(this.fd, data, region + offset), 'pwrite', { index, offset });
    if (n !== data.byteLength) throw new KernelAnswerError('pwrite', `region ${index} took ${n} of ${data.byteLength} bytes`);
  }

  reset(): void {
    this.call('VFIO_DEVICE_RESET', uapi.VFIO_DEVICE_RESET, undefined, {});
  }

  featureProbe(feature: number): boolean {
    if (this.validate) checkU32('feature', feature);
    // PROBE alone asks whether the driver has the feature at all, whichever of GET/SET it takes.
    const s = vfio_device_feature.encode({ argsz: vfio_device_feature.size, flags: feature | uapi.VFIO_DEVICE_FEATURE_PROBE });
    try {
      this.call('VFIO_DEVICE_FEATURE', uapi.VFIO_DEVICE_FEATURE, s, { feature });
      return true;
    } catch (error) {
      // ENOTTY: the driver does not have the feature at all.
      if (isKernelError(error, 'ENOTTY')) return false;
      throw error;
    }
  }

  dmaLoggingStart(pageSize: bigint, ranges: readonly DmaLoggingRange[]): bigint {
    if (this.validate) {
      checkPageSize('pageSize', pageSize);
      if (ranges.length === 0) throw new InvalidArgumentError('ranges', 'must list at least one IOVA range');
      const maximum = uapi.dmaLoggingMaxRanges(this.io.sys.pageSize());
      if (ranges.length > maximum) {
        throw new InvalidArgumentError('ranges', `${ranges.length} ranges; the kernel takes at most ${maximum} (PAGE_SIZE / 16): combine them first`);
      }
      ranges.forEach((range, index) => checkRange(`ranges[${index}]`, range.iova, range.length));
    }
    const array = structBytes(Math.max(1, ranges.length) * vfio_device_feature_dma_logging_range.size);
    ranges.forEach((range, index) =>
      vfio_device_feature_dma_logging_range.write(array, { iova: range.iova, length: range.length }, index * vfio_device_feature_dma_logging_range.size),
    );
    const header = vfio_device_feature.size;
    const s = structBytes(header + vfio_device_feature_dma_logging_control.size);
    const pointers = this.io.pointers();
    vfio_device_feature.write(s, { argsz: s.byteLength, flags: uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START | uapi.VFIO_DEVICE_FEATURE_SET });
    vfio_device_feature_dma_logging_control.write(s, { page_size: pageSize, num_ranges: ranges.length, ranges: pointers.pointer(array) }, header);
    this.call('VFIO_DEVICE_FEATURE', uapi.VFIO_DEVICE_FEATURE, s, { feature: 'DMA_LOGGING_START', num_ranges: ranges.length, page_size: pageSize }, pointers);
    return vfio_device_feature_dma_logging_control.readBigint(s, 'page_size', header);
  }

  dmaLoggingStop(): void {
    const s = vfio_device_feature.encode({ argsz: vfio_device_feature.size, flags: uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP | uapi.VFIO_DEVICE_FEATURE_SET });
    this.call('VFIO_DEVICE_FEATURE', uapi.VFIO_DEVICE_FEATURE, s, { feature: 'DMA_LOGGING_STOP' });
  }

  dmaLoggingReport(request: DirtyBitmapRequest): void {
    if (this.validate) checkBitmapRequest('report', request);
    // The VFIO core refuses a page size below 4 KiB before the bitmap, but not a zero length.
    checkBitmapHeld('report', request, false);
    const header = vfio_device_feature.size;
    const s = structBytes(header + vfio_device_feature_dma_logging_report.size);
    const pointers = this.io.pointers();
    vfio_device_feature.write(s, { argsz: s.byteLength, flags: uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT | uapi.VFIO_DEVICE_FEATURE_GET });
    vfio_device_feature_dma_logging_report.write(s, {
      iova: request.iova, length: request.length, page_size: request.pageSize, bitmap: pointers.wordPointer('report.bitmap', request.bitmap),
    }, header);
    this.call('VFIO_DEVICE_FEATURE', uapi.VFIO_DEVICE_FEATURE, s, {
      feature: 'DMA_LOGGING_REPORT', iova: request.iova, length: request.length, page_size: request.pageSize,
    }, pointers);
  }

  getPciHotResetInfo(): PciHotResetInfo {
    const header = uapi.vfio_pci_hot_reset_info.size;
    const entry = uapi.vfio_pci_dependent_device.size;
    let capacity = 8;
    for (let attempt = 0; attempt < 4; attempt++) {
      const s = structBytes(header + capacity * entry);
      uapi.vfio_pci_hot_reset_info.write(s, { argsz: s.byteLength });
      try {
        this.call('VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', uapi.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, s, {});
      } catch (error) {
        // ENOSPC: the kernel wrote the count it needs.
        if (isKernelError(error, 'ENOSPC')) {
          capacity = Math.max(capacity + 1, uapi.vfio_pci_hot_reset_info.readNumber(s, 'count'));
          continue;
        }
        throw error;
      }
      return decodeHotResetInfo(s);
    }
    throw new KernelAnswerError('VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', 'the affected-device count kept growing');
  }

  pciHotReset(groupFds: readonly number[]): void {
    if (this.validate) groupFds.forEach((fd, index) => checkU32(`groupFds[${index}]`, fd));
    const header = uapi.vfio_pci_hot_reset.size;
    const s = structBytes(header + 4 * groupFds.length);
    uapi.vfio_pci_hot_reset.write(s, { argsz: s.byteLength, flags: 0, count: groupFds.length });
    const view = new DataView(s.buffer);
    groupFds.forEach((fd, index) => view.setInt32(header + 4 * index, fd, true));
    this.call('VFIO_DEVICE_PCI_HOT_RESET', uapi.VFIO_DEVICE_PCI_HOT_RESET, s, { count: groupFds.length });
  }

  migrationFlags(): number {
    const s = this.feature(uapi.VFIO_DEVICE_FEATURE_MIGRATION | uapi.VFIO_DEVICE_FEATURE_GET, vfio_device_feature_migration.size, 'MIGRATION');
    return Number(vfio_device_feature_migration.readBigint(s, 'flags', vfio_device_feature.size));
  }

  getMigrationState(): number {
    const s = this.feature(uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE | uapi.VFIO_DEVICE_FEATURE_GET, vfio_device_feature_mig_state.size, 'MIG_DEVICE_STATE');
    return vfio_device_feature_mig_state.readNumber(s, 'device_state', vfio_device_feature.size);
  }

  setMigrationState(state: number): MigrationDataHandle | undefined {
    if (this.validate) {
      checkU32('state', state);
      // ERROR is never asked for (the kernel refuses it: state_flags_table[ERROR] is ~0U).
      if (state < uapi.VFIO_DEVICE_STATE_STOP || state > LAST_MIGRATION_STATE) {
        throw new InvalidArgumentError('state', `${state} is not a migration state a device can be set to (VFIO_DEVICE_STATE_STOP 1 to PRE_COPY_P2P 7)`);
      }
    }
    const s = this.feature(uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE | uapi.VFIO_DEVICE_FEATURE_SET, vfio_device_feature_mig_state.size, 'MIG_DEVICE_STATE', (bytes) => {
      vfio_device_feature_mig_state.write(bytes, { device_state: state, data_fd: -1 }, vfio_device_feature.size);
    }, { device_state: state });
    const dataFd = vfio_device_feature_mig_state.readNumber(s, 'data_fd', vfio_device_feature.size);
    return dataFd >= 0 ? new LinuxMigrationData(this.io.sys, dataFd, this.name) : undefined;
  }

  migrationDataSize(): bigint {
    const s = this.feature(uapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE | uapi.VFIO_DEVICE_FEATURE_GET, vfio_device_feature_mig_data_size.size, 'MIG_DATA_SIZE');
    return vfio_device_feature_mig_data_size.readBigint(s, 'stop_copy_length', vfio_device_feature.size);
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.io.check(this.io.sys.close(this.fd), 'close', { fd: this.fd });
  }

  /** VFIO_DEVICE_FEATURE with `payload` bytes after the header; returns the whole struct after the call. */
  private feature(
    flags: number, payload: number, feature: string, fill?: (bytes: Uint8Array) => void, objects: Record<string, number> = {},
  ): Uint8Array {
    const header = vfio_device_feature.size;
    const s = structBytes(header + payload);
    vfio_device_feature.write(s, { argsz: s.byteLength, flags });
    fill?.(s);
    this.call('VFIO_DEVICE_FEATURE', uapi.VFIO_DEVICE_FEATURE, s, { feature, ...objects });
    return s;
  }

  private call(name: string, request: number, arg: Uint8Array | undefined, objects: Record<string, number | bigint | string>, pointers?: ReturnType<IoctlIssuer['pointers']>): void {
    if (this.isClosed) throw new InvalidArgumentError('device', `${this.name} is closed`);
    this.io.call(this.fd, name, request, arg, { device: this.name, ...objects }, pointers);
  }

  /** The region's offset in the device fd, after checking the access stays inside it. */
  private regionSpan(index: number, offset: bigint, length: bigint): bigint {
    checkU64('offset', offset);
    checkLength('length', length);
    const region = this.getRegionInfo(index);
    if (offset + length > region.size) {
      throw new InvalidArgumentError('offset', `0x${offset.toString(16)} + ${length} passes region ${index}'s size 0x${region.size.toString(16)}`);
    }
    return region.offset;
  }
}
