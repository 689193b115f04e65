import type { IommufdHandle } from '../kernel/types.js';
import { AutoDomains } from './auto-domains.js';
import { Container, describeRanges, type ContainerTopology, type Mapping } from './container.js';

/** One IOAS of one iommufd, with its userspace auto domains. */
export class IommufdContainer extends Container {
  readonly backend = 'iommufd' as const;
  readonly supportsType1DirtyTracking = false;
  readonly autoDomains: AutoDomains;

  constructor(readonly iommufd: IommufdHandle, readonly ioasId: number) {
    super();
    this.autoDomains = new AutoDomains(iommufd, ioasId);
  }

  map(mapping: Mapping): void {
    this.iommufd.ioasMap({
      ioasId: this.ioasId, memory: mapping.memory, memoryOffset: mapping.memoryOffset, length: mapping.size,
      iova: mapping.iova, readable: true, writeable: !mapping.readonly,
    });
  }

  unmap(iova: bigint, size: bigint): void {
    this.iommufd.ioasUnmap(this.ioasId, iova, size);
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
