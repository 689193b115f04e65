import { InvalidArgumentError } from './errors.js';
import type { DeviceInfo, MigrationDataHandle, DirtyBitmapRequest, DmaLoggingRange, IommufdHandle, MockDeviceHandle, RegionInfo } from './types.js';
import { checkU32 } from './validate.js';

/**
 * A kernel test mock device (IOMMU_TEST_OP_MOCK_DOMAIN), as both kernels give it: bound at birth
 * to the iommufd that made it, moved with MOCK_DOMAIN_REPLACE, detached by destroying it
 * (IOMMU_DESTROY of its selftest object), and without VFIO regions or features. Subclasses issue
 * the replace.
 */
export abstract class MockDeviceBase implements MockDeviceHandle {
  readonly kind = 'mock' as const;
  readonly name: string;
  private isClosed = false;

  constructor(
    readonly iommufd: IommufdHandle,
    /** out_stdev_id: the selftest object; destroying it destroys the device. */
    readonly stdevId: number,
    /** out_hwpt_id: the page table the kernel attached at creation (the auto domain when created on an IOAS). */
    readonly initialHwptId: number,
  ) {
    // The kernel's own name is iommufd_mockN; the stdev ID is what a user sees.
    this.name = `mock${stdevId}`;
  }

  abstract get devId(): number;

  /** IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE; returns the pt_id the kernel reports. */
  protected abstract replace(ptId: number): number;

  get closed(): boolean {
    return this.isClosed;
  }

  bindIommufd(iommufd: IommufdHandle): number {
    if (iommufd !== this.iommufd) throw new InvalidArgumentError('iommufd', 'a mock device is bound to the iommufd that created it');
    return this.devId;
  }

  attachPt(ptId: number): number {
    checkU32('ptId', ptId);
    if (this.isClosed) throw new InvalidArgumentError('device', `${this.name} is closed`);
    return this.replace(ptId);
  }

  detachPt(): void {
    throw new InvalidArgumentError('device', `${this.name} is a test mock device: close() destroys it, which detaches it`);
  }

  getInfo(): DeviceInfo {
    return this.notVfio('getInfo');
  }
  getRegionInfo(_index: number): RegionInfo {
    return this.notVfio('getRegionInfo');
  }
  regionRead(_index: number, _offset: bigint, _length: number): Uint8Array {
    return this.notVfio('regionRead');
  }
  regionWrite(_index: number, _offset: bigint, _data: Uint8Array): void {
    this.notVfio('regionWrite');
  }
  reset(): void {
    this.notVfio('reset');
  }
  featureProbe(_feature: number): boolean {
    return false;
  }
  dmaLoggingStart(_pageSize: bigint, _ranges: readonly DmaLoggingRange[]): bigint {
    return this.notVfio('dmaLoggingStart');
  }
  dmaLoggingStop(): void {
    this.notVfio('dmaLoggingStop');
  }
  dmaLoggingReport(_request: DirtyBitmapRequest): void {
    this.notVfio('dmaLoggingReport');
  }
  migrationFlags(): number {
    return this.notVfio('migrationFlags');
  }
  getMigrationState(): number {
    return this.notVfio('getMigrationState');
  }
  setMigrationState(_state: number): MigrationDataHandle | undefined {
    return this.notVfio('setMigrationState');
  }
  migrationDataSize(): bigint {
    return this.notVfio('migrationDataSize');
  }

  /** IOMMU_DESTROY of the selftest object (an InvalidArgumentError once the iommufd is closed). */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.iommufd.destroy(this.stdevId);
  }

  private notVfio(what: string): never {
    throw new InvalidArgumentError('device', `${this.name} is a test mock device and has no VFIO ${what}`);
  }
}
