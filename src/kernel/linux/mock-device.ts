import { MockDeviceBase } from '../mock-device.js';
import type { IommufdHandle } from '../types.js';

/** A kernel test mock device on the real kernel; stands in for dirty-capable hardware. */
export class MockDevice extends MockDeviceBase {
  private readonly idevId: number;
  private readonly replaceOp: (stdevId: number, ptId: number) => number;

  constructor(
    iommufd: IommufdHandle,
    ids: { stdevId: number; hwptId: number; idevId: number; replace: (stdevId: number, ptId: number) => number },
  ) {
    super(iommufd, ids.stdevId, ids.hwptId);
    this.idevId = ids.idevId;
    this.replaceOp = ids.replace;
  }

  get devId(): number {
    return this.idevId;
  }

  protected replace(ptId: number): number {
    return this.replaceOp(this.stdevId, ptId);
  }
}
