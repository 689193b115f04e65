// 10,000 seeded rounds of DirtySync on the simulated kernel with mixed devices, maps and unmaps
// during migration, and injected failures of kernel queries, unmaps and engine workers. After
// every round, every page a device wrote since it was last sent must be dirty: zero lost pages.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirtySync } from '../../src/dirty/dirty-sync.js';
import { Engine } from '../../src/engine/index.js';
import { isKernelError } from '../../src/kernel/errors.js';
import { simulatedKernel, Xoshiro128 } from '../../src/kernel/sim/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';

const PAGE = 4096n;
const ROUNDS = 10_000;
const KiB64 = 65536n;

/** Slots of guest memory that come and go: 16 slots of 64 MiB at 128 MiB strides (bitmaps big enough to shard over both workers). */
const SLOTS = Array.from({ length: 16 }, (_, i) => ({ iova: BigInt(i) * 0x8000000n, size: 0x4000000n }));

let engine: Engine;
beforeAll(async () => {
  engine = await Engine.create({ workers: 2, minimumShardBytes: 4096 });
});
afterAll(async () => {
  await engine.close();
});

interface Stats {
  rounds: number;
  writes: number;
  maps: number;
  unmaps: number;
  queryFailures: number;
  unmapFailures: number;
  workerFaults: number;
  checkedPages: number;
  lost: number;
}

async function run(seed: number, rounds: number): Promise<Stats> {
  const random = new Xoshiro128(seed);
  const chance = (p: number) => random.nextBelow(1_000_000) < p * 1_000_000;
  const kernel = simulatedKernel({
    devices: [
      { name: 'nic0', iommuDirtyTracking: true },
      { name: 'nic1', iommuDirtyTracking: true },
      { name: 'gpu0', dmaLogging: { pageSize: 4096n } },
      { name: 'gpu1', dmaLogging: { pageSize: KiB64 } },
    ],
  });
  const devices = ['nic0', 'nic1', 'gpu0', 'gpu1'];
  const space = new AddressSpace(kernel);
  const mapped = new Set<number>();
  for (const index of [0, 1, 2, 3]) {
    await space.map(SLOTS[index]!);
    mapped.add(index);
  }
  for (const name of devices) await space.attach(name);
  const sync = new DirtySync(space, { engine, initiallyDirty: false, capacityBytes: 2n << 30n });
  await sync.start();
  const stats: Stats = { rounds: 0, writes: 0, maps: 0, unmaps: 0, queryFailures: 0, unmapFailures: 0, workerFaults: 0, checkedPages: 0, lost: 0 };
  /** IOVA pages written since they were last sent. */
  const truth = new Set<bigint>();

  for (let round = 0; round < rounds; round++) {
    // The guest's devices write a few pages of what is mapped.
    const writes = random.nextBelow(24);
    const live = [...mapped];
    for (let w = 0; w < writes && live.length; w++) {
      const slot = SLOTS[live[random.nextBelow(live.length)]!]!;
      const page = slot.iova + BigInt(random.nextBelow(Number(slot.size / PAGE))) * PAGE;
      const result = kernel.dmaWrite(devices[random.nextBelow(devices.length)]!, page, PAGE);
      if (result.written === PAGE) truth.add(page);
      stats.writes++;
    }
    // Mapping changes during migration, sometimes with the kernel refusing the unmap.
    if (chance(0.05)) {
      const free = SLOTS.map((_, i) => i).filter((i) => !mapped.has(i));
      if (free.length) {
        const index = free[random.nextBelow(free.length)]!;
        await space.map(SLOTS[index]!);
        mapped.add(index);
        stats.maps++;
      }
    }
    if (chance(0.05) && mapped.size > 1) {
      const index = [...mapped][random.nextBelow(mapped.size)]!;
      // Writes right before the unmap: they must survive it.
      kernel.dmaWrite('gpu0', SLOTS[index]!.iova, PAGE) && truth.add(SLOTS[index]!.iova);
      if (chance(0.2)) {
        kernel.failNext('IOMMU_IOAS_UNMAP', 'EIO');
        await expect(space.unmap(SLOTS[index]!)).rejects.toSatisfy((e: unknown) => isKernelError(e, 'EIO'));
        stats.unmapFailures++;
      } else {
        await space.unmap(SLOTS[index]!);
        mapped.delete(index);
        stats.unmaps++;
      }
    }
    // Failing kernel queries and dying workers.
    if (chance(0.03)) {
      kernel.failNext('IOMMU_HWPT_GET_DIRTY_BITMAP', 'EIO', { after: random.nextBelow(3) });
      stats.queryFailures++;
    }
    if (chance(0.03)) {
      kernel.failNext('VFIO_DEVICE_FEATURE', 'EIO', { objects: { feature: 'DMA_LOGGING_REPORT' }, after: random.nextBelow(2) });
      stats.queryFailures++;
    }
    if (chance(0.01)) {
      engine.testing.injectFault(random.nextBelow(2), random.nextBelow(4));
      stats.workerFaults++;
    }
    if (chance(0.005)) {
      await engine.testing.terminateWorker(random.nextBelow(2));
      stats.workerFaults++;
    }

    const dirty = new Set<bigint>();
    await sync.round({
      onRuns: (runs, count) => {
        for (let i = 0; i < count; i++) {
          for (const range of sync.rangesOfRun(runs[2 * i]!, runs[2 * i + 1]!)) {
            for (let iova = range.iova; iova < range.iova + range.length; iova += PAGE) dirty.add(iova);
          }
        }
      },
    });
    for (const page of truth) {
      stats.checkedPages++;
      if (!dirty.has(page)) stats.lost++;
    }
    expect(stats.lost, `round ${round} of seed ${seed}: lost pages`).toBe(0);
    // Send everything: the consumer clears what it sent.
    await sync.markAllSent();
    truth.clear();
    kernel.clearFaults();
    stats.rounds++;
  }
  // A stop asked for while a round runs waits for it; the round's pages are not lost.
  kernel.dmaWrite('nic0', SLOTS[[...mapped][0]!]!.iova, PAGE);
  const last = sync.round();
  const stopped = sync.stop();
  expect((await last).dirtyPages).toBeGreaterThanOrEqual(1);
  await stopped;
  await space.close();
  kernel.assertClean();
  return stats;
}

describe('randomized migration', () => {
  it(`loses no dirty page over ${ROUNDS} seeded rounds with mapping changes and injected failures`, async () => {
    const seeds = [1, 2, 3, 4];
    const workersBefore = engine.testing.workersStarted();
    const totals: Stats[] = [];
    for (const seed of seeds) totals.push(await run(seed, ROUNDS / seeds.length));
    const sum = (key: keyof Stats) => totals.reduce((a, s) => a + s[key], 0);
    console.log(
      `randomized migration: ${sum('rounds')} rounds, ${sum('writes')} page writes, ${sum('checkedPages')} dirty pages checked, ` +
        `${sum('maps')} maps and ${sum('unmaps')} unmaps during migration, ${sum('unmapFailures')} refused unmaps, ` +
        `${sum('queryFailures')} failed queries, ${sum('workerFaults')} worker faults; lost pages: ${sum('lost')}`,
    );
    expect(sum('rounds')).toBe(ROUNDS);
    expect(sum('lost')).toBe(0);
    // The run exercised what it claims to.
    expect(sum('unmaps')).toBeGreaterThan(50);
    expect(sum('queryFailures')).toBeGreaterThan(100);
    expect(sum('workerFaults')).toBeGreaterThan(20);
    // Workers really died (and were replaced) under the rounds' merges.
    expect(engine.testing.workersStarted() - workersBefore).toBeGreaterThan(20);
  }, 600_000);
});
