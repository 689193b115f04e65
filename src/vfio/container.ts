import type { HostMemory, IovaRange } from '../kernel/types.js';
import type { Device, DeviceBackend } from './device.js';

/** One guest mapping as the address space keeps it, replayed into every container. */
export interface Mapping {
  readonly iova: bigint;
  readonly size: bigint;
  readonly memory: HostMemory;
  readonly memoryOffset: bigint;
  readonly readonly: boolean;
  /** The address space allocated the memory and releases it when the mapping goes. */
  readonly ownsMemory: boolean;
}

/** A type1 dirty bitmap to fill during an unmap (VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP). */
export interface UnmapBitmap {
  readonly pageSize: bigint;
  readonly bitmap: Uint8Array;
}

/** What every container shares: its devices, its mappings' home in the kernel, its IOVA ranges. */
export abstract class Container {
  abstract readonly backend: DeviceBackend;
  readonly devices = new Set<Device>();
  /** IOVA ranges the container can map (narrowed by attached devices' reserved regions). */
  iovaRanges: IovaRange[] = [];
  /** IOVA and length alignment the container needs. */
  alignment = 1n;

  /** Maps one mapping into the container's kernel object. */
  abstract map(mapping: Mapping): void;
  /** Unmaps [iova, iova + size), filling `bitmap` with dirty pages when given (legacy). */
  abstract unmap(iova: bigint, size: bigint, bitmap?: UnmapBitmap): void;
  /** True for a legacy container whose type1 IOMMU has the migration capability. */
  abstract readonly supportsType1DirtyTracking: boolean;
  /** Re-reads the IOVA ranges: they narrow on attach and widen on detach. */
  abstract refreshIovaRanges(): void;
  abstract describe(): ContainerTopology;
}

export interface HwptTopology {
  readonly id: number;
  readonly dirtyTracking: boolean;
  readonly devices: string[];
}

export type ContainerTopology =
  | {
      readonly backend: 'iommufd';
      readonly ioasId: number;
      readonly hwpts: HwptTopology[];
      readonly ioasDevices: string[];
      readonly iovaRanges: { start: string; last: string }[];
    }
  | {
      readonly backend: 'legacy';
      readonly groups: number[];
      readonly devices: string[];
      readonly type1DirtyTracking: boolean;
      readonly iovaRanges: { start: string; last: string }[];
    };

export function describeRanges(ranges: readonly IovaRange[]): { start: string; last: string }[] {
  return ranges.map((r) => ({ start: `0x${r.start.toString(16)}`, last: `0x${r.last.toString(16)}` }));
}
