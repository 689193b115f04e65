// dmaWriteRuns is a batched dmaWrite: for any runs, the dirty state it leaves (IOPTE dirty bits
// of a tracking HWPT, a device's DMA log, type1's dirty pages) and its written/faulted counts are
// those of one dmaWrite per run, on two kernels built alike.
import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/kernel/errors.js';
import { simulatedKernel } from '../../src/kernel/sim/index.js';
import { IOMMU_HWPT_ALLOC_DIRTY_TRACKING, VFIO_TYPE1v2_IOMMU } from '../../src/uapi/index.js';

const KIB = 1024n;
const MIB = 1024n * KIB;
const GIB = 1024n * MIB;
const PAGE = 4n * KIB;
const MAPPED = 4n * MIB; // 1024 pages mapped at 1 GiB; pages from 1024 on fault
const PAGES = 1536;

/** nic0 on a dirty-tracking HWPT, vf0 logging DMA at 4 KiB or 16 KiB, old0 in a type1 container. */
function machine(logPage: bigint) {
  const kernel = simulatedKernel({
    devices: [
      { name: 'nic0', iommuDirtyTracking: true },
      { name: 'vf0', dmaLogging: { maxRanges: 4, pageSize: logPage } },
      { name: 'old0', groupId: 7, legacyOnly: true },
    ],
  });
  const iommufd = kernel.openIommufd();
  const ioas = iommufd.ioasAlloc();
  const nic = kernel.openDevice('nic0');
  const hwpt = iommufd.hwptAlloc({ devId: nic.bindIommufd(iommufd), ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
  nic.attachPt(hwpt);
  const vf = kernel.openDevice('vf0');
  vf.bindIommufd(iommufd);
  vf.attachPt(ioas);
  const memory = kernel.allocateHostMemory(MAPPED);
  iommufd.ioasMap({ ioasId: ioas, memory, length: MAPPED, iova: GIB });
  iommufd.hwptSetDirtyTracking(hwpt, true);
  vf.dmaLoggingStart(logPage, [{ iova: GIB, length: MAPPED }]);
  const container = kernel.openLegacyContainer();
  const group = kernel.openGroup(7);
  group.setContainer(container);
  container.setIommu(VFIO_TYPE1v2_IOMMU);
  const old = group.openDevice('old0');
  const legacyMemory = kernel.allocateHostMemory(MAPPED);
  container.mapDma({ memory: legacyMemory, iova: GIB, size: MAPPED });
  container.dirtyPagesStart();
  const read = () => {
    const bytes = Number(MAPPED / PAGE / 8n);
    const iommu = new Uint8Array(bytes);
    iommufd.hwptGetDirtyBitmap({ hwptId: hwpt, iova: GIB, length: MAPPED, pageSize: PAGE, bitmap: iommu });
    const log = new Uint8Array(bytes);
    vf.dmaLoggingReport({ iova: GIB, length: MAPPED, pageSize: PAGE, bitmap: log });
    const type1 = new Uint8Array(bytes);
    container.dirtyPagesGetBitmap({ iova: GIB, length: MAPPED, pageSize: PAGE, bitmap: type1 });
    return { iommu, log, type1 };
  };
  return { kernel, nic, vf, old, read };
}

/** Runs below `limit` pages: 1000 keeps them all mapped (the batched fast path), PAGES lets some fault. */
const runs = fc.constantFrom(1000, PAGES).chain((limit) =>
  fc.array(fc.tuple(fc.nat(limit - 1), fc.integer({ min: 1, max: 80 })).map(([start, length]) => [start, Math.min(length, limit - start)] as const), { maxLength: 40 }));

describe('dmaWriteRuns', () => {
  test.prop([runs, fc.constantFrom(PAGE, 16n * KIB), fc.constantFrom(0, 1, 4, 20)], { numRuns: 100 })(
    'leaves the dirty state and counts of one dmaWrite per run (runs past the mapping fault)',
    (runs, logPage, offsetPages) => {
      const batched = machine(logPage);
      const single = machine(logPage);
      const base = GIB + BigInt(offsetPages) * PAGE;
      const flat = runs.flat();
      for (const device of ['nic0', 'vf0', 'old0'] as const) {
        const result = batched.kernel.dmaWriteRuns(device, base, PAGE, flat);
        let written = 0n;
        let faulted = 0n;
        for (const [start, length] of runs) {
          const one = single.kernel.dmaWrite(device, base + BigInt(start) * PAGE, BigInt(length) * PAGE);
          written += one.written;
          faulted += one.faulted;
        }
        expect(result).toEqual({ written, faulted });
      }
      expect(batched.read()).toEqual(single.read());
    },
  );

  it('refuses runs that are not page indexes and positive lengths, before any write', () => {
    const m = machine(PAGE);
    expect(() => m.kernel.dmaWriteRuns('nic0', GIB, PAGE, [0, 0])).toThrow(InvalidArgumentError);
    expect(() => m.kernel.dmaWriteRuns('nic0', GIB, PAGE, [2, 1, -1, 1])).toThrow(InvalidArgumentError);
    expect(() => m.kernel.dmaWriteRuns('nic0', GIB, PAGE, [0, 1], 2)).toThrow(InvalidArgumentError);
    expect(m.read().iommu.every((byte) => byte === 0)).toBe(true);
  });
});
