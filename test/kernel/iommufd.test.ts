// A. /dev/iommu on the real kernel through LinuxIommufd: IOAS objects, map/unmap/copy, IOVA
// ranges (with the EMSGSIZE retry), allowed IOVAs, IOMMU_OPTION, HWPT allocation, GET_HW_INFO on
// a kernel test mock, and the errno of every failing path. Where the library refuses an argument
// before the ioctl, the same request is also sent with validateArguments: false to show the
// kernel's own errno.
import { afterAll, describe, expect, it } from 'vitest';
import type { HostMemory, IommufdHandle } from '../../src/kernel/types.js';
import { U64_MAX } from '../../src/kernel/validate.js';
import * as uapi from '../../src/uapi/index.js';
import { HostIommuInfo } from '../../src/vfio/host-iommu-info.js';
import { edu, onVirtioIommu } from './harness/guest-env.js';
import { expectKernelError, expectRefused, flushCoverage, kernel, MiB, perTestCleanup, syscalls } from './support/kernel.js';

const MOCK_START = uapi.MOCK_APERTURE_START;
const PAGE = 4096n;
/** An object ID no test allocates (IDs count up from 1 per iommufd). */
const NO_SUCH_ID = 0x7fff_fff0;

const { track, memory } = perTestCleanup();

afterAll(() => flushCoverage('iommufd.test.ts'));

function iommufd(options?: { validateArguments?: boolean }): IommufdHandle {
  return track(kernel().openIommufd(options));
}

describe.runIf(onVirtioIommu)('iommufd: IOAS objects', () => {
  it('allocates IOASes with distinct IDs and destroys them; destroying one again is ENOENT', () => {
    const fd = iommufd();
    const a = fd.ioasAlloc();
    const b = fd.ioasAlloc();
    expect(a).toBeGreaterThan(0);
    expect(b).not.toBe(a);
    fd.destroy(a);
    expect(expectKernelError(() => fd.destroy(a), 'IOMMU_DESTROY', 'ENOENT').objects).toEqual({ id: a });
    // the other one is still there: it answers IOVA_RANGES
    expect(fd.ioasIovaRanges(b).ranges).toEqual([{ start: 0n, last: U64_MAX }]);
    fd.destroy(b);
  });

  it('an IOAS that a HWPT was allocated on cannot be destroyed before the HWPT (EBUSY)', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    const mock = fd.test!.mockDomain(ioas);
    const hwpt = fd.hwptAlloc({ devId: mock.devId!, ptId: ioas });
    mock.close();
    expectKernelError(() => fd.destroy(ioas), 'IOMMU_DESTROY', 'EBUSY');
    fd.destroy(hwpt);
    fd.destroy(ioas);
  });
});

describe.runIf(onVirtioIommu)('iommufd: map, unmap, copy', () => {
  it('maps at a fixed IOVA and at one the kernel chooses, and unmaps exactly what was mapped', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    const m = memory(64n * 1024n);
    expect(fd.ioasMap({ ioasId: ioas, memory: m, length: 16n * 1024n, iova: MiB })).toBe(MiB);
    const chosen = fd.ioasMap({ ioasId: ioas, memory: m, memoryOffset: 16n * 1024n, length: 32n * 1024n });
    expect(chosen % PAGE).toBe(0n);
    const overlaps = chosen < MiB + 16n * 1024n && MiB < chosen + 32n * 1024n;
    expect(overlaps).toBe(false);
    // a mapping holds its memory
    expect(() => m.release()).toThrow(/still mapped/);

    // overlapping a mapping: EEXIST; cutting one in half: ENOENT; nothing there: ENOENT
    expectKernelError(() => fd.ioasMap({ ioasId: ioas, memory: m, length: PAGE, iova: MiB + PAGE }), 'IOMMU_IOAS_MAP', 'EEXIST');
    expectKernelError(() => fd.ioasUnmap(ioas, MiB, PAGE), 'IOMMU_IOAS_UNMAP', 'ENOENT');
    expectKernelError(() => fd.ioasUnmap(ioas, 64n * MiB, PAGE), 'IOMMU_IOAS_UNMAP', 'ENOENT');

    expect(fd.ioasUnmap(ioas, MiB, 16n * 1024n)).toBe(16n * 1024n);
    expectKernelError(() => fd.ioasUnmap(ioas, MiB, 16n * 1024n), 'IOMMU_IOAS_UNMAP', 'ENOENT');
    expect(fd.ioasUnmapAll(ioas)).toBe(32n * 1024n);
    // an empty IOAS: unmap-all unmaps nothing and succeeds
    expect(fd.ioasUnmapAll(ioas)).toBe(0n);
  });

  it('copies a mapping into another IOAS at a fixed and at a kernel-chosen IOVA', () => {
    const fd = iommufd();
    const src = fd.ioasAlloc();
    const dst = fd.ioasAlloc();
    const m = memory(64n * 1024n);
    fd.ioasMap({ ioasId: src, memory: m, length: 64n * 1024n, iova: 4n * MiB });
    expect(fd.ioasCopy({ dstIoasId: dst, srcIoasId: src, srcIova: 4n * MiB, length: 64n * 1024n, dstIova: 8n * MiB })).toBe(8n * MiB);
    const chosen = fd.ioasCopy({ dstIoasId: dst, srcIoasId: src, srcIova: 4n * MiB, length: 16n * 1024n });
    expect(chosen % PAGE).toBe(0n);
    expect(chosen >= 8n * MiB + 64n * 1024n || chosen + 16n * 1024n <= 8n * MiB).toBe(true);
    // the copies are mappings of their own: unmapping the source leaves them
    expect(fd.ioasUnmap(src, 4n * MiB, 64n * 1024n)).toBe(64n * 1024n);
    expect(fd.ioasUnmap(dst, 8n * MiB, 64n * 1024n)).toBe(64n * 1024n);
    expect(fd.ioasUnmap(dst, chosen, 16n * 1024n)).toBe(16n * 1024n);
    // copying what is not mapped: ENOENT; into a taken destination: EEXIST
    expectKernelError(() => fd.ioasCopy({ dstIoasId: dst, srcIoasId: src, srcIova: 4n * MiB, length: PAGE }), 'IOMMU_IOAS_COPY', 'ENOENT');
    fd.ioasMap({ ioasId: src, memory: m, length: PAGE, iova: 4n * MiB });
    fd.ioasMap({ ioasId: dst, memory: m, length: PAGE, iova: 9n * MiB });
    expectKernelError(
      () => fd.ioasCopy({ dstIoasId: dst, srcIoasId: src, srcIova: 4n * MiB, length: PAGE, dstIova: 9n * MiB }),
      'IOMMU_IOAS_COPY', 'EEXIST',
    );
    fd.ioasUnmapAll(src);
    fd.ioasUnmapAll(dst);
  });
});

describe.runIf(onVirtioIommu)('iommufd: IOVA ranges', () => {
  it('an empty IOAS allows everything; a mock device narrows it to the mock aperture', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    expect(fd.ioasIovaRanges(ioas)).toEqual({ ranges: [{ start: 0n, last: U64_MAX }], alignment: 1n });
    const mock = fd.test!.mockDomain(ioas);
    expect(fd.ioasIovaRanges(ioas)).toEqual({
      ranges: [{ start: MOCK_START, last: uapi.MOCK_APERTURE_LAST }], alignment: uapi.MOCK_IO_PAGE_SIZE,
    });
    mock.close();
    // ... and widens again when it goes
    expect(fd.ioasIovaRanges(ioas).ranges).toEqual([{ start: 0n, last: U64_MAX }]);
  });

  it('edu narrows it around its reserved MSI window; a too-small array gets EMSGSIZE and the library retries', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    const device = track(kernel().openDevice(edu.cdev));
    device.bindIommufd(fd);
    device.attachPt(ioas);
    const expected = {
      ranges: [{ start: 0n, last: 0xfedf_ffffn }, { start: 0xfef0_0000n, last: U64_MAX }],
      alignment: PAGE,
    };
    expect(fd.ioasIovaRanges(ioas)).toEqual(expected);

    // Nothing in this guest gives an IOAS more than the library's first guess of 4 ranges
    // (IOMMU_TEST_OP_ADD_RESERVED is not among the shim's test ops), so the syscall layer
    // shrinks num_iovas of the first call to 1: the kernel then fills one entry, says 2 and
    // answers EMSGSIZE, exactly as it would for 5+ ranges against 4.
    const recorder = syscalls();
    let shrunk = 0;
    recorder.hook = ({ name, arg }) => {
      if (name !== 'IOMMU_IOAS_IOVA_RANGES' || shrunk++ > 0 || !(arg instanceof Uint8Array)) return;
      new DataView(arg.buffer, arg.byteOffset).setUint32(uapi.iommu_ioas_iova_ranges.offsetOf('num_iovas'), 1, true);
    };
    const before = recorder.records.length;
    try {
      expect(fd.ioasIovaRanges(ioas)).toEqual(expected);
    } finally {
      recorder.hook = undefined;
    }
    expect(recorder.records.slice(before).map((r) => `${r.name} ${r.result}`)).toEqual([
      'IOMMU_IOAS_IOVA_RANGES EMSGSIZE', 'IOMMU_IOAS_IOVA_RANGES ok',
    ]);
    device.detachPt();
    expect(fd.ioasIovaRanges(ioas).ranges).toEqual([{ start: 0n, last: U64_MAX }]);
  });
});

describe.runIf(onVirtioIommu)('iommufd: allowed IOVAs', () => {
  it('restricts the IOVAs the kernel chooses, and clears with an empty list', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    const window = { start: 0x3000_0000n, last: 0x3000_ffffn };
    fd.ioasAllowIovas(ioas, [{ start: 0x1000_0000n, last: 0x1000_0fffn }, window]);
    const m = memory(32n * 1024n);
    // 32 KiB does not fit the first window (4 KiB): the kernel must pick the second one
    const iova = fd.ioasMap({ ioasId: ioas, memory: m, length: 32n * 1024n });
    expect(iova >= window.start && iova + 32n * 1024n - 1n <= window.last).toBe(true);
    fd.ioasUnmap(ioas, iova, 32n * 1024n);
    // a request that fits no window at all has no IOVA to get
    expectKernelError(() => fd.ioasMap({ ioasId: ioas, memory: memory(128n * 1024n), length: 128n * 1024n }), 'IOMMU_IOAS_MAP', 'ENOSPC');
    fd.ioasAllowIovas(ioas, []);
    const anywhere = fd.ioasMap({ ioasId: ioas, memory: m, length: 32n * 1024n });
    expect(anywhere % PAGE).toBe(0n);
  });

  it('refuses windows over reserved IOVAs (EADDRINUSE), and a device whose aperture they cross (EADDRINUSE)', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    const mock = fd.test!.mockDomain(ioas);
    // below the mock aperture is reserved
    expectKernelError(() => fd.ioasAllowIovas(ioas, [{ start: 0n, last: 0xfffn }]), 'IOMMU_IOAS_ALLOW_IOVAS', 'EADDRINUSE');
    fd.ioasAllowIovas(ioas, [{ start: MOCK_START, last: MOCK_START + MiB - 1n }]);
    mock.close();

    const other = fd.ioasAlloc();
    fd.ioasAllowIovas(other, [{ start: 0n, last: 0xfffn }]);
    expectKernelError(() => fd.test!.mockDomain(other), 'IOMMU_TEST_CMD', 'EADDRINUSE');
  });

  it('a range with last at or below start: refused by the library, EINVAL from the kernel', () => {
    const strict = iommufd();
    const ioas = strict.ioasAlloc();
    expectRefused(() => strict.ioasAllowIovas(ioas, [{ start: 0x2000n, last: 0x1000n }]), 'ranges[0]');
    const loose = iommufd({ validateArguments: false });
    const ioas2 = loose.ioasAlloc();
    expectKernelError(() => loose.ioasAllowIovas(ioas2, [{ start: 0x2000n, last: 0x1000n }]), 'IOMMU_IOAS_ALLOW_IOVAS', 'EINVAL');
    // the kernel also refuses a one-byte window (start == last), and so does the library
    expectRefused(() => strict.ioasAllowIovas(ioas, [{ start: 0x1000n, last: 0x1000n }]), 'ranges[0]');
    expectKernelError(() => loose.ioasAllowIovas(ioas2, [{ start: 0x1000n, last: 0x1000n }]), 'IOMMU_IOAS_ALLOW_IOVAS', 'EINVAL');
    // overlapping windows are EINVAL too
    expectKernelError(
      () => loose.ioasAllowIovas(ioas2, [{ start: 0x1000n, last: 0x2fffn }, { start: 0x2000n, last: 0x3fffn }]),
      'IOMMU_IOAS_ALLOW_IOVAS', 'EINVAL',
    );
  });
});

describe.runIf(onVirtioIommu)('iommufd: IOMMU_OPTION', () => {
  it('HUGE_PAGES on an IOAS: on by default, set off and on, 2 is EINVAL', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    const HUGE_PAGES = uapi.IOMMU_OPTION_HUGE_PAGES;
    expect(HUGE_PAGES).toBe(1);
    expect(fd.optionGet(HUGE_PAGES, ioas)).toBe(1n);
    fd.optionSet(HUGE_PAGES, ioas, 0n);
    expect(fd.optionGet(HUGE_PAGES, ioas)).toBe(0n);
    fd.optionSet(HUGE_PAGES, ioas, 1n);
    expect(fd.optionGet(HUGE_PAGES, ioas)).toBe(1n);
    expectKernelError(() => fd.optionSet(HUGE_PAGES, ioas, 2n), 'IOMMU_OPTION', 'EINVAL');
    expect(fd.optionGet(HUGE_PAGES, ioas)).toBe(1n);
    // not an IOAS: ENOENT
    expectKernelError(() => fd.optionGet(HUGE_PAGES, NO_SUCH_ID), 'IOMMU_OPTION', 'ENOENT');
  });

  it('RLIMIT_MODE is per iommufd (object 0); an object ID or an unknown option is EOPNOTSUPP', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    expect([0n, 1n]).toContain(fd.optionGet(uapi.IOMMU_OPTION_RLIMIT_MODE, 0));
    expectKernelError(() => fd.optionGet(uapi.IOMMU_OPTION_RLIMIT_MODE, ioas), 'IOMMU_OPTION', 'EOPNOTSUPP');
    expectKernelError(() => fd.optionGet(99, ioas), 'IOMMU_OPTION', 'EOPNOTSUPP');
    expectRefused(() => fd.optionSet(uapi.IOMMU_OPTION_HUGE_PAGES, ioas, -1n), 'value');
  });
});

describe.runIf(onVirtioIommu)('iommufd: HWPTs on a mock device', () => {
  it('allocates HWPTs with and without DIRTY_TRACKING; an attached HWPT cannot be destroyed (EBUSY)', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    const mock = track(fd.test!.mockDomain(ioas));
    const devId = mock.devId!;
    const plain = fd.hwptAlloc({ devId, ptId: ioas });
    const dirty = fd.hwptAlloc({ devId, ptId: ioas, flags: uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
    expect(new Set([ioas, plain, dirty]).size).toBe(3);

    expect(mock.attachPt(dirty)).toBe(dirty);
    expect(expectKernelError(() => fd.destroy(dirty), 'IOMMU_DESTROY', 'EBUSY').message).toBe(
      `IOMMU_DESTROY(id ${dirty}) failed: Device or resource busy`,
    );
    // dirty tracking exists on the dirty HWPT only
    fd.hwptSetDirtyTracking(dirty, true);
    fd.hwptSetDirtyTracking(dirty, false);
    expectKernelError(() => fd.hwptSetDirtyTracking(plain, true), 'IOMMU_HWPT_SET_DIRTY_TRACKING', 'EOPNOTSUPP');

    expect(mock.attachPt(plain)).toBe(plain);
    fd.destroy(dirty);
    expectKernelError(() => fd.destroy(plain), 'IOMMU_DESTROY', 'EBUSY');
    mock.close();
    fd.destroy(plain);
  });

  it('refuses an unknown device (ENOENT), an unknown page table (EINVAL) and unknown flags (EOPNOTSUPP)', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    const mock = track(fd.test!.mockDomain(ioas));
    expectKernelError(() => fd.hwptAlloc({ devId: NO_SUCH_ID, ptId: ioas }), 'IOMMU_HWPT_ALLOC', 'ENOENT');
    // iommufd_hwpt_alloc() turns a failed pt_id lookup into EINVAL, not ENOENT
    expectKernelError(() => fd.hwptAlloc({ devId: mock.devId!, ptId: NO_SUCH_ID }), 'IOMMU_HWPT_ALLOC', 'EINVAL');
    // ... and so is a pt_id that is neither an IOAS nor a HWPT (here: the device itself)
    expectKernelError(() => fd.hwptAlloc({ devId: mock.devId!, ptId: mock.devId! }), 'IOMMU_HWPT_ALLOC', 'EINVAL');
    expectKernelError(() => fd.hwptAlloc({ devId: mock.devId!, ptId: ioas, flags: 1 << 30 }), 'IOMMU_HWPT_ALLOC', 'EOPNOTSUPP');
  });
});

describe.runIf(onVirtioIommu)('iommufd: GET_HW_INFO', () => {
  it('a mock device answers IOMMU_HW_INFO_TYPE_SELFTEST with test_reg 0xdeadbeef and the dirty-tracking capability', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    const mock = track(fd.test!.mockDomain(ioas));
    const info = fd.getHwInfo(mock.devId!);
    expect(info.type).toBe(0xfeedbeef);
    expect(info.type).toBe(uapi.IOMMU_HW_INFO_TYPE_SELFTEST);
    expect(info.data.byteLength).toBe(uapi.iommu_test_hw_info.size);
    expect(uapi.iommu_test_hw_info.readNumber(info.data, 'test_reg')).toBe(0xdeadbeef);
    expect(uapi.iommu_test_hw_info.readNumber(info.data, 'flags')).toBe(0);
    expect(info.capabilities).toBe(BigInt(uapi.IOMMU_HW_CAP_DIRTY_TRACKING));
    const host = new HostIommuInfo(info);
    expect({ type: host.type, dirtyTracking: host.dirtyTracking }).toEqual({ type: 'selftest', dirtyTracking: true });

    const noDirty = track(fd.test!.mockDomain(ioas, { noDirty: true }));
    expect(fd.getHwInfo(noDirty.devId!).capabilities).toBe(0n);
    expectKernelError(() => fd.getHwInfo(NO_SUCH_ID), 'IOMMU_GET_HW_INFO', 'ENOENT');
  });
});

describe.runIf(onVirtioIommu)('iommufd: unknown IDs are ENOENT', () => {
  it('for every call that names an object', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    const mock = track(fd.test!.mockDomain(ioas));
    const m = memory(PAGE);
    const bitmap = new Uint8Array(8);
    const bad = NO_SUCH_ID;
    expectKernelError(() => fd.destroy(bad), 'IOMMU_DESTROY', 'ENOENT');
    expectKernelError(() => fd.ioasMap({ ioasId: bad, memory: m, length: PAGE, iova: MOCK_START }), 'IOMMU_IOAS_MAP', 'ENOENT');
    expectKernelError(() => fd.ioasUnmap(bad, MOCK_START, PAGE), 'IOMMU_IOAS_UNMAP', 'ENOENT');
    expectKernelError(() => fd.ioasUnmapAll(bad), 'IOMMU_IOAS_UNMAP', 'ENOENT');
    expectKernelError(() => fd.ioasIovaRanges(bad), 'IOMMU_IOAS_IOVA_RANGES', 'ENOENT');
    expectKernelError(() => fd.ioasAllowIovas(bad, []), 'IOMMU_IOAS_ALLOW_IOVAS', 'ENOENT');
    expectKernelError(() => fd.ioasCopy({ dstIoasId: ioas, srcIoasId: bad, srcIova: MOCK_START, length: PAGE }), 'IOMMU_IOAS_COPY', 'ENOENT');
    expectKernelError(() => fd.hwptSetDirtyTracking(bad, true), 'IOMMU_HWPT_SET_DIRTY_TRACKING', 'ENOENT');
    expectKernelError(
      () => fd.hwptGetDirtyBitmap({ hwptId: bad, iova: MOCK_START, length: PAGE, pageSize: PAGE, bitmap }),
      'IOMMU_HWPT_GET_DIRTY_BITMAP', 'ENOENT',
    );
    // an object of the wrong type is not found either: the mock's HWPT is no IOAS
    expectKernelError(() => fd.ioasIovaRanges((mock as unknown as { initialHwptId: number }).initialHwptId), 'IOMMU_IOAS_IOVA_RANGES', 'ENOENT');
  });
});

describe.runIf(onVirtioIommu)('iommufd: misaligned and overflowing requests', () => {
  it('an IOVA off the IOAS alignment is EINVAL from the kernel (it depends on attached devices)', () => {
    const fd = iommufd();
    const ioas = fd.ioasAlloc();
    track(fd.test!.mockDomain(ioas));
    expect(fd.ioasIovaRanges(ioas).alignment).toBe(2048n);
    const m = memory(2n * PAGE);
    expectKernelError(() => fd.ioasMap({ ioasId: ioas, memory: m, length: PAGE, iova: MOCK_START + 1024n }), 'IOMMU_IOAS_MAP', 'EINVAL');
    // outside the aperture is reserved: EINVAL as well
    expectKernelError(() => fd.ioasMap({ ioasId: ioas, memory: m, length: PAGE, iova: 0n }), 'IOMMU_IOAS_MAP', 'EINVAL');
  });

  it('dirty bitmap requests: the library refuses them with no ioctl; unchecked, the kernel says EINVAL/EOVERFLOW', () => {
    const strict = iommufd();
    const loose = iommufd({ validateArguments: false });
    for (const fd of [strict, loose]) {
      const ioas = fd.ioasAlloc();
      const mock = track(fd.test!.mockDomain(ioas));
      const hwpt = fd.hwptAlloc({ devId: mock.devId!, ptId: ioas, flags: uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING });
      fd.ioasMap({ ioasId: ioas, memory: memory(64n * 1024n), length: 64n * 1024n, iova: MOCK_START });
      fd.hwptSetDirtyTracking(hwpt, true);
      const bitmap = new Uint8Array(64);
      const request = { hwptId: hwpt, iova: MOCK_START, length: 64n * 1024n, pageSize: 2048n, bitmap };
      fd.hwptGetDirtyBitmap(request);
      const cases: { change: Partial<typeof request>; argument: string; code: string }[] = [
        { change: { iova: MOCK_START + 1024n }, argument: 'dirty bitmap.iova', code: 'EINVAL' },
        { change: { length: 64n * 1024n + 1024n }, argument: 'dirty bitmap.length', code: 'EINVAL' },
        { change: { pageSize: 0n }, argument: 'dirty bitmap.pageSize', code: 'EINVAL' },
        { change: { iova: U64_MAX - 2047n, length: 4096n }, argument: 'dirty bitmap', code: 'EOVERFLOW' },
      ];
      for (const { change, argument, code } of cases) {
        const bad = { ...request, ...change };
        if (fd === strict) expectRefused(() => fd.hwptGetDirtyBitmap(bad), argument);
        else expectKernelError(() => fd.hwptGetDirtyBitmap(bad), 'IOMMU_HWPT_GET_DIRTY_BITMAP', code);
      }
      if (fd === strict) {
        // Only the library can refuse this: a page size that is no power of two passes the
        // kernel's alignment checks (it masks with page_size - 1) and is then taken as
        // 1 << __ffs(page_size).
        expectRefused(() => fd.hwptGetDirtyBitmap({ ...request, pageSize: 3072n }), 'dirty bitmap.pageSize');
      }
      // Refused even unchecked: the kernel would write past the bitmap. 32 pages are
      // DIV_ROUND_UP(32, 64) = 1 u64 word; whole bytes (4) end mid-word, and a bitmap off a u64
      // word has its first and last words shared with memory the library does not hand over.
      for (const short of [new Uint8Array(2), new Uint8Array(4), new Uint8Array(new ArrayBuffer(16), 4, 8)]) {
        expectRefused(() => fd.hwptGetDirtyBitmap({ ...request, bitmap: short }), 'dirty bitmap.bitmap');
      }
    }
  });

  it('map and unmap ranges: refused by the library, EOVERFLOW/EINVAL from the kernel', () => {
    const strict = iommufd();
    const loose = iommufd({ validateArguments: false });
    const m = memory(2n * PAGE);
    const s = strict.ioasAlloc();
    const l = loose.ioasAlloc();
    expectRefused(() => strict.ioasMap({ ioasId: s, memory: m, length: 2n * PAGE, iova: U64_MAX - PAGE + 1n }), 'map');
    expectKernelError(() => loose.ioasMap({ ioasId: l, memory: m, length: 2n * PAGE, iova: U64_MAX - PAGE + 1n }), 'IOMMU_IOAS_MAP', 'EOVERFLOW');
    expectRefused(() => strict.ioasUnmap(s, MiB, 0n), 'unmap.length');
    expectKernelError(() => loose.ioasUnmap(l, MiB, 0n), 'IOMMU_IOAS_UNMAP', 'EINVAL');
    expectRefused(() => strict.ioasMap({ ioasId: s, memory: m, length: 4n * PAGE, iova: MiB }), 'memoryOffset');
    expectRefused(() => strict.ioasMap({ ioasId: s, memory: m, length: 0n, iova: MiB }), 'length');
    expectKernelError(() => loose.ioasMap({ ioasId: l, memory: m, length: 0n, iova: MiB }), 'IOMMU_IOAS_MAP', 'EINVAL');
  });
});
