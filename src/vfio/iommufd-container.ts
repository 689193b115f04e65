import type { IommufdHandle } from '../kernel/types.js';
import { AutoDomains } from './auto-domains.js';
import { Container, describeRanges, type ContainerTopology, type Mapping } from './container.js';

/** One IOAS of one iommufd, with its userspace auto domains. */
export class IommufdContainer extends Container {
  readonly backend = 'iommufd' as const;
  readonly supportsType1DirtyTracking = false;
  readonly autoDomains: AutoDomains;
  private readonly held = new Set<Mapping>();

  /**
   * `copySource` names another IOAS of the same iommufd that already holds a mapping: the
   * mapping is then copied from it (IOMMU_IOAS_COPY) rather than mapped, and pinned again.
   */
  constructor(
    readonly iommufd: IommufdHandle,
    readonly ioasId: number,
    private readonly copySource?: (mapping: Mapping) => IommufdContainer | undefined,
  ) {
    super();
    this.autoDomains = new AutoDomains(iommufd, ioasId);
  }

  /** True when the mapping is in this IOAS. */
  holds(mapping: Mapping): boolean {
    return this.held.has(mapping);
  }

  map(mapping: Mapping): void {
    const source = this.copySource?.(mapping);
    if (source) {
      this.iommufd.ioasCopy({
        dstIoasId: this.ioasId, srcIoasId: source.ioasId, srcIova: mapping.iova, length: mapping.size,
        dstIova: mapping.iova, readable: true, writeable: !mapping.readonly,
      });
    } else {
      this.iommufd.ioasMap({
        ioasId: this.ioasId, memory: mapping.memory, memoryOffset: mapping.memoryOffset, length: mapping.size,
        iova: mapping.iova, readable: true, writeable: !mapping.readonly,
      });
    }
    this.held.add(mapping);
  }

  unmap(iova: bigint, size: bigint): void {
    this.iommufd.ioasUnmap(this.ioasId, iova, size);
    for (const mapping of this.held) if (mapping.iova >= iova && mapping.iova + mapping.size <= iova + size) this.held.delete(mapping);
  }

  refreshIovaRanges(): void {
    const { ranges, alignment } = this.iommufd.ioasIovaRanges(this.ioasId);
    this.iovaRanges = ranges;
    this.alignment = alignment;
  }

  /** Destroys the IOAS (which drops its mappings) once no device is left. */
  destroy(): void {
    this.autoDomains.destroyEmpty();
    this.iommufd.destroy(this.ioasId);
  }

  describe(): ContainerTopology {
    return {
      backend: 'iommufd',
      ioasId: this.ioasId,
      hwpts: this.autoDomains.hwpts.map((hwpt) => ({
        id: hwpt.id,
        dirtyTracking: hwpt.dirtyTracking,
        devices: [...hwpt.devices].map((d) => d.name),
      })),
      ioasDevices: [...this.devices].filter((d) => d.attachedToIoas).map((d) => d.name),
      iovaRanges: describeRanges(this.iovaRanges),
    };
  }
}
