import { InvalidArgumentError, isKernelError } from '../kernel/errors.js';
import type { DeviceHandle, DeviceLocation, HostMemory, IommufdHandle, Kernel } from '../kernel/types.js';
import { checkLength, checkU64, U64_MAX } from '../kernel/validate.js';
import * as uapi from '../uapi/index.js';
import type { Container, ContainerTopology, Mapping, UnmapBitmap } from './container.js';
import { Device, type DeviceBackend } from './device.js';
import { VfioSetupError } from './errors.js';
import { HostIommuInfo } from './host-iommu-info.js';
import { IommufdContainer } from './iommufd-container.js';
import { LegacyContainer } from './legacy-container.js';
import { UndoStack } from './undo.js';

export type IommufdChoice = 'on' | 'off' | 'auto';

export interface AddressSpaceOptions {
  /** Default backend choice for attach: iommufd on, off (legacy), or auto (iommufd where the kernel and device have it). */
  readonly iommufd?: IommufdChoice;
  /** Host page size: mappings are aligned to it (default: the kernel's, `Kernel.systemPageSize`, else 4 KiB). */
  readonly pageSize?: bigint;
  /**
   * An iommufd opened by the caller (libvirt passes one: `-object iommufd,fd=N`; see
   * `Kernel.adoptIommufd`). Several address spaces may share it, each with IOASes of its own;
   * the space never closes it: whoever opened it does, after closing the spaces.
   */
  readonly iommufdHandle?: IommufdHandle;
}

export interface AttachOptions {
  readonly iommufd?: IommufdChoice;
  /** A display name (default: the located device's name). */
  readonly name?: string;
  /**
   * The device's VFIO cdev, opened by the caller (`vfio-pci,fd=N`) and not yet bound. The space
   * owns it from the call on, as QEMU does: it is closed on detach, and on a failed attach (a
   * bound cdev cannot be unbound).
   */
  readonly fd?: number;
}

export interface MapRequest {
  readonly iova: bigint;
  readonly size: bigint;
  /** Host memory behind the mapping; allocated (and later released) by the space when omitted. */
  readonly memory?: HostMemory;
  readonly memoryOffset?: bigint;
  readonly readonly?: boolean;
}

export interface IovaSpan {
  readonly iova: bigint;
  readonly size: bigint;
}

/**
 * Hooks for dirty tracking around mapping and device changes. During migration a change must
 * not lose dirty state: a map is refused before the kernel sees it if it cannot be tracked; an
 * unmap reads IOMMU dirty bits with NO_CLEAR before it, type1's through the unmap's bitmap and
 * device logs after it; a device attached starts its tracker (or is detached again); a device
 * detached is drained once it is off its page table, before its HWPT is destroyed.
 *
 * `before*` hooks may refuse by throwing: nothing has changed then. Each `before*` hook that
 * returned is followed by exactly one of its `after*` or `*Aborted` hooks.
 */
export interface MappingObserver {
  /** Before the kernel maps: throw to refuse. */
  beforeMap?(mapping: Mapping): void | Promise<void>;
  /** The kernel refused the map (or another observer did): nothing is mapped. */
  mapAborted?(mapping: Mapping): void | Promise<void>;
  afterMap?(mapping: Mapping): void | Promise<void>;
  beforeUnmap?(span: IovaSpan, mappings: readonly Mapping[]): void | Promise<void>;
  /** A bitmap for a legacy container's unmap to fill (VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP). */
  type1UnmapBitmap?(container: LegacyContainer, span: IovaSpan): UnmapBitmap | undefined;
  /**
   * The unmap failed part way and was undone: the mappings are still there. `type1Bitmaps` holds
   * what containers that did unmap wrote (read and cleared in the kernel: merge it).
   */
  unmapAborted?(span: IovaSpan, mappings: readonly Mapping[], type1Bitmaps: ReadonlyMap<LegacyContainer, UnmapBitmap>): void | Promise<void>;
  afterUnmap?(span: IovaSpan, mappings: readonly Mapping[], type1Bitmaps: ReadonlyMap<LegacyContainer, UnmapBitmap>): void | Promise<void>;
  /** The device is attached; throw to have the attach undone. */
  afterAttach?(device: Device): void | Promise<void>;
  /** The attach is being undone after afterAttach returned (another observer refused it). */
  attachAborted?(device: Device): void | Promise<void>;
  /** Before a detach: throw to refuse. */
  beforeDetach?(device: Device): void | Promise<void>;
  /**
   * Synchronous, during the detach: the device is off its page table (it can no longer DMA
   * through it), its HWPT and container still exist, its fd is still open. Must not throw.
   */
  deviceLeaving?(device: Device): void;
  /** The detach failed and the device is back where it was. */
  detachAborted?(device: Device): void | Promise<void>;
  afterDetach?(device: Device): void | Promise<void>;
}

export interface Topology {
  readonly containers: ContainerTopology[];
  readonly devices: { name: string; backend: DeviceBackend; tracker: string; container: number; hwpt: number | undefined }[];
}

const MOCK_LOCATION = /^mock(?::(no-dirty|huge-iova|dirty))*$/;

/**
 * The IOVA space of one guest: its mappings, the containers they are replayed into, and the
 * devices attached through iommufd or the legacy group/container path. Operations on a space
 * run one at a time, and each one that fails half-way undoes what it did.
 */
export class AddressSpace {
  private readonly containerList: Container[] = [];
  private readonly deviceList: Device[] = [];
  private readonly mappingList: Mapping[] = [];
  private readonly observers = new Set<MappingObserver>();
  private iommufd: IommufdHandle | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private closing: Promise<void> | undefined;
  /** Memory the space owns whose munmap failed (ENOMEM): given back again by close(). */
  private readonly unreleased = new Set<HostMemory>();
  readonly pageSize: bigint;

  constructor(readonly kernel: Kernel, private readonly options: AddressSpaceOptions = {}) {
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('options', 'must be an object');
    const pageSize = options.pageSize ?? kernel.systemPageSize ?? 4096n;
    if (typeof pageSize !== 'bigint') throw new InvalidArgumentError('pageSize', `must be a bigint (4096n), got ${typeof pageSize} ${String(pageSize)}`);
    if (pageSize <= 0n || (pageSize & (pageSize - 1n)) !== 0n) throw new InvalidArgumentError('pageSize', `must be a power of two, got ${pageSize}`);
    this.pageSize = pageSize;
    if (options.iommufdHandle !== undefined && (typeof options.iommufdHandle !== 'object' || options.iommufdHandle.closed)) {
      throw new InvalidArgumentError('iommufdHandle', 'must be an open iommufd handle');
    }
  }

  get containers(): readonly Container[] {
    return this.containerList;
  }

  get devices(): readonly Device[] {
    return this.deviceList;
  }

  /** Mappings in IOVA order. */
  get mappings(): readonly Mapping[] {
    return this.mappingList;
  }

  /** The iommufd all of this space's iommufd containers share, once one was needed. */
  get iommufdHandle(): IommufdHandle | undefined {
    return this.iommufd;
  }

  device(name: string): Device {
    const device = this.deviceList.find((d) => d.name === name);
    if (!device) throw new InvalidArgumentError('device', `${JSON.stringify(name)} is not attached to this address space`);
    return device;
  }

  /**
   * Runs `body` in the space's queue: no map, unmap, attach or detach is half done while it runs
   * (what an observer needs to read the space and join it atomically).
   */
  exclusive<T>(body: () => T): Promise<T> {
    return this.serialize(body);
  }

  addObserver(observer: MappingObserver): () => void {
    this.observers.add(observer);
    return () => this.observers.delete(observer);
  }

  /**
   * Attaches a device found by sysfs path, PCI address, cdev path or simulated name, or a kernel
   * test mock device (`mock`, `mock:no-dirty`) on a kernel that has them.
   */
  attach(location: string, options: AttachOptions = {}): Promise<Device> {
    return this.serialize(() => this.attachNow(location, options));
  }

  detach(device: Device | string): Promise<void> {
    if (typeof device !== 'string' && !(device instanceof Device)) return Promise.reject(new InvalidArgumentError('device', 'must be a Device or the name of an attached device'));
    return this.serialize(() => this.detachNow(typeof device === 'string' ? this.device(device) : device));
  }

  map(request: MapRequest): Promise<Mapping> {
    if (request === null || typeof request !== 'object') return Promise.reject(new InvalidArgumentError('map', 'must be an object { iova, size }'));
    return this.serialize(() => this.mapNow(request));
  }

  unmap(span: IovaSpan): Promise<readonly Mapping[]> {
    if (span === null || typeof span !== 'object') return Promise.reject(new InvalidArgumentError('unmap', 'must be an object { iova, size }'));
    return this.serialize(() => this.unmapNow(span));
  }

  topology(): Topology {
    return {
      containers: this.containerList.map((c) => c.describe()),
      devices: this.deviceList.map((d) => ({
        name: d.name,
        backend: d.backend,
        tracker: d.dirtyTracker,
        container: this.containerList.indexOf(d.container),
        hwpt: d.hwpt?.id,
      })),
    };
  }

  /** Detaches every device, unmaps everything and closes the iommufd. A second close() does nothing. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closing = this.serialize(async () => {
      for (const device of [...this.deviceList].reverse()) await this.detachNow(device);
      // Containers an earlier failed cleanup left behind.
      for (const container of [...this.containerList]) this.releaseUnused(container);
      for (const mapping of [...this.mappingList]) {
        this.mappingList.splice(this.mappingList.indexOf(mapping), 1);
        if (mapping.ownsMemory) this.releaseOwned(mapping.memory);
      }
      // Memory whose munmap failed before: once more, and a close() that still cannot give
      // it back fails (and can be called again) rather than forget it.
      for (const memory of [...this.unreleased]) {
        memory.release();
        this.unreleased.delete(memory);
      }
      if (this.iommufd !== this.options.iommufdHandle) this.iommufd?.close();
      this.iommufd = undefined;
      this.closed = true;
    });
    // A failed close can be retried: the next call finishes what this one left.
    this.closing.catch(() => {
      if (!this.closed) this.closing = undefined;
    });
    return this.closing;
  }

  /**
   * Gives back memory the space allocated. The unmap it follows is done in the kernel, so a
   * failing munmap (ENOMEM: the kernel could not split or free the VMA) must not undo it nor
   * lose the memory: it is kept and given back by close().
   */
  private releaseOwned(memory: HostMemory): void {
    try {
      memory.release();
    } catch (error) {
      if (!isKernelError(error)) throw error;
      this.unreleased.add(memory);
    }
  }

  private serialize<T>(operation: () => Promise<T> | T): Promise<T> {
    const run = this.queue.then(() => {
      if (this.closed) throw new InvalidArgumentError('address space', 'is closed');
      return operation();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  // ---- attach ----

  private async attachNow(location: string, options: AttachOptions): Promise<Device> {
    if (typeof location !== 'string' || location.length === 0) throw new InvalidArgumentError('device', 'must name a device');
    const choice = options.iommufd ?? this.options.iommufd ?? 'auto';
    if (!['on', 'off', 'auto'].includes(choice)) throw new InvalidArgumentError('iommufd', `must be on, off or auto, got ${JSON.stringify(choice)}`);
    let attach: (undo: UndoStack) => Device;
    if (MOCK_LOCATION.test(location)) {
      if (choice === 'off') throw new InvalidArgumentError('iommufd', 'kernel test mock devices exist only on iommufd');
      attach = (undo) => this.attachMock(location, options.name, undo);
    } else {
      const found = this.kernel.locateDevice(location);
      const name = options.name ?? found.name;
      if (this.deviceList.some((d) => d.name === name)) throw new InvalidArgumentError('device', `${name} is already attached to this address space`);
      const backend = this.chooseBackend(found, options.fd !== undefined && choice === 'auto' ? 'on' : choice);
      if (options.fd !== undefined) {
        if (!Number.isInteger(options.fd) || options.fd < 0) throw new InvalidArgumentError('fd', `must be an open file descriptor number, got ${String(options.fd)}`);
        if (backend !== 'iommufd') throw new InvalidArgumentError('fd', 'a passed device fd is a VFIO cdev: it needs iommufd on');
        if (!this.kernel.adoptDeviceFd) throw new VfioSetupError(`the ${this.kernel.name} kernel cannot take a passed device fd`);
      }
      attach = (undo) => (backend === 'iommufd' ? this.attachIommufd(found, name, undo, options.fd) : this.attachLegacy(found, name, undo));
    }
    const undo = new UndoStack();
    let device: Device;
    try {
      device = attach(undo);
    } catch (error) {
      return undo.unwind(error);
    }
    // Observers (a running DirtySync) start tracking the device, or refuse it: then it is undone.
    try {
      await this.tellObservers((o) => o.afterAttach?.(device), (o) => o.attachAborted?.(device));
    } catch (error) {
      return undo.unwind(error);
    }
    undo.commit();
    return device;
  }

  /**
   * Calls `hook` on each observer in turn. If one throws, `aborted` goes to those that returned,
   * newest first, and the error is rethrown. Returns the observers that returned, in order: the
   * ones the rest of the operation talks to.
   */
  private async tellObservers(hook: (o: MappingObserver) => unknown, aborted: (o: MappingObserver) => unknown): Promise<MappingObserver[]> {
    const told: MappingObserver[] = [];
    try {
      for (const observer of this.observers) {
        await hook(observer);
        told.push(observer);
      }
    } catch (error) {
      for (const observer of [...told].reverse()) await aborted(observer);
      throw error;
    }
    return told;
  }

  private chooseBackend(found: DeviceLocation, choice: IommufdChoice): DeviceBackend {
    if (choice === 'on') {
      if (!found.cdevPath) throw new VfioSetupError(`${found.name} has no VFIO cdev: iommufd needs the device bound to a VFIO driver on a kernel with CONFIG_VFIO_DEVICE_CDEV`);
      return 'iommufd';
    }
    if (choice === 'off' || !found.cdevPath) {
      if (found.groupId === undefined) throw new VfioSetupError(`${found.name} has neither a VFIO cdev nor an IOMMU group: bind it to vfio-pci`);
      return 'legacy';
    }
    return 'iommufd';
  }

  private openIommufd(undo: UndoStack): IommufdHandle {
    if (this.iommufd) return this.iommufd;
    const passed = this.options.iommufdHandle;
    if (passed) {
      if (passed.closed) throw new InvalidArgumentError('iommufdHandle', 'was closed by its owner');
      this.iommufd = passed; // not ours to close
      return passed;
    }
    const handle = this.kernel.openIommufd();
    this.iommufd = handle;
    undo.push('close iommufd', () => {
      this.iommufd = undefined;
      handle.close();
    });
    return handle;
  }

  private attachIommufd(found: DeviceLocation, name: string, undo: UndoStack, fd?: number): Device {
    const iommufd = this.openIommufd(undo);
    const handle = fd === undefined ? this.kernel.openDevice(found.sysfsPath ?? found.name) : this.kernel.adoptDeviceFd!(found.sysfsPath ?? found.name, fd);
    undo.push(`close ${name}`, () => handle.close());
    const devId = handle.bindIommufd(iommufd);
    // Read before choosing a HWPT: whether the IOMMU tracks dirty pages decides which HWPT fits.
    const hostIommu = found.mdev ? undefined : new HostIommuInfo(iommufd.getHwInfo(devId));
    const dmaLogging = handle.featureProbe(uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START);
    const info = handle.getInfo();
    const place = (container: IommufdContainer) =>
      new Device(name, handle, 'iommufd', container, found, hostIommu, info, dmaLogging, found.groupId);

    // Reuse a container of this iommufd: any attach the kernel refuses (EINVAL for an
    // incompatible domain, EADDRINUSE for an aperture or reserved-region clash, ...) means the
    // IOAS does not fit the device; undo that try and take the next one, as QEMU's
    // iommufd_cdev_attach does.
    for (const container of this.iommufdContainers()) {
      const mark = undo.mark;
      try {
        const device = place(container);
        container.autoDomains.attach(device, undo);
        container.refreshIovaRanges();
        return this.adopt(device, container, undo);
      } catch (error) {
        const failures = undo.unwindTo(mark);
        if (!isKernelError(error) || failures.length) throw error;
      }
    }
    const container = this.createIommufdContainer(iommufd, undo);
    const device = place(container);
    container.autoDomains.attach(device, undo);
    container.refreshIovaRanges();
    return this.adopt(device, container, undo);
  }

  private attachMock(location: string, displayName: string | undefined, undo: UndoStack): Device {
    const iommufd = this.openIommufd(undo);
    const test = iommufd.test;
    if (!test || !test.available()) throw new VfioSetupError('this kernel has no test mock devices (CONFIG_IOMMUFD_TEST)');
    const words = location.split(':').slice(1);
    const container = this.iommufdContainers()[0] ?? this.createIommufdContainer(iommufd, undo);
    // The mock is born attached to the IOAS (a kernel auto domain); AutoDomains then moves it.
    const handle: DeviceHandle = test.mockDomain(container.ioasId, { noDirty: words.includes('no-dirty'), hugeIova: words.includes('huge-iova') });
    undo.push(`destroy ${handle.name}`, () => handle.close());
    const name = displayName ?? handle.name;
    if (this.deviceList.some((d) => d.name === name)) throw new InvalidArgumentError('device', `${name} is already attached to this address space`);
    const hostIommu = new HostIommuInfo(iommufd.getHwInfo(handle.devId!));
    const device = new Device(name, handle, 'iommufd', container, undefined, hostIommu, undefined, false, undefined);
    container.autoDomains.attach(device, undo);
    container.refreshIovaRanges();
    return this.adopt(device, container, undo);
  }

  private iommufdContainers(): IommufdContainer[] {
    return this.containerList.filter((c): c is IommufdContainer => c instanceof IommufdContainer);
  }

  private createIommufdContainer(iommufd: IommufdHandle, undo: UndoStack): IommufdContainer {
    const ioasId = iommufd.ioasAlloc();
    undo.push(`destroy IOAS ${ioasId}`, () => iommufd.destroy(ioasId));
    // A second IOAS in the same iommufd is filled with IOMMU_IOAS_COPY from one that holds the
    // mapping: the pages pinned for the first are shared, not pinned again.
    const container: IommufdContainer = new IommufdContainer(iommufd, ioasId, (mapping) =>
      this.iommufdContainers().find((other) => other !== container && other.iommufd === iommufd && other.holds(mapping)));
    // Replay the space's mappings: the destroy above drops them all on failure.
    for (const mapping of this.mappingList) container.map(mapping);
    this.containerList.push(container);
    undo.push('forget the new container', () => this.containerList.splice(this.containerList.indexOf(container), 1));
    return container;
  }

  private attachLegacy(found: DeviceLocation, name: string, undo: UndoStack): Device {
    const groupId = found.groupId!;
    let container = this.legacyContainers().find((c) => c.groups.has(groupId));
    if (!container) {
      const group = this.kernel.openGroup(groupId);
      undo.push(`close group ${groupId}`, () => group.close());
      if (!group.getStatus().viable) {
        throw new VfioSetupError(`group ${groupId} is not viable: every device in it must be bound to a VFIO driver (or unbound)`);
      }
      for (const candidate of this.legacyContainers()) {
        try {
          group.setContainer(candidate.handle);
        } catch (error) {
          if (isKernelError(error)) continue; // that container's IOMMU cannot take this group
          throw error;
        }
        container = candidate;
        undo.push(`unset container of group ${groupId}`, () => group.unsetContainer());
        break;
      }
      if (!container) container = this.createLegacyContainer(group, undo);
      const joined = container;
      joined.groups.set(groupId, group);
      undo.push(`forget group ${groupId}`, () => joined.groups.delete(groupId));
    }
    const group = container.groups.get(groupId)!;
    const handle = group.openDevice(found.name);
    undo.push(`close ${name}`, () => handle.close());
    const info = handle.getInfo();
    const dmaLogging = handle.featureProbe(uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START);
    const device = new Device(name, handle, 'legacy', container, found, undefined, info, dmaLogging, groupId);
    return this.adopt(device, container, undo);
  }

  private legacyContainers(): LegacyContainer[] {
    return this.containerList.filter((c): c is LegacyContainer => c instanceof LegacyContainer);
  }

  private createLegacyContainer(group: ReturnType<Kernel['openGroup']>, undo: UndoStack): LegacyContainer {
    const handle = this.kernel.openLegacyContainer();
    undo.push('close the legacy container', () => handle.close());
    const version = handle.getApiVersion();
    if (version !== uapi.VFIO_API_VERSION) throw new VfioSetupError(`VFIO API version ${version}, expected ${uapi.VFIO_API_VERSION}`);
    if (handle.checkExtension(uapi.VFIO_TYPE1v2_IOMMU) <= 0) throw new VfioSetupError('the legacy container has no type1v2 IOMMU (VFIO_TYPE1v2_IOMMU)');
    group.setContainer(handle);
    undo.push(`unset container of group ${group.groupId}`, () => group.unsetContainer());
    handle.setIommu(uapi.VFIO_TYPE1v2_IOMMU);
    const container = new LegacyContainer(handle);
    for (const mapping of this.mappingList) container.map(mapping);
    this.containerList.push(container);
    undo.push('forget the new container', () => this.containerList.splice(this.containerList.indexOf(container), 1));
    return container;
  }

  private adopt(device: Device, container: Container, undo: UndoStack): Device {
    container.devices.add(device);
    this.deviceList.push(device);
    undo.push(`forget ${device.name}`, () => {
      container.devices.delete(device);
      this.deviceList.splice(this.deviceList.indexOf(device), 1);
    });
    return device;
  }

  // ---- detach ----

  private async detachNow(device: Device): Promise<void> {
    if (!this.deviceList.includes(device)) throw new InvalidArgumentError('device', `${device.name} is not attached to this address space`);
    const entered = await this.tellObservers((o) => o.beforeDetach?.(device), (o) => o.detachAborted?.(device));
    const leaving = () => {
      for (const observer of entered) observer.deviceLeaving?.(device);
    };
    const container = device.container;
    try {
      // Off its page table first; if that fails nothing has changed. A legacy device leaves
      // its container when its fd closes: observers drain it just before.
      if (container instanceof IommufdContainer) container.autoDomains.detach(device, leaving);
      else leaving();
    } catch (error) {
      for (const observer of entered) await observer.detachAborted?.(device);
      throw error;
    }
    try {
      container.devices.delete(device);
      this.deviceList.splice(this.deviceList.indexOf(device), 1);
      // From here on the device is gone; a failing cleanup step leaves its object listed so
      // that the next detach or close() finishes it.
      if (!device.handle.closed) device.handle.close();
      this.releaseUnused(container);
    } finally {
      for (const observer of entered) await observer.afterDetach?.(device);
    }
  }

  /** Gives back what no device uses any more: legacy groups, then whole containers. */
  private releaseUnused(container: Container): void {
    if (container instanceof LegacyContainer) {
      for (const [groupId, group] of container.groups) {
        if ([...container.devices].some((d) => d.groupId === groupId)) continue;
        if (group.getStatus().containerSet) group.unsetContainer();
        container.groups.delete(groupId);
        group.close();
      }
    }
    if (container.devices.size === 0) {
      if (container instanceof IommufdContainer) container.destroy();
      if (container instanceof LegacyContainer) container.handle.close();
      this.containerList.splice(this.containerList.indexOf(container), 1);
      return;
    }
    try {
      container.refreshIovaRanges();
    } catch {
      // Ranges only widen on detach: the ones held are a safe subset until the next refresh.
    }
  }

  // ---- map / unmap ----

  private checkSpan(argument: string, iova: unknown, size: unknown): IovaSpan {
    const start = checkU64(`${argument}.iova`, iova);
    const length = checkLength(`${argument}.size`, size);
    if (start + length - 1n > U64_MAX) throw new InvalidArgumentError(argument, `iova 0x${start.toString(16)} + size 0x${length.toString(16)} overflows past 2^64`);
    if (start % this.pageSize !== 0n || length % this.pageSize !== 0n) {
      throw new InvalidArgumentError(argument, `iova 0x${start.toString(16)} and size 0x${length.toString(16)} must be multiples of the page size 0x${this.pageSize.toString(16)}`);
    }
    return { iova: start, size: length };
  }

  private async mapNow(request: MapRequest): Promise<Mapping> {
    const span = this.checkSpan('map', request.iova, request.size);
    const overlap = this.mappingList.find((m) => m.iova < span.iova + span.size && span.iova < m.iova + m.size);
    if (overlap) {
      throw new InvalidArgumentError('map', `0x${span.iova.toString(16)}+0x${span.size.toString(16)} overlaps the mapping at 0x${overlap.iova.toString(16)}+0x${overlap.size.toString(16)}; unmap it first`);
    }
    // The IOAS alignment grows with the IOMMU page sizes of what is attached (iopt->iova_alignment).
    for (const container of this.containerList) {
      if (span.iova % container.alignment !== 0n || span.size % container.alignment !== 0n) {
        throw new InvalidArgumentError('map', `iova 0x${span.iova.toString(16)} and size 0x${span.size.toString(16)} must be multiples of the container's IOVA alignment 0x${container.alignment.toString(16)}`);
      }
    }
    const memoryOffset = checkU64('memoryOffset', request.memoryOffset ?? 0n);
    if (request.memory && memoryOffset + span.size > request.memory.length) {
      throw new InvalidArgumentError('memory', `offset 0x${memoryOffset.toString(16)} + size 0x${span.size.toString(16)} does not fit its 0x${request.memory.length.toString(16)} bytes`);
    }
    const memory = request.memory ?? this.kernel.allocateHostMemory(span.size);
    const mapping: Mapping = { ...span, memory, memoryOffset, readonly: request.readonly ?? false, ownsMemory: !request.memory };
    const undo = new UndoStack();
    if (mapping.ownsMemory) undo.push('release memory', () => memory.release());
    // Observers reserve what tracking the mapping needs before the kernel maps it, so a map is
    // either tracked or refused, never live and untracked.
    let entered: MappingObserver[];
    try {
      entered = await this.tellObservers((o) => o.beforeMap?.(mapping), (o) => o.mapAborted?.(mapping));
    } catch (error) {
      undo.unwindTo(0);
      throw error;
    }
    try {
      undo.run(() => {
        for (const container of this.containerList) {
          container.map(mapping);
          undo.push('unmap from a container', () => container.unmap(span.iova, span.size));
        }
      });
    } catch (error) {
      // undo.run has unmapped and released what it did.
      for (const observer of [...entered].reverse()) await observer.mapAborted?.(mapping);
      throw error;
    }
    const index = this.mappingList.findIndex((m) => m.iova > span.iova);
    this.mappingList.splice(index === -1 ? this.mappingList.length : index, 0, mapping);
    for (const observer of entered) await observer.afterMap?.(mapping);
    return mapping;
  }

  private async unmapNow(request: IovaSpan): Promise<readonly Mapping[]> {
    const span = this.checkSpan('unmap', request.iova, request.size);
    const end = span.iova + span.size;
    const partial = this.mappingList.find((m) => m.iova < end && span.iova < m.iova + m.size && (m.iova < span.iova || m.iova + m.size > end));
    if (partial) {
      throw new InvalidArgumentError('unmap', `must cover whole mappings: the mapping at 0x${partial.iova.toString(16)}+0x${partial.size.toString(16)} is only partly inside`);
    }
    const removed = this.mappingList.filter((m) => m.iova >= span.iova && m.iova + m.size <= end);
    if (removed.length === 0) throw new InvalidArgumentError('unmap', `nothing is mapped in 0x${span.iova.toString(16)}+0x${span.size.toString(16)}`);
    const entered = await this.tellObservers((o) => o.beforeUnmap?.(span, removed), (o) => o.unmapAborted?.(span, removed, new Map()));
    const bitmaps = new Map<LegacyContainer, UnmapBitmap>();
    const undo = new UndoStack();
    try {
      undo.run(() => {
      for (const container of this.containerList) {
        let bitmap: UnmapBitmap | undefined;
        if (container instanceof LegacyContainer) {
          for (const observer of entered) bitmap ??= observer.type1UnmapBitmap?.(container, span);
        }
        container.unmap(span.iova, span.size, bitmap);
        if (bitmap && container instanceof LegacyContainer) bitmaps.set(container, bitmap);
        undo.push('map back into a container', () => removed.forEach((m) => container.map(m)));
      }
      });
    } catch (error) {
      for (const observer of entered) await observer.unmapAborted?.(span, removed, bitmaps);
      throw error;
    }
    for (const mapping of removed) {
      this.mappingList.splice(this.mappingList.indexOf(mapping), 1);
      if (mapping.ownsMemory) this.releaseOwned(mapping.memory);
    }
    for (const observer of entered) await observer.afterUnmap?.(span, removed, bitmaps);
    return removed;
  }
}
