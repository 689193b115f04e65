// The simulated kernel: implements the Kernel seam in process (no /dev, no real memory), plus the
// controls a simulator needs — devices declared as data, device DMA that dirties memory, fault
// injection, an ioctl trace, and an inspectable object table to prove nothing leaked.
import { ERRNO } from '../errno.js';
import { InvalidArgumentError, KernelError, type KernelObjects } from '../errors.js';
import type {
  DeviceHandle,
  DeviceLocation,
  GroupHandle,
  IommufdHandle,
  Kernel,
  KernelOptions,
  LegacyContainerHandle,
  ProcessMemory,
} from '../types.js';
import { checkLength, checkU32 } from '../validate.js';
import { SimulatedDevice, SimulatedDeviceFile, SimulatedVfioGroup } from './device.js';
import { fail } from './failure.js';
import { FaultInjector, type ErrnoLike, type FailNextOptions, type IoctlCall, type IoctlTrace } from './faults.js';
import { HOST_PAGE_SIZES, HostAddressSpace, type SimulatedHostMemory } from './host-memory.js';
import { maxBig, minBig, type Area, type IoPagetable } from './io-pagetable.js';
import type { HwptObject, IommufdContext, IommuDevice, ObjectSnapshot } from './iommufd-objects.js';
import { SimulatedIommufd, SimulatedMockDevice, mockIommuDevice, type IommufdHost } from './iommufd.js';
import { KernelMemory } from './kernel-memory.js';
import type { KernelServices } from './services.js';
import { resolveDeviceSpecs, type SimulatedDeviceModel, type SimulatedDeviceSpecInput } from './spec.js';
import { SimulatedGroup, SimulatedLegacyContainer, type Type1Host } from './type1.js';
import { z } from 'zod';

export interface SimulatedKernelOptions {
  /** The devices this kernel has (see SimulatedDeviceSpec). */
  readonly devices?: readonly SimulatedDeviceSpecInput[];
  /** Answer IOMMU_TEST_CMD like a kernel built with CONFIG_IOMMUFD_TEST (default true). */
  readonly iommufdTest?: boolean;
  /**
   * Backing page size of allocateHostMemory() when not given per allocation: 4 KiB (default,
   * anonymous memory), 2 MiB or 1 GiB (hugetlbfs). It bounds the IOPTE size an IOMMU can use.
   */
  readonly hostPageSize?: bigint;
  /**
   * The kernel's PAGE_SIZE: 4 KiB (default, x86-64), 16 KiB or 64 KiB (arm64, ppc64). What counts
   * in it follows: LOG_MAX_RANGES (PAGE_SIZE / sizeof(struct vfio_device_feature_dma_logging_range))
   * and `systemPageSize`, the AddressSpace's default mapping alignment. The page tables, type1's
   * page sizes and IOAS alignment are modelled on x86-64's 4 KiB whatever this says.
   */
  readonly systemPageSize?: bigint;
}

/** PAGE_SIZE values Linux builds with. */
export const SYSTEM_PAGE_SIZES = [4096n, 16384n, 65536n] as const;

/** The most bytes a simulated memory with content holds (Node's typed array limit). */
export const MAXIMUM_CONTENT_BYTES = 1n << 32n;

const SimulatedKernelOptionsSpec = z
  .object({
    devices: z.array(z.unknown(), { error: 'must be an array of device specs' }).optional(),
    iommufdTest: z.boolean().optional(),
    hostPageSize: z.bigint({ error: 'must be a bigint (4096n, 2097152n or 1073741824n)' }).optional(),
    systemPageSize: z.bigint({ error: 'must be a bigint (4096n, 16384n or 65536n)' }).optional(),
  })
  .strict();

/** What a simulated DMA write did. */
export interface DmaResult {
  /** Bytes that reached memory (translated and writeable). */
  readonly written: bigint;
  /** Bytes the IOMMU refused (unmapped, read-only, or the device not attached). */
  readonly faulted: bigint;
}

/** The kernel's object table, for tests to assert that nothing leaked. */
export interface SimulatedObjectTable {
  /** File descriptors open on this kernel. */
  readonly openFds: number;
  readonly iommufds: readonly {
    readonly fd: number;
    /** The fd is closed but bound devices keep the context alive. */
    readonly fdClosed: boolean;
    readonly objects: readonly ObjectSnapshot[];
  }[];
  readonly containers: readonly {
    readonly fd: number;
    readonly closed: boolean;
    readonly groups: readonly number[];
    readonly iommu: string | undefined;
    readonly mappings: number;
  }[];
  readonly groups: readonly { readonly groupId: number; readonly fd: number; readonly container: number | undefined; readonly deviceFds: number }[];
  readonly deviceFiles: readonly { readonly fd: number; readonly name: string; readonly kind: 'cdev' | 'group'; readonly devId: number | undefined; readonly attached: boolean }[];
  readonly mockDevices: readonly string[];
  readonly dmaLogging: readonly { readonly device: string; readonly pageSize: bigint; readonly ranges: number }[];
  readonly hostMemory: readonly { readonly address: bigint; readonly length: bigint; readonly mappings: number }[];
}

interface DmaOwnership {
  owner: object;
  count: number;
}

/** Something a DMA can be issued from. */
export type DmaSource = string | DeviceHandle;

export class SimulatedKernel implements Kernel, KernelServices, IommufdHost, Type1Host {
  readonly name = 'simulated' as const;
  /** The kernel's PAGE_SIZE (option systemPageSize, default 4 KiB; hugetlbfs backing is hostPageSize). */
  readonly systemPageSize: bigint;
  readonly identity: object = this;
  readonly services: KernelServices = this;
  readonly kernelMemory = new KernelMemory();
  readonly devices: readonly SimulatedDeviceModel[];
  readonly testOpsEnabled: boolean;
  private readonly hostPageSize: bigint;
  private readonly deviceStates = new Map<string, SimulatedDevice>();
  private readonly vfioGroups = new Map<number, SimulatedVfioGroup>();
  private readonly fds = new Set<number>();
  private readonly contexts = new Set<IommufdContext>();
  private readonly iommufds = new Set<SimulatedIommufd>();
  private readonly containers = new Set<SimulatedLegacyContainer>();
  private readonly groupHandles = new Set<SimulatedGroup>();
  private readonly deviceFiles = new Set<SimulatedDeviceFile>();
  private readonly mocks = new Set<SimulatedMockDevice>();
  private readonly mockIndexes = new Set<number>();
  private readonly liveMockDevices = new Set<IommuDevice>();
  private readonly dmaOwners = new Map<string, DmaOwnership>();
  private readonly memory = new HostAddressSpace(this);
  private readonly faults = new FaultInjector();

  constructor(options: SimulatedKernelOptions = {}) {
    // The options' shape; each device is checked in full by resolveDeviceSpecs. Strict: a
    // misspelt option is an error rather than silently ignored.
    const shape = SimulatedKernelOptionsSpec.safeParse(options);
    if (!shape.success) {
      const issue = shape.error.issues[0]!;
      const keys = issue.code === 'unrecognized_keys' ? issue.keys.join(', ') : '';
      throw new InvalidArgumentError(
        issue.path.length ? issue.path.join('.') : 'options',
        keys ? `unknown option ${keys} (known: ${Object.keys(SimulatedKernelOptionsSpec.shape).join(', ')})` : issue.message,
      );
    }
    this.devices = resolveDeviceSpecs(options.devices ?? []);
    this.testOpsEnabled = options.iommufdTest ?? true;
    this.systemPageSize = options.systemPageSize ?? 4096n;
    if (!SYSTEM_PAGE_SIZES.includes(this.systemPageSize as (typeof SYSTEM_PAGE_SIZES)[number])) {
      throw new InvalidArgumentError('systemPageSize', `must be one of ${SYSTEM_PAGE_SIZES.join(', ')}, got ${this.systemPageSize}`);
    }
    this.hostPageSize = options.hostPageSize ?? 4096n;
    if (!HOST_PAGE_SIZES.includes(this.hostPageSize as (typeof HOST_PAGE_SIZES)[number])) {
      throw new InvalidArgumentError('hostPageSize', `must be one of ${HOST_PAGE_SIZES.join(', ')}, got ${this.hostPageSize}`);
    }
    for (const model of this.devices) {
      let group = this.vfioGroups.get(model.groupId);
      if (!group) {
        group = new SimulatedVfioGroup(model.groupId);
        this.vfioGroups.set(model.groupId, group);
      }
      const device = new SimulatedDevice(model, group, this.services);
      group.devices.push(device);
      this.deviceStates.set(model.name, device);
    }
    for (const group of this.vfioGroups.values()) {
      const kinds = new Set(group.devices.map((device) => device.model.mdev));
      if (kinds.size > 1) throw new InvalidArgumentError('devices', `group ${group.groupId} mixes mdevs and devices with an IOMMU`);
      const types = new Set(group.devices.map((device) => device.model.iommu?.type));
      if (types.size > 1) throw new InvalidArgumentError('devices', `group ${group.groupId} mixes IOMMU types`);
    }
  }

  // ---- KernelServices ---------------------------------------------------------------------

  enterIoctl(ioctl: string, objects: KernelObjects, fd: number): void {
    this.faults.enter({ ioctl, objects, fd });
  }

  leaveIoctl(errno: number): void {
    this.faults.leave(errno);
  }

  allocateFd(): number {
    let fd = 3;
    while (this.fds.has(fd)) fd++;
    this.fds.add(fd);
    return fd;
  }

  releaseFd(fd: number): void {
    this.fds.delete(fd);
  }

  claimDmaOwner(groupKey: string, owner: object): void {
    const current = this.dmaOwners.get(groupKey);
    // Another iommufd or a legacy container owns the group.
    if (current && current.owner !== owner) fail('EBUSY');
    if (current) current.count++;
    else this.dmaOwners.set(groupKey, { owner, count: 1 });
  }

  releaseDmaOwner(groupKey: string, owner: object): void {
    const current = this.dmaOwners.get(groupKey);
    if (!current || current.owner !== owner) return;
    current.count--;
    if (current.count === 0) this.dmaOwners.delete(groupKey);
  }

  dmaOwner(groupKey: string): object | undefined {
    return this.dmaOwners.get(groupKey)?.owner;
  }

  // ---- IommufdHost / Type1Host ---------------------------------------------------------------

  createMockDevice(flags: number): IommuDevice {
    let index = 0;
    while (this.mockIndexes.has(index)) index++;
    this.mockIndexes.add(index);
    const device = mockIommuDevice(index, flags);
    this.liveMockDevices.add(device);
    return device;
  }

  destroyMockDevice(device: IommuDevice): void {
    this.liveMockDevices.delete(device);
    this.mockIndexes.delete(Number(device.groupKey.slice('mock:'.length)));
  }

  registerMock(handle: SimulatedMockDevice): void {
    this.mocks.add(handle);
  }

  contextReleased(context: IommufdContext): void {
    this.contexts.delete(context);
    for (const handle of this.iommufds) if (handle.context === context) this.iommufds.delete(handle);
    for (const mock of this.mocks) if (mock.iommufd.context === context) this.mocks.delete(mock);
  }

  fileClosed(file: SimulatedDeviceFile): void {
    this.deviceFiles.delete(file);
    for (const group of this.groupHandles) group.deviceClosed(file);
  }

  containerClosed(container: SimulatedLegacyContainer): void {
    this.containers.delete(container);
  }

  groupClosed(group: SimulatedGroup): void {
    this.groupHandles.delete(group);
  }

  // ---- Kernel -----------------------------------------------------------------------------

  /** Runs an open(2) of a device node through fault injection and the trace. */
  private open(path: string): void {
    this.enterIoctl('open', { path }, -1);
    this.leaveIoctl(0);
  }

  openIommufd(options?: KernelOptions): IommufdHandle {
    this.open('/dev/iommu');
    const handle = new SimulatedIommufd(this, options);
    this.iommufds.add(handle);
    this.contexts.add(handle.context);
    return handle;
  }

  private find(location: string): SimulatedDevice {
    if (typeof location !== 'string' || location.length === 0) throw new InvalidArgumentError('device', 'is empty: give a simulated device\'s name, PCI address, sysfs path or cdev path');
    for (const device of this.deviceStates.values()) {
      const where = this.location(device);
      if (location === where.name || location === where.pciAddress || location === where.sysfsPath || location === where.cdevPath) return device;
    }
    const known = [...this.deviceStates.keys()].join(', ') || 'none';
    throw new InvalidArgumentError('device', `no simulated device ${JSON.stringify(location)}: give a device's name, PCI address, sysfs path or cdev path (devices: ${known})`);
  }

  private location(device: SimulatedDevice): DeviceLocation {
    const model = device.model;
    return {
      name: model.name,
      sysfsPath: model.mdev ? `/sys/bus/mdev/devices/${model.name}` : `/sys/bus/pci/devices/${model.pciAddress}`,
      pciAddress: model.pciAddress,
      cdevPath: model.cdevIndex === undefined ? undefined : `/dev/vfio/devices/vfio${model.cdevIndex}`,
      groupId: model.groupId,
      mdev: model.mdev,
      driver: model.mdev ? 'vfio_mdev' : 'vfio-pci',
    };
  }

  pciResetSet(device: SimulatedDevice): SimulatedDevice[] | undefined {
    const model = device.model;
    if (model.mdev || model.pciReset === 'none' || !model.pciAddress) return undefined;
    const bus = model.pciAddress.slice(0, 7); // DDDD:BB
    return [...this.deviceStates.values()].filter((other) => !other.model.mdev && other.model.pciReset === 'bus' && other.model.pciAddress?.slice(0, 7) === bus);
  }

  groupOfFd(fd: number): SimulatedVfioGroup | undefined {
    const handle = [...this.groupHandles].find((h) => h.fd === fd && !h.closed);
    return handle?.group;
  }

  /** The fd of an iommufd opened on this kernel: its handle (the simulator has one object per open file). */
  adoptIommufd(fd: number): IommufdHandle {
    const handle = [...this.iommufds].find((h) => h.fd === fd && !h.closed);
    if (!handle) throw new KernelError('fstat', ERRNO.EBADF, { fd });
    return handle;
  }

  /** The fd of a cdev opened on this kernel and not yet bound, checked to be `location`'s. */
  adoptDeviceFd(location: string, fd: number): DeviceHandle {
    const device = this.find(location);
    const file = [...this.deviceFiles].find((f) => f.fd === fd && !f.closed);
    if (!file) throw new KernelError('fstat', ERRNO.EBADF, { fd });
    if (file.kind !== 'cdev' || file.name !== device.name) {
      throw new InvalidArgumentError('fd', `fd ${fd} is ${file.kind === 'cdev' ? `${file.name}'s cdev` : `a group device fd of ${file.name}`}, not ${device.name}'s cdev`);
    }
    return file;
  }

  locateDevice(location: string): DeviceLocation {
    return this.location(this.find(location));
  }

  listDevices(): DeviceLocation[] {
    return [...this.deviceStates.values()].map((device) => this.location(device));
  }

  openDevice(location: string, options?: KernelOptions): DeviceHandle {
    const device = this.find(location);
    const where = this.location(device);
    if (where.cdevPath === undefined) {
      throw new InvalidArgumentError('device', `${device.name} has no VFIO cdev (legacy group ${device.model.groupId} only): use the legacy group`);
    }
    this.open(where.cdevPath);
    const file = new SimulatedDeviceFile(this, device, 'cdev', options);
    this.deviceFiles.add(file);
    return file;
  }

  openLegacyContainer(options?: KernelOptions): LegacyContainerHandle {
    this.open('/dev/vfio/vfio');
    const container = new SimulatedLegacyContainer(this, options);
    this.containers.add(container);
    return container;
  }

  openGroup(groupId: number, options?: KernelOptions): GroupHandle {
    checkU32('groupId', groupId);
    const path = `/dev/vfio/${groupId}`;
    this.open(path);
    const group = this.vfioGroups.get(groupId);
    if (!group) throw new KernelError('open', ERRNO.ENOENT, { path });
    // vfio_group_fops_open: one opener at a time, and not while a device of it is bound by cdev.
    if (group.cdevBound > 0 || group.openedBy) throw new KernelError('open', ERRNO.EBUSY, { path });
    const handle = new SimulatedGroup(this, group, options);
    this.groupHandles.add(handle);
    return handle;
  }

  /**
   * Kernel.shareProcessMemory: from now on the dirty words of IOMMU domains and device DMA logs
   * are placed in `process.memory` as they are first written, so a read-and-clear into a bitmap
   * of that memory is one WASM pass. The returned function moves them back out (bits kept).
   */
  shareProcessMemory(process: ProcessMemory): () => void {
    if (!(process?.memory instanceof WebAssembly.Memory) || !(process.memory.buffer instanceof SharedArrayBuffer)) {
      throw new InvalidArgumentError('memory', 'must be a shared WebAssembly.Memory');
    }
    if (typeof process.allocate !== 'function') throw new InvalidArgumentError('allocate', 'must be a function');
    return this.kernelMemory.share(process);
  }

  /**
   * Simulated host memory: an address range that costs nothing, or with `content: true` real
   * bytes (at most MAXIMUM_CONTENT_BYTES per allocation) that DMA writes with data store into.
   */
  allocateHostMemory(length: bigint, options?: { readonly pageSize?: bigint; readonly content?: boolean }): SimulatedHostMemory {
    checkLength('length', length);
    const pageSize = options?.pageSize ?? this.hostPageSize;
    if (!HOST_PAGE_SIZES.includes(pageSize as (typeof HOST_PAGE_SIZES)[number])) {
      throw new InvalidArgumentError('pageSize', `must be one of ${HOST_PAGE_SIZES.join(', ')}, got ${pageSize}`);
    }
    if (options?.content && length > MAXIMUM_CONTENT_BYTES) {
      throw new InvalidArgumentError('length', `memory with content holds at most 0x${MAXIMUM_CONTENT_BYTES.toString(16)} bytes per allocation (a typed array's limit), got 0x${length.toString(16)}`);
    }
    return this.memory.allocate(length, pageSize, options?.content ?? false);
  }

  // ---- simulator controls -----------------------------------------------------------------

  /**
   * The device writes [iova, iova + length) by DMA. The write goes through the device's current
   * translation — its HWPT (setting IOPTE dirty bits when the HWPT tracks), its IOAS (an mdev's
   * access), or its group's type1 container — and is logged by the device when its DMA logging
   * is running. With `data`, the bytes land in the memory behind each translated range when that
   * memory has content; without, only the dirty state changes.
   */
  dmaWrite(source: DmaSource, iova: bigint, length: bigint, data?: Uint8Array): DmaResult {
    checkLength('length', length);
    if (data !== undefined && (!(data instanceof Uint8Array) || BigInt(data.byteLength) !== length)) {
      throw new InvalidArgumentError('data', `must be a Uint8Array of exactly 0x${length.toString(16)} bytes`);
    }
    const writer = this.dmaWriter(source);
    writer.write(iova, length, data);
    return { written: writer.written, faulted: writer.faulted };
  }

  /**
   * Many page writes from one device: page `index` is [base + index * pageSize, + pageSize).
   * Faster than dmaWrite per page (the translation is resolved once).
   */
  dmaWritePages(source: DmaSource, base: bigint, pageSize: bigint, indexes: ArrayLike<number>): DmaResult {
    checkLength('pageSize', pageSize);
    const writer = this.dmaWriter(source);
    writer.writePages(base, pageSize, indexes);
    return { written: writer.written, faulted: writer.faulted };
  }

  /**
   * Many runs of page writes from one device: run i is pages [runs[2i], runs[2i] + runs[2i+1]),
   * page p being [base + p * pageSize, + pageSize); the same dirty state (IOPTE dirty bits, DMA
   * log) as dmaWrite of each run, without data. The cost is the runs, not their pages.
   */
  dmaWriteRuns(source: DmaSource, base: bigint, pageSize: bigint, runs: ArrayLike<number>, count = Math.floor(runs.length / 2)): DmaResult {
    checkLength('pageSize', pageSize);
    if (!Number.isSafeInteger(count) || count < 0 || count * 2 > runs.length) {
      throw new InvalidArgumentError('count', `must be a whole number of runs in the ${runs.length} numbers given, got ${count}`);
    }
    for (let i = 0; i < count; i++) {
      const start = runs[2 * i]!;
      const length = runs[2 * i + 1]!;
      if (!Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(length) || length <= 0) {
        throw new InvalidArgumentError(`runs[${2 * i}]`, `a run must be a page index and a positive page count, got ${start}, ${length}`);
      }
    }
    const writer = this.dmaWriter(source);
    writer.writeRuns(base, pageSize, runs, count);
    return { written: writer.written, faulted: writer.faulted };
  }

  private dmaWriter(source: DmaSource): DmaWriter {
    if (source instanceof SimulatedMockDevice) {
      const idev = source.deviceObject;
      const hwpt = idev ? idev.group.hwpt : undefined;
      return new DmaWriter(undefined, hwpt && idev?.attached ? { hwpt } : undefined);
    }
    let device: SimulatedDevice;
    if (source instanceof SimulatedDeviceFile) {
      if (source.host !== this) throw new InvalidArgumentError('source', 'is a device of another kernel');
      device = source.device;
    } else if (typeof source === 'string') {
      device = this.find(source);
    } else {
      throw new InvalidArgumentError('source', 'must be a simulated device name or a device handle of this kernel');
    }
    const file = device.boundFile;
    let path: TranslationPath | undefined;
    if (file?.iommufd) {
      if (file.access?.ioas) path = { iopt: file.access.ioas.iopt };
      else if (file.idev && file.attached) {
        const hwpt = file.iommufd.context.hwptOf(file.idev);
        if (hwpt) path = { hwpt };
      }
    } else if (device.group.container?.iommu) {
      path = { container: device.group.container, emulated: device.group.emulated };
    }
    return new DmaWriter(device, path);
  }

  /** Make the next call(s) of `ioctl` fail with `errno`, before they change anything. */
  failNext(ioctl: string, errno: ErrnoLike, options?: FailNextOptions): void {
    this.faults.failNext(ioctl, errno, options);
  }

  /** Fail every call for which `decide` returns an errno; returns the function that stops it. */
  failWhen(decide: (call: IoctlCall) => ErrnoLike | undefined): () => void {
    return this.faults.failWhen(decide);
  }

  clearFaults(): void {
    this.faults.clear();
  }

  /** Injected failures not yet triggered. */
  get pendingFaults(): number {
    return this.faults.pending;
  }

  /** Calls of `ioctl` (or of all ioctls) so far. */
  ioctlCount(ioctl?: string): number {
    return this.faults.count(ioctl);
  }

  /** Record every ioctl from now until the trace is stopped. */
  startTrace(): IoctlTrace {
    return this.faults.startTrace();
  }

  get openFdCount(): number {
    return this.fds.size;
  }

  objects(): SimulatedObjectTable {
    return {
      openFds: this.fds.size,
      iommufds: [...this.contexts].map((context) => ({ fd: context.fd, fdClosed: context.fdClosed, objects: context.snapshot() })),
      containers: [...this.containers].map((container) => ({
        fd: container.fd,
        closed: container.closed,
        groups: container.groups.map((group) => group.groupId),
        iommu: container.driverName,
        mappings: container.mappingCount,
      })),
      groups: [...this.groupHandles].map((handle) => ({
        groupId: handle.groupId,
        fd: handle.fd,
        container: handle.group.container?.fd,
        deviceFds: handle.deviceFiles.size,
      })),
      deviceFiles: [...this.deviceFiles].map((file) => ({ fd: file.fd, name: file.name, kind: file.kind, devId: file.devId, attached: file.attached })),
      mockDevices: [...this.liveMockDevices].map((device) => device.name),
      dmaLogging: [...this.deviceStates.values()]
        .filter((device) => device.log?.active)
        .map((device) => ({ device: device.name, pageSize: device.log!.pageSize!, ranges: device.log!.ranges.length })),
      hostMemory: this.memory.held.map((memory) => ({ address: memory.address, length: memory.length, mappings: memory.mappings })),
    };
  }

  /** Throws, listing what is left, unless every fd is closed and every object and mapping is gone. */
  assertClean(options: { readonly allowHostMemory?: boolean } = {}): void {
    const table = this.objects();
    const leaks: string[] = [];
    if (table.openFds > 0) leaks.push(`${table.openFds} open fd(s)`);
    for (const iommufd of table.iommufds) {
      leaks.push(`iommufd fd ${iommufd.fd}${iommufd.fdClosed ? ' (closed, held by a bound device)' : ''} with objects [${iommufd.objects.map((o) => `${o.type} ${o.id}`).join(', ')}]`);
    }
    for (const container of table.containers) leaks.push(`container fd ${container.fd} with groups [${container.groups.join(', ')}]`);
    for (const group of table.groups) leaks.push(`group ${group.groupId} (fd ${group.fd})`);
    for (const file of table.deviceFiles) leaks.push(`device ${file.name} (${file.kind} fd ${file.fd})`);
    for (const mock of table.mockDevices) leaks.push(`mock device ${mock}`);
    for (const log of table.dmaLogging) leaks.push(`DMA logging running on ${log.device}`);
    for (const memory of table.hostMemory) {
      if (memory.mappings > 0) leaks.push(`host memory 0x${memory.address.toString(16)} still mapped ${memory.mappings} time(s)`);
      else if (!options.allowHostMemory) leaks.push(`host memory 0x${memory.address.toString(16)} (0x${memory.length.toString(16)} bytes) not released`);
    }
    if (this.dmaOwners.size > 0) leaks.push(`DMA ownership held on ${[...this.dmaOwners.keys()].join(', ')}`);
    if (leaks.length > 0) throw new Error(`simulated kernel not clean: ${leaks.join('; ')}`);
  }
}

type TranslationPath =
  | { readonly hwpt: HwptObject }
  | { readonly iopt: IoPagetable }
  | { readonly container: SimulatedLegacyContainer; readonly emulated: boolean };

/** One device's DMA, resolved once: where it translates, and its DMA log. */
class DmaWriter {
  written = 0n;
  faulted = 0n;

  constructor(
    private readonly device: SimulatedDevice | undefined,
    private readonly path: TranslationPath | undefined,
  ) {}

  write(iova: bigint, length: bigint, data?: Uint8Array): void {
    this.device?.log?.record(iova, length);
    const path = this.path;
    if (!path) {
      this.faulted += length;
      return;
    }
    if ('container' in path) {
      const result = path.container.deviceWrite(iova, length, path.emulated, data);
      this.written += result.written;
      this.faulted += result.faulted;
      return;
    }
    const iopt = 'hwpt' in path ? path.hwpt.ioas.iopt : path.iopt;
    const domain = 'hwpt' in path ? path.hwpt.domain : undefined;
    const end = iova + length;
    let done = 0n;
    for (const area of areasIn(iopt, iova, end)) {
      if (!area.protection.write) continue;
      const from = maxBig(iova, area.iova);
      const to = minBig(end, area.last + 1n);
      done += to - from;
      const bytes = data && area.pages.memory.bytes;
      if (bytes) bytes.set(data.subarray(Number(from - iova), Number(to - iova)), Number(area.pages.offset + (from - area.iova)));
      if (domain?.trackingEnabled) {
        const mapping = domain.mapping(area);
        if (mapping) {
          const granule = domain.granule;
          mapping.markDirty(Number((from - area.iova) / granule), Number((to - area.iova + granule - 1n) / granule));
        }
      }
    }
    this.written += done;
    this.faulted += length - done;
  }

  writePages(base: bigint, pageSize: bigint, indexes: ArrayLike<number>): void {
    this.writeSpans(base, pageSize, indexes, 1, indexes.length);
  }

  /** writePages for runs (already checked): run i is pages [runs[2i], runs[2i] + runs[2i+1]). */
  writeRuns(base: bigint, pageSize: bigint, runs: ArrayLike<number>, count: number): void {
    this.writeSpans(base, pageSize, runs, 2, count);
  }

  /**
   * `count` spans of pages: span i starts at page at[stride * i] and is at[2i + 1] pages long when
   * stride is 2 (runs), one page when it is 1 (indexes).
   */
  private writeSpans(base: bigint, pageSize: bigint, at: ArrayLike<number>, stride: 1 | 2, count: number): void {
    const path = this.path;
    // Fast path: an IOMMUFD translation where the pages fall in one area: number arithmetic only.
    if (path && !('container' in path) && count > 0) {
      const iopt = 'hwpt' in path ? path.hwpt.ioas.iopt : path.iopt;
      const domain = 'hwpt' in path ? path.hwpt.domain : undefined;
      let minStart = Number.MAX_SAFE_INTEGER;
      let maxEnd = 0;
      let pages = 0;
      for (let i = 0; i < count; i++) {
        const start = at[stride * i]!;
        const end = start + (stride === 2 ? at[2 * i + 1]! : 1);
        if (start < minStart) minStart = start;
        if (end > maxEnd) maxEnd = end;
        pages += end - start;
      }
      const first = base + BigInt(minStart) * pageSize;
      const end = base + BigInt(maxEnd) * pageSize;
      const area = iopt.areaAt(first);
      const granule = domain?.granule ?? pageSize;
      if (area && area.protection.write && end - 1n <= area.last && pageSize % granule === 0n && (first - area.iova) % granule === 0n) {
        const mapping = domain?.trackingEnabled ? domain.mapping(area) : undefined;
        if (mapping) {
          const perPage = Number(pageSize / granule);
          const baseGranule = Number((base - area.iova) / granule);
          const single = stride === 1 && perPage === 1 && mapping.uniform;
          for (let i = 0; i < count; i++) {
            const k = baseGranule + at[stride * i]! * perPage;
            if (single) mapping.dirty.set(k);
            else mapping.markDirty(k, k + (stride === 2 ? at[2 * i + 1]! : 1) * perPage);
          }
        }
        const log = this.device?.log;
        if (stride === 1) log?.recordPages(base, pageSize, at);
        else log?.recordRuns(base, pageSize, at, count);
        this.written += BigInt(pages) * pageSize;
        return;
      }
    }
    for (let i = 0; i < count; i++) {
      this.write(base + BigInt(at[stride * i]!) * pageSize, (stride === 2 ? BigInt(at[2 * i + 1]!) : 1n) * pageSize);
    }
  }
}

function areasIn(iopt: IoPagetable, start: bigint, end: bigint): Area[] {
  return iopt.areasIntersecting(start, end - 1n);
}

/** A simulated kernel with the given devices (validated: InvalidArgumentError on a bad spec). */
export function simulatedKernel(options: SimulatedKernelOptions = {}): SimulatedKernel {
  return new SimulatedKernel(options);
}
