// Huge IOPTEs: the IOMMU maps with the largest page size the IOVA, the physical address and the
// memory's contiguity allow (iommu_pgsize), and a dirty huge IOPTE reports every page it covers.
import { describe, expect, it } from 'vitest';
import { simulatedKernel, type SimulatedKernel } from '../../src/kernel/sim/index.js';
import type { DeviceHandle, IommufdHandle } from '../../src/kernel/types.js';
import { IOMMU_HWPT_ALLOC_DIRTY_TRACKING, IOMMU_OPTION_HUGE_PAGES } from '../../src/uapi/index.js';
import { setBitIndexes } from '../contract/context.js';

const KIB = 1024n;
const MIB = 1024n * KIB;
const GIB = 1024n * MIB;
const PAGE = 4n * KIB;

interface Setup {
  kernel: SimulatedKernel;
  iommufd: IommufdHandle;
  device: DeviceHandle;
  ioas: number;
  hwpt: number;
}

function setup(options: { hugePagesOff?: boolean } = {}): Setup {
  const kernel = simulatedKernel({ devices: [{ name: 'nic0', iommuDirtyTracking: true, pageSizes: [PAGE, 2n * MIB, GIB] }] });
  const iommufd = kernel.openIommufd();
  const ioas = iommufd.ioasAlloc();
  if (options.hugePagesOff) iommufd.optionSet(IOMMU_OPTION_HUGE_PAGES, ioas, 0n);
  const device = kernel.openDevice('nic0');
  const devId = device.bindIommufd(iommufd);
  const hwpt = iommufd.hwptAlloc({ devId, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
  device.attachPt(hwpt);
  iommufd.hwptSetDirtyTracking(hwpt, true);
  return { kernel, iommufd, device, ioas, hwpt };
}

/** Set bits of a 4 KiB-page read of [iova, iova + length), summarised as [first, last] runs. */
function dirtyRuns(s: Setup, iova: bigint, length: bigint, pageSize = PAGE): [number, number][] {
  const bitmap = new Uint8Array(Number(length / pageSize / 8n) + 1);
  s.iommufd.hwptGetDirtyBitmap({ hwptId: s.hwpt, iova, length, pageSize, bitmap });
  const runs: [number, number][] = [];
  for (const index of setBitIndexes(bitmap)) {
    const last = runs[runs.length - 1];
    if (last && last[1] === index - 1) last[1] = index;
    else runs.push([index, index]);
  }
  return runs;
}

function teardown(s: Setup, ...memories: { release(): void }[]): void {
  s.device.close();
  s.iommufd.close();
  for (const memory of memories) memory.release();
  s.kernel.assertClean();
}

describe('huge IOPTEs', () => {
  it('a one-byte write in a 2 MiB IOPTE dirties its 512 pages', () => {
    const s = setup();
    const memory = s.kernel.allocateHostMemory(8n * MIB, { pageSize: 2n * MIB });
    s.iommufd.ioasMap({ ioasId: s.ioas, memory, length: 8n * MIB, iova: GIB });
    s.kernel.dmaWrite(s.device, GIB + 3n * MIB + 5n, 1n);
    expect(dirtyRuns(s, GIB, 8n * MIB)).toEqual([[512, 1023]]);
    expect(dirtyRuns(s, GIB, 8n * MIB)).toEqual([]);
    teardown(s, memory);
  });

  it('a write in a 1 GiB IOPTE dirties its 262144 pages', () => {
    const s = setup();
    const memory = s.kernel.allocateHostMemory(2n * GIB, { pageSize: GIB });
    s.iommufd.ioasMap({ ioasId: s.ioas, memory, length: 2n * GIB, iova: GIB });
    s.kernel.dmaWrite(s.device, 2n * GIB + 12345n, 8n);
    expect(dirtyRuns(s, GIB, 2n * GIB)).toEqual([[262144, 524287]]);
    // At a 2 MiB page size the same IOPTE is 512 bits.
    s.kernel.dmaWrite(s.device, GIB, 1n);
    expect(dirtyRuns(s, GIB, 2n * GIB, 2n * MIB)).toEqual([[0, 511]]);
    teardown(s, memory);
  });

  it('an unaligned mapping uses 4 KiB IOPTEs up to the first 2 MiB boundary, 2 MiB ones up to 1 GiB, then 1 GiB', () => {
    const s = setup();
    const memory = s.kernel.allocateHostMemory(3n * GIB, { pageSize: GIB });
    // IOVA and physical address are both 4 KiB past a 1 GiB boundary: every size stays aligned.
    s.iommufd.ioasMap({ ioasId: s.ioas, memory, memoryOffset: PAGE, length: 2n * GIB, iova: GIB + PAGE });
    s.kernel.dmaWrite(s.device, GIB + PAGE, 1n); // the first 4 KiB IOPTE
    s.kernel.dmaWrite(s.device, GIB + 2n * MIB + 1n, 1n); // the first 2 MiB IOPTE
    s.kernel.dmaWrite(s.device, 2n * GIB + 1n, 1n); // the 1 GiB IOPTE [2 GiB, 3 GiB)
    expect(dirtyRuns(s, GIB + PAGE, 2n * GIB)).toEqual([[0, 0], [511, 1022], [262143, 524286]]);
    s.kernel.dmaWrite(s.device, 3n * GIB, 1n); // the last 4 KiB IOPTE
    expect(dirtyRuns(s, GIB + PAGE, 2n * GIB)).toEqual([[524287, 524287]]);
    teardown(s, memory);
  });

  it('an IOVA and a physical address aligned differently get 4 KiB IOPTEs only', () => {
    const s = setup();
    const memory = s.kernel.allocateHostMemory(8n * MIB, { pageSize: 2n * MIB });
    s.iommufd.ioasMap({ ioasId: s.ioas, memory, memoryOffset: PAGE, length: 4n * MIB, iova: GIB });
    s.kernel.dmaWrite(s.device, GIB + 3n * MIB, 1n);
    expect(dirtyRuns(s, GIB, 4n * MIB)).toEqual([[768, 768]]);
    teardown(s, memory);
  });

  it('small host pages, or IOMMU_OPTION_HUGE_PAGES off, give 4 KiB IOPTEs', () => {
    const small = setup();
    const smallMemory = small.kernel.allocateHostMemory(4n * MIB);
    small.iommufd.ioasMap({ ioasId: small.ioas, memory: smallMemory, length: 4n * MIB, iova: GIB });
    small.kernel.dmaWrite(small.device, GIB + 2n * MIB, 1n);
    expect(dirtyRuns(small, GIB, 4n * MIB)).toEqual([[512, 512]]);
    teardown(small, smallMemory);

    const off = setup({ hugePagesOff: true });
    const offMemory = off.kernel.allocateHostMemory(4n * MIB, { pageSize: 2n * MIB });
    off.iommufd.ioasMap({ ioasId: off.ioas, memory: offMemory, length: 4n * MIB, iova: GIB });
    off.kernel.dmaWrite(off.device, GIB + 2n * MIB, 1n);
    expect(dirtyRuns(off, GIB, 4n * MIB)).toEqual([[512, 512]]);
    teardown(off, offMemory);
  });

  it('a read starting inside a dirty huge IOPTE reports its part and clears the whole IOPTE', () => {
    const s = setup();
    const memory = s.kernel.allocateHostMemory(4n * MIB, { pageSize: 2n * MIB });
    s.iommufd.ioasMap({ ioasId: s.ioas, memory, length: 4n * MIB, iova: GIB });
    s.kernel.dmaWrite(s.device, GIB, 1n);
    expect(dirtyRuns(s, GIB + MIB, MIB)).toEqual([[0, 255]]);
    expect(dirtyRuns(s, GIB, MIB)).toEqual([]);
    // NO_CLEAR keeps it for the next read.
    s.kernel.dmaWrite(s.device, GIB + MIB, 1n);
    const bitmap = new Uint8Array(64);
    s.iommufd.hwptGetDirtyBitmap({ hwptId: s.hwpt, iova: GIB, length: 2n * MIB, pageSize: PAGE, bitmap, noClear: true });
    expect(setBitIndexes(bitmap).length).toBe(512);
    expect(dirtyRuns(s, GIB, 2n * MIB)).toEqual([[0, 511]]);
    teardown(s, memory);
  });
});
