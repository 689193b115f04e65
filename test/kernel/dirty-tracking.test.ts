// D. IOMMU dirty tracking on the kernel's test mock devices: a dirty-capable mock on a HWPT
// allocated with DIRTY_TRACKING, pages marked with IOMMU_TEST_OP_DIRTY (the ground truth), and
// IOMMU_HWPT_GET_DIRTY_BITMAP returning exactly those pages: read-and-clear, then NO_CLEAR, on
// the bitmap shapes of the kernel selftest's iommufd_dirty_tracking fixture (8k .. 128M of IOVA
// at MOCK_IO_PAGE_SIZE = 2048) and at bitmap addresses across a page; the selftest's u64-unaligned
// placement, and bitmaps ending mid-u64, refused before the ioctl. And the mock without dirty
// tracking: EINVAL on a dirty HWPT, EOPNOTSUPP for a dirty HWPT of its own.
import { afterAll, describe, expect, it } from 'vitest';
import type { DeviceHandle, HostMemory, IommufdHandle } from '../../src/kernel/types.js';
import * as uapi from '../../src/uapi/index.js';
import { onVirtioIommu } from './harness/guest-env.js';
import { expectKernelError, expectRefused, flushCoverage, kernel, MiB, perTestCleanup, setBit, setBits } from './support/kernel.js';

const MOCK_PAGE = uapi.MOCK_IO_PAGE_SIZE;
const START = uapi.MOCK_APERTURE_START;
const DIRTY = uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING;

const { track, keep } = perTestCleanup();
afterAll(() => flushCoverage('dirty-tracking.test.ts'));

interface Fixture {
  fd: IommufdHandle;
  ioas: number;
  mock: DeviceHandle;
  hwpt: number;
}

/** The selftest's fixture: an IOAS with `size` bytes mapped at the aperture start, a mock on a dirty HWPT, tracking on. */
function fixture(size: bigint, options?: { validateArguments?: boolean }): Fixture {
  const fd = track(kernel().openIommufd(options));
  const ioas = fd.ioasAlloc();
  const buffer = kernel().allocateHostMemory(size);
  keep(buffer);
  expect(fd.ioasMap({ ioasId: ioas, memory: buffer, length: size, iova: START })).toBe(START);
  const mock = track(fd.test!.mockDomain(ioas));
  const hwpt = fd.hwptAlloc({ devId: mock.devId!, ptId: ioas, flags: DIRTY });
  expect(mock.attachPt(hwpt)).toBe(hwpt);
  fd.hwptSetDirtyTracking(hwpt, true);
  return { fd, ioas, mock, hwpt };
}

/**
 * Bytes the kernel may touch for `bits` bits: the uAPI's `__u64 *data`, DIV_ROUND_UP(bits, 64)
 * u64 words (iova_bitmap sets bits with bitmap_set on the unsigned longs of the pinned pages).
 */
const bytesFor = (bits: number) => Math.ceil(bits / 64) * 8;
/** What IOMMU_TEST_OP_DIRTY reads of its marks: copy_from_user of DIV_ROUND_UP(max, BITS_PER_BYTE). */
const markBytes = (bits: number) => Math.ceil(bits / 8);

/**
 * The selftest's check: mark every other mock page dirty, read the bitmap (exactly those bits,
 * nothing outside the view), read again (nothing with read-and-clear, the same with NO_CLEAR).
 */
function checkShape(f: Fixture, size: bigint, view: Uint8Array, guard: { buffer: Uint8Array; from: number; to: number }, noClear: boolean): void {
  const bits = Number(size / MOCK_PAGE);
  const marks = new Uint8Array(markBytes(bits));
  for (let i = 0; i < bits; i += 2) setBit(marks, i);
  const marked = f.fd.test!.markDirty(f.hwpt, { iova: START, length: size, pageSize: MOCK_PAGE, bitmap: marks });
  expect(marked).toBe(BigInt(Math.ceil(bits / 2)));

  const expected = Array.from({ length: Math.ceil(bits / 2) }, (_, i) => 2 * i);
  const read = () => {
    view.fill(0);
    f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: size, pageSize: MOCK_PAGE, bitmap: view, noClear });
    // nothing outside the bitmap's bytes, nor past its last bit inside them
    const touched: number[] = [];
    for (let i = 0; i < guard.buffer.byteLength; i++) {
      if ((i < guard.from || i >= guard.to) && guard.buffer[i] !== 0xee) touched.push(i);
    }
    expect(touched, 'bytes outside the bitmap the kernel wrote').toEqual([]);
    return setBits(view, view.byteLength * 8);
  };
  expect(read()).toEqual(expected);
  expect(read()).toEqual(noClear ? expected : []);
  if (noClear) {
    // a clearing read leaves nothing behind for the next check
    view.fill(0);
    f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: size, pageSize: MOCK_PAGE, bitmap: view });
    expect(setBits(view, view.byteLength * 8)).toEqual(expected);
  }
}

// The iommufd_dirty_tracking variants: IOVA range -> bitmap shape at 2 KiB pages.
const SHAPES: [name: string, size: bigint][] = [
  ['8k: half of one u8', 8n * 1024n],
  ['16k: one u8', 16n * 1024n],
  ['64k: one u32', 64n * 1024n],
  ['128k: one u64', 128n * 1024n],
  ['320k: two u64 and a partial word', 320n * 1024n],
  ['64M: a 4 KiB bitmap', 64n * MiB],
  ['128M: an 8 KiB bitmap', 128n * MiB],
];
// Where the bitmap starts inside a larger buffer: aligned, at +MOCK_PAGE_SIZE, across a 4 KiB
// page at +0xff8. The selftest's +0xff1 is off a u64 word: refused (below).
const OFFSETS: [name: string, offset: number][] = [
  ['aligned', 0],
  ['+MOCK_PAGE_SIZE', Number(MOCK_PAGE)],
  ['+0xff8 (across a page)', 0xff8],
];

describe.runIf(onVirtioIommu)('dirty tracking on a mock device: GET_DIRTY_BITMAP returns exactly the marked pages', () => {
  for (const [name, size] of SHAPES) {
    it(`${name}`, () => {
      const f = fixture(size);
      const bits = Number(size / MOCK_PAGE);
      // the selftest provisions an extra page for the unaligned placements
      const buffer = new Uint8Array(new ArrayBuffer(bytesFor(bits) + 8192));
      for (const [, offset] of OFFSETS) {
        for (const noClear of [false, true]) {
          buffer.fill(0xee);
          const view = new Uint8Array(buffer.buffer, offset, bytesFor(bits));
          checkShape(f, size, view, { buffer, from: offset, to: offset + view.byteLength }, noClear);
        }
      }
      expect(bits % 8 === 0 || bits < 8).toBe(true);
    });
  }
});

describe.runIf(onVirtioIommu)('dirty tracking on a mock device: the rules', () => {
  it.each([true, false])('a bitmap ending mid-u64 or off a u64 word is refused before the ioctl (validateArguments: %s); the marks stay', (validateArguments) => {
    const f = fixture(320n * 1024n, { validateArguments });
    const bits = Number((320n * 1024n) / MOCK_PAGE); // 160: two u64 words and a half
    const marks = new Uint8Array(markBytes(bits));
    for (let i = 0; i < bits; i += 2) setBit(marks, i);
    expect(f.fd.test!.markDirty(f.hwpt, { iova: START, length: 320n * 1024n, pageSize: MOCK_PAGE, bitmap: marks })).toBe(80n);
    const words = Math.ceil(bits / 64); // the kernel's rule: DIV_ROUND_UP(160, 64) = 3 words, 24 bytes
    const room = new ArrayBuffer(0x1000 + words * 8 + 8);
    const refused = [new Uint8Array(room, 0, Math.ceil(bits / 8)), new Uint8Array(room, 0, words * 8 - 1), new Uint8Array(room, 0xff1, words * 8)];
    for (const bitmap of refused) {
      expectRefused(() => f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: 320n * 1024n, pageSize: MOCK_PAGE, bitmap }), 'dirty bitmap.bitmap');
    }
    expect(new Uint8Array(room).every((byte) => byte === 0)).toBe(true);
    const bitmap = new Uint8Array(room, 0, words * 8);
    f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: 320n * 1024n, pageSize: MOCK_PAGE, bitmap });
    expect(setBits(bitmap, bits)).toEqual(Array.from({ length: 80 }, (_, i) => 2 * i));
  });

  it('reads at a larger page size fold mock pages together; reads never report unmarked pages', () => {
    const f = fixture(64n * 1024n);
    const marks = new Uint8Array(4);
    for (const page of [1, 2, 9, 31]) setBit(marks, page);
    expect(f.fd.test!.markDirty(f.hwpt, { iova: START, length: 64n * 1024n, pageSize: MOCK_PAGE, bitmap: marks })).toBe(4n);
    const bitmap = new Uint8Array(8);
    f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: 64n * 1024n, pageSize: 4096n, bitmap });
    // 2 KiB pages 1, 2, 9, 31 are in 4 KiB pages 0, 1, 4, 15
    expect(setBits(bitmap, 64)).toEqual([0, 1, 4, 15]);
    bitmap.fill(0);
    f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: 64n * 1024n, pageSize: 4096n, bitmap });
    expect(setBits(bitmap, 64)).toEqual([]);
  });

  it('a sub-range read sees only its pages, and clears only them', () => {
    const f = fixture(128n * 1024n);
    const marks = new Uint8Array(8);
    for (const page of [0, 10, 40, 63]) setBit(marks, page);
    f.fd.test!.markDirty(f.hwpt, { iova: START, length: 128n * 1024n, pageSize: MOCK_PAGE, bitmap: marks });
    const part = new Uint8Array(8);
    // pages 32..63
    f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START + 32n * MOCK_PAGE, length: 32n * MOCK_PAGE, pageSize: MOCK_PAGE, bitmap: part });
    expect(setBits(part, 32)).toEqual([8, 31]);
    const all = new Uint8Array(8);
    f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: 128n * 1024n, pageSize: MOCK_PAGE, bitmap: all });
    expect(setBits(all, 64)).toEqual([0, 10]);
  });

  it('enabling tracking again clears stale bits; with tracking off the mock refuses marks (EINVAL)', () => {
    const f = fixture(16n * 1024n);
    const marks = new Uint8Array([0xff]);
    f.fd.test!.markDirty(f.hwpt, { iova: START, length: 16n * 1024n, pageSize: MOCK_PAGE, bitmap: marks });
    f.fd.hwptSetDirtyTracking(f.hwpt, false);
    expectKernelError(
      () => f.fd.test!.markDirty(f.hwpt, { iova: START, length: 16n * 1024n, pageSize: MOCK_PAGE, bitmap: marks }),
      'IOMMU_TEST_CMD', 'EINVAL',
    );
    f.fd.hwptSetDirtyTracking(f.hwpt, true);
    const bitmap = new Uint8Array(8);
    f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: 16n * 1024n, pageSize: MOCK_PAGE, bitmap });
    expect(setBits(bitmap, 8)).toEqual([]);
  });

  it('marks only count mapped pages; unmapping after a NO_CLEAR read keeps nothing behind', () => {
    const f = fixture(64n * 1024n);
    const marks = new Uint8Array(8);
    for (let i = 0; i < 64; i++) setBit(marks, i);
    // 128 KiB of IOVA, of which 64 KiB is mapped: 32 of the 64 marks land
    expect(f.fd.test!.markDirty(f.hwpt, { iova: START, length: 128n * 1024n, pageSize: MOCK_PAGE, bitmap: marks })).toBe(32n);
    const bitmap = new Uint8Array(8);
    f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: 64n * 1024n, pageSize: MOCK_PAGE, bitmap, noClear: true });
    expect(setBits(bitmap, 64)).toHaveLength(32);
    expect(f.fd.ioasUnmap(f.ioas, START, 64n * 1024n)).toBe(64n * 1024n);
    // Reading a range nothing is mapped in: 6.12's iommu_read_and_clear_dirty() drops the
    // EINVAL of its area walk (newer kernels return it); either way no bit comes back.
    bitmap.fill(0);
    try {
      f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: 64n * 1024n, pageSize: MOCK_PAGE, bitmap });
    } catch (error) {
      expect(error).toMatchObject({ ioctl: 'IOMMU_HWPT_GET_DIRTY_BITMAP', code: 'EINVAL' });
    }
    expect(setBits(bitmap, 64)).toEqual([]);
    // mapped again, the same IOVAs start clean
    const again = kernel().allocateHostMemory(64n * 1024n);
    keep(again);
    f.fd.ioasMap({ ioasId: f.ioas, memory: again, length: 64n * 1024n, iova: START });
    f.fd.hwptGetDirtyBitmap({ hwptId: f.hwpt, iova: START, length: 64n * 1024n, pageSize: MOCK_PAGE, bitmap });
    expect(setBits(bitmap, 64)).toEqual([]);
  });

  it('a HWPT without DIRTY_TRACKING has no dirty bitmap (EOPNOTSUPP)', () => {
    const fd = track(kernel().openIommufd());
    const ioas = fd.ioasAlloc();
    const mock = track(fd.test!.mockDomain(ioas));
    const plain = fd.hwptAlloc({ devId: mock.devId!, ptId: ioas });
    expectKernelError(
      () => fd.hwptGetDirtyBitmap({ hwptId: plain, iova: START, length: 16n * 1024n, pageSize: MOCK_PAGE, bitmap: new Uint8Array(8) }),
      'IOMMU_HWPT_GET_DIRTY_BITMAP', 'EOPNOTSUPP',
    );
  });
});

describe.runIf(onVirtioIommu)('dirty tracking: a mock device without it', () => {
  it('cannot join a dirty HWPT (EINVAL), neither at birth nor by replace', () => {
    const f = fixture(64n * 1024n);
    expectKernelError(() => f.fd.test!.mockDomain(f.hwpt, { noDirty: true }), 'IOMMU_TEST_CMD', 'EINVAL');
    const noDirty = track(f.fd.test!.mockDomain(f.ioas, { noDirty: true }));
    const error = expectKernelError(() => noDirty.attachPt(f.hwpt), 'IOMMU_TEST_CMD', 'EINVAL');
    expect(error.objects).toMatchObject({ op: 'IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE', pt_id: f.hwpt });
    // a dirty-capable mock can, at birth
    const second = track(f.fd.test!.mockDomain(f.hwpt));
    expect(second.devId).toBeGreaterThan(0);
  });

  it('cannot get a dirty HWPT of its own (EOPNOTSUPP), but a plain one', () => {
    const fd = track(kernel().openIommufd());
    const ioas = fd.ioasAlloc();
    const noDirty = track(fd.test!.mockDomain(ioas, { noDirty: true }));
    expect(fd.getHwInfo(noDirty.devId!).capabilities & BigInt(uapi.IOMMU_HW_CAP_DIRTY_TRACKING)).toBe(0n);
    const error = expectKernelError(() => fd.hwptAlloc({ devId: noDirty.devId!, ptId: ioas, flags: DIRTY }), 'IOMMU_HWPT_ALLOC', 'EOPNOTSUPP');
    expect(error.message).toBe(`IOMMU_HWPT_ALLOC(dev_id ${noDirty.devId}, pt_id ${ioas}, flags 2) failed: Operation not supported`);
    const plain = fd.hwptAlloc({ devId: noDirty.devId!, ptId: ioas });
    expect(noDirty.attachPt(plain)).toBe(plain);
  });
});
