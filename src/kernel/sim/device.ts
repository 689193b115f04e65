// Simulated VFIO devices: the device itself (regions, DMA log, who has it open) and its device
// files — a cdev (/dev/vfio/devices/vfioN, bound to an iommufd) or a device fd from a legacy
// group. The ioctls follow drivers/vfio/{vfio_main,device_cdev}.c and vfio-pci's behaviour.
import {
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_NUM_REGIONS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from '../../uapi/index.js';
import * as uapi from '../../uapi/index.js';
import { ERRNO } from '../errno.js';
import { InvalidArgumentError, KernelError } from '../errors.js';
import type {
  DeviceHandle,
  DeviceInfo,
  DirtyBitmapRequest,
  DmaLoggingRange,
  IommufdHandle,
  KernelOptions,
  PciHotResetInfo,
  MigrationDataHandle,
  RegionInfo,
} from '../types.js';
import { checkBitmapHeld, checkBitmapRequest, checkLength, checkPageSize, checkRange, checkU32, checkU64, U64_MAX } from '../validate.js';
import { DmaLog } from './dma-log.js';
import { fail } from './failure.js';
import type { AccessObject, DeviceObject, IommuDevice } from './iommufd-objects.js';
import { SimulatedIommufd, runIoctl } from './iommufd.js';
import { checkMigrationState, SimulatedMigration } from './migration.js';
import type { KernelServices } from './services.js';
import type { IommuModel, SimulatedDeviceModel } from './spec.js';
import type { SimulatedLegacyContainer } from './type1.js';

/**
 * @deprecated LOG_MAX_RANGES depends on PAGE_SIZE: uapi.dmaLoggingMaxRanges(kernel.systemPageSize).
 * This is its value on a 4 KiB-page host.
 */
export const LOG_MAX_RANGES = uapi.dmaLoggingMaxRanges(4096);
const PCI_CONFIG_SIZE = 256;
const VFIO_PCI_NUM_IRQS = 5;

/** A VFIO group (struct vfio_group) of the simulated kernel. */
export class SimulatedVfioGroup {
  readonly devices: SimulatedDevice[] = [];
  /** The one open /dev/vfio/N file, if any. */
  openedBy: object | undefined = undefined;
  container: SimulatedLegacyContainer | undefined = undefined;
  /** group->container_users: 1 for the group itself, plus one per open device fd. */
  containerUsers = 0;
  /** group->cdev_device_open_cnt: devices of the group bound through their cdev. */
  cdevBound = 0;

  constructor(readonly groupId: number) {}

  /** An mdev group (VFIO_EMULATED_IOMMU): no IOMMU domain, pages pinned on demand. */
  get emulated(): boolean {
    return this.devices.every((device) => device.model.mdev);
  }

  get key(): string {
    return `group:${this.groupId}`;
  }
}

/** One simulated device: its model and its state across opens. */
export class SimulatedDevice implements IommuDevice {
  readonly name: string;
  readonly groupKey: string;
  readonly mock = false;
  /** device->open_count. */
  openCount = 0;
  /** The cdev file that bound it, if any. */
  boundFile: SimulatedDeviceFile | undefined = undefined;
  readonly log: DmaLog | undefined;
  /** Set by the kernel that owns the device when the model has migration (it needs the kernel's fds). */
  migration: SimulatedMigration | undefined;
  private bar0: Uint8Array | undefined;
  private config: Uint8Array | undefined;

  constructor(
    readonly model: SimulatedDeviceModel,
    readonly group: SimulatedVfioGroup,
    services?: KernelServices,
  ) {
    this.name = model.name;
    this.groupKey = group.key;
    this.log = model.dmaLogging ? new DmaLog(model.dmaLogging, services?.kernelMemory) : undefined;
    if (model.migration && services) {
      this.migration = new SimulatedMigration(model.migration, { name: this.name, stateBytes: () => this.region(VFIO_PCI_BAR0_REGION_INDEX)! }, services);
    }
  }

  get iommu(): IommuModel {
    if (!this.model.iommu) throw new Error(`${this.name} is an mdev: it has no IOMMU`);
    return this.model.iommu;
  }

  /** Region contents, created on first use (BAR0 and config space only). */
  region(index: number): Uint8Array | undefined {
    if (index === VFIO_PCI_BAR0_REGION_INDEX) {
      this.bar0 ??= new Uint8Array(Number(this.model.bar0Size));
      return this.bar0;
    }
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) {
      if (!this.config) {
        this.config = new Uint8Array(PCI_CONFIG_SIZE);
        const view = new DataView(this.config.buffer);
        view.setUint16(0, this.model.pciId.vendor, true);
        view.setUint16(2, this.model.pciId.device, true);
        view.setUint8(0x0b, 0x02); // class: network controller
      }
      return this.config;
    }
    return undefined;
  }

  regionSize(index: number): bigint {
    if (index === VFIO_PCI_BAR0_REGION_INDEX) return this.model.bar0Size;
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return BigInt(PCI_CONFIG_SIZE);
    return 0n;
  }

  /** The device was reset: BAR contents are lost. */
  /** Hot resets this device went through (for tests). */
  hotResets = 0;

  reset(): void {
    this.bar0 = undefined;
    this.migration?.reset();
  }

  /** Features the driver implements (VFIO_DEVICE_FEATURE without log_ops is ENOTTY). */
  supportsFeature(feature: number): boolean {
    switch (feature) {
      case VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
      case VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP:
      case VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
        return this.log !== undefined;
      case VFIO_DEVICE_FEATURE_MIGRATION:
      case VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE:
      case VFIO_DEVICE_FEATURE_MIG_DATA_SIZE:
        return this.migration !== undefined;
      default:
        return false;
    }
  }
}

export interface DeviceFileHost {
  readonly services: KernelServices;
  readonly identity: object;
  /** The device file was closed (for the kernel's bookkeeping). */
  fileClosed(file: SimulatedDeviceFile): void;
  /** The devices a PCI hot reset of `device` resets (itself included), or undefined when it has no slot or bus reset. */
  pciResetSet(device: SimulatedDevice): SimulatedDevice[] | undefined;
  /** The VFIO group open on `fd`, if that fd is an open group. */
  groupOfFd(fd: number): SimulatedVfioGroup | undefined;
}

/** An open VFIO device file: a cdev, or a device fd from a legacy group. */
export class SimulatedDeviceFile implements DeviceHandle {
  readonly fd: number;
  readonly name: string;
  private closedFlag = false;
  /** df->access_granted: a cdev after BIND_IOMMUFD, a group device fd from the start. */
  private accessGranted: boolean;
  iommufd: SimulatedIommufd | undefined = undefined;
  idev: DeviceObject | undefined = undefined;
  access: AccessObject | undefined = undefined;
  /** vdev->iommufd_attached. */
  attached = false;
  private readonly validate: boolean;

  constructor(
    readonly host: DeviceFileHost,
    readonly device: SimulatedDevice,
    readonly kind: 'cdev' | 'group',
    options: KernelOptions | undefined,
  ) {
    this.fd = host.services.allocateFd();
    this.name = device.name;
    this.accessGranted = kind === 'group';
    this.validate = options?.validateArguments !== false;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** LOG_MAX_RANGES: one kernel page of vfio_device_feature_dma_logging_range. */
  private get logMaxRanges(): number {
    return uapi.dmaLoggingMaxRanges(this.host.services.systemPageSize);
  }

  get devId(): number | undefined {
    return this.idev?.id ?? this.access?.id;
  }

  /** One ioctl on the device fd; errors name the device, as the linux shim's do. */
  private ioctl<T>(ioctl: string, objects: Record<string, number | bigint | string>, body: () => T): T {
    const closed = this.closedFlag ? (['device', `${this.name} is closed`] as const) : undefined;
    return runIoctl(this.host.services, this.fd, closed, ioctl, { device: this.name, ...objects }, body);
  }

  /** Every device ioctl but BIND_IOMMUFD needs access (vfio_device_fops_unl_ioctl). */
  private requireAccess(): void {
    if (!this.accessGranted) fail('EINVAL');
  }

  bindIommufd(iommufd: IommufdHandle): number {
    const simulated = iommufd instanceof SimulatedIommufd && iommufd.host.identity === this.host.identity ? iommufd : undefined;
    if (this.validate && iommufd.closed) throw new InvalidArgumentError('iommufd', 'is closed');
    return this.ioctl('VFIO_DEVICE_BIND_IOMMUFD', { iommufd: iommufd.fd }, () => {
      if (this.kind === 'group') fail('EINVAL');
      const group = this.device.group;
      // vfio_device_block_group
      if (group.openedBy) fail('EBUSY');
      if (this.accessGranted) fail('EINVAL');
      if (!simulated || simulated.closed) fail('EBADF');
      if (this.device.openCount !== 0) fail('EINVAL');
      const context = simulated.context;
      if (this.device.model.mdev) {
        this.access = context.createAccess(this.device.name);
      } else {
        this.idev = context.bindDevice(this.device, true);
      }
      this.device.openCount++;
      this.device.boundFile = this;
      group.cdevBound++;
      this.iommufd = simulated;
      this.accessGranted = true;
      return (this.idev?.id ?? this.access?.id)!;
    });
  }

  attachPt(ptId: number): number {
    if (this.validate) checkU32('ptId', ptId);
    return this.ioctl('VFIO_DEVICE_ATTACH_IOMMUFD_PT', { dev_id: this.devId ?? -1, pt_id: ptId }, () => {
      this.requireAccess();
      if (this.kind === 'group') fail('ENOTTY');
      const context = this.iommufd!.context;
      let result: number;
      if (this.access) {
        if (this.attached) context.accessReplace(this.access, ptId);
        else context.accessAttach(this.access, ptId);
        result = ptId;
      } else {
        result = this.attached ? context.replace(this.idev!, ptId) : context.attach(this.idev!, ptId);
      }
      this.attached = true;
      return result;
    });
  }

  detachPt(): void {
    this.ioctl('VFIO_DEVICE_DETACH_IOMMUFD_PT', { dev_id: this.devId ?? -1 }, () => {
      this.requireAccess();
      if (this.kind === 'group') fail('ENOTTY');
      this.detachNow();
    });
  }

  private detachNow(): void {
    if (!this.attached) return;
    const context = this.iommufd!.context;
    if (this.access) context.accessDetach(this.access);
    else context.detach(this.idev!);
    this.attached = false;
  }

  getInfo(): DeviceInfo {
    return this.ioctl('VFIO_DEVICE_GET_INFO', {}, () => {
      this.requireAccess();
      return { flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET, numRegions: VFIO_PCI_NUM_REGIONS, numIrqs: VFIO_PCI_NUM_IRQS };
    });
  }

  getRegionInfo(index: number): RegionInfo {
    if (this.validate) checkU32('index', index);
    return this.ioctl('VFIO_DEVICE_GET_REGION_INFO', { index }, () => {
      this.requireAccess();
      if (index >= VFIO_PCI_NUM_REGIONS) fail('EINVAL');
      const size = this.device.regionSize(index);
      let flags = 0;
      if (size > 0n) flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
      if (index === VFIO_PCI_BAR0_REGION_INDEX) flags |= VFIO_REGION_INFO_FLAG_MMAP;
      return { index, flags, size, offset: BigInt(index) << 40n };
    });
  }

  /** pread at the region's offset, after GET_REGION_INFO and a bounds check (as the linux shim does). */
  regionRead(index: number, offset: bigint, length: number): Uint8Array {
    this.regionSpan(index, offset, BigInt(length));
    return this.ioctl('pread', { index, offset }, () => {
      this.requireAccess();
      const start = Number(offset);
      return this.device.region(index)!.slice(start, start + length);
    });
  }

  regionWrite(index: number, offset: bigint, data: Uint8Array): void {
    this.regionSpan(index, offset, BigInt(data.byteLength));
    this.ioctl('pwrite', { index, offset }, () => {
      this.requireAccess();
      const region = this.device.region(index)!;
      const start = Number(offset);
      // The vendor and device IDs of config space are read-only (vfio-pci virtualizes them).
      for (let i = 0; i < data.byteLength; i++) {
        if (index === VFIO_PCI_CONFIG_REGION_INDEX && start + i < 4) continue;
        region[start + i] = data[i]!;
      }
      // A register write is device activity: its migration state changed.
      if (index === VFIO_PCI_BAR0_REGION_INDEX) this.device.migration?.touched(start, data.byteLength);
    });
  }

  /** The linux shim's regionSpan: the access must stay inside the region the kernel reports. */
  private regionSpan(index: number, offset: bigint, length: bigint): void {
    checkU64('offset', offset);
    checkLength('length', length);
    const region = this.getRegionInfo(index);
    if (offset + length > region.size) {
      throw new InvalidArgumentError('offset', `0x${offset.toString(16)} + ${length} passes region ${index}'s size 0x${region.size.toString(16)}`);
    }
  }

  reset(): void {
    this.ioctl('VFIO_DEVICE_RESET', {}, () => {
      this.requireAccess();
      this.device.reset();
    });
  }

  featureProbe(feature: number): boolean {
    if (this.validate) checkU32('feature', feature);
    try {
      this.ioctl('VFIO_DEVICE_FEATURE', { feature }, () => {
        this.requireAccess();
        if (!this.device.supportsFeature(feature)) fail('ENOTTY');
      });
      return true;
    } catch (error) {
      if (error instanceof KernelError && error.errno === ERRNO.ENOTTY) return false;
      throw error;
    }
  }

  /** DMA_LOGGING_START (vfio_ioctl_device_feature_logging_start, then the driver's log_start). */
  dmaLoggingStart(pageSize: bigint, ranges: readonly DmaLoggingRange[]): bigint {
    if (this.validate) {
      checkPageSize('pageSize', pageSize);
      if (ranges.length === 0) throw new InvalidArgumentError('ranges', 'must list at least one IOVA range');
      const maximum = this.logMaxRanges;
      if (ranges.length > maximum) {
        throw new InvalidArgumentError('ranges', `${ranges.length} ranges; the kernel takes at most ${maximum} (PAGE_SIZE / 16): combine them first`);
      }
      ranges.forEach((range, index) => checkRange(`ranges[${index}]`, range.iova, range.length));
    }
    const objects = { feature: 'DMA_LOGGING_START', num_ranges: ranges.length, page_size: pageSize };
    return this.ioctl('VFIO_DEVICE_FEATURE', objects, () => {
      this.requireAccess();
      const log = this.device.log;
      if (!log) fail('ENOTTY');
      if (ranges.length === 0) fail('EINVAL');
      if (ranges.length > this.logMaxRanges) fail('E2BIG');
      const mask = (pageSize - 1n) & U64_MAX; // IS_ALIGNED(x, page_size) with C's unsigned wrap
      const loaded: { iova: bigint; last: bigint }[] = [];
      for (const range of ranges) {
        if ((range.iova & mask) || (range.length & mask)) fail('EINVAL');
        if (range.iova + range.length > U64_MAX) fail('EOVERFLOW');
        const node = { iova: range.iova, last: range.iova + range.length - 1n };
        if (loaded.some((other) => other.iova <= node.last && other.last >= node.iova)) fail('EINVAL');
        loaded.push(node);
      }
      return log.start(pageSize, loaded);
    });
  }

  dmaLoggingStop(): void {
    this.ioctl('VFIO_DEVICE_FEATURE', { feature: 'DMA_LOGGING_STOP' }, () => {
      this.requireAccess();
      const log = this.device.log;
      if (!log) fail('ENOTTY');
      log.stop();
    });
  }

  dmaLoggingReport(request: DirtyBitmapRequest): void {
    if (this.validate) checkBitmapRequest('report', request);
    checkBitmapHeld('report', request, false); // as the linux shim
    const objects = { feature: 'DMA_LOGGING_REPORT', iova: request.iova, length: request.length, page_size: request.pageSize };
    this.ioctl('VFIO_DEVICE_FEATURE', objects, () => {
      this.requireAccess();
      const log = this.device.log;
      if (!log) fail('ENOTTY');
      const { iova, length, pageSize } = request;
      if (pageSize < 4096n || (pageSize & (pageSize - 1n)) !== 0n) fail('EINVAL');
      if (iova + length > U64_MAX) fail('EOVERFLOW');
      log.readAndClear(iova, length, pageSize, request.bitmap);
    });
  }

  migrationFlags(): number {
    return this.ioctl('VFIO_DEVICE_FEATURE', { feature: 'MIGRATION' }, () => this.requireMigration().model.flags);
  }

  getMigrationState(): number {
    return this.ioctl('VFIO_DEVICE_FEATURE', { feature: 'MIG_DEVICE_STATE' }, () => this.requireMigration().state);
  }

  setMigrationState(state: number): MigrationDataHandle | undefined {
    if (this.validate) {
      checkU32('state', state);
      checkMigrationState(state);
    }
    return this.ioctl('VFIO_DEVICE_FEATURE', { feature: 'MIG_DEVICE_STATE', device_state: state }, () => this.requireMigration().setState(state));
  }

  migrationDataSize(): bigint {
    return this.ioctl('VFIO_DEVICE_FEATURE', { feature: 'MIG_DATA_SIZE' }, () => this.requireMigration().dataSize());
  }

  private requireMigration(): SimulatedMigration {
    this.requireAccess();
    const migration = this.device.migration;
    if (!migration) fail('ENOTTY');
    return migration;
  }

  /** Closing unbinds (detaching first) and stops the device's DMA log, as vfio-pci's close_device does. */

  /**
   * What a dependent device is to this file's caller (vfio_pci_fill_devs): through a group fd
   * its group ID; through a cdev its dev ID when bound to the same iommufd, VFIO_PCI_DEVID_OWNED
   * when its group has a device bound there (iommufd_ctx_has_group), else NOT_OWNED.
   */
  private dependentId(device: SimulatedDevice): number {
    if (this.kind === 'group') return device.group.groupId;
    const context = this.iommufd!.context;
    const bound = device.boundFile;
    if (bound?.iommufd?.context === context && bound.devId !== undefined) return bound.devId;
    if (device.group.devices.some((other) => other.boundFile?.iommufd?.context === context)) return uapi.VFIO_PCI_DEVID_OWNED;
    return uapi.VFIO_PCI_DEVID_NOT_OWNED;
  }

  private resetSet(): SimulatedDevice[] {
    if (this.device.model.mdev) fail('ENOTTY'); // not vfio-pci
    const set = this.host.pciResetSet(this.device);
    if (!set) fail('ENODEV'); // neither pci_probe_reset_slot nor pci_probe_reset_bus
    return set;
  }

  getPciHotResetInfo(): PciHotResetInfo {
    return this.ioctl('VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', {}, () => {
      this.requireAccess();
      const set = this.resetSet();
      const devices = set.map((device) => ({
        groupId: this.kind === 'group' ? device.group.groupId : undefined,
        devId: this.kind === 'cdev' ? this.dependentId(device) : undefined,
        pciAddress: device.model.pciAddress!,
      }));
      let flags = 0;
      if (this.kind === 'cdev') {
        flags |= uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID;
        if (devices.every((d) => d.devId !== uapi.VFIO_PCI_DEVID_NOT_OWNED)) flags |= uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED;
      }
      return { flags, devices };
    });
  }

  pciHotReset(groupFds: readonly number[]): void {
    if (this.validate) groupFds.forEach((fd, index) => checkU32(`groupFds[${index}]`, fd));
    this.ioctl('VFIO_DEVICE_PCI_HOT_RESET', { count: groupFds.length }, () => {
      this.requireAccess();
      // A cdev passes no groups (ownership through its iommufd), a group-opened device some.
      if ((groupFds.length > 0) === (this.kind === 'cdev')) fail('EINVAL');
      const set = this.resetSet();
      const groups = groupFds.map((fd) => this.host.groupOfFd(fd) ?? fail('EINVAL'));
      // vfio_pci_dev_set_hot_reset: every affected device in the given groups, or in this iommufd.
      for (const device of set) {
        const owned = this.kind === 'group' ? groups.includes(device.group) : this.dependentId(device) !== uapi.VFIO_PCI_DEVID_NOT_OWNED;
        if (!owned) fail('EPERM');
      }
      for (const device of set) {
        device.reset();
        device.hotResets++;
      }
    });
  }

  close(): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.host.services.releaseFd(this.fd);
    if (this.kind === 'cdev' && this.iommufd) {
      this.detachNow();
      const context = this.iommufd.context;
      if (this.access) context.destroyAccess(this.access);
      if (this.idev) context.unbindDevice(this.idev, true);
      this.device.openCount--;
      this.device.boundFile = undefined;
      this.device.group.cdevBound--;
      if (this.device.openCount === 0) this.deviceClosed();
    }
    this.host.fileClosed(this);
  }

  /** Group device fds: the device is opened once more through the group (vfio_df_group_open). */
  markGroupOpen(): void {
    this.device.openCount++;
  }

  /** Group device fd closed: the caller updates the group; the device closes with its last opener. */
  markGroupClosed(): void {
    this.device.openCount--;
    if (this.device.openCount === 0) this.deviceClosed();
  }

  /** close_device: the DMA log stops and the migration data fds are disabled. */
  private deviceClosed(): void {
    this.device.log?.stop();
    this.device.migration?.deviceClosed();
  }
}
