// Scale: a 1 TiB guest at 4 KiB pages (2^28 pages, 32 MiB per bitmap) with two dirty sources —
// an IOMMU dirty-tracking HWPT and a device's DMA log — costs bitmaps, never guest memory.
// The figures are printed; run alone with `npx vitest run test/sim/scale.test.ts`.
import { describe, expect, it } from 'vitest';
import { guestWorkload, simulatedKernel } from '../../src/kernel/sim/index.js';
import { IOMMU_HWPT_ALLOC_DIRTY_TRACKING } from '../../src/uapi/index.js';

const MIB = 1024 * 1024;
const TIB = 1n << 40n;
const PAGE = 4096n;
const BITMAP_BYTES = Number(TIB / PAGE / 8n); // 32 MiB

function mib(bytes: number): string {
  return `${(bytes / MIB).toFixed(1)} MiB`;
}

describe('a 1 TiB simulated guest', () => {
  it('with two dirty sources uses memory near the size of its bitmaps, and loses no dirty page', () => {
    const before = process.memoryUsage();
    const started = performance.now();
    const kernel = simulatedKernel({
      devices: [
        { name: 'nic0', iommuDirtyTracking: true },
        { name: 'vf0', dmaLogging: { maxRanges: 16, pageSize: PAGE } },
      ],
    });
    const iommufd = kernel.openIommufd();
    const ioas = iommufd.ioasAlloc();
    const nic = kernel.openDevice('nic0');
    const nicId = nic.bindIommufd(iommufd);
    const hwpt = iommufd.hwptAlloc({ devId: nicId, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
    nic.attachPt(hwpt);
    const vf = kernel.openDevice('vf0');
    vf.bindIommufd(iommufd);
    vf.attachPt(ioas);
    const memory = kernel.allocateHostMemory(TIB);
    iommufd.ioasMap({ ioasId: ioas, memory, length: TIB, iova: TIB });
    iommufd.hwptSetDirtyTracking(hwpt, true);
    vf.dmaLoggingStart(PAGE, [{ iova: TIB, length: TIB }]);

    // One simulated second at 2 M pages/s, uniform over the whole guest: every bitmap chunk is touched.
    const workload = guestWorkload(kernel, {
      ranges: [{ iova: TIB, length: TIB }],
      devices: [nic, vf],
      pattern: { kind: 'uniform' },
      seed: 7,
      dirtyRate: 2_000_000,
    });
    const step = workload.advance(1);
    expect(step.writes).toBe(2_000_000);
    expect(step.faulted).toBe(0);
    const written = performance.now();

    const fromIommu = new Uint8Array(BITMAP_BYTES);
    iommufd.hwptGetDirtyBitmap({ hwptId: hwpt, iova: TIB, length: TIB, pageSize: PAGE, bitmap: fromIommu, noClear: true });
    const fromDevice = new Uint8Array(BITMAP_BYTES);
    vf.dmaLoggingReport({ iova: TIB, length: TIB, pageSize: PAGE, bitmap: fromDevice });
    const queried = performance.now();
    const hwptObject = kernel.objects().iommufds[0]!.objects.find((object) => object.id === hwpt)!;
    const iommuDirtyBytes = hwptObject.details.dirtyBitmapBytes as number;
    const peak = process.memoryUsage();

    // Merge the two sources: every page the guest wrote is in one of them.
    const merged = new Uint32Array(fromIommu.buffer);
    const device = new Uint32Array(fromDevice.buffer);
    for (let word = 0; word < merged.length; word++) merged[word]! |= device[word]!;
    expect(workload.compare(fromIommu, TIB, PAGE, { extra: false })).toEqual({ lost: 0, extra: 0, firstLost: undefined });
    expect(workload.dirtyPages).toBeGreaterThan(1_990_000);

    const arrayBuffers = peak.arrayBuffers - before.arrayBuffers;
    const rss = peak.rss - before.rss;
    const bitmaps = iommuDirtyBytes + BITMAP_BYTES /* device log */ + workload.truthBytes + 2 * BITMAP_BYTES /* query bitmaps */;
    console.log(
      [
        '1 TiB guest, 4 KiB pages, 2 dirty sources, 2,000,000 page writes:',
        `  IOMMU HWPT dirty bitmap ${mib(iommuDirtyBytes)}, ground truth ${mib(workload.truthBytes)}, two 32 MiB query bitmaps`,
        `  arrayBuffers +${mib(arrayBuffers)} (the bitmaps: ${mib(bitmaps)} incl. a 32 MiB device log), rss +${mib(rss)}`,
        `  workload ${(written - started).toFixed(0)} ms, queries ${(queried - written).toFixed(0)} ms`,
      ].join('\n'),
    );
    // Near the bitmaps: no guest memory (1 TiB) and nothing per page beyond the bitmaps.
    expect(arrayBuffers).toBeLessThan(bitmaps + 16 * MIB);
    expect(rss).toBeLessThan(bitmaps + 256 * MIB);

    vf.dmaLoggingStop();
    vf.close();
    nic.close();
    iommufd.close();
    memory.release();
    kernel.assertClean();
  }, 60_000);
});
