// vfio-iommufd: userspace VFIO and iommufd for live migration of VMs with assigned devices.
export { simulatedKernel, guestWorkload } from './kernel/sim/index.js';
export type { SimulatedKernelOptions, SimulatedDeviceSpecInput, GuestWorkloadOptions, WorkloadPattern, WorkloadStep, TruthComparison } from './kernel/sim/index.js';
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
export { DirtySync, MigrationBitmap, estimateConvergence } from './dirty/index.js';
export type { ConvergenceEstimate, ConvergenceInput } from './dirty/index.js';
export type { DirtyRound, DirtySyncOptions, RoundOptions, DirtyRange, QueryFailure } from './dirty/index.js';
export { Engine, IovaRangeSet, EngineInputError, EngineWorkerError, EngineClosedError } from './engine/index.js';
export type { EngineOptions } from './engine/index.js';
