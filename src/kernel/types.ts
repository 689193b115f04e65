// The seam: the only interfaces through which anything above src/kernel talks to a kernel.
// Two implementations: linux/ (real ioctls through koffi) and sim/ (an in-process model of
// drivers/iommu/iommufd and drivers/vfio). Nothing above the seam knows which one it has.
//
// All calls are synchronous, as the ioctls they stand for are. Addresses, IOVAs and lengths
// are bigint (u64 in the uAPI); object IDs are number (u32).

/** One IOVA range with an inclusive last byte, as `struct iommu_iova_range`. */
export interface IovaRange {
  readonly start: bigint;
  readonly last: bigint;
}

/**
 * Host memory a kernel can map for DMA (the `user_va` of IOMMU_IOAS_MAP and the `vaddr` of
 * VFIO_IOMMU_MAP_DMA). The object holds the memory: a mapping keeps a reference to it until
 * it is unmapped, so the kernel never sees an address the library does not hold.
 */
export interface HostMemory {
  readonly address: bigint;
  readonly length: bigint;
  /**
   * A view of the memory when it is real and addressable from JavaScript (below 2 GiB); undefined
   * once released. Valid only until release(): see `view`.
   */
  readonly bytes: Uint8Array | undefined;
  /**
   * A view of [offset, offset + length) (default: to the end), taken per use. Throws
   * InvalidArgumentError once the memory is released, for a range that does not fit or passes
   * 2 GiB, or for memory with no bytes. A view is valid until release() only: Node 20 cannot
   * detach a view of mmap'd memory, so on the Linux kernel touching one after release() is a
   * SIGSEGV, not an error. Do not keep views across release().
   */
  view(offset?: bigint, length?: bigint): Uint8Array;
  /** True once released; a released memory cannot be mapped. */
  readonly released: boolean;
  /** Give the memory back (munmap). Throws if a mapping still uses it. */
  release(): void;
}

/** Where a device is, found from a sysfs path, a PCI address, a cdev path or a simulated name. */
export interface DeviceLocation {
  /** The name used to find it again: PCI address (`0000:00:03.0`), mdev UUID or simulated name. */
  readonly name: string;
  readonly sysfsPath: string | undefined;
  readonly pciAddress: string | undefined;
  /** `/dev/vfio/devices/vfioN` when the device has a VFIO cdev. */
  readonly cdevPath: string | undefined;
  /** IOMMU group number, for the legacy group/container path. */
  readonly groupId: number | undefined;
  /** A mediated device: no IOMMU of its own, attaches to an IOAS directly. */
  readonly mdev: boolean;
  /** The bound driver (`vfio-pci`), when known. */
  readonly driver: string | undefined;
}

/** IOMMU_GET_HW_INFO's answer. */
export interface HwInfo {
  /** `enum iommu_hw_info_type`: NONE 0, INTEL_VTD 1, ARM_SMMUV3 2, ... */
  readonly type: number;
  /** `IOMMU_HW_CAP_*` bits. */
  readonly capabilities: bigint;
  /** `out_max_pasid_log2` (newer kernels; 0 on 6.12). */
  readonly maxPasidLog2: number;
  /** The vendor data the kernel wrote (`iommu_hw_info_vtd`, ...), data_len bytes. */
  readonly data: Uint8Array;
}

export interface IoasMapRequest {
  readonly ioasId: number;
  readonly memory: HostMemory;
  /** Byte offset of the mapping inside `memory` (default 0). */
  readonly memoryOffset?: bigint;
  readonly length: bigint;
  /** A fixed IOVA (IOMMU_IOAS_MAP_FIXED_IOVA); omitted, the kernel chooses one. */
  readonly iova?: bigint;
  readonly readable?: boolean;
  readonly writeable?: boolean;
}

export interface IoasCopyRequest {
  readonly dstIoasId: number;
  readonly srcIoasId: number;
  readonly srcIova: bigint;
  readonly length: bigint;
  readonly dstIova?: bigint;
  readonly readable?: boolean;
  readonly writeable?: boolean;
}

export interface HwptAllocRequest {
  readonly devId: number;
  /** An IOAS (or a nesting-parent HWPT). */
  readonly ptId: number;
  /** `IOMMU_HWPT_ALLOC_*` bits. */
  readonly flags?: number;
  readonly dataType?: number;
  readonly data?: Uint8Array;
}

/** A bitmap request: bit (iova - start)/pageSize of `bitmap`, little-endian u64 words. */
export interface DirtyBitmapRequest {
  readonly iova: bigint;
  readonly length: bigint;
  readonly pageSize: bigint;
  /** Written by the kernel; may sit at any byte offset (the kernel handles unaligned user bitmaps). */
  readonly bitmap: Uint8Array;
}

export interface HwptDirtyBitmapRequest extends DirtyBitmapRequest {
  readonly hwptId: number;
  /** IOMMU_HWPT_GET_DIRTY_NO_CLEAR: read without clearing (used right before an unmap). */
  readonly noClear?: boolean;
}

export const IommuOption = { RLIMIT_MODE: 0, HUGE_PAGES: 1 } as const;

/** An open `/dev/iommu`. */
export interface IommufdHandle {
  readonly fd: number;
  readonly closed: boolean;
  ioasAlloc(): number;
  destroy(id: number): void;
  /** Returns the IOVA used (the kernel's choice when no fixed IOVA is given). */
  ioasMap(request: IoasMapRequest): bigint;
  ioasCopy(request: IoasCopyRequest): bigint;
  /** Returns the number of bytes unmapped. Must cover whole mappings. */
  ioasUnmap(ioasId: number, iova: bigint, length: bigint): bigint;
  /** IOMMU_IOAS_UNMAP of iova 0, length U64_MAX. */
  ioasUnmapAll(ioasId: number): bigint;
  /**
   * Allowed IOVA ranges and the IOVA alignment; grows its array and retries on EMSGSIZE. With
   * `capacity`, one ioctl with an array of that many entries (EMSGSIZE when more ranges exist).
   */
  ioasIovaRanges(ioasId: number, capacity?: number): { ranges: IovaRange[]; alignment: bigint };
  ioasAllowIovas(ioasId: number, ranges: readonly IovaRange[]): void;
  optionGet(optionId: number, objectId: number): bigint;
  optionSet(optionId: number, objectId: number, value: bigint): void;
  hwptAlloc(request: HwptAllocRequest): number;
  getHwInfo(devId: number): HwInfo;
  hwptSetDirtyTracking(hwptId: number, enable: boolean): void;
  /** ORs dirty bits into `bitmap` (zero it first if you want only this read). */
  hwptGetDirtyBitmap(request: HwptDirtyBitmapRequest): void;
  /** The kernel's test hooks (CONFIG_IOMMUFD_TEST), when this kernel has them. */
  readonly test: IommufdTestOps | undefined;
  close(): void;
}

/** IOMMU_TEST_CMD ops from drivers/iommu/iommufd/iommufd_test.h. */
export interface IommufdTestOps {
  /** True when the kernel answers IOMMU_TEST_CMD (probed once). */
  available(): boolean;
  /** IOMMU_TEST_OP_MOCK_DOMAIN(_FLAGS): a mock device attached to `ptId`, already bound. */
  mockDomain(ptId: number, options?: { noDirty?: boolean; hugeIova?: boolean }): MockDeviceHandle;
  /** IOMMU_TEST_OP_DIRTY: mark pages dirty in a mock HWPT; returns how many were marked. */
  markDirty(hwptId: number, request: DirtyBitmapRequest): bigint;
}

/** A kernel test mock device: bound and attached at birth, moved by attachPt (MOCK_DOMAIN_REPLACE), destroyed by close(). */
export interface MockDeviceHandle extends DeviceHandle {
  readonly kind: 'mock';
  /** The selftest device object's ID (what IOMMU_DESTROY takes). */
  readonly stdevId: number;
  /** The page table the kernel attached it to at creation (an auto domain when created on an IOAS). */
  readonly initialHwptId: number;
}

export interface DeviceInfo {
  /** `VFIO_DEVICE_FLAGS_*`. */
  readonly flags: number;
  readonly numRegions: number;
  readonly numIrqs: number;
}

export interface RegionInfo {
  readonly index: number;
  /** `VFIO_REGION_INFO_FLAG_*`. */
  readonly flags: number;
  readonly size: bigint;
  /** Offset of the region in the device fd, for pread/pwrite/mmap. */
  readonly offset: bigint;
}

export interface DmaLoggingRange {
  readonly iova: bigint;
  readonly length: bigint;
}

/** One device a PCI hot reset of a device also resets (`struct vfio_pci_dependent_device`). */
export interface PciDependentDevice {
  /** A group-opened device's answer: the affected device's IOMMU group. */
  readonly groupId: number | undefined;
  /**
   * A cdev's answer (VFIO_PCI_HOT_RESET_FLAG_DEV_ID): its dev ID when bound to the same iommufd,
   * VFIO_PCI_DEVID_OWNED (0) when only owned by it, VFIO_PCI_DEVID_NOT_OWNED (0xffffffff) otherwise.
   */
  readonly devId: number | undefined;
  /** `DDDD:BB:DD.F`. */
  readonly pciAddress: string;
}

/** VFIO_DEVICE_GET_PCI_HOT_RESET_INFO's answer. */
export interface PciHotResetInfo {
  /** `VFIO_PCI_HOT_RESET_FLAG_*`. */
  readonly flags: number;
  readonly devices: readonly PciDependentDevice[];
}

/** VFIO_MIG_GET_PRECOPY_INFO's answer: estimates of the PRE_COPY data still to read. */
export interface PrecopyInfo {
  readonly initialBytes: bigint;
  readonly dirtyBytes: bigint;
}

/**
 * A migration data fd, returned by a MIG_DEVICE_STATE SET that enters STOP_COPY, PRE_COPY(_P2P)
 * or RESUMING. Opened non-blocking where the driver honours it; the caller owns it and closes it.
 */
export interface MigrationDataHandle {
  readonly fd: number;
  readonly closed: boolean;
  /**
   * read(2) into `buffer`: the bytes read (possibly fewer than asked), 0 when the device has
   * nothing more (end of stream in STOP_COPY, nothing for now in PRE_COPY: a 0 read or ENOMSG),
   * or null when it would block (EAGAIN).
   */
  read(buffer: Uint8Array): number | null;
  /** write(2) of `data`: the bytes taken (possibly fewer), or null when it would block (EAGAIN). */
  write(data: Uint8Array): number | null;
  /** VFIO_MIG_GET_PRECOPY_INFO (PRE_COPY and PRE_COPY_P2P only; EINVAL elsewhere). */
  precopyInfo(): PrecopyInfo;
  close(): void;
}

/** A VFIO device: a cdev, a device fd from a legacy group, or a kernel test mock device. */
export interface DeviceHandle {
  readonly name: string;
  readonly kind: 'cdev' | 'group' | 'mock';
  /** The iommufd device ID, once bound. */
  readonly devId: number | undefined;
  readonly closed: boolean;
  /** VFIO_DEVICE_BIND_IOMMUFD; returns the device ID. */
  bindIommufd(iommufd: IommufdHandle): number;
  /** VFIO_DEVICE_ATTACH_IOMMUFD_PT; attaching again replaces. Returns the pt_id the kernel reports (the auto HWPT for an IOAS). */
  attachPt(ptId: number): number;
  /** VFIO_DEVICE_DETACH_IOMMUFD_PT. */
  detachPt(): void;
  getInfo(): DeviceInfo;
  getRegionInfo(index: number): RegionInfo;
  regionRead(index: number, offset: bigint, length: number): Uint8Array;
  regionWrite(index: number, offset: bigint, data: Uint8Array): void;
  reset(): void;
  /** VFIO_DEVICE_FEATURE with PROBE: true when the device has the feature. */
  featureProbe(feature: number): boolean;
  /** DMA_LOGGING_START; returns the page size the device chose. */
  dmaLoggingStart(pageSize: bigint, ranges: readonly DmaLoggingRange[]): bigint;
  dmaLoggingStop(): void;
  /** DMA_LOGGING_REPORT: sets bits only (zero the bitmap first); reading clears the device's log. */
  dmaLoggingReport(request: DirtyBitmapRequest): void;
  /** VFIO_DEVICE_GET_PCI_HOT_RESET_INFO (vfio-pci devices); grows its array and retries on ENOSPC. */
  getPciHotResetInfo?(): PciHotResetInfo;
  /**
   * VFIO_DEVICE_PCI_HOT_RESET: a cdev passes no group fds (the kernel checks ownership through
   * its iommufd); a group-opened device passes the fds of every affected group.
   */
  pciHotReset?(groupFds: readonly number[]): void;
  /** VFIO_DEVICE_FEATURE_MIGRATION GET: `VFIO_MIGRATION_*` flags (ENOTTY: the driver has no migration). */
  migrationFlags(): number;
  /** VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE GET: the `VFIO_DEVICE_STATE_*` the device is in. */
  getMigrationState(): number;
  /**
   * VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE SET: the kernel walks the arcs to `state` itself. Returns
   * the new data fd when the driver returns one (entering a saving or resuming state), else undefined.
   */
  setMigrationState(state: number): MigrationDataHandle | undefined;
  /** VFIO_DEVICE_FEATURE_MIG_DATA_SIZE GET: the driver's estimate of the STOP_COPY data. */
  migrationDataSize(): bigint;
  close(): void;
}

/** The type1 capability chain and flags from VFIO_IOMMU_GET_INFO. */
export interface Type1Info {
  readonly flags: number;
  readonly iovaPageSizes: bigint;
  readonly iovaRanges: IovaRange[] | undefined;
  readonly migration: { flags: number; pageSizeBitmap: bigint; maxDirtyBitmapSize: bigint } | undefined;
  readonly dmaAvailable: number | undefined;
}

export interface Type1MapRequest {
  readonly memory: HostMemory;
  readonly memoryOffset?: bigint;
  readonly iova: bigint;
  readonly size: bigint;
  readonly readable?: boolean;
  readonly writeable?: boolean;
}

/** An open `/dev/vfio/vfio`, the legacy container. */
export interface LegacyContainerHandle {
  readonly fd: number;
  readonly closed: boolean;
  getApiVersion(): number;
  checkExtension(extension: number): number;
  setIommu(type: number): void;
  getIommuInfo(): Type1Info;
  mapDma(request: Type1MapRequest): void;
  /** Returns the bytes unmapped; with `dirtyBitmap`, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP. */
  unmapDma(iova: bigint, size: bigint, dirtyBitmap?: { pageSize: bigint; bitmap: Uint8Array }): bigint;
  unmapAll(): bigint;
  dirtyPagesStart(): void;
  dirtyPagesStop(): void;
  dirtyPagesGetBitmap(request: DirtyBitmapRequest): void;
  close(): void;
}

/** An open `/dev/vfio/GROUP`. */
export interface GroupHandle {
  readonly groupId: number;
  /** The group's fd (VFIO_DEVICE_PCI_HOT_RESET takes it). */
  readonly fd?: number;
  readonly closed: boolean;
  getStatus(): { viable: boolean; containerSet: boolean };
  setContainer(container: LegacyContainerHandle): void;
  unsetContainer(): void;
  /** VFIO_GROUP_GET_DEVICE_FD by device name (PCI address). */
  openDevice(name: string): DeviceHandle;
  close(): void;
}

export interface KernelOptions {
  /**
   * Check arguments before each ioctl (default true). Off only for conformance tests that
   * want the kernel's own errno for a malformed request.
   */
  readonly validateArguments?: boolean;
}

/** One kernel: everything a caller can open. */
export interface Kernel {
  readonly name: 'linux' | 'simulated';
  openIommufd(options?: KernelOptions): IommufdHandle;
  /** Finds a device by sysfs path, PCI address, cdev path or (simulated) name; throws InvalidArgumentError if unknown. */
  locateDevice(location: string): DeviceLocation;
  listDevices(): DeviceLocation[];
  /** Opens the device's VFIO cdev (not yet bound). */
  openDevice(location: string, options?: KernelOptions): DeviceHandle;
  openLegacyContainer(options?: KernelOptions): LegacyContainerHandle;
  openGroup(groupId: number, options?: KernelOptions): GroupHandle;
  /**
   * An iommufd opened by someone else (libvirt's `-object iommufd,fd=N`): a handle on that fd.
   * Closing the handle closes the fd.
   */
  adoptIommufd?(fd: number, options?: KernelOptions): IommufdHandle;
  /**
   * A device's VFIO cdev opened by someone else (`vfio-pci,fd=N`), not yet bound: a handle on
   * that fd after checking it is the located device's cdev. Closing the handle closes the fd.
   */
  adoptDeviceFd?(location: string, fd: number, options?: KernelOptions): DeviceHandle;
  /** The host's base page size (sysconf(_SC_PAGESIZE)), when the kernel knows it. */
  readonly systemPageSize?: bigint;
  /** Anonymous host memory for DMA mappings (mmap); held until released. */
  allocateHostMemory(length: bigint): HostMemory;
  /**
   * The process's bitmaps live in `memory` from now on: the kernel may keep state that its
   * ioctls copy into those bitmaps in pages of it (handed out by `memory.allocate`). Only the
   * simulated kernel has it: a real kernel reaches the caller's pages through its own mappings,
   * while code in a JS process runs at memory speed only within one WebAssembly memory. Call the
   * returned function when the memory goes away; the kernel moves its state out of it first.
   */
  shareProcessMemory?(memory: ProcessMemory): () => void;
}

/** A shared WebAssembly memory and its allocator, offered to the kernel (Kernel.shareProcessMemory). */
export interface ProcessMemory {
  readonly memory: WebAssembly.Memory;
  /** `bytes` zeroed bytes at a 64-byte aligned offset of `memory`, or undefined when it has no room to spare. */
  allocate(bytes: number): ProcessMemoryBlock | undefined;
}

export interface ProcessMemoryBlock {
  readonly offset: number;
  /** Gives the bytes back to the allocator (once). */
  free(): void;
}
