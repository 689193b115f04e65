// H. DirtySync on the real kernel: an AddressSpace with two dirty-capable test mocks on one
// dirty HWPT, pages marked dirty in that HWPT with IOMMU_TEST_OP_DIRTY (the ground truth), and
// sync rounds that report exactly those pages, then none once they are sent. Also: an unmap
// during tracking keeps the dirty pages of what it removed (NO_CLEAR read before the unmap), and
// a device nothing can track makes every round report everything.
import { afterAll, describe, expect, it } from 'vitest';
import { DirtySync } from '../../src/dirty/dirty-sync.js';
import type { DirtyRound } from '../../src/dirty/dirty-sync.js';
import * as uapi from '../../src/uapi/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';
import { onVirtioIommu } from './harness/guest-env.js';
import { flushCoverage, kernel, MiB, setBit, syscalls } from './support/kernel.js';

const PAGE = 4096n;
const START = uapi.MOCK_APERTURE_START;
const MOCK_PAGE = uapi.MOCK_IO_PAGE_SIZE;
afterAll(() => flushCoverage('dirty-sync.test.ts'));

/**
 * A round and the pages it hands over: by IOVA where the memory is mapped, and as
 * `region:offset` where no mapping maps it any more.
 */
async function round(sync: DirtySync): Promise<{ round: DirtyRound; pages: bigint[]; unmapped: string[] }> {
  const pages: bigint[] = [];
  const unmapped: string[] = [];
  const result = await sync.round({
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
  return { round: result, pages: pages.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), unmapped };
}

/**
 * Marks 4 KiB pages (by index from `base`) dirty in the HWPT; returns how many mock pages the
 * kernel marked. IOMMU_TEST_OP_DIRTY is given MOCK_IO_PAGE_SIZE bits, one per 2 KiB half: 6.12's
 * iommufd_test_dirty() looks the mock's entries up at iova / page_size, which only names the
 * right entry when page_size is MOCK_IO_PAGE_SIZE.
 */
function mark(space: AddressSpace, hwptId: number, base: bigint, length: bigint, pages: number[], halves: 'first' | 'second' = 'first'): bigint {
  const bitmap = new Uint8Array(Number(length / MOCK_PAGE / 8n) + 8);
  for (const page of pages) setBit(bitmap, 2 * page + (halves === 'second' ? 1 : 0));
  return space.iommufdHandle!.test!.markDirty(hwptId, { iova: base, length, pageSize: MOCK_PAGE, bitmap });
}

async function twoMocks(size: bigint) {
  const space = new AddressSpace(kernel());
  const a = await space.attach('mock');
  const b = await space.attach('mock');
  await space.map({ iova: START, size });
  const container = space.topology().containers[0];
  if (container?.backend !== 'iommufd') throw new Error('expected an iommufd container');
  expect(container.hwpts).toEqual([{ id: a.hwpt!.id, dirtyTracking: true, devices: [a.name, b.name] }]);
  return { space, hwptId: container.hwpts[0]!.id, names: [a.name, b.name] };
}

describe.runIf(onVirtioIommu)('DirtySync with kernel test mocks', () => {
  it('a round reports exactly the marked pages; the next round reports none', async () => {
    const { space, hwptId, names } = await twoMocks(4n * MiB);
    const sync = new DirtySync(space, { workers: 1, initiallyDirty: false });
    await sync.start();
    expect(sync.sources).toEqual([{ kind: 'iommu', name: `hwpt ${hwptId}`, devices: names }]);

    // nothing written yet
    expect((await round(sync)).pages).toEqual([]);

    const marked = [1, 5, 6, 7, 100, 1023];
    expect(mark(space, hwptId, START, 4n * MiB, marked)).toBe(BigInt(marked.length));
    // a mark in the second 2 KiB half of 4 KiB page 300 dirties that page
    expect(mark(space, hwptId, START, 4n * MiB, [300], 'second')).toBe(1n);
    const first = await round(sync);
    const expected = [...marked, 300].sort((x, y) => x - y).map((page) => START + BigInt(page) * PAGE);
    expect(first.pages).toEqual(expected);
    expect(first.round).toMatchObject({ index: 1, newlyDirtyPages: 7, dirtyPages: 7, runCount: 5, failures: [], untrackedDevices: [] });
    expect(first.round.dirtyBytes).toBe(7n * PAGE);

    // handed over: the kernel's bits were cleared by the read, the migration bitmap's by the round
    const second = await round(sync);
    expect(second.pages).toEqual([]);
    expect(second.round).toMatchObject({ newlyDirtyPages: 0, dirtyPages: 0, runCount: 0 });

    // not sent: the consumer gives a page back; it comes again with the new ones
    mark(space, hwptId, START, 4n * MiB, [2]);
    expect((await round(sync)).pages).toEqual([START + 2n * PAGE]);
    await sync.redirty({ memory: space.mappings[0]!.memory, offset: 2n * PAGE, length: PAGE });
    mark(space, hwptId, START, 4n * MiB, [3]);
    const carried = await round(sync);
    expect(carried.pages).toEqual([START + 2n * PAGE, START + 3n * PAGE]);
    expect(carried.round.newlyDirtyPages).toBe(1);

    await sync.stop();
    // stopping turns the HWPT's tracking off: the mock refuses marks again
    expect(() => mark(space, hwptId, START, 4n * MiB, [0])).toThrow(expect.objectContaining({ ioctl: 'IOMMU_TEST_CMD', code: 'EINVAL' }));
    await space.close();
  });

  it('with initiallyDirty (the default) the first round reports every mapped page', async () => {
    const { space } = await twoMocks(MiB);
    const sync = new DirtySync(space, { workers: 1 });
    await sync.start();
    const first = await round(sync);
    expect(first.pages).toHaveLength(256);
    expect(first.round.runCount).toBe(1);
    await sync.markAllSent();
    expect((await round(sync)).pages).toEqual([]);
    await sync.stop();
    await space.close();
  });

  it('an unmap during tracking keeps the dirty pages of what it removed (NO_CLEAR read first)', async () => {
    const { space, hwptId } = await twoMocks(MiB);
    const second = START + 16n * MiB;
    await space.map({ iova: second, size: MiB });
    const sync = new DirtySync(space, { workers: 1, initiallyDirty: false });
    await sync.start();
    mark(space, hwptId, second, MiB, [0, 255]);
    mark(space, hwptId, START, MiB, [9]);
    const from = syscalls().records.length;
    expect(await space.unmap({ iova: second, size: MiB })).toHaveLength(1);
    const calls = syscalls().records.slice(from).map((r) => `${r.name}${r.detail ? ` ${r.detail}` : ''}`);
    expect(calls.indexOf('IOMMU_HWPT_GET_DIRTY_BITMAP NO_CLEAR')).toBeGreaterThanOrEqual(0);
    expect(calls.indexOf('IOMMU_HWPT_GET_DIRTY_BITMAP NO_CLEAR')).toBeLessThan(calls.indexOf('IOMMU_IOAS_UNMAP'));
    const result = await round(sync);
    // The removed mapping's memory (region 1) keeps its pages, named by memory offset.
    expect(result.pages).toEqual([START + 9n * PAGE]);
    expect(result.unmapped).toEqual(['1:0x0', '1:0xff000']);
    const after = await round(sync);
    expect([after.pages, after.unmapped]).toEqual([[], []]);
    await sync.stop();
    await space.close();
  });

  it('a device nothing can track (mock:no-dirty) blocks migration, or with allowUntrackedDevices makes every round report all mapped pages', async () => {
    const { space } = await twoMocks(MiB);
    const untracked = await space.attach('mock:no-dirty');
    const from = syscalls().records.length;
    await expect(new DirtySync(space, { workers: 1 }).start()).rejects.toThrow(new RegExp(`migration is blocked: ${untracked.name}`));
    expect(syscalls().records.slice(from).filter((r) => r.name.startsWith('IOMMU_') || r.name.startsWith('VFIO_'))).toEqual([]);
    const sync = new DirtySync(space, { workers: 1, initiallyDirty: false, allowUntrackedDevices: true });
    await sync.start();
    expect(sync.sources.map((s) => s.kind)).toEqual(['iommu', 'none']);
    for (let i = 0; i < 2; i++) {
      const result = await round(sync);
      expect(result.round.untrackedDevices).toEqual([untracked.name]);
      expect(result.pages).toHaveLength(256);
    }
    await sync.stop();
    await space.close();
  });

  it('adjacent mappings of different memory: each round reports exactly the marked pages of each', async () => {
    const space = new AddressSpace(kernel());
    const a = await space.attach('mock');
    await space.map({ iova: START, size: MiB });
    await space.map({ iova: START + MiB, size: MiB });
    const sync = new DirtySync(space, { workers: 1, initiallyDirty: false });
    await sync.start();
    // The last page of the first mapping and the first page of the second share a 2 MiB span.
    mark(space, a.hwpt!.id, START, 2n * MiB, [255, 256, 511]);
    const result = await round(sync);
    expect(result.pages).toEqual([START + 255n * PAGE, START + MiB, START + MiB + 255n * PAGE]);
    expect(sync.regions).toHaveLength(2);
    expect((await round(sync)).pages).toEqual([]);
    await sync.stop();
    await space.close();
  });

  it('a map and an unmap between a round and the send lose nothing: the next round has them', async () => {
    const { space, hwptId } = await twoMocks(MiB);
    const doomed = START + 8n * MiB;
    await space.map({ iova: doomed, size: MiB });
    const sync = new DirtySync(space, { workers: 1, initiallyDirty: false });
    await sync.start();
    mark(space, hwptId, START, MiB, [1]);
    const sent = await round(sync);
    expect(sent.pages).toEqual([START + PAGE]);
    // While the consumer sends: the device writes into a mapping that is then unmapped, and new
    // memory is mapped. The old API's markAllSent() after the send wiped both.
    mark(space, hwptId, doomed, MiB, [3]);
    await space.unmap({ iova: doomed, size: MiB });
    const fresh = START + 32n * MiB;
    await space.map({ iova: fresh, size: MiB });
    await sync.markAllSent(); // deprecated: clears nothing a round has not handed over
    const next = await round(sync);
    expect(next.unmapped).toEqual(['1:0x3000']);
    expect(next.pages).toHaveLength(256); // the new memory, never sent
    expect(next.pages[0]).toBe(fresh);
    const quiet = await round(sync);
    expect([quiet.pages, quiet.unmapped]).toEqual([[], []]);
    await sync.stop();
    await space.close();
  });

  it('detaching the dirty devices during migration drains their HWPT before it is destroyed; later rounds converge', async () => {
    const { space, hwptId, names } = await twoMocks(MiB);
    const sync = new DirtySync(space, { workers: 1, initiallyDirty: false });
    await sync.start();
    mark(space, hwptId, START, MiB, [4, 200]);
    const from = syscalls().records.length;
    await space.detach(names[0]!);
    expect(sync.sources).toEqual([{ kind: 'iommu', name: `hwpt ${hwptId}`, devices: [names[1]] }]);
    await space.detach(names[1]!);
    const calls = syscalls().records.slice(from).map((r) => r.name);
    // The last device off the HWPT: its dirty bits are read before IOMMU_DESTROY frees it.
    expect(calls.lastIndexOf('IOMMU_HWPT_GET_DIRTY_BITMAP')).toBeGreaterThanOrEqual(0);
    expect(calls.lastIndexOf('IOMMU_HWPT_GET_DIRTY_BITMAP')).toBeLessThan(calls.lastIndexOf('IOMMU_DESTROY'));
    expect(sync.sources).toEqual([]);
    const drained = await round(sync);
    expect(drained.pages).toEqual([START + 4n * PAGE, START + 200n * PAGE]);
    expect((await round(sync)).round.dirtyPages).toBe(0);
    await sync.stop();
    await space.close();
  });
});
