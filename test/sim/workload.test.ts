// The guest workload generator: seeded, at a dirty rate, four patterns, and a ground truth that
// every dirty source can be checked against (no dirty page lost).
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/kernel/errors.js';
import { guestWorkload, simulatedKernel, type SimulatedKernel, type WorkloadPattern } from '../../src/kernel/sim/index.js';
import type { DeviceHandle, IommufdHandle } from '../../src/kernel/types.js';
import { IOMMU_HWPT_ALLOC_DIRTY_TRACKING, VFIO_TYPE1v2_IOMMU } from '../../src/uapi/index.js';

const KIB = 1024n;
const MIB = 1024n * KIB;
const GIB = 1024n * MIB;
const PAGE = 4n * KIB;
const GUEST = 64n * MIB; // 16384 pages

interface Guest {
  kernel: SimulatedKernel;
  iommufd: IommufdHandle;
  nic: DeviceHandle;
  vf: DeviceHandle;
  hwpt: number;
  ioas: number;
  close(): void;
}

/** A guest of 64 MiB at IOVA 1 GiB, seen by a dirty-tracking NIC and a DMA-logging VF. */
function guest(): Guest {
  const kernel = simulatedKernel({
    devices: [{ name: 'nic0', iommuDirtyTracking: true }, { name: 'vf0', dmaLogging: { maxRanges: 8, pageSize: PAGE } }],
  });
  const iommufd = kernel.openIommufd();
  const ioas = iommufd.ioasAlloc();
  const nic = kernel.openDevice('nic0');
  const hwpt = iommufd.hwptAlloc({ devId: nic.bindIommufd(iommufd), ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
  nic.attachPt(hwpt);
  const vf = kernel.openDevice('vf0');
  vf.bindIommufd(iommufd);
  vf.attachPt(ioas);
  const memory = kernel.allocateHostMemory(GUEST);
  iommufd.ioasMap({ ioasId: ioas, memory, length: GUEST, iova: GIB });
  iommufd.hwptSetDirtyTracking(hwpt, true);
  vf.dmaLoggingStart(PAGE, [{ iova: GIB, length: GUEST }]);
  return {
    kernel, iommufd, nic, vf, hwpt, ioas,
    close() {
      vf.close();
      nic.close();
      iommufd.close();
      memory.release();
      kernel.assertClean();
    },
  };
}

function readBoth(g: Guest): Uint8Array {
  const bitmap = new Uint8Array(Number(GUEST / PAGE / 8n));
  g.iommufd.hwptGetDirtyBitmap({ hwptId: g.hwpt, iova: GIB, length: GUEST, pageSize: PAGE, bitmap });
  g.vf.dmaLoggingReport({ iova: GIB, length: GUEST, pageSize: PAGE, bitmap });
  return bitmap;
}

describe('guest workload', () => {
  it('is reproducible from its seed', () => {
    const runs = [1, 1, 2].map((seed) => {
      const g = guest();
      const workload = guestWorkload(g.kernel, { ranges: [{ iova: GIB, length: GUEST }], devices: [g.nic, g.vf], seed, dirtyRate: 1000 });
      workload.advance(1);
      const pages: number[] = [];
      workload.forEachDirtyRun((first, end) => {
        for (let page = first; page < end; page++) pages.push(page);
      });
      g.close();
      return pages;
    });
    expect(runs[0]).toEqual(runs[1]);
    expect(runs[0]).not.toEqual(runs[2]);
  });

  it('writes at its dirty rate, carrying fractions between steps', () => {
    const g = guest();
    const workload = guestWorkload(g.kernel, { ranges: [{ iova: GIB, length: GUEST }], devices: [g.nic], dirtyRate: 1000 });
    expect(workload.advance(0.5).writes).toBe(500);
    let writes = 0;
    for (let step = 0; step < 1000; step++) writes += workload.advance(0.0015).writes;
    expect(writes).toBe(1500);
    expect(workload.totalWrites).toBe(2000);
    g.close();
  });

  const patterns: [string, WorkloadPattern, (pages: number[], writes: number) => void][] = [
    ['uniform: distinct pages close to the birthday expectation', { kind: 'uniform' }, (pages, writes) => {
      const expected = 16384 * (1 - Math.exp(-writes / 16384));
      expect(Math.abs(pages.length - expected)).toBeLessThan(expected * 0.05);
    }],
    ['hot-set: 90% of 4000 writes land in 5% of memory', { kind: 'hot-set', hotFraction: 0.05, hotProbability: 0.9 }, (pages) => {
      expect(pages.length).toBeLessThan(0.05 * 16384 + 0.1 * 4000 + 50);
      expect(pages.length).toBeGreaterThan(400);
    }],
    ['sequential: a sweep from page 0', { kind: 'sequential' }, (pages, writes) => {
      expect(pages).toEqual(Array.from({ length: writes }, (_, index) => index));
    }],
    ['bursts: runs of 64 consecutive pages', { kind: 'bursts', burstPages: 64 }, (pages) => {
      let runs = 0;
      for (let index = 0; index < pages.length; index++) if (index === 0 || pages[index] !== pages[index - 1]! + 1) runs++;
      expect(runs).toBeLessThanOrEqual(4000 / 64);
    }],
  ];
  for (const [name, pattern, check] of patterns) {
    it(`pattern ${name}; both dirty sources together lose no page`, () => {
      const g = guest();
      const workload = guestWorkload(g.kernel, { ranges: [{ iova: GIB, length: GUEST }], devices: [g.nic, g.vf], pattern, seed: 3, dirtyRate: 4000 });
      const step = workload.advance(1);
      const pages: number[] = [];
      workload.forEachDirtyRun((first, end) => {
        for (let page = first; page < end; page++) pages.push(page);
      });
      expect(step.newlyDirty).toBe(pages.length);
      check(pages, step.writes);
      expect(workload.compare(readBoth(g), GIB, PAGE)).toEqual({ lost: 0, extra: 0, firstLost: undefined });
      g.close();
    });
  }

  it('one source alone misses the other device\'s pages: the comparison finds them', () => {
    const g = guest();
    const workload = guestWorkload(g.kernel, { ranges: [{ iova: GIB, length: GUEST }], devices: [g.nic, g.vf], seed: 5, dirtyRate: 100 });
    workload.advance(1);
    const iommuOnly = new Uint8Array(Number(GUEST / PAGE / 8n));
    g.iommufd.hwptGetDirtyBitmap({ hwptId: g.hwpt, iova: GIB, length: GUEST, pageSize: PAGE, bitmap: iommuOnly });
    const result = workload.compare(iommuOnly, GIB, PAGE);
    expect(result.lost).toBeGreaterThan(40);
    expect(result.firstLost).toBeGreaterThanOrEqual(GIB);
    g.close();
  });

  it('rounds: take the ground truth, read and clear the sources, and the next round matches again', () => {
    const g = guest();
    const workload = guestWorkload(g.kernel, { ranges: [{ iova: GIB, length: GUEST }], devices: [g.nic, g.vf], pattern: { kind: 'hot-set' }, seed: 11, dirtyRate: 2000 });
    for (let round = 0; round < 3; round++) {
      workload.advance(0.25);
      const truth = workload.takeGroundTruth();
      expect(workload.dirtyPages).toBe(0);
      expect(workload.compare(readBoth(g), GIB, PAGE, { truth })).toMatchObject({ lost: 0, extra: 0 });
    }
    g.close();
  });

  it('a coarse source (a 2 MiB bitmap) over-reports but loses nothing', () => {
    const g = guest();
    const workload = guestWorkload(g.kernel, { ranges: [{ iova: GIB, length: GUEST }], devices: [g.nic], seed: 2, dirtyRate: 50 });
    workload.advance(1);
    const coarse = new Uint8Array(Number((GUEST / (2n * MIB) + 63n) / 64n) * 8); // whole u64 words
    g.iommufd.hwptGetDirtyBitmap({ hwptId: g.hwpt, iova: GIB, length: GUEST, pageSize: 2n * MIB, bitmap: coarse });
    const result = workload.compare(coarse, GIB, 2n * MIB);
    expect(result.lost).toBe(0);
    g.close();
  });

  it('type1 reports every mapped page of a vfio-pci device: no page lost, many extra', () => {
    const kernel = simulatedKernel({ devices: [{ name: 'nic0', groupId: 5 }] });
    const container = kernel.openLegacyContainer();
    const group = kernel.openGroup(5);
    group.setContainer(container);
    container.setIommu(VFIO_TYPE1v2_IOMMU);
    const device = group.openDevice('nic0');
    const memory = kernel.allocateHostMemory(GUEST);
    container.mapDma({ memory, iova: GIB, size: GUEST });
    container.dirtyPagesStart();
    const workload = guestWorkload(kernel, { ranges: [{ iova: GIB, length: GUEST }], devices: [device], seed: 4, dirtyRate: 300 });
    expect(workload.advance(1).faulted).toBe(0);
    const bitmap = new Uint8Array(Number(GUEST / PAGE / 8n));
    container.dirtyPagesGetBitmap({ iova: GIB, length: GUEST, pageSize: PAGE, bitmap });
    const result = workload.compare(bitmap, GIB, PAGE);
    expect(result.lost).toBe(0);
    expect(result.extra).toBe(16384 - workload.dirtyPages);
    container.dirtyPagesStop();
    device.close();
    group.close();
    container.close();
    memory.release();
    kernel.assertClean();
  });

  it('writes the IOMMU refuses are not dirty, and are counted', () => {
    const g = guest();
    // The second range is not mapped: its writes fault.
    const workload = guestWorkload(g.kernel, {
      ranges: [{ iova: GIB, length: GUEST }, { iova: 4n * GIB, length: GUEST }],
      devices: [g.nic],
      pattern: { kind: 'uniform' },
      seed: 9,
      dirtyRate: 1000,
    });
    const step = workload.advance(1);
    expect(step.faulted).toBeGreaterThan(400);
    expect(workload.pages).toBe(2 * 16384);
    const bitmap = new Uint8Array(Number(GUEST / PAGE / 8n));
    g.iommufd.hwptGetDirtyBitmap({ hwptId: g.hwpt, iova: GIB, length: GUEST, pageSize: PAGE, bitmap });
    expect(workload.compare(bitmap, GIB, PAGE)).toEqual({ lost: 0, extra: 0, firstLost: undefined });
    expect(workload.dirtyPages).toBe(step.newlyDirty);
    g.close();
  });

  it('refuses bad options with InvalidArgumentError', () => {
    const kernel = simulatedKernel({ devices: [{ name: 'nic0' }] });
    expect(() => guestWorkload(kernel, { ranges: [], devices: ['nic0'], dirtyRate: 1 })).toThrow(InvalidArgumentError);
    expect(() => guestWorkload(kernel, { ranges: [{ iova: 1n, length: PAGE }], devices: ['nic0'], dirtyRate: 1 })).toThrow(/aligned/);
    expect(() => guestWorkload(kernel, { ranges: [{ iova: 0n, length: PAGE }], devices: ['nic0'], dirtyRate: 0 })).toThrow(/dirtyRate/);
    expect(() => guestWorkload(kernel, { ranges: [{ iova: 0n, length: PAGE }], devices: ['nic0'], dirtyRate: 1, pattern: { kind: 'zigzag' } as never })).toThrow(InvalidArgumentError);
  });
});
