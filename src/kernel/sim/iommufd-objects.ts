// One open /dev/iommu (struct iommufd_ctx): its object table and the rules of
// drivers/iommu/iommufd/{main,ioas,hw_pagetable,device}.c — IDs, reference counts, HWPT
// allocation, device attach/replace/detach with automatic domains, and the in-kernel access an
// mdev binds as. Failures throw SimulatedErrno with the kernel's errno, in the kernel's order.
import {
  IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
  IOMMU_HWPT_ALLOC_NEST_PARENT,
  IOMMU_HWPT_FAULT_ID_VALID,
} from '../../uapi/index.js';
import { fail, isSimulatedErrno } from './failure.js';
import { PAGE_SIZE } from './host-memory.js';
import { Domain } from './iommu-domain.js';
import { IoPagetable } from './io-pagetable.js';
import type { KernelServices } from './services.js';
import type { IommuModel } from './spec.js';

/** A device as iommufd sees it: its iommu group and what its IOMMU driver can do. */
export interface IommuDevice {
  readonly name: string;
  /** Identifies the iommu group: devices with the same key attach together. */
  readonly groupKey: string;
  readonly iommu: IommuModel;
  /** A selftest mock device (its domains are mock domains). */
  readonly mock: boolean;
}

export type ObjectType = 'ioas' | 'hwpt_paging' | 'device' | 'access' | 'selftest';

abstract class IommufdObject {
  abstract readonly type: ObjectType;
  constructor(readonly id: number) {}
}

export class IoasObject extends IommufdObject {
  readonly type = 'ioas' as const;
  readonly iopt = new IoPagetable();
  /** ioas->hwpt_list: every HWPT_PAGING allocated on this IOAS, in allocation order. */
  readonly hwpts: HwptObject[] = [];
  readonly accesses = new Set<AccessObject>();
}

export class HwptObject extends IommufdObject {
  readonly type = 'hwpt_paging' as const;
  autoDomain = false;
  constructor(
    id: number,
    readonly ioas: IoasObject,
    readonly domain: Domain,
    readonly nestParent: boolean,
  ) {
    super(id);
  }
}

/** struct iommufd_group: per context and iommu group, the HWPT the group is attached to. */
export class GroupAttachment {
  hwpt: HwptObject | undefined = undefined;
  /** igroup->device_list: the attached devices of the group. */
  readonly devices: DeviceObject[] = [];
  /** Bound devices holding this group. */
  references = 0;
  constructor(readonly key: string) {}
}

export class DeviceObject extends IommufdObject {
  readonly type = 'device' as const;
  constructor(
    id: number,
    readonly device: IommuDevice,
    readonly group: GroupAttachment,
  ) {
    super(id);
  }

  get attached(): boolean {
    return this.group.devices.includes(this);
  }
}

/** struct iommufd_access: an mdev's view of an IOAS (no IOMMU, pages pinned on demand). */
export class AccessObject extends IommufdObject {
  readonly type = 'access' as const;
  ioas: IoasObject | undefined = undefined;
  constructor(
    id: number,
    readonly name: string,
  ) {
    super(id);
  }
}

/** IOMMUFD_OBJ_SELFTEST: owns a mock device created by IOMMU_TEST_OP_MOCK_DOMAIN. */
export class SelftestObject extends IommufdObject {
  readonly type = 'selftest' as const;
  constructor(
    id: number,
    readonly mock: IommuDevice,
    readonly idev: DeviceObject,
    readonly release: () => void,
  ) {
    super(id);
  }
}

export type AnyObject = IoasObject | HwptObject | DeviceObject | AccessObject | SelftestObject;

/** A snapshot of one object for inspection (`kernel.objects()`). */
export interface ObjectSnapshot {
  readonly id: number;
  readonly type: ObjectType;
  /** obj->users: the table's reference plus one per holder. */
  readonly users: number;
  readonly details: Readonly<Record<string, unknown>>;
}

export class IommufdContext {
  private readonly table = new Map<number, AnyObject>();
  /** IDs reserved by an object being created (xa_alloc of XA_ZERO_ENTRY): not yet visible. */
  private readonly reservedIds = new Set<number>();
  private readonly groups = new Map<string, GroupAttachment>();
  /** IOMMU_OPTION_RLIMIT_MODE: 0 user, 1 mm. */
  accountMode = 0;
  /** Bound devices and accesses keep the context alive after its fd is closed (iommufd_ctx_get). */
  holders = 0;
  fdClosed = false;
  released = false;

  constructor(
    readonly fd: number,
    readonly services: KernelServices,
    private readonly onRelease: (context: IommufdContext) => void,
  ) {}

  // ---- the object table -------------------------------------------------------------------

  /** xa_alloc with XA_FLAGS_ALLOC1: the lowest free ID from 1. */
  reserveId(): number {
    let id = 1;
    while (this.table.has(id) || this.reservedIds.has(id)) id++;
    this.reservedIds.add(id);
    return id;
  }

  abortId(id: number): void {
    this.reservedIds.delete(id);
  }

  finalize(object: AnyObject): void {
    this.reservedIds.delete(object.id);
    this.table.set(object.id, object);
  }

  get objectCount(): number {
    return this.table.size;
  }

  /** iommufd_get_object: ENOENT when missing or of another type. */
  get<T extends AnyObject>(id: number, type: T['type']): T {
    const object = this.table.get(id);
    if (!object || object.type !== type) fail('ENOENT');
    return object as T;
  }

  getAny(id: number): AnyObject | undefined {
    return this.table.get(id);
  }

  /** obj->users as the kernel counts it, derived from who holds the object. */
  users(object: AnyObject): number {
    switch (object.type) {
      case 'ioas': {
        let holders = object.accesses.size;
        for (const other of this.table.values()) if (other.type === 'hwpt_paging' && other.ioas === object) holders++;
        return 1 + holders;
      }
      case 'hwpt_paging': {
        let holders = 0;
        for (const group of this.groups.values()) if (group.hwpt === object) holders += group.devices.length;
        return 1 + holders;
      }
      case 'device':
        return 2 + (object.attached ? 1 : 0);
      case 'access':
        return 2;
      case 'selftest':
        return 1;
    }
  }

  snapshot(): ObjectSnapshot[] {
    return [...this.table.values()]
      .sort((a, b) => a.id - b.id)
      .map((object) => ({ id: object.id, type: object.type, users: this.users(object), details: describe(object) }));
  }

  /** IOMMU_DESTROY (iommufd_object_remove): ENOENT if missing, EBUSY while anything holds it. */
  destroy(id: number): void {
    const object = this.table.get(id);
    if (!object) fail('ENOENT');
    if (this.users(object) !== 1) fail('EBUSY');
    this.destroyObject(object);
  }

  private destroyObject(object: AnyObject): void {
    this.table.delete(object.id);
    switch (object.type) {
      case 'ioas':
        object.iopt.destroy();
        break;
      case 'hwpt_paging':
        this.destroyHwpt(object);
        break;
      case 'selftest':
        if (object.idev.attached) this.detach(object.idev);
        this.unbindDevice(object.idev);
        object.release();
        break;
      case 'device':
      case 'access':
        break;
    }
  }

  private destroyHwpt(hwpt: HwptObject): void {
    const index = hwpt.ioas.hwpts.indexOf(hwpt);
    if (index >= 0) {
      hwpt.ioas.hwpts.splice(index, 1);
      hwpt.ioas.iopt.removeDomain(hwpt.domain);
    }
  }

  /** iommufd_fops_release: destroy leaf objects (users == 1) until the table is empty. */
  release(): void {
    if (this.released) return;
    this.released = true;
    while (this.table.size > 0) {
      let destroyed = 0;
      for (const object of [...this.table.values()]) {
        if (!this.table.has(object.id) || this.users(object) !== 1) continue;
        this.destroyObject(object);
        destroyed++;
      }
      if (destroyed === 0) {
        // Only bound devices/accesses are left; they cannot exist once every holder is gone.
        this.table.clear();
        break;
      }
    }
    this.onRelease(this);
  }

  /** The fd was closed: the context goes away now, or when the last bound device lets go. */
  closeFd(): void {
    this.fdClosed = true;
    if (this.holders === 0) this.release();
  }

  dropHolder(): void {
    this.holders--;
    if (this.fdClosed && this.holders === 0) this.release();
  }

  // ---- devices ----------------------------------------------------------------------------

  /** iommufd_device_bind: claim the group's DMA ownership for this context, allocate the device ID. */
  bindDevice(device: IommuDevice, holdsContext: boolean): DeviceObject {
    let group = this.groups.get(device.groupKey);
    if (!group) {
      group = new GroupAttachment(device.groupKey);
      this.groups.set(device.groupKey, group);
    }
    group.references++;
    try {
      this.services.claimDmaOwner(device.groupKey, this);
    } catch (error) {
      this.putGroup(group);
      throw error;
    }
    const idev = new DeviceObject(this.reserveId(), device, group);
    this.finalize(idev);
    if (holdsContext) this.holders++;
    return idev;
  }

  private putGroup(group: GroupAttachment): void {
    group.references--;
    if (group.references === 0) this.groups.delete(group.key);
  }

  /** iommufd_device_unbind (after the caller detached it). */
  unbindDevice(idev: DeviceObject, holdsContext = false): void {
    this.table.delete(idev.id);
    this.services.releaseDmaOwner(idev.device.groupKey, this);
    this.putGroup(idev.group);
    if (holdsContext) this.dropHolder();
  }

  /** iommufd_access_create for an mdev (needs_pin_pages: the IOAS alignment rises to PAGE_SIZE). */
  createAccess(name: string): AccessObject {
    const access = new AccessObject(this.reserveId(), name);
    this.finalize(access);
    this.holders++;
    return access;
  }

  destroyAccess(access: AccessObject): void {
    if (access.ioas) this.accessChangeIoas(access, undefined);
    this.table.delete(access.id);
    this.dropHolder();
  }

  /** iommufd_access_attach: ENOENT unless `ioasId` is an IOAS (an mdev cannot take a HWPT). */
  accessAttach(access: AccessObject, ioasId: number): void {
    if (access.ioas) fail('EINVAL');
    this.accessChangeIoas(access, this.get<IoasObject>(ioasId, 'ioas'));
  }

  /** iommufd_access_replace. */
  accessReplace(access: AccessObject, ioasId: number): void {
    if (!access.ioas) fail('ENOENT');
    this.accessChangeIoas(access, this.get<IoasObject>(ioasId, 'ioas'));
  }

  accessDetach(access: AccessObject): void {
    if (access.ioas) this.accessChangeIoas(access, undefined);
  }

  private accessChangeIoas(access: AccessObject, next: IoasObject | undefined): void {
    const current = access.ioas;
    if (current === next) return;
    if (next) {
      next.iopt.addAccess(access, PAGE_SIZE);
      next.accesses.add(access);
    }
    if (current) {
      current.iopt.removeAccess(access);
      current.accesses.delete(access);
    }
    access.ioas = next;
  }

  // ---- HWPT allocation --------------------------------------------------------------------

  /** domain_alloc_user / domain_alloc_paging of the device's IOMMU driver. */
  private allocateDomain(device: IommuDevice, flags: number, userData: Uint8Array | undefined): Domain {
    const iommu = device.iommu;
    if (device.mock) {
      if (flags & ~(IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING)) fail('EOPNOTSUPP');
      if (userData || ((flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING) && !iommu.dirtyTracking)) fail('EOPNOTSUPP');
    } else if (userData) {
      // The simulated drivers have no driver-specific paging domain data.
      fail('EOPNOTSUPP');
    }
    return new Domain({
      owner: iommu.type,
      pageSizes: iommu.pageSizes,
      apertureStart: iommu.apertureStart,
      apertureLast: iommu.apertureLast,
      dirtyOps: (flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING) !== 0,
      mock: device.mock,
      memory: this.services.kernelMemory,
    });
  }

  /**
   * iommufd_hwpt_paging_alloc: a HWPT_PAGING on `ioas` for `idev`, linked into the IOAS. The
   * caller finalizes it (or aborts it) — its ID stays reserved until then.
   */
  hwptPagingAlloc(ioas: IoasObject, idev: DeviceObject, flags: number, immediateAttach: boolean, userData: Uint8Array | undefined): HwptObject {
    const validFlags = IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
    const iommu = idev.device.iommu;
    if ((flags || userData) && !iommu.domainAllocUser) fail('EOPNOTSUPP');
    if (flags & ~validFlags) fail('EOPNOTSUPP');
    if ((flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING) && !iommu.dirtyTracking) fail('EOPNOTSUPP');
    if ((flags & IOMMU_HWPT_FAULT_ID_VALID) && (flags & IOMMU_HWPT_ALLOC_NEST_PARENT)) fail('EOPNOTSUPP');

    const id = this.reserveId();
    let hwpt: HwptObject;
    try {
      hwpt = new HwptObject(id, ioas, this.allocateDomain(idev.device, flags, userData), (flags & IOMMU_HWPT_ALLOC_NEST_PARENT) !== 0);
    } catch (error) {
      this.abortId(id);
      throw error;
    }
    if (immediateAttach) {
      try {
        this.hwptAttach(hwpt, idev);
      } catch (error) {
        this.abortId(id);
        throw error;
      }
    }
    try {
      ioas.iopt.addDomain(hwpt.domain);
    } catch (error) {
      if (immediateAttach) this.hwptDetach(idev);
      this.abortId(id);
      throw error;
    }
    ioas.hwpts.push(hwpt);
    return hwpt;
  }

  /** Undo hwptPagingAlloc before finalize (iommufd_object_abort_and_destroy). */
  abortHwpt(hwpt: HwptObject): void {
    this.destroyHwpt(hwpt);
    this.abortId(hwpt.id);
  }

  // ---- attach / replace / detach (drivers/iommu/iommufd/device.c) ---------------------------

  /** The IOMMU driver's attach_dev: EINVAL for a domain this device cannot use. */
  private driverAttach(domain: Domain, device: IommuDevice): void {
    const iommu = device.iommu;
    // iommu core: a domain belongs to the driver that allocated it.
    if (domain.owner !== iommu.type) fail('EINVAL');
    // mock_domain_nop_attach, intel prepare_domain_attach_device: no dirty tracking on this IOMMU.
    if (domain.dirtyOps && !iommu.dirtyTracking) fail('EINVAL');
    if (!device.mock) {
      if (domain.apertureLast > iommu.apertureLast) fail('EINVAL');
      if (domain.pageSizes.some((size) => !iommu.pageSizes.includes(size))) fail('EINVAL');
    }
  }

  /** iopt_table_enforce_dev_resv_regions: the device's reserved regions into the HWPT's IOAS. */
  private enforceReservedRegions(hwpt: HwptObject, idev: DeviceObject): void {
    const iopt = hwpt.ioas.iopt;
    try {
      for (const region of idev.device.iommu.reservedRegions) {
        if (region.type === 'direct-relaxable') continue;
        iopt.reserve(region.start, region.last, idev);
      }
    } catch (error) {
      iopt.removeReserved(idev);
      throw error;
    }
  }

  /** iommufd_hw_pagetable_attach. */
  private hwptAttach(hwpt: HwptObject, idev: DeviceObject): void {
    const group = idev.group;
    if (group.hwpt !== undefined && group.hwpt !== hwpt) fail('EINVAL');
    this.enforceReservedRegions(hwpt, idev);
    if (group.devices.length === 0) {
      try {
        this.driverAttach(hwpt.domain, idev.device);
      } catch (error) {
        hwpt.ioas.iopt.removeReserved(idev);
        throw error;
      }
      group.hwpt = hwpt;
    }
    group.devices.push(idev);
  }

  /** iommufd_hw_pagetable_detach: returns the HWPT the caller must put. */
  private hwptDetach(idev: DeviceObject): HwptObject {
    const group = idev.group;
    const hwpt = group.hwpt!;
    group.devices.splice(group.devices.indexOf(idev), 1);
    if (group.devices.length === 0) group.hwpt = undefined;
    hwpt.ioas.iopt.removeReserved(idev);
    return hwpt;
  }

  /** iommufd_hw_pagetable_put: an automatic domain goes away with its last device. */
  private hwptPut(hwpt: HwptObject): void {
    if (hwpt.autoDomain && this.table.get(hwpt.id) === hwpt && this.users(hwpt) === 1) this.destroyObject(hwpt);
  }

  /** iommufd_device_do_replace: returns the old HWPT to put, or undefined for "no change". */
  private doReplace(idev: DeviceObject, hwpt: HwptObject): HwptObject | undefined {
    const group = idev.group;
    if (group.hwpt === undefined) fail('EINVAL');
    if (!idev.attached) fail('EINVAL');
    if (hwpt === group.hwpt) return undefined;
    const old = group.hwpt;
    const sameIoas = old.ioas === hwpt.ioas;
    if (!sameIoas) {
      try {
        for (const member of group.devices) this.enforceReservedRegions(hwpt, member);
      } catch (error) {
        for (const member of group.devices) hwpt.ioas.iopt.removeReserved(member);
        throw error;
      }
    }
    try {
      this.driverAttach(hwpt.domain, idev.device);
    } catch (error) {
      if (!sameIoas) for (const member of group.devices) hwpt.ioas.iopt.removeReserved(member);
      throw error;
    }
    if (!sameIoas) for (const member of group.devices) old.ioas.iopt.removeReserved(member);
    group.hwpt = hwpt;
    return old;
  }

  /**
   * iommufd_device_auto_get_domain: reuse an automatic HWPT of the IOAS that accepts the device
   * (EINVAL means incompatible: try the next), else allocate one. Returns the HWPT to put.
   */
  private autoGetDomain(idev: DeviceObject, ioas: IoasObject, replace: boolean): { ptId: number; put: HwptObject | undefined } {
    for (const hwpt of [...ioas.hwpts]) {
      if (!hwpt.autoDomain) continue;
      try {
        const put = replace ? this.doReplace(idev, hwpt) : (this.hwptAttach(hwpt, idev), undefined);
        return { ptId: hwpt.id, put };
      } catch (error) {
        // -EINVAL: this domain is incompatible with the device; any other error fails the attach.
        if (isSimulatedErrno(error, 'EINVAL')) continue;
        throw error;
      }
    }
    const hwpt = this.hwptPagingAlloc(ioas, idev, 0, !replace, undefined);
    let put: HwptObject | undefined;
    if (replace) {
      try {
        put = this.doReplace(idev, hwpt);
      } catch (error) {
        this.abortHwpt(hwpt);
        throw error;
      }
    }
    hwpt.autoDomain = true;
    this.finalize(hwpt);
    return { ptId: hwpt.id, put };
  }

  /** iommufd_device_change_pt. */
  private changePt(idev: DeviceObject, ptId: number, replace: boolean): number {
    const object = this.table.get(ptId);
    if (!object) fail('ENOENT');
    let result: number;
    let put: HwptObject | undefined;
    if (object.type === 'hwpt_paging') {
      if (replace) put = this.doReplace(idev, object);
      else this.hwptAttach(object, idev);
      result = ptId;
    } else if (object.type === 'ioas') {
      ({ ptId: result, put } = this.autoGetDomain(idev, object, replace));
    } else {
      fail('EINVAL');
    }
    if (put) this.hwptPut(put);
    return result;
  }

  /** iommufd_device_attach: returns the HWPT ID (the automatic one for an IOAS). */
  attach(idev: DeviceObject, ptId: number): number {
    return this.changePt(idev, ptId, false);
  }

  /** iommufd_device_replace. */
  replace(idev: DeviceObject, ptId: number): number {
    return this.changePt(idev, ptId, true);
  }

  /** iommufd_device_detach. */
  detach(idev: DeviceObject): void {
    const hwpt = this.hwptDetach(idev);
    this.hwptPut(hwpt);
  }

  /** The HWPT a device translates through, if attached. */
  hwptOf(idev: DeviceObject): HwptObject | undefined {
    return idev.attached ? idev.group.hwpt : undefined;
  }
}

function describe(object: AnyObject): Record<string, unknown> {
  switch (object.type) {
    case 'ioas':
      return {
        mappings: object.iopt.areas.length,
        mappedBytes: object.iopt.mappedBytes,
        iovaAlignment: object.iopt.iovaAlignment,
        hwpts: object.hwpts.map((hwpt) => hwpt.id),
        accesses: object.accesses.size,
      };
    case 'hwpt_paging':
      return {
        ioas: object.ioas.id,
        autoDomain: object.autoDomain,
        dirtyTracking: object.domain.dirtyOps,
        trackingEnabled: object.domain.trackingEnabled,
        owner: object.domain.owner,
        dirtyBitmapBytes: object.domain.dirtyBytes,
      };
    case 'device':
      return { name: object.device.name, attachedTo: object.attached ? object.group.hwpt?.id : undefined };
    case 'access':
      return { name: object.name, ioas: object.ioas?.id };
    case 'selftest':
      return { mock: object.mock.name, idev: object.idev.id };
  }
}
