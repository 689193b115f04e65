// DirtySync on the simulated kernel: each tracker kind, resampling, unmaps during migration,
// failures of queries and of the start, and the pages a round reports against what was written.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirtySync } from '../../src/dirty/dirty-sync.js';
import { Engine } from '../../src/engine/index.js';
import { simulatedKernel, type SimulatedKernel } from '../../src/kernel/sim/index.js';
import type { SimulatedDeviceSpecInput } from '../../src/kernel/sim/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';

const PAGE = 4096n;
let engine: Engine;

beforeAll(async () => {
  engine = await Engine.create({ workers: 2, minimumShardBytes: 4096, inlineUpToBytes: 4096 });
});
afterAll(async () => {
  await engine.close();
});

async function setup(devices: SimulatedDeviceSpecInput[], ranges: [bigint, bigint][] = [[0n, 1n << 24n]], options: { allowUntrackedDevices?: boolean } = {}) {
  const kernel = simulatedKernel({ devices });
  const space = new AddressSpace(kernel);
  for (const [iova, size] of ranges) await space.map({ iova, size });
  for (const d of devices) await space.attach(d.name);
  const sync = new DirtySync(space, { engine, initiallyDirty: false, ...options });
  await sync.start();
  return { kernel, space, sync };
}

/** Pages a round hands over: by IOVA where the memory is mapped, by (region, offset) where it no longer is. */
async function dirtyIovas(sync: DirtySync): Promise<{ round: Awaited<ReturnType<DirtySync['round']>>; pages: bigint[]; unmapped: string[] }> {
  const pages: bigint[] = [];
  const unmapped: string[] = [];
  const round = await sync.round({
    onRuns: (runs, count) => {
      for (let i = 0; i < count; i++) {
        for (const range of sync.rangesOfRun(runs[2 * i]!, runs[2 * i + 1]!)) {
          for (let at = 0n; at < range.length; at += PAGE) {
            if (range.iova === undefined) unmapped.push(`${range.region}:0x${(range.offset + at).toString(16)}`);
            else pages.push(range.iova + at);
          }
        }
      }
    },
  });
  return { round, pages: pages.sort((a, b) => (a < b ? -1 : 1)), unmapped };
}

async function finish(kernel: SimulatedKernel, space: AddressSpace, sync: DirtySync) {
  await sync.stop();
  await space.close();
  kernel.assertClean();
}

describe('DirtySync', () => {
  it('reports exactly the pages an IOMMU-tracked device wrote, then nothing after they are sent', async () => {
    const { kernel, space, sync } = await setup([{ name: 'nic0', iommuDirtyTracking: true }]);
    expect(sync.sources).toEqual([{ kind: 'iommu', name: expect.stringMatching(/^hwpt \d+$/), devices: ['nic0'] }]);
    kernel.dmaWrite('nic0', 0x3000n, 0x2000n);
    kernel.dmaWrite('nic0', 0x800000n, 0x1000n);
    const first = await dirtyIovas(sync);
    expect(first.pages).toEqual([0x3000n, 0x4000n, 0x800000n]);
    expect(first.round).toMatchObject({ newlyDirtyPages: 3, dirtyPages: 3, runCount: 2, failures: [], untrackedDevices: [] });
    const second = await dirtyIovas(sync);
    expect(second.pages).toEqual([]);
    expect(second.round.newlyDirtyPages).toBe(0);
    await finish(kernel, space, sync);
  });

  it('starts with every mapped page dirty by default (the first round sends all memory)', async () => {
    const kernel = simulatedKernel({ devices: [{ name: 'nic0', iommuDirtyTracking: true }] });
    const space = new AddressSpace(kernel);
    await space.map({ iova: 0n, size: 0x100000n });
    await space.map({ iova: 0x40000000n, size: 0x200000n });
    await space.attach('nic0');
    const sync = new DirtySync(space, { engine });
    await sync.start();
    const ranges: bigint[][] = [];
    const round = await sync.round({ onRuns: (runs, count) => {
      for (let i = 0; i < count; i++) for (const r of sync.rangesOfRun(runs[2 * i]!, runs[2 * i + 1]!)) ranges.push([r.iova!, r.length]);
    } });
    expect(round.dirtyPages).toBe(0x300);
    expect(ranges).toEqual([[0n, 0x100000n], [0x40000000n, 0x200000n]]);
    // Handed over: the bitmap is empty until something writes.
    expect((await sync.round()).dirtyPages).toBe(0);
    await finish(kernel, space, sync);
  });

  it('resamples a DMA-logging device that logs at 64 KiB into 4 KiB migration pages', async () => {
    const { kernel, space, sync } = await setup([{ name: 'gpu0', dmaLogging: { pageSize: 65536n } }]);
    expect(sync.sources[0]).toMatchObject({ kind: 'dma-logging', devices: ['gpu0'] });
    kernel.dmaWrite('gpu0', 0x11000n, 0x1000n);
    const { pages, round } = await dirtyIovas(sync);
    expect(pages).toEqual(Array.from({ length: 16 }, (_, i) => 0x10000n + BigInt(i) * PAGE));
    expect(round.newlyDirtyPages).toBe(16);
    await finish(kernel, space, sync);
  });

  it('mixes sources per device: IOMMU, DMA logging, and an untracked device that makes every round all dirty', async () => {
    const { kernel, space, sync } = await setup([
      { name: 'nic0', iommuDirtyTracking: true },
      { name: 'gpu0', dmaLogging: { pageSize: 4096n } },
      { name: 'old0' },
    ], undefined, { allowUntrackedDevices: true });
    expect(sync.sources.map((s) => s.kind).sort()).toEqual(['dma-logging', 'iommu', 'none']);
    kernel.dmaWrite('nic0', 0x1000n, 0x1000n);
    const { round } = await dirtyIovas(sync);
    expect(round.untrackedDevices).toEqual(['old0']);
    expect(round.dirtyPages).toBe(Number((1n << 24n) / PAGE));
    await finish(kernel, space, sync);
  });

  it('type1 reports every pinned page dirty', async () => {
    const { kernel, space, sync } = await setup([{ name: 'leg0', legacyOnly: true }], [[0n, 0x100000n]]);
    expect(sync.sources[0]?.kind).toBe('type1');
    const { round } = await dirtyIovas(sync);
    expect(round.dirtyPages).toBe(0x100);
    await finish(kernel, space, sync);
  });

  it('keeps the dirty pages of a mapping unmapped during migration until they are sent', async () => {
    const { kernel, space, sync } = await setup(
      [{ name: 'nic0', iommuDirtyTracking: true }, { name: 'gpu0', dmaLogging: { pageSize: 4096n } }],
      [[0n, 0x100000n], [0x200000n, 0x100000n]],
    );
    kernel.dmaWrite('nic0', 0x205000n, 0x1000n); // IOMMU: read with NO_CLEAR before the unmap
    kernel.dmaWrite('gpu0', 0x20a000n, 0x1000n); // DMA logging: read after the unmap
    await space.unmap({ iova: 0x200000n, size: 0x100000n });
    expect(sync.regions).toHaveLength(2); // the memory keeps its bits until a round hands them over
    const { pages, unmapped } = await dirtyIovas(sync);
    expect(pages).toEqual([]);
    expect(unmapped).toEqual(['1:0x5000', '1:0xa000']); // by memory region and offset: no IOVA maps them now
    // Handed over and the memory released: its bits are given back, and the IOVA mapped again
    // onto new memory is all dirty (never sent) without aliasing the old memory.
    expect(sync.regions).toHaveLength(1);
    await space.map({ iova: 0x200000n, size: 0x100000n });
    expect((await dirtyIovas(sync)).round.dirtyPages).toBe(0x100);
    await finish(kernel, space, sync);
  });

  it('counts bits that arrived between rounds as dirty before the round: newly dirty is only what the round added', async () => {
    // A round after a full hand-over skips its count-before pass; anything written since must
    // bring the count back.
    const { kernel, space, sync } = await setup(
      [{ name: 'nic0', iommuDirtyTracking: true }, { name: 'gpu0', dmaLogging: { pageSize: 4096n } }],
      [[0n, 0x100000n], [0x200000n, 0x100000n]],
    );
    kernel.dmaWrite('nic0', 0x1000n, 0x1000n);
    expect((await dirtyIovas(sync)).round).toMatchObject({ dirtyPages: 1, newlyDirtyPages: 1 });
    kernel.dmaWrite('nic0', 0x205000n, 0x1000n); // read (NO_CLEAR) into the bitmap by the unmap
    kernel.dmaWrite('gpu0', 0x20a000n, 0x1000n); // drained into the bitmap by the unmap
    kernel.dmaWrite('nic0', 0x3000n, 0x1000n); // still in the kernel: this round's own
    kernel.dmaWrite('gpu0', 0x1000n, 0x1000n); // sent in round 1, dirty again
    await space.unmap({ iova: 0x200000n, size: 0x100000n });
    expect((await dirtyIovas(sync)).round).toMatchObject({ dirtyPages: 4, newlyDirtyPages: 2 });
    expect((await dirtyIovas(sync)).round).toMatchObject({ dirtyPages: 0, newlyDirtyPages: 0 });
    // Pages the consumer gives back are dirty before the next round.
    await sync.redirty({ memory: space.mappings[0]!.memory, offset: 0x4000n, length: 0x2000n });
    kernel.dmaWrite('nic0', 0x5000n, 0x2000n);
    expect((await dirtyIovas(sync)).round).toMatchObject({ dirtyPages: 3, newlyDirtyPages: 1 });
    // Bits marked while the round hands its runs over: the segment is not taken as clean after.
    kernel.dmaWrite('nic0', 0x9000n, 0x1000n);
    let marked = false;
    await sync.round({ onRuns: () => {
      if (!marked) sync.bitmap.markBits(sync.regions[0]!.bit + 0xc, 1); // page 0xc000, outside the run's span
      marked = true;
    } });
    kernel.dmaWrite('nic0', 0xd000n, 0x1000n);
    expect((await dirtyIovas(sync)).round).toMatchObject({ dirtyPages: 2, newlyDirtyPages: 1 });
    // New memory is marked all dirty when it is mapped, before the round.
    await space.map({ iova: 0x200000n, size: 0x100000n });
    kernel.dmaWrite('nic0', 0x8000n, 0x1000n);
    expect((await dirtyIovas(sync)).round).toMatchObject({ dirtyPages: 0x101, newlyDirtyPages: 1 });
    await finish(kernel, space, sync);
  });

  it('a failed GET_DIRTY_BITMAP marks its range all dirty and says so, never skipping it', async () => {
    const { kernel, space, sync } = await setup([{ name: 'nic0', iommuDirtyTracking: true }], [[0n, 0x100000n], [0x200000n, 0x100000n]]);
    kernel.dmaWrite('nic0', 0x1000n, 0x1000n);
    kernel.failNext('IOMMU_HWPT_GET_DIRTY_BITMAP', 'EIO', { after: 1 });
    const { round } = await dirtyIovas(sync);
    expect(round.failures).toEqual([expect.objectContaining({ iova: 0x200000n, length: 0x100000n, error: expect.objectContaining({ code: 'EIO' }) })]);
    expect(round.dirtyPages).toBe(1 + 0x100);
    await finish(kernel, space, sync);
  });

  it('a failed DMA logging report makes the device\'s memory all dirty and keeps logging (never restarted)', async () => {
    const { kernel, space, sync } = await setup([{ name: 'gpu0', dmaLogging: { pageSize: 4096n } }], [[0n, 0x100000n]]);
    kernel.failNext('VFIO_DEVICE_FEATURE', 'EIO', { objects: { feature: 'DMA_LOGGING_REPORT' } });
    const starts = kernel.ioctlCount('VFIO_DEVICE_FEATURE');
    const { round } = await dirtyIovas(sync);
    expect(round.failures).toHaveLength(1);
    expect(round.dirtyPages).toBe(0x100);
    expect(kernel.ioctlCount('VFIO_DEVICE_FEATURE') - starts).toBe(1); // the report only: no stop, no start
    kernel.dmaWrite('gpu0', 0x2000n, 0x1000n);
    expect((await dirtyIovas(sync)).pages).toEqual([0x2000n]);
    await finish(kernel, space, sync);
  });

  it('a failure while starting stops every tracker already started', async () => {
    const kernel = simulatedKernel({ devices: [{ name: 'nic0', iommuDirtyTracking: true }, { name: 'gpu0', dmaLogging: { pageSize: 4096n } }] });
    const space = new AddressSpace(kernel);
    await space.map({ iova: 0n, size: 0x100000n });
    await space.attach('nic0');
    await space.attach('gpu0');
    const sync = new DirtySync(space, { engine });
    kernel.failNext('VFIO_DEVICE_FEATURE', 'EIO', { objects: { feature: 'DMA_LOGGING_START' } });
    const trace = kernel.startTrace();
    await expect(sync.start()).rejects.toMatchObject({ code: 'EIO' });
    trace.stop();
    const calls = trace.summary;
    expect(calls.filter((c) => c === 'IOMMU_HWPT_SET_DIRTY_TRACKING')).toHaveLength(2); // enable, then the rollback's disable
    expect(sync.started).toBe(false);
    await sync.start();
    await finish(kernel, space, sync);
  });
});

describe('DMA logging ranges', () => {
  it("takes as many ranges as the kernel's LOG_MAX_RANGES at the host's page size (64 KiB: PAGE_SIZE / 16 bytes)", async () => {
    // sizeof(struct vfio_device_feature_dma_logging_range) is 16 (two __aligned_u64): 4096 at 64 KiB, 256 at 4 KiB.
    const LARGE = 65536n;
    const kernel = simulatedKernel({
      systemPageSize: LARGE,
      devices: [{ name: 'gpu0', dmaLogging: { pageSize: LARGE, maxRanges: 4096, tooManyRanges: 'reject' } }],
    });
    const space = new AddressSpace(kernel);
    // 300 mappings and as many ranges: more than a 4 KiB host's 256, fewer than a 64 KiB host's 4096.
    const ranges = Array.from({ length: 300 }, (_, i) => ({ iova: BigInt(i) * 2n * LARGE, length: LARGE }));
    for (const range of ranges) await space.map({ iova: range.iova, size: range.length });
    await space.attach('gpu0');
    const sync = new DirtySync(space, { engine, initiallyDirty: false, dmaLoggingRanges: ranges });
    await sync.start();
    try {
      expect(kernel.objects().dmaLogging).toEqual([{ device: 'gpu0', pageSize: LARGE, ranges: 300 }]);
    } finally {
      await sync.stop();
      await space.close();
    }
  });

  it('refuses ranges that leave a mapping unlogged, before logging starts, and nothing changes', async () => {
    const kernel = simulatedKernel({ devices: [{ name: 'gpu0', dmaLogging: { pageSize: PAGE } }] });
    const space = new AddressSpace(kernel);
    await space.map({ iova: 0n, size: 1n << 24n });
    await space.attach('gpu0');
    const sync = new DirtySync(space, { engine, initiallyDirty: false, dmaLoggingRanges: [{ iova: 0n, length: 1n << 20n }] });
    await expect(sync.start()).rejects.toThrow(/0x0\+0x1000000 is mapped but outside the IOVA ranges gpu0 would log DMA for/);
    expect(kernel.objects().dmaLogging).toEqual([]);
    // The same space starts once the ranges cover what is mapped.
    const covering = new DirtySync(space, { engine, initiallyDirty: false, dmaLoggingRanges: [{ iova: 0n, length: 1n << 24n }] });
    await covering.start();
    expect(kernel.objects().dmaLogging).toEqual([{ device: 'gpu0', pageSize: PAGE, ranges: 1 }]);
    await covering.stop();
    await space.close();
  });
});
