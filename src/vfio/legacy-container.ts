import type { GroupHandle, LegacyContainerHandle, Type1Info } from '../kernel/types.js';
import { Container, describeRanges, type ContainerTopology, type Mapping, type UnmapBitmap } from './container.js';

/** `/dev/vfio/vfio` with the type1v2 IOMMU, and the groups set into it. */
export class LegacyContainer extends Container {
  readonly backend = 'legacy' as const;
  readonly groups = new Map<number, GroupHandle>();
  type1: Type1Info;

  constructor(readonly handle: LegacyContainerHandle) {
    super();
    this.type1 = handle.getIommuInfo();
    this.applyInfo();
  }

  get supportsType1DirtyTracking(): boolean {
    return this.type1.migration !== undefined;
  }

  /** The smallest IOMMU page: type1's dirty bitmaps must use it. */
  get minimumPageSize(): bigint {
    const sizes = this.type1.iovaPageSizes;
    return sizes === 0n ? 4096n : sizes & -sizes;
  }

  map(mapping: Mapping): void {
    this.handle.mapDma({
      memory: mapping.memory, memoryOffset: mapping.memoryOffset, iova: mapping.iova, size: mapping.size,
      readable: true, writeable: !mapping.readonly,
    });
  }

  unmap(iova: bigint, size: bigint, bitmap?: UnmapBitmap): void {
    this.handle.unmapDma(iova, size, bitmap);
  }

  refreshIovaRanges(): void {
    this.type1 = this.handle.getIommuInfo();
    this.applyInfo();
  }

  describe(): ContainerTopology {
    return {
      backend: 'legacy',
      groups: [...this.groups.keys()],
      devices: [...this.devices].map((d) => d.name),
      type1DirtyTracking: this.supportsType1DirtyTracking,
      iovaRanges: describeRanges(this.iovaRanges),
    };
  }

  private applyInfo(): void {
    this.iovaRanges = this.type1.iovaRanges ?? [];
    this.alignment = this.minimumPageSize;
  }
}
