// The ways a dirty page used to be lost (issue 10), each as it breaks: an event between a round
// and the send, adjacent mappings under one device logging page, logging restarted by a map,
// devices plugged and unplugged during migration, a map the bitmap cannot hold, a consumer whose
// callback throws, a failure after the queries. Ground truth: the pages the test wrote.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DirtySync, MigrationBlockedError } from '../../src/dirty/index.js';
import { Engine } from '../../src/engine/index.js';
import { InvalidArgumentError } from '../../src/kernel/errors.js';
import { simulatedKernel, type SimulatedDeviceSpecInput, type SimulatedKernel } from '../../src/kernel/sim/index.js';
import type { HostMemory } from '../../src/kernel/types.js';
import { AddressSpace } from '../../src/vfio/address-space.js';

const PAGE = 4096n;
const KiB = 1024n;
const MiB = 1024n * KiB;
let engine: Engine;

beforeAll(async () => {
  engine = await Engine.create({ workers: 2, minimumShardBytes: 4096, inlineUpToBytes: 0 });
});
afterAll(async () => {
  await engine.close();
});

/** Pages a round hands over, as `memory-address:offset` (what a sender reads) and as IOVAs where mapped. */
async function handOver(sync: DirtySync, onChunk?: () => void): Promise<{ pages: Set<string>; iovas: bigint[]; dirtyPages: number }> {
  const pages = new Set<string>();
  const iovas: bigint[] = [];
  const round = await sync.round({
    onRuns: (runs, count) => {
      onChunk?.();
      for (let i = 0; i < count; i++) {
        for (const r of sync.rangesOfRun(runs[2 * i]!, runs[2 * i + 1]!)) {
          for (let at = 0n; at < r.length; at += PAGE) {
            pages.add(`${r.memory.address.toString(16)}:${(r.offset + at).toString(16)}`);
            for (const iova of r.iovas) iovas.push(iova + at);
          }
        }
      }
    },
  });
  return { pages, iovas: iovas.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), dirtyPages: round.dirtyPages };
}

const key = (memory: HostMemory, offset: bigint) => `${memory.address.toString(16)}:${offset.toString(16)}`;

async function started(devices: SimulatedDeviceSpecInput[], maps: { iova: bigint; size: bigint; memory?: HostMemory; memoryOffset?: bigint }[], options = {}) {
  const kernel = simulatedKernel({ devices });
  const space = new AddressSpace(kernel);
  for (const m of maps) await space.map(m);
  for (const d of devices.filter((d) => !d.name.startsWith('hot'))) await space.attach(d.name);
  const sync = new DirtySync(space, { engine, initiallyDirty: false, ...options });
  await sync.start();
  return { kernel, space, sync };
}

async function finish(kernel: SimulatedKernel, space: AddressSpace, sync: DirtySync, memories: HostMemory[] = []) {
  await sync.stop();
  await space.close();
  for (const memory of memories) memory.release();
  kernel.assertClean();
}

describe('no dirty page lost', () => {
  for (const device of [{ name: 'nic0', iommuDirtyTracking: true }, { name: 'gpu0', dmaLogging: { pageSize: 4096n } }] satisfies SimulatedDeviceSpecInput[]) {
    it(`1. ${device.name}: a map and an unmap while the consumer sends, then markAllSent(): the next round still has them`, async () => {
      const { kernel, space, sync } = await started([device], [{ iova: 0n, size: MiB }, { iova: 4n * MiB, size: MiB }]);
      kernel.dmaWrite(device.name, 0x3000n, PAGE);
      expect((await handOver(sync)).iovas).toEqual([0x3000n]);
      // The consumer is sending round 1's pages; meanwhile the device writes into a mapping that
      // is then unmapped, and new memory is mapped.
      const doomed = space.mappings.find((m) => m.iova === 4n * MiB)!;
      kernel.dmaWrite(device.name, 4n * MiB + 0x5000n, PAGE);
      const memory = doomed.memory;
      const kept = kernel.allocateHostMemory(MiB);
      await space.unmap({ iova: 4n * MiB, size: MiB });
      await space.map({ iova: 8n * MiB, size: MiB, memory: kept });
      await sync.markAllSent(); // the send is done: the old API cleared everything here
      const next = await handOver(sync);
      expect(next.dirtyPages).toBe(1 + 256);
      expect(next.pages.has(key(memory, 0x5000n))).toBe(true);
      for (let at = 0n; at < MiB; at += PAGE) expect(next.pages.has(key(kept, at))).toBe(true);
      expect((await handOver(sync)).dirtyPages).toBe(0);
      await finish(kernel, space, sync, [kept]);
    });
  }

  it('2. two 32 KiB mappings of different memory in one 64 KiB device logging page: a write to either is reported', async () => {
    const a = 0x100000n;
    const { kernel, space, sync } = await started([{ name: 'gpu0', dmaLogging: { pageSize: 65536n } }], [{ iova: a, size: 32n * KiB }, { iova: a + 32n * KiB, size: 32n * KiB }]);
    kernel.dmaWrite('gpu0', a + 0x9000n, PAGE); // in the second mapping
    const { iovas } = await handOver(sync);
    expect(iovas).toContain(a + 0x9000n);
    // The device page covers both: each mapping gets its share of it, nothing else.
    expect(iovas).toEqual(Array.from({ length: 16 }, (_, i) => a + BigInt(i) * PAGE));
    kernel.dmaWrite('gpu0', a + 0x1000n, PAGE); // in the first
    expect((await handOver(sync)).iovas).toContain(a + 0x1000n);
    await finish(kernel, space, sync);
  });

  it('2b. unmapping one of two mappings in a device page reads the page for both: the neighbour\'s write survives', async () => {
    const a = 0x100000n;
    const { kernel, space, sync } = await started([{ name: 'gpu0', dmaLogging: { pageSize: 65536n } }], [{ iova: a, size: 32n * KiB }, { iova: a + 32n * KiB, size: 32n * KiB }]);
    const neighbour = space.mappings[1]!;
    kernel.dmaWrite('gpu0', a + 0xa000n, PAGE); // into the neighbour, which stays mapped
    await space.unmap({ iova: a, size: 32n * KiB });
    const { pages } = await handOver(sync);
    expect(pages.has(key(neighbour.memory, 0x2000n))).toBe(true);
    await finish(kernel, space, sync);
  });

  it('3. DMA logging is started once over coarse ranges: maps and unmaps never stop or restart it', async () => {
    const { kernel, space, sync } = await started([{ name: 'gpu0', dmaLogging: { pageSize: 4096n, maxRanges: 4 } }], [{ iova: 0n, size: MiB }]);
    const trace = kernel.startTrace();
    await space.map({ iova: 64n * MiB, size: MiB });
    kernel.dmaWrite('gpu0', 64n * MiB + PAGE, PAGE);
    await space.unmap({ iova: 0n, size: MiB });
    await space.map({ iova: 0n, size: 2n * MiB });
    trace.stop();
    const logging = trace.records.filter((r) => r.ioctl === 'VFIO_DEVICE_FEATURE' && /DMA_LOGGING_(START|STOP)/.test(String(r.objects.feature)));
    expect(logging).toEqual([]);
    const { iovas } = await handOver(sync);
    expect(iovas).toContain(64n * MiB + PAGE);
    await finish(kernel, space, sync);
  });

  for (const device of [
    { name: 'hot-nic', iommuDirtyTracking: true },
    { name: 'hot-gpu', dmaLogging: { pageSize: 65536n } },
    { name: 'hot-leg', legacyOnly: true },
  ] satisfies SimulatedDeviceSpecInput[]) {
    it(`4. ${device.name} attached during migration is tracked from its attach: its writes are reported`, async () => {
      const { kernel, space, sync } = await started([{ name: 'nic0', iommuDirtyTracking: true }, device], [{ iova: 0n, size: MiB }]);
      await space.attach(device.name);
      expect(sync.sources.some((s) => s.devices.includes(device.name))).toBe(true);
      // A new tracker starts after the attach: everything mapped is dirty once. A device joining
      // a HWPT already tracked is tracked from its first DMA: nothing to mark.
      expect((await handOver(sync)).dirtyPages).toBe(device.name === 'hot-nic' ? 0 : 256);
      kernel.dmaWrite(device.name, 0x7000n, PAGE);
      const { iovas } = await handOver(sync);
      expect(iovas).toContain(0x7000n);
      await finish(kernel, space, sync);
    });
  }

  it('4b. a device nothing can track is refused at attach during migration (and at start), and the attach is undone', async () => {
    const { kernel, space, sync } = await started([{ name: 'nic0', iommuDirtyTracking: true }, { name: 'hot-old' }], [{ iova: 0n, size: MiB }]);
    const objects = JSON.stringify(kernel.objects(), (_, v) => (typeof v === 'bigint' ? v.toString() : v));
    await expect(space.attach('hot-old')).rejects.toBeInstanceOf(MigrationBlockedError);
    expect(space.devices.map((d) => d.name)).toEqual(['nic0']);
    expect(JSON.stringify(kernel.objects(), (_, v) => (typeof v === 'bigint' ? v.toString() : v))).toBe(objects);
    await sync.stop();
    await space.attach('hot-old');
    await expect(new DirtySync(space, { engine }).start()).rejects.toThrow(/migration is blocked: hot-old \(its IOMMU has no dirty tracking/);
    await space.close();
    kernel.assertClean();
  });

  for (const device of [
    { name: 'nic1', iommuDirtyTracking: true },
    { name: 'gpu1', dmaLogging: { pageSize: 65536n } },
    { name: 'leg1', legacyOnly: true },
  ] satisfies SimulatedDeviceSpecInput[]) {
    it(`5. ${device.name} detached during migration: what it wrote is reported, later rounds converge, stop() succeeds`, async () => {
      const { kernel, space, sync } = await started([{ name: 'nic0', iommuDirtyTracking: true }, device], [{ iova: 0n, size: MiB }]);
      await handOver(sync);
      kernel.dmaWrite(device.name, 0x9000n, PAGE);
      await space.detach(device.name);
      expect(sync.sources.some((s) => s.devices.includes(device.name))).toBe(false);
      expect((await handOver(sync)).iovas).toContain(0x9000n);
      expect((await handOver(sync)).dirtyPages).toBe(0);
      kernel.dmaWrite('nic0', 0x2000n, PAGE);
      expect((await handOver(sync)).iovas).toEqual([0x2000n]);
      await finish(kernel, space, sync);
    });
  }

  it('6. a map the migration bitmap cannot hold is refused before the kernel sees it', async () => {
    const { kernel, space, sync } = await started([{ name: 'nic0', iommuDirtyTracking: true }], [{ iova: 0n, size: MiB }], { capacityBytes: 2n * MiB });
    const maps = kernel.ioctlCount('IOMMU_IOAS_MAP');
    await expect(space.map({ iova: 16n * MiB, size: 2n * MiB })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(kernel.ioctlCount('IOMMU_IOAS_MAP')).toBe(maps);
    expect(space.mappings).toHaveLength(1);
    // What fits is still mapped and tracked.
    await space.map({ iova: 16n * MiB, size: MiB });
    kernel.dmaWrite('nic0', 16n * MiB, PAGE);
    expect((await handOver(sync)).iovas).toContain(16n * MiB);
    await finish(kernel, space, sync);
  });

  it('6b. a map the kernel refuses leaves no reservation behind: the room is there for the next one', async () => {
    const { kernel, space, sync } = await started([{ name: 'nic0', iommuDirtyTracking: true }], [{ iova: 0n, size: MiB }], { capacityBytes: 2n * MiB });
    kernel.failNext('IOMMU_IOAS_MAP', 'EIO');
    await expect(space.map({ iova: 16n * MiB, size: MiB })).rejects.toMatchObject({ code: 'EIO' });
    expect(sync.regions).toHaveLength(1);
    await space.map({ iova: 16n * MiB, size: MiB });
    expect((await handOver(sync)).dirtyPages).toBe(256);
    await finish(kernel, space, sync);
  });

  it('a consumer whose callback throws gets the error; no run is handed over twice and nothing it did not take is lost', async () => {
    const { kernel, space, sync } = await started([{ name: 'nic0', iommuDirtyTracking: true }], [{ iova: 0n, size: 64n * MiB }]);
    for (let i = 0n; i < 16n; i++) kernel.dmaWrite('nic0', i * 4n * MiB, PAGE);
    let calls = 0;
    await expect(sync.round({ onRuns: () => { calls++; throw new Error('send failed'); } })).rejects.toThrow('send failed');
    expect(calls).toBe(1);
    const again = await handOver(sync);
    expect(again.iovas).toEqual(Array.from({ length: 16 }, (_, i) => BigInt(i) * 4n * MiB));
    await finish(kernel, space, sync);
  });

  it('redirty gives pages back to the next round', async () => {
    const { kernel, space, sync } = await started([{ name: 'nic0', iommuDirtyTracking: true }], [{ iova: 0n, size: MiB }]);
    kernel.dmaWrite('nic0', 0x4000n, PAGE);
    const first = await handOver(sync);
    expect(first.iovas).toEqual([0x4000n]);
    const [range] = sync.rangesOfRun(sync.regions[0]!.bit + 4, 1);
    await sync.redirty(range!);
    expect((await handOver(sync)).iovas).toEqual([0x4000n]);
    await finish(kernel, space, sync);
  });

  it('a failure after the queries (both merge paths) marks what they read dirty', async () => {
    const { kernel, space, sync } = await started([{ name: 'leg0', legacyOnly: true }], [{ iova: 0n, size: MiB }]);
    const async = vi.spyOn(engine, 'resample').mockRejectedValue(new Error('worker lost'));
    const sync1 = vi.spyOn(engine.sync, 'resample').mockImplementation(() => { throw new Error('no memory'); });
    try {
      const round = await sync.round();
      expect(async).toHaveBeenCalled();
      expect(sync1).toHaveBeenCalled();
      expect(round.failures).toEqual([expect.objectContaining({ tracker: expect.stringMatching(/^type1/), iova: 0n, length: MiB })]);
      expect(round.dirtyPages).toBe(256);
    } finally {
      async.mockRestore();
      sync1.mockRestore();
    }
    await finish(kernel, space, sync);
  });

  it('the same memory mapped at two IOVAs shares its bits; other memory at a reused IOVA does not alias', async () => {
    const kernel = simulatedKernel({ devices: [{ name: 'nic0', iommuDirtyTracking: true }] });
    const space = new AddressSpace(kernel);
    const ram = kernel.allocateHostMemory(2n * MiB);
    await space.map({ iova: 0n, size: MiB, memory: ram });
    await space.map({ iova: 0x40000000n, size: MiB, memory: ram }); // an alias of the same pages
    await space.attach('nic0');
    const sync = new DirtySync(space, { engine, initiallyDirty: false });
    await sync.start();
    expect(sync.regions).toHaveLength(1);
    kernel.dmaWrite('nic0', 0x40000000n + 0x3000n, PAGE);
    const first = await handOver(sync);
    expect([...first.pages]).toEqual([key(ram, 0x3000n)]);
    expect(first.iovas).toEqual([0x3000n, 0x40003000n]);
    await space.unmap({ iova: 0x40000000n, size: MiB });
    const other = kernel.allocateHostMemory(MiB);
    await space.map({ iova: 0x40000000n, size: MiB, memory: other });
    await handOver(sync); // the new memory, all dirty once
    kernel.dmaWrite('nic0', 0x40000000n + 0x3000n, PAGE);
    expect([...(await handOver(sync)).pages]).toEqual([key(other, 0x3000n)]);
    await finish(kernel, space, sync, [ram, other]);
  });

  it('injected worker faults wait for a journaled task, and each one replaces a worker', async () => {
    // 64 Ki pages: two shards of the scratch merge, one on each worker.
    const { kernel, space, sync } = await started([{ name: 'leg0', legacyOnly: true }], [{ iova: 0n, size: 256n * MiB }]);
    const replaced = engine.testing.workersReplaced();
    engine.testing.injectFault(0, 0);
    engine.testing.injectFault(1, 0);
    await engine.popcount(sync.bitmap.buffer, 0, sync.bitmap.usedBits); // not journaled: the faults wait
    expect(engine.testing.pendingFaults()).toBe(2);
    const round = await sync.round(); // type1's scratch merge is journaled
    expect(round.dirtyPages).toBe(65536);
    expect(engine.testing.pendingFaults()).toBe(0);
    expect(engine.testing.workersReplaced() - replaced).toBe(2);
    await finish(kernel, space, sync);
  });
});
