// IOMMU dirty tracking (IOMMU_HWPT_SET_DIRTY_TRACKING, IOMMU_HWPT_GET_DIRTY_BITMAP), driven on
// both kernels by the kernel's selftest mock (IOMMU_TEST_OP_DIRTY marks IOPTEs dirty), with the
// bitmap shapes and placements of tools/testing/selftests/iommu (iommufd_dirty_tracking).
import { describe, expect, it } from 'vitest';
import type { DeviceHandle, HostMemory, IommufdHandle } from '../../src/kernel/types.js';
import { IOMMU_HWPT_ALLOC_DIRTY_TRACKING, MOCK_APERTURE_START, MOCK_HUGE_PAGE_SIZE, MOCK_IO_PAGE_SIZE } from '../../src/uapi/index.js';
import {
  ContractFixture,
  KIB,
  MIB,
  U64_MAX,
  bit,
  countSetBits,
  expectInvalidArgument,
  expectKernelError,
  setBit,
  setBitIndexes,
  simOnly,
  type ContractTarget,
} from './context.js';

const PAGE = MOCK_IO_PAGE_SIZE;

interface DirtySetup {
  readonly iommufd: IommufdHandle;
  readonly ioas: number;
  readonly hwpt: number;
  readonly mock: DeviceHandle;
  readonly memory: HostMemory;
  readonly iova: bigint;
  readonly length: bigint;
}

/**
 * The selftest's fixture: a mock device on one IOAS; a second IOAS mapping `length` bytes at
 * MOCK_APERTURE_START, with a dirty-tracking HWPT allocated for the mock on it, tracking on.
 */
function dirtySetup(t: ContractFixture, length: bigint, options: { hugeIova?: boolean; memory?: HostMemory; validate?: boolean } = {}): DirtySetup {
  const iommufd = t.iommufd({ validateArguments: options.validate ?? true });
  const mockIoas = iommufd.ioasAlloc();
  const mock = t.mock(iommufd, mockIoas, { hugeIova: options.hugeIova });
  const ioas = iommufd.ioasAlloc();
  const memory = options.memory ?? t.memory(length);
  iommufd.ioasMap({ ioasId: ioas, memory, length, iova: MOCK_APERTURE_START });
  const hwpt = iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
  iommufd.hwptSetDirtyTracking(hwpt, true);
  return { iommufd, ioas, hwpt, mock, memory, iova: MOCK_APERTURE_START, length };
}

/**
 * A bitmap the kernel writes, of `bits` bits at `offset` bytes into a larger buffer (the
 * selftest's placements): whole u64 words, DIV_ROUND_UP(bits, 64) * 8 bytes (the uAPI's
 * `__u64 *data`; iova_bitmap sets bits in unsigned longs).
 */
function placedBitmap(bits: bigint, offset: number): Uint8Array {
  const bytes = Number((bits + 63n) / 64n) * 8;
  return new Uint8Array(new ArrayBuffer(bytes + offset + 8), offset, bytes);
}

/** The bits IOMMU_TEST_OP_DIRTY reads: it copies DIV_ROUND_UP(max, BITS_PER_BYTE) bytes. */
function markBitmap(bits: bigint): Uint8Array {
  return new Uint8Array(Number((bits + 7n) / 8n));
}

function markEvery(t: ContractFixture, setup: DirtySetup, stride: number, bits: number): bigint {
  const marks = markBitmap(BigInt(bits));
  for (let index = 0; index < bits; index += stride) setBit(marks, index);
  return t.testOps(setup.iommufd).markDirty(setup.hwpt, { iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap: marks });
}

export function defineDirtyContract(target: ContractTarget): void {
  describe('IOMMU dirty tracking', () => {
    const t = new ContractFixture(target);
    const simIt = simOnly(target);

    it('SET_DIRTY_TRACKING on a HWPT allocated without DIRTY_TRACKING fails with EOPNOTSUPP, on an unknown one ENOENT', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      const plain = iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas });
      expectKernelError(() => iommufd.hwptSetDirtyTracking(plain, true), 'IOMMU_HWPT_SET_DIRTY_TRACKING', 'EOPNOTSUPP');
      expectKernelError(() => iommufd.hwptSetDirtyTracking(plain + 50, true), 'IOMMU_HWPT_SET_DIRTY_TRACKING', 'ENOENT');
      const dirty = iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas, flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
      iommufd.hwptSetDirtyTracking(dirty, true);
      iommufd.hwptSetDirtyTracking(dirty, false);
    });

    it('the mock cannot mark pages of a HWPT whose tracking is off: EINVAL', () => {
      const setup = dirtySetup(t, 64n * KIB);
      setup.iommufd.hwptSetDirtyTracking(setup.hwpt, false);
      expectKernelError(() => markEvery(t, setup, 1, 32), 'IOMMU_TEST_CMD', 'EINVAL');
    });

    // The selftest's variants: half a u8, one u8, one u32, one u64, two u64 and a tail, 4 KiB, 8 KiB.
    const shapes: [string, bigint][] = [
      ['8k', 8n * KIB], ['16k', 16n * KIB], ['64k', 64n * KIB], ['128k', 128n * KIB],
      ['320k', 320n * KIB], ['64M', 64n * MIB], ['128M', 128n * MIB],
    ];
    // Aligned, at +MOCK_PAGE_SIZE, and across a 4 KiB boundary at +0xff8. The selftest's +0xff1
    // (off a u64 word) is refused before the ioctl: see below.
    const placements: [string, number][] = [['aligned', 0], ['+2048', 2048], ['+0xff8', 0xff8]];
    for (const [shape, length] of shapes) {
      it(`read-and-clear reports every marked page once (${shape}, bitmap ${placements.map(([name]) => name).join(', ')})`, () => {
        const setup = dirtySetup(t, length);
        const bits = Number(length / PAGE);
        for (const [, offset] of placements) {
          expect(markEvery(t, setup, 2, bits)).toBe(BigInt(Math.max(1, Math.floor(bits / 2))));
          const bitmap = placedBitmap(BigInt(bits), offset);
          setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length, pageSize: PAGE, bitmap });
          for (let index = 0; index < bits; index++) if (bit(bitmap, index) !== (index % 2 === 0)) throw new Error(`bit ${index} wrong`);
          bitmap.fill(0);
          setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length, pageSize: PAGE, bitmap });
          expect(countSetBits(bitmap, bits)).toBe(0);
        }
      });
    }

    // The kernel's rule, not ours: the bitmap is `__u64 *data`, DIV_ROUND_UP(pages, 64) u64 words.
    for (const validate of [true, false]) {
      it(`a bitmap ending mid-u64 or off a u64 word is refused before the ioctl (validateArguments: ${validate}); the dirty bits stay`, () => {
        const setup = dirtySetup(t, 320n * KIB, { validate });
        const pages = Number(setup.length / PAGE); // 160: two u64 words and a half
        const words = Math.ceil(pages / 64);
        markEvery(t, setup, 2, pages);
        const read = (bitmap: Uint8Array) => () =>
          setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap });
        const room = new ArrayBuffer(0x1000 + words * 8 + 8);
        const refused = [
          new Uint8Array(room, 0, Math.ceil(pages / 8)), // whole bytes (20) but not whole words (24)
          new Uint8Array(room, 0, words * 8 - 1),
          new Uint8Array(room, 0xff1, words * 8), // the selftest's u64-unaligned placement
          new Uint8Array(room, 4, words * 8),
        ];
        for (const bitmap of refused) expectInvalidArgument(read(bitmap), /bitmap/);
        expect(new Uint8Array(room).every((byte) => byte === 0)).toBe(true);
        // Nothing was read and cleared: a bitmap of whole words sees every marked page.
        const bitmap = new Uint8Array(room, 0, words * 8);
        read(bitmap)();
        expect(setBitIndexes(bitmap, pages)).toEqual(Array.from({ length: pages / 2 }, (_, index) => 2 * index));
      });
    }

    it('NO_CLEAR reads without clearing; the next read-and-clear still sees the pages', () => {
      const setup = dirtySetup(t, 128n * KIB);
      const bits = Number(setup.length / PAGE);
      markEvery(t, setup, 3, bits);
      const expected = setBitIndexes((() => { const b = placedBitmap(BigInt(bits), 0); for (let i = 0; i < bits; i += 3) setBit(b, i); return b; })(), bits);
      for (let read = 0; read < 2; read++) {
        const bitmap = placedBitmap(BigInt(bits), 0);
        setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap, noClear: true });
        expect(setBitIndexes(bitmap, bits)).toEqual(expected);
      }
      const cleared = placedBitmap(BigInt(bits), 0);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap: cleared });
      expect(setBitIndexes(cleared, bits)).toEqual(expected);
      const after = placedBitmap(BigInt(bits), 0);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap: after });
      expect(countSetBits(after, bits)).toBe(0);
    });

    it('the kernel only sets bits: bits already set in the caller\'s bitmap stay set', () => {
      const setup = dirtySetup(t, 64n * KIB);
      markEvery(t, setup, 4, 32);
      const bitmap = placedBitmap(32n, 0);
      setBit(bitmap, 1);
      setBit(bitmap, 31);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap });
      expect(setBitIndexes(bitmap, 32)).toEqual([0, 1, 4, 8, 12, 16, 20, 24, 28, 31]);
    });

    it('the bitmap is at the caller\'s page size: one 4 KiB bit covers two mock pages, one 16 KiB bit eight', () => {
      const setup = dirtySetup(t, 64n * KIB);
      const marks = markBitmap(32n);
      for (const page of [0, 3, 17]) setBit(marks, page);
      const ops = t.testOps(setup.iommufd);
      ops.markDirty(setup.hwpt, { iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap: marks });
      const coarse = placedBitmap(16n, 0);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: 4n * KIB, bitmap: coarse, noClear: true });
      expect(setBitIndexes(coarse, 16)).toEqual([0, 1, 8]);
      const coarser = placedBitmap(4n, 0);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: 16n * KIB, bitmap: coarser });
      expect(setBitIndexes(coarser, 4)).toEqual([0, 2]);
    });

    it('a sub-range reads only its own pages, with bit 0 at its start', () => {
      const setup = dirtySetup(t, 64n * KIB);
      markEvery(t, setup, 5, 32);
      const bitmap = placedBitmap(8n, 0);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova + 16n * KIB, length: 16n * KIB, pageSize: PAGE, bitmap });
      // Marked pages 10 and 15 are pages 2 and 7 of the sub-range.
      expect(setBitIndexes(bitmap, 8)).toEqual([2, 7]);
    });

    it('IOMMU_TEST_OP_DIRTY counts only pages that are mapped', () => {
      const setup = dirtySetup(t, 16n * KIB);
      const marks = markBitmap(16n);
      for (const page of [0, 7, 8, 15]) setBit(marks, page);
      const marked = t.testOps(setup.iommufd).markDirty(setup.hwpt, { iova: setup.iova, length: 32n * KIB, pageSize: PAGE, bitmap: marks });
      expect(marked).toBe(2n);
    });

    it('IOMMU_TEST_OP_DIRTY at another page size looks the page up at iova / page_size in its 2 KiB-indexed table (a selftest quirk)', () => {
      const setup = dirtySetup(t, 64n * KIB);
      const marks = markBitmap(16n);
      marks.fill(0xff);
      // At 4 KiB the mock looks at IOVA (iova / 4096 + i) * 2048, about 8 MiB: nothing is mapped there.
      expect(t.testOps(setup.iommufd).markDirty(setup.hwpt, { iova: setup.iova, length: setup.length, pageSize: 4n * KIB, bitmap: marks })).toBe(0n);
      const bitmap = placedBitmap(32n, 0);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap });
      expect(countSetBits(bitmap, 32)).toBe(0);
    });

    it('enabling tracking clears stale dirty bits, even when it was already on', () => {
      const setup = dirtySetup(t, 64n * KIB);
      markEvery(t, setup, 2, 32);
      setup.iommufd.hwptSetDirtyTracking(setup.hwpt, true);
      const bitmap = placedBitmap(32n, 0);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap });
      expect(countSetBits(bitmap, 32)).toBe(0);
      markEvery(t, setup, 2, 32);
      setup.iommufd.hwptSetDirtyTracking(setup.hwpt, false);
      setup.iommufd.hwptSetDirtyTracking(setup.hwpt, true);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap });
      expect(countSetBits(bitmap, 32)).toBe(0);
    });

    // Linux 6.12.118: iova_bitmap_for_each returns the walk's error (earlier 6.12 dropped it and
    // returned 0), so the driver's EINVAL for a domain not tracking, and the walk's EINVAL at a
    // hole, reach the caller.
    it('GET_DIRTY_BITMAP with tracking off is EINVAL (the driver\'s !tracking check), and nothing is reported', () => {
      const setup = dirtySetup(t, 64n * KIB);
      markEvery(t, setup, 2, 32);
      setup.iommufd.hwptSetDirtyTracking(setup.hwpt, false);
      const bitmap = placedBitmap(32n, 0);
      expectKernelError(
        () => setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap }),
        'IOMMU_HWPT_GET_DIRTY_BITMAP', 'EINVAL',
      );
      expect(countSetBits(bitmap, 32)).toBe(0);
    });

    it('a range starting in a hole is EINVAL, and nothing is reported', () => {
      const setup = dirtySetup(t, 64n * KIB);
      markEvery(t, setup, 1, 32);
      const bitmap = placedBitmap(64n, 0);
      expectKernelError(
        () => setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova - 64n * KIB, length: 128n * KIB, pageSize: PAGE, bitmap }),
        'IOMMU_HWPT_GET_DIRTY_BITMAP', 'EINVAL',
      );
      expect(countSetBits(bitmap, 64)).toBe(0);
    });

    it('a range running into a hole is EINVAL after the areas before it were read and cleared', () => {
      // What a caller must not lose: the bits of the mapped part are in its bitmap although the
      // call failed, and gone from the IOPTEs.
      const setup = dirtySetup(t, 64n * KIB);
      markEvery(t, setup, 1, 32);
      const bitmap = placedBitmap(64n, 0);
      expectKernelError(
        () => setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: 128n * KIB, pageSize: PAGE, bitmap }),
        'IOMMU_HWPT_GET_DIRTY_BITMAP', 'EINVAL',
      );
      expect(countSetBits(bitmap, 64)).toBe(32);
      const again = placedBitmap(32n, 0);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap: again });
      expect(countSetBits(again, 32)).toBe(0);
    });

    it('unmapping drops the dirty bits of the unmapped IOPTEs', () => {
      const setup = dirtySetup(t, 64n * KIB);
      markEvery(t, setup, 1, 32);
      expect(setup.iommufd.ioasUnmapAll(setup.ioas)).toBe(setup.length);
      setup.iommufd.ioasMap({ ioasId: setup.ioas, memory: setup.memory, length: setup.length, iova: setup.iova });
      const bitmap = placedBitmap(32n, 0);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length: setup.length, pageSize: PAGE, bitmap });
      expect(countSetBits(bitmap, 32)).toBe(0);
    });

    it('GET_DIRTY_BITMAP checks: page size 0, misaligned IOVA or end, zero length are EINVAL; past 2^64 EOVERFLOW', () => {
      const setup = dirtySetup(t, 64n * KIB, { validate: false });
      const { iommufd, hwpt, iova } = setup;
      const bitmap = placedBitmap(1024n, 0);
      const get = (request: { iova: bigint; length: bigint; pageSize: bigint }) => () =>
        iommufd.hwptGetDirtyBitmap({ hwptId: hwpt, bitmap, ...request });
      expectKernelError(get({ iova, length: 8n * KIB, pageSize: 0n }), 'IOMMU_HWPT_GET_DIRTY_BITMAP', 'EINVAL');
      // Aligned to the 1 KiB page size but not to the IOAS alignment (2 KiB).
      expectKernelError(get({ iova: iova + KIB, length: 8n * KIB, pageSize: KIB }), 'IOMMU_HWPT_GET_DIRTY_BITMAP', 'EINVAL');
      expectKernelError(get({ iova, length: 9n * KIB, pageSize: KIB }), 'IOMMU_HWPT_GET_DIRTY_BITMAP', 'EINVAL');
      // Aligned to the IOAS but not to the 4 KiB page size.
      expectKernelError(get({ iova: iova + 2n * KIB, length: 8n * KIB, pageSize: 4n * KIB }), 'IOMMU_HWPT_GET_DIRTY_BITMAP', 'EINVAL');
      expectKernelError(get({ iova, length: 0n, pageSize: PAGE }), 'IOMMU_HWPT_GET_DIRTY_BITMAP', 'EINVAL');
      expectKernelError(get({ iova: U64_MAX - PAGE + 1n, length: 2n * PAGE, pageSize: PAGE }), 'IOMMU_HWPT_GET_DIRTY_BITMAP', 'EOVERFLOW');
      expectKernelError(
        () => iommufd.hwptGetDirtyBitmap({ hwptId: hwpt + 40, iova, length: 8n * KIB, pageSize: PAGE, bitmap }),
        'IOMMU_HWPT_GET_DIRTY_BITMAP',
        'ENOENT',
      );
    });

    it('GET_DIRTY_BITMAP on a HWPT without DIRTY_TRACKING: the range checks first (EINVAL), then EOPNOTSUPP', () => {
      const iommufd = t.iommufd({ validateArguments: false });
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      const plain = iommufd.hwptAlloc({ devId: mock.devId!, ptId: ioas });
      const bitmap = placedBitmap(64n, 0);
      expectKernelError(
        () => iommufd.hwptGetDirtyBitmap({ hwptId: plain, iova: MOCK_APERTURE_START, length: 8n * KIB, pageSize: 0n, bitmap }),
        'IOMMU_HWPT_GET_DIRTY_BITMAP',
        'EINVAL',
      );
      expectKernelError(
        () => iommufd.hwptGetDirtyBitmap({ hwptId: plain, iova: MOCK_APERTURE_START, length: 8n * KIB, pageSize: PAGE, bitmap }),
        'IOMMU_HWPT_GET_DIRTY_BITMAP',
        'EOPNOTSUPP',
      );
    });

    simIt('a huge IOPTE dirties every page it covers: one marked page reports its whole 1 MiB [sim only: the real kernel\'s host memory has no huge pages]', () => {
      const length = 4n * MIB;
      const memory = t.memory(length, (size) => t.sim.kernel.allocateHostMemory(size, { pageSize: 2n * MIB }));
      const setup = dirtySetup(t, length, { hugeIova: true, memory });
      const bits = Number(length / PAGE);
      const marks = markBitmap(BigInt(bits));
      setBit(marks, 600); // a page of the second 1 MiB IOPTE
      expect(t.testOps(setup.iommufd).markDirty(setup.hwpt, { iova: setup.iova, length, pageSize: PAGE, bitmap: marks })).toBe(1n);
      const bitmap = placedBitmap(BigInt(bits), 0xff8);
      setup.iommufd.hwptGetDirtyBitmap({ hwptId: setup.hwpt, iova: setup.iova, length, pageSize: PAGE, bitmap });
      const perIopte = Number(MOCK_HUGE_PAGE_SIZE / PAGE);
      expect(setBitIndexes(bitmap, bits)).toEqual(Array.from({ length: perIopte }, (_, index) => perIopte + index));
    });
  });
}
