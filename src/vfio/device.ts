import type { DeviceHandle, DeviceInfo, DeviceLocation, GroupHandle, PciHotResetInfo } from '../kernel/types.js';
import * as uapi from '../uapi/index.js';
import { VfioSetupError } from './errors.js';
import type { Container } from './container.js';
import type { CompatibilityAnswer, HostIommuInfo, ViommuRequirements } from './host-iommu-info.js';

export type DeviceBackend = 'iommufd' | 'legacy';
/** Which source reports the pages a device writes. */
export type DirtyTracker = 'iommu' | 'dma-logging' | 'type1' | 'none';

/** An IOMMU page table that AutoDomains allocated for the devices of one container. */
export class Hwpt {
  readonly devices = new Set<Device>();
  constructor(
    readonly id: number,
    /** Allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING. */
    readonly dirtyTracking: boolean,
    /** The IOMMU driver's hw_info type: a HWPT is only ever offered to devices of the same IOMMU. */
    readonly iommuType: number | undefined,
  ) {}
}

/** A device attached to an AddressSpace: its handle, where it sits, and what can track its DMA. */
export class Device {
  /** Set by the container while the device sits on one of its HWPTs. */
  hwpt: Hwpt | undefined;
  /** An mdev (or any device without its own IOMMU) attached to the IOAS itself. */
  attachedToIoas = false;

  constructor(
    readonly name: string,
    readonly handle: DeviceHandle,
    readonly backend: DeviceBackend,
    readonly container: Container,
    readonly location: DeviceLocation | undefined,
    readonly hostIommu: HostIommuInfo | undefined,
    readonly info: DeviceInfo | undefined,
    /** The device has DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START probes). */
    readonly dmaLogging: boolean,
    /** The legacy group the device came from. */
    readonly groupId: number | undefined,
  ) {}

  get devId(): number | undefined {
    return this.handle.devId;
  }

  get mdev(): boolean {
    return this.location?.mdev ?? false;
  }

  /**
   * The source that tracks this device, chosen per device: its own DMA logging when it has it
   * (what QEMU prefers), else its HWPT's dirty tracking, else type1's for a legacy container,
   * else none (its ranges are reported all dirty each round).
   */
  get dirtyTracker(): DirtyTracker {
    if (this.dmaLogging) return 'dma-logging';
    if (this.hwpt?.dirtyTracking) return 'iommu';
    if (this.backend === 'legacy' && this.container.supportsType1DirtyTracking) return 'type1';
    return 'none';
  }

  /**
   * PCI hot reset (a secondary bus or slot reset) of this device and every device it shares the
   * reset with. The affected devices must all be the caller's: on iommufd, bound to (or owned
   * through their group by) this device's iommufd; on the legacy backend, in groups of this
   * device's container. Otherwise nothing is reset and a VfioSetupError names the others. As
   * QEMU's vfio_pci_hot_reset: INFO first, the check, then VFIO_DEVICE_PCI_HOT_RESET (no group
   * fds for a cdev, the affected groups' fds for a group-opened device). Returns the INFO.
   */
  hotReset(): PciHotResetInfo {
    const handle = this.handle;
    if (this.mdev || !handle.getPciHotResetInfo || !handle.pciHotReset) {
      throw new VfioSetupError(`${this.name} is not a vfio-pci device: it has no PCI hot reset`);
    }
    const info = handle.getPciHotResetInfo();
    if (this.backend === 'iommufd') {
      const others = info.devices.filter((d) => d.devId === uapi.VFIO_PCI_DEVID_NOT_OWNED);
      if (others.length) {
        throw new VfioSetupError(`a hot reset of ${this.name} also resets ${others.map((d) => d.pciAddress).join(', ')}, which this iommufd does not own: bind them to it first (or unbind them from every driver)`);
      }
      handle.pciHotReset([]);
      return info;
    }
    const groups = (this.container as { groups?: ReadonlyMap<number, GroupHandle> }).groups ?? new Map<number, GroupHandle>();
    const others = info.devices.filter((d) => d.groupId === undefined || !groups.has(d.groupId));
    if (others.length) {
      throw new VfioSetupError(`a hot reset of ${this.name} also resets ${others.map((d) => `${d.pciAddress} (group ${d.groupId ?? '?'})`).join(', ')}, whose groups are not in this container: attach them first`);
    }
    const fds = [...new Set(info.devices.map((d) => d.groupId!))].map((id) => groups.get(id)!.fd);
    if (fds.some((fd) => fd === undefined)) throw new VfioSetupError(`the ${this.name} group handles do not expose their fds`);
    handle.pciHotReset(fds as number[]);
    return info;
  }

  /**
   * Whether a vIOMMU with `requirements` can sit in front of this device: its host IOMMU's
   * registers and capabilities, and the IOVA ranges of the container it is attached to.
   * An mdev or a legacy device has no HostIommuInfo; only the IOVA ranges then bound it.
   */
  viommuCompatibility(requirements: ViommuRequirements): CompatibilityAnswer {
    if (this.hostIommu) return this.hostIommu.check(requirements, this.container.iovaRanges);
    const ranges = this.container.iovaRanges;
    const last = ranges.reduce((max, range) => (range.last > max ? range.last : max), 0n);
    const hostAddressWidth = ranges.length ? Math.max(1, last.toString(2).length) : 64;
    const reasons: string[] = [];
    if (requirements.addressWidth > hostAddressWidth) reasons.push(`aw-bits ${requirements.addressWidth} > host aw-bits ${hostAddressWidth} (the usable IOVA ranges)`);
    if (requirements.dirtyTracking && this.dirtyTracker !== 'dma-logging') reasons.push(`no IOMMU of its own to track dirty pages (${this.backend} ${this.mdev ? 'mdev' : 'device'})`);
    if (requirements.nesting) reasons.push('nesting needs the host IOMMU of an iommufd device with one');
    return { supported: reasons.length === 0, reasons, hostAddressWidth };
  }

  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      backend: this.backend,
      kind: this.handle.kind,
      devId: this.devId,
      hwpt: this.hwpt?.id,
      attachedToIoas: this.attachedToIoas,
      mdev: this.mdev,
      dmaLogging: this.dmaLogging,
      tracker: this.dirtyTracker,
      hostIommu: this.hostIommu?.toJSON(),
    };
  }
}
