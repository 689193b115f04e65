// The simulated kernel: the Kernel seam in process, following drivers/iommu/iommufd and
// drivers/vfio (Linux 6.12) — same objects, same rules, same errnos — with simulated devices
// declared as data, device DMA that dirties memory, and a seeded guest workload generator.
export { SimulatedKernel, simulatedKernel } from './kernel.js';
export type { DmaResult, DmaSource, SimulatedKernelOptions, SimulatedObjectTable } from './kernel.js';
export {
  DmaLoggingSpec,
  IOMMU_TYPES,
  ReservedRegionSpec,
  SimulatedDeviceSpec,
  VendorRegistersSpec,
  resolveDeviceSpecs,
} from './spec.js';
export type { IommuType, SimulatedDeviceModel, SimulatedDeviceSpecInput, SimulatedDeviceSpecParsed } from './spec.js';
export type { ErrnoLike, FailNextOptions, IoctlCall, IoctlRecord, IoctlTrace } from './faults.js';
export { SimulatedHostMemory, HOST_PAGE_SIZES } from './host-memory.js';
export { SimulatedMockDevice } from './iommufd.js';
export { ChunkedBitmap, countBits, setBits, testBit } from './bitmap.js';
export { KernelMemory, SharedRegion } from './kernel-memory.js';
export type { ChunkOwner, SharedChunk } from './kernel-memory.js';
export { Xoshiro128 } from './prng.js';
export { GuestWorkload, GuestWorkloadSpec, WorkloadPatternSpec, guestWorkload } from './workload.js';
export type { GuestWorkloadOptions, TruthComparison, WorkloadPattern, WorkloadStep } from './workload.js';
