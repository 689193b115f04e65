import { InvalidArgumentError } from '../errors.js';
import type { DeviceInfo, DirtyBitmapRequest, DmaLoggingRange, IommufdHandle, MockDeviceHandle, RegionInfo } from '../types.js';
import { checkU32 } from '../validate.js';

/**
 * A kernel test mock device (IOMMU_TEST_OP_MOCK_DOMAIN): bound at birth (its idev ID is the
 * device ID), attached at birth, moved with MOCK_DOMAIN_REPLACE, and detached by destroying it.
 * It stands in for dirty-capable hardware on the real kernel; it has no VFIO regions or features.
 */
export class MockDevice implements MockDeviceHandle {
  readonly kind = 'mock' as const;
  readonly name: string;
  readonly stdevId: number;
  /** The page table the kernel attached at creation (the auto domain when created on an IOAS). */
  readonly initialHwptId: number;
  private readonly idevId: number;
  private isClosed = false;

  constructor(
    private readonly iommufd: IommufdHandle,
    ids: { stdevId: number; hwptId: number; idevId: number; replace: (stdevId: number, ptId: number) => number },
  ) {
    this.stdevId = ids.stdevId;
    this.initialHwptId = ids.hwptId;
    this.idevId = ids.idevId;
    this.replace = ids.replace;
    this.name = `mock${ids.stdevId}`;
  }

  private readonly replace: (stdevId: number, ptId: number) => number;

  get devId(): number {
    return this.idevId;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  bindIommufd(iommufd: IommufdHandle): number {
    if (iommufd !== this.iommufd) throw new InvalidArgumentError('iommufd', 'a mock device is bound to the iommufd that created it');
    return this.idevId;
  }

  attachPt(ptId: number): number {
    checkU32('ptId', ptId);
    this.assertOpen();
    return this.replace(this.stdevId, ptId);
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

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.iommufd.destroy(this.stdevId);
  }

  private assertOpen(): void {
    if (this.isClosed) throw new InvalidArgumentError('device', `${this.name} is closed`);
  }

  private notVfio(what: string): never {
    throw new InvalidArgumentError('device', `${this.name} is a test mock device and has no VFIO ${what}`);
  }
}
