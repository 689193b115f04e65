// vfio-iommufd: userspace VFIO and iommufd for live migration of VMs with assigned devices.
export { simulatedKernel, guestWorkload } from './kernel/sim/index.js';
export type { SimulatedKernelOptions, SimulatedDeviceSpecInput, GuestWorkloadOptions, WorkloadPattern, WorkloadStep, TruthComparison } from './kernel/sim/index.js';
export { linuxKernel, LinuxKernel } from './kernel/linux/index.js';
export { KernelError, InvalidArgumentError, isKernelError } from './kernel/errors.js';
export type {
  Kernel, KernelOptions, IommufdHandle, IommufdTestOps, DeviceHandle, LegacyContainerHandle, GroupHandle, HostMemory,
  DeviceLocation, HwInfo, IovaRange, Type1Info, DeviceInfo, RegionInfo, ProcessMemory, ProcessMemoryBlock,
} from './kernel/types.js';
export {
  AddressSpace, AutoDomains, Container, Device, Hwpt, HostIommuInfo, IommufdContainer, LegacyContainer, VfioSetupError,
} from './vfio/index.js';
export type {
  AddressSpaceOptions, AttachOptions, MapRequest, Mapping, MappingObserver, Topology, ContainerTopology, DirtyTracker,
} from './vfio/index.js';
export { DirtySync, MigrationBitmap, MemoryRegion, MigrationBlockedError, estimateConvergence } from './dirty/index.js';
export type { ConvergenceEstimate, ConvergenceInput } from './dirty/index.js';
export type { DirtyRound, DirtySyncOptions, RoundOptions, DirtyRange, QueryFailure } from './dirty/index.js';
export { Migration, MigrationTarget, MigrationFailedError, MigrationRefusedError, StreamFormatError, DeviceMigrationSink, DeviceMigrationSource } from './migration/index.js';
export type {
  DeviceStateSink, DeviceStateSource, MigrationOptions, MigrationRound, MigrationSummary, MigrationTargetOptions, MigrationTargetSummary,
} from './migration/index.js';
export { DeviceMigration, MigrationTransitionError, saveDevices } from './migration/index.js';
export type { DeviceChunk, DeviceMigrationOptions, MigrationRecovery } from './migration/index.js';
export { Engine, IovaRangeSet, EngineInputError, EngineWorkerError, EngineClosedError } from './engine/index.js';
export type { EngineOptions, EngineCall } from './engine/index.js';
export { ENGINE_CALLS, DEFAULT_INLINE_UP_TO_BYTES } from './engine/index.js';
// The types the exported API's signatures name, so that users (and the API docs) can refer to them.
export { SimulatedKernel, GuestWorkload } from './kernel/sim/index.js';
export type { DmaSource } from './kernel/sim/kernel.js';
export type { KernelObjects } from './kernel/errors.js';
export type { LinuxKernelOptions } from './kernel/linux/index.js';
export type {
  MockDeviceHandle, DirtyBitmapRequest, DmaLoggingRange, HwptAllocRequest, HwptDirtyBitmapRequest, IoasCopyRequest, IoasMapRequest, Type1MapRequest,
} from './kernel/types.js';
export type { DeviceBackend } from './vfio/device.js';
export type { HostIommuType, VtdRegisters, AmdRegisters, SmmuV3Registers } from './vfio/host-iommu-info.js';
export type { IommufdChoice, IovaSpan } from './vfio/address-space.js';
export type { HwptTopology, UnmapBitmap } from './vfio/container.js';
export type { RoundPhases, BitmapPlacement } from './dirty/index.js';
export { Arena, ArenaBuffer } from './engine/index.js';
export type { WasmFlavour } from './engine/module.js';
export type { MergeCountScanRound, RunChunk, ResampleSpec, IovaRangeSetOptions, BitmapLike } from './engine/index.js';
export { SimulatedHostMemory, SimulatedMockDevice, ChunkedBitmap, KernelMemory, SharedRegion } from './kernel/sim/index.js';
export type { ChunkOwner, SharedChunk } from './kernel/sim/index.js';
export type { DmaResult, SimulatedObjectTable, SimulatedDeviceModel, ErrnoLike, FailNextOptions, IoctlCall, IoctlTrace } from './kernel/sim/index.js';
export type { AllocateOptions } from './engine/index.js';
export type { IoctlRecord } from './kernel/sim/index.js';
export type { DmaLoggingModel, IommuModel, HwInfoModel, ReservedRegion } from './kernel/sim/spec.js';
export { ERRNO, type ErrnoCode } from './kernel/errno.js';
export type { PciHotResetInfo, PciDependentDevice, PrecopyInfo, MigrationDataHandle } from './kernel/types.js';
export type { CompatibilityAnswer, ViommuRequirements } from './vfio/host-iommu-info.js';
export type { Segment, Reservation } from './dirty/migration-bitmap.js';
export type { MigrationCounters } from './migration/device-migration.js';
