import { isKernelError } from '../kernel/errors.js';
import type { IommufdHandle } from '../kernel/types.js';
import * as uapi from '../uapi/index.js';
import { Hwpt, type Device } from './device.js';
import type { UndoStack } from './undo.js';

/** A HWPT whose domain left the IOAS no usable IOVA range. */
class CollapsedAperture extends Error {
  constructor(device: string) {
    super(`${device}: the HWPT allocated for it left its IOAS no IOVA range of a page`);
  }
}

/**
 * Userspace auto domains for one IOAS, as QEMU does them: the kernel's own auto domains never
 * have dirty tracking, so the container allocates its HWPTs itself.
 *
 * Attach tries each existing HWPT (EINVAL means incompatible: try the next; any other error
 * fails the attach), else allocates one with DIRTY_TRACKING when the device's IOMMU has it.
 * Past QEMU: a dirty-capable device only joins a HWPT with dirty tracking, so attach order
 * never decides whether a device can be tracked.
 */
export class AutoDomains {
  readonly hwpts: Hwpt[] = [];

  constructor(private readonly iommufd: IommufdHandle, private readonly ioasId: number) {}

  attach(device: Device, undo: UndoStack): void {
    if (device.mdev) {
      // A mediated device has no IOMMU of its own: it attaches to the IOAS directly.
      this.attachToIoas(device, undo);
      return;
    }
    const wantsDirty = device.hostIommu?.dirtyTracking ?? false;
    const iommuType = device.hostIommu?.typeNumber;
    for (const hwpt of this.hwpts) {
      // Another driver's domain is never tried: 6.12 does not check whose domain a replace gets.
      if (hwpt.iommuType !== iommuType) continue;
      if (wantsDirty && !hwpt.dirtyTracking) continue;
      try {
        device.handle.attachPt(hwpt.id);
      } catch (error) {
        if (isKernelError(error, 'EINVAL')) continue; // incompatible HWPT: try the next
        throw error;
      }
      this.join(device, hwpt, undo);
      return;
    }
    const mark = undo.mark;
    try {
      this.allocateAndAttach(device, wantsDirty, iommuType, undo);
      if (!wantsDirty && this.apertureCollapsed()) throw new CollapsedAperture(device.name);
    } catch (error) {
      // A device that needs no dirty tracking loses nothing on the kernel's own auto domain,
      // and some IOMMUs only work there: a virtio-iommu domain gets its aperture at its first
      // attach (Linux 6.12), so one from IOMMU_HWPT_ALLOC collapses the IOAS to IOVA 0, or
      // clashes with what is mapped (EADDRINUSE).
      if (wantsDirty || !(error instanceof CollapsedAperture || isKernelError(error, 'EADDRINUSE'))) throw error;
      undo.unwindTo(mark);
      try {
        this.attachToIoas(device, undo);
      } catch {
        throw error instanceof CollapsedAperture ? new Error(error.message) : error;
      }
    }
  }

  private allocateAndAttach(device: Device, wantsDirty: boolean, iommuType: number | undefined, undo: UndoStack): void {
    const devId = device.devId;
    if (devId === undefined) throw new Error(`${device.name} is not bound to an iommufd`);
    const id = this.iommufd.hwptAlloc({ devId, ptId: this.ioasId, flags: wantsDirty ? uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING : 0 });
    const hwpt = new Hwpt(id, wantsDirty, iommuType);
    this.hwpts.push(hwpt);
    undo.push(`destroy HWPT ${id}`, () => {
      this.hwpts.splice(this.hwpts.indexOf(hwpt), 1);
      this.iommufd.destroy(id);
    });
    device.handle.attachPt(id);
    this.join(device, hwpt, undo);
  }

  /** The IOAS attached to directly: the kernel gives the device an auto domain of its own choosing. */
  private attachToIoas(device: Device, undo: UndoStack): void {
    device.handle.attachPt(this.ioasId);
    device.attachedToIoas = true;
    undo.push(`detach ${device.name} from IOAS ${this.ioasId}`, () => {
      device.attachedToIoas = false;
      if (device.handle.kind === 'mock') device.handle.close();
      else device.handle.detachPt();
    });
  }

  /** No IOVA range of a page is left: a domain without an aperture joined the IOAS. */
  private apertureCollapsed(): boolean {
    return !this.iommufd.ioasIovaRanges(this.ioasId).ranges.some((range) => range.last - range.start >= 0xfffn);
  }

  /**
   * Detach in the order QEMU settled on (v5): detach the device, take it off its HWPT, destroy
   * the HWPT when no device is left on it. If the destroy fails the device goes back on.
   * `leaving` runs once the device is off its page table and before its HWPT is destroyed.
   */
  detach(device: Device, leaving?: () => void): void {
    if (device.attachedToIoas) {
      this.leave(device);
      device.attachedToIoas = false;
      leaving?.();
      return;
    }
    const hwpt = device.hwpt;
    if (!hwpt) {
      leaving?.();
      return;
    }
    this.leave(device);
    // Off the page table, the HWPT not yet destroyed: dirty trackers take their last bits now.
    leaving?.();
    hwpt.devices.delete(device);
    device.hwpt = undefined;
    if (hwpt.devices.size > 0) return;
    try {
      this.destroyHwpt(hwpt);
    } catch (error) {
      if (device.handle.kind !== 'mock' && !device.handle.closed) {
        try {
          device.handle.attachPt(hwpt.id);
          hwpt.devices.add(device);
          device.hwpt = hwpt;
        } catch {
          // The device stays detached; the empty HWPT stays listed and is destroyed later.
        }
      }
      throw error;
    }
  }

  /** Destroys HWPTs left empty by an earlier failure. */
  destroyEmpty(): void {
    for (const hwpt of [...this.hwpts]) if (hwpt.devices.size === 0) this.destroyHwpt(hwpt);
  }

  private destroyHwpt(hwpt: Hwpt): void {
    this.iommufd.destroy(hwpt.id);
    this.hwpts.splice(this.hwpts.indexOf(hwpt), 1);
  }

  private join(device: Device, hwpt: Hwpt, undo: UndoStack): void {
    hwpt.devices.add(device);
    device.hwpt = hwpt;
    undo.push(`detach ${device.name} from HWPT ${hwpt.id}`, () => {
      hwpt.devices.delete(device);
      device.hwpt = undefined;
      this.leave(device);
    });
  }

  /**
   * Takes the device off its page table. A kernel test mock device has no detach: destroying it
   * is what detaches it.
   */
  private leave(device: Device): void {
    if (device.handle.kind === 'mock') {
      if (!device.handle.closed) device.handle.close();
      return;
    }
    device.handle.detachPt();
  }
}
