// Dirty state made by a device's own DMA. The simulator moves no data, but a simulated device's
// write goes through the same translation as on hardware (its HWPT, its IOAS, its container) and
// sets the same dirty state. The guest has no device that both DMAs and tracks dirty pages.
import { describe, expect } from 'vitest';
import { IOMMU_HWPT_ALLOC_DIRTY_TRACKING } from '../../src/uapi/index.js';
import { ContractFixture, GIB, KIB, MIB, setBitIndexes, simOnly, type ContractTarget } from './context.js';

const REASON = '[sim only: no real DMA]';

export function defineDeviceDmaContract(target: ContractTarget): void {
  describe('dirty state from device DMA', () => {
    const t = new ContractFixture(target);
    const simIt = simOnly(target);

    simIt(`a device's DMA writes set its HWPT's dirty bits only while tracking is on ${REASON}`, () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const device = t.device(t.sim.dirtyDevice);
      const devId = device.bindIommufd(iommufd);
      const hwpt = iommufd.hwptAlloc({ devId, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
      expect(device.attachPt(hwpt)).toBe(hwpt);
      iommufd.ioasMap({ ioasId: ioas, memory: t.memory(MIB), length: MIB, iova: GIB });
      const sim = t.sim.kernel;
      expect(sim.dmaWrite(device, GIB, 4n * KIB)).toEqual({ written: 4n * KIB, faulted: 0n });
      iommufd.hwptSetDirtyTracking(hwpt, true);
      sim.dmaWrite(device, GIB + 8n * KIB, 8n * KIB);
      sim.dmaWrite(device, GIB + 100n * 4n * KIB + 5n, 1n);
      const bitmap = new Uint8Array(32);
      iommufd.hwptGetDirtyBitmap({ hwptId: hwpt, iova: GIB, length: MIB, pageSize: 4n * KIB, bitmap });
      expect(setBitIndexes(bitmap)).toEqual([2, 3, 100]);
    });

    simIt(`DMA to an IOVA the device cannot reach faults and dirties nothing ${REASON}`, () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const device = t.device(t.sim.dirtyDevice);
      const devId = device.bindIommufd(iommufd);
      const hwpt = iommufd.hwptAlloc({ devId, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
      const sim = t.sim.kernel;
      expect(sim.dmaWrite(device, GIB, 4n * KIB)).toEqual({ written: 0n, faulted: 4n * KIB });
      device.attachPt(hwpt);
      iommufd.hwptSetDirtyTracking(hwpt, true);
      iommufd.ioasMap({ ioasId: ioas, memory: t.memory(64n * KIB), length: 64n * KIB, iova: GIB, writeable: false });
      expect(sim.dmaWrite(device, GIB, 4n * KIB)).toEqual({ written: 0n, faulted: 4n * KIB });
      expect(sim.dmaWrite(device, 2n * GIB, 4n * KIB)).toEqual({ written: 0n, faulted: 4n * KIB });
      const bitmap = new Uint8Array(8); // 16 pages: one u64 word
      iommufd.hwptGetDirtyBitmap({ hwptId: hwpt, iova: GIB, length: 64n * KIB, pageSize: 4n * KIB, bitmap });
      expect(setBitIndexes(bitmap)).toEqual([]);
    });
  });
}
