// vfio-iommufd: userspace VFIO and iommufd for live migration of VMs with assigned devices.
export { simulatedKernel } from './kernel/sim/index.js';
export { linuxKernel, LinuxKernel } from './kernel/linux/index.js';
export { KernelError, InvalidArgumentError, isKernelError } from './kernel/errors.js';
export type {
  Kernel, KernelOptions, IommufdHandle, IommufdTestOps, DeviceHandle, LegacyContainerHandle, GroupHandle, HostMemory,
  DeviceLocation, HwInfo, IovaRange, Type1Info, DeviceInfo, RegionInfo,
} from './kernel/types.js';
export {
  AddressSpace, AutoDomains, Container, Device, Hwpt, HostIommuInfo, IommufdContainer, LegacyContainer, VfioSetupError,
} from './vfio/index.js';
export type {
  AddressSpaceOptions, AttachOptions, MapRequest, Mapping, MappingObserver, Topology, ContainerTopology, DirtyTracker,
} from './vfio/index.js';
export { DirtySync, MigrationBitmap, MemoryRegion, MigrationBlockedError } from './dirty/index.js';
export type { DirtyRound, DirtySyncOptions, RoundOptions, DirtyRange, QueryFailure } from './dirty/index.js';
export { Migration, MigrationTarget, MigrationFailedError, MigrationRefusedError, StreamFormatError, DeviceMigrationSink, DeviceMigrationSource } from './migration/index.js';
export type {
  DeviceStateSink, DeviceStateSource, MigrationOptions, MigrationRound, MigrationSummary, MigrationTargetOptions, MigrationTargetSummary,
} from './migration/index.js';
export { DeviceMigration, MigrationTransitionError, saveDevices } from './migration/index.js';
export type { DeviceChunk, DeviceMigrationOptions, MigrationRecovery } from './migration/index.js';
export { Engine, IovaRangeSet } from './engine/index.js';
export type { EngineOptions } from './engine/index.js';
