// The simulated kernel keeping its dirty words in the process's shared memory
// (Kernel.shareProcessMemory): DirtySync shares the engine's, the kernel's read-and-clear then
// runs in WASM there, and whatever order the memory comes and goes in, no bit is lost and every
// block goes back to the arena.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirtySync } from '../../src/dirty/dirty-sync.js';
import { Engine } from '../../src/engine/index.js';
import { InvalidArgumentError } from '../../src/kernel/errors.js';
import { simulatedKernel } from '../../src/kernel/sim/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';
import { processMemory } from './process-memory.js';

const PAGE = 4096n;
let engine: Engine;

beforeAll(async () => {
  engine = await Engine.create({ workers: 1 });
});
afterAll(async () => {
  await engine.close();
});

async function setup(devices = [{ name: 'nic0', iommuDirtyTracking: true }, { name: 'gpu0', dmaLogging: { pageSize: 4096n } }]) {
  const kernel = simulatedKernel({ devices });
  const space = new AddressSpace(kernel);
  await space.map({ iova: 0n, size: 64n << 20n });
  await space.map({ iova: 1n << 32n, size: 64n << 20n });
  for (const device of devices) await space.attach(device.name);
  const sync = new DirtySync(space, { engine, initiallyDirty: false });
  return { kernel, space, sync };
}

async function pagesOf(sync: DirtySync): Promise<bigint[]> {
  const pages: bigint[] = [];
  await sync.round({
    onRuns: (runs, count) => {
      for (let i = 0; i < count; i++) {
        for (const range of sync.rangesOfRun(runs[2 * i]!, runs[2 * i + 1]!)) {
          for (let at = 0n; at < range.length; at += PAGE) pages.push(range.iova! + at);
        }
      }
    },
  });
  return pages.sort((a, b) => (a < b ? -1 : 1));
}

describe('Kernel.shareProcessMemory on the simulated kernel', () => {
  it('refuses what is not a shared WebAssembly memory with an allocator, before anything changes', () => {
    const kernel = simulatedKernel();
    expect(() => kernel.shareProcessMemory({ memory: new WebAssembly.Memory({ initial: 1 }), allocate: () => undefined }))
      .toThrow(InvalidArgumentError);
    expect(() => kernel.shareProcessMemory({ memory: {} as WebAssembly.Memory, allocate: () => undefined })).toThrow(/shared WebAssembly.Memory/);
    expect(() => kernel.shareProcessMemory({ memory: processMemory(32 << 20).memory, allocate: 5 as never })).toThrow(/allocate/);
    expect(kernel.kernelMemory.current).toBeUndefined();
  });

  it('DirtySync shares the engine memory: the IOMMU and DMA-log reads run in WASM there, exact, and it all goes back at stop', async () => {
    const { kernel, space, sync } = await setup();
    await sync.start();
    const region = kernel.kernelMemory.current!;
    expect(region.process.memory).toBe(engine.memory);
    kernel.dmaWrite('nic0', 0x3000n, 0x2000n);
    kernel.dmaWrite('gpu0', (1n << 32n) + 0x10000n, 0x1000n);
    kernel.dmaWrite('nic0', (1n << 32n) + 0x10000n, 0x1000n); // both sources, one page
    expect(region.chunksPlaced).toBeGreaterThanOrEqual(3);
    const passes = region.wasmPasses;
    expect(await pagesOf(sync)).toEqual([0x3000n, 0x4000n, (1n << 32n) + 0x10000n]);
    expect(region.wasmPasses).toBeGreaterThan(passes);
    expect(await pagesOf(sync)).toEqual([]);
    await sync.stop();
    expect(kernel.kernelMemory.current).toBeUndefined();
    expect(region.owners.size).toBe(0);
    expect(region.liveChunks).toBe(0);
    await space.close();
    kernel.assertClean();
  });

  it('an unmap during migration gives the domain\'s blocks back, and its pages are still reported', async () => {
    const { kernel, space, sync } = await setup([{ name: 'nic0', iommuDirtyTracking: true }]);
    await sync.start();
    kernel.dmaWrite('nic0', (1n << 32n) + 0x5000n, 0x1000n);
    const region = kernel.kernelMemory.current!;
    const held = region.liveChunks;
    await space.unmap({ iova: 1n << 32n, size: 64n << 20n });
    expect(region.liveChunks).toBe(held - 1);
    const pages: string[] = [];
    await sync.round({ onRuns: (runs, count) => {
      for (let i = 0; i < count; i++) for (const r of sync.rangesOfRun(runs[2 * i]!, runs[2 * i + 1]!)) pages.push(`${r.region}:0x${r.offset.toString(16)}`);
    } });
    expect(pages).toEqual(['1:0x5000']);
    await sync.stop();
    await space.close();
    kernel.assertClean();
  });

  it('a memory that goes while its chunks hold dirty bits: they move out first, and the next round reports them', async () => {
    const { kernel, space, sync } = await setup();
    await sync.start();
    const other = processMemory(32 << 20);
    const release = kernel.shareProcessMemory(other); // newer than the engine's: new chunks go here
    kernel.dmaWrite('nic0', 0x7000n, 0x1000n);
    kernel.dmaWrite('gpu0', 0x9000n, 0x3000n);
    expect(other.live.size).toBeGreaterThanOrEqual(2);
    release();
    expect(other.live.size).toBe(0);
    new Uint8Array(other.memory.buffer).fill(0xff); // what the memory holds now is not the kernel's
    expect(await pagesOf(sync)).toEqual([0x7000n, 0x9000n, 0xa000n, 0xb000n]);
    // New chunks go to the engine's memory again.
    const region = kernel.kernelMemory.current!;
    expect(region.process.memory).toBe(engine.memory);
    const placed = region.chunksPlaced;
    kernel.dmaWrite('nic0', (1n << 32n) + 0x40000n, 0x1000n);
    expect(region.chunksPlaced).toBe(placed + 1);
    expect(await pagesOf(sync)).toEqual([(1n << 32n) + 0x40000n]);
    await sync.stop();
    await space.close();
    kernel.assertClean();
  });

  it('a lender whose allocator throws or hands out a block outside its memory: the DMA is still logged, nothing is kept', async () => {
    const freed: string[] = [];
    const lenders = {
      throws: { memory: engine.memory, allocate: () => { throw new Error('lender broke'); } },
      misaligned: { memory: engine.memory, allocate: () => ({ offset: 2, free: () => void freed.push('misaligned') }) },
      outside: { memory: engine.memory, allocate: () => ({ offset: engine.memory.buffer.byteLength, free: () => void freed.push('outside') }) },
    };
    for (const lender of Object.values(lenders)) {
      const { kernel, space, sync } = await setup();
      await sync.start();
      const release = kernel.shareProcessMemory(lender);
      kernel.dmaWrite('nic0', 0x1000n, 0x1000n);
      kernel.dmaWrite('gpu0', (1n << 32n) + 0x2000n, 0x1000n);
      expect(kernel.kernelMemory.current!.liveChunks).toBe(0);
      expect(await pagesOf(sync)).toEqual([0x1000n, (1n << 32n) + 0x2000n]);
      release();
      await sync.stop();
      await space.close();
      kernel.assertClean();
    }
    expect(freed).toEqual(['misaligned', 'misaligned', 'outside', 'outside']); // the bad blocks went back
  });

  it('an engine memory with no room to spare: the kernel keeps its own arrays and the rounds are the same', async () => {
    const { kernel, space, sync } = await setup();
    const refusing = { memory: engine.memory, allocate: () => undefined };
    await sync.start();
    const release = kernel.shareProcessMemory(refusing);
    kernel.dmaWrite('nic0', 0x1000n, 0x1000n);
    kernel.dmaWrite('gpu0', 0x2000n, 0x1000n);
    expect(kernel.kernelMemory.current!.chunksPlaced).toBe(0);
    expect(await pagesOf(sync)).toEqual([0x1000n, 0x2000n]);
    expect(kernel.kernelMemory.current!.wasmPasses).toBe(0);
    release();
    await sync.stop();
    await space.close();
    kernel.assertClean();
  });
});
