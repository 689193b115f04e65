// What the simulated kernel's parts need from the kernel as a whole: the ioctl entry point
// (fault injection and tracing), file descriptors, and iommu group DMA ownership.
import type { KernelObjects } from '../errors.js';
import type { KernelMemory } from './kernel-memory.js';

export interface KernelServices {
  /** Where dirty-tracking state is kept (the process may share its memory for it). */
  readonly kernelMemory: KernelMemory;
  /** The kernel's PAGE_SIZE (LOG_MAX_RANGES counts in it). */
  readonly systemPageSize: bigint;
  /**
   * Every simulated ioctl starts here, after argument validation and before any state change:
   * throws the KernelError an injected fault asks for, and records the call when tracing.
   */
  enterIoctl(ioctl: string, objects: KernelObjects, fd: number): void;
  /** Records how the call ended (for the trace). */
  leaveIoctl(errno: number): void;
  allocateFd(): number;
  releaseFd(fd: number): void;
  /** iommu_device_claim_dma_owner / iommu_group_claim_dma_owner: EBUSY when another owner holds the group. */
  claimDmaOwner(groupKey: string, owner: object): void;
  releaseDmaOwner(groupKey: string, owner: object): void;
  dmaOwner(groupKey: string): object | undefined;
}
