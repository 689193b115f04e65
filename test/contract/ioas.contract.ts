// IOAS mappings (drivers/iommu/iommufd/{ioas,io_pagetable}.c): alignment to the IOAS alignment,
// EOVERFLOW, EEXIST, reserved IOVA, unmap of whole mappings only (ENOENT), unmap-all, copy,
// IOVA ranges narrowed by attached devices, allowed IOVA ranges, and IOMMU_OPTION.
import { describe, expect, it } from 'vitest';
import { IOMMU_OPTION_HUGE_PAGES, IOMMU_OPTION_RLIMIT_MODE, MOCK_APERTURE_LAST, MOCK_APERTURE_START } from '../../src/uapi/index.js';
import {
  ContractFixture,
  GIB,
  KIB,
  MIB,
  U64_MAX,
  expectInvalidArgument,
  expectKernelError,
  simOnly,
  type ContractTarget,
} from './context.js';

export function defineIoasContract(target: ContractTarget): void {
  describe('IOAS mappings', () => {
    const t = new ContractFixture(target);

    it('IOMMU_IOAS_MAP at a fixed IOVA, then the same range again fails with EEXIST', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const memory = t.memory(128n * KIB);
      expect(iommufd.ioasMap({ ioasId: ioas, memory, length: 64n * KIB, iova: MIB })).toBe(MIB);
      expectKernelError(
        () => iommufd.ioasMap({ ioasId: ioas, memory, memoryOffset: 64n * KIB, length: 64n * KIB, iova: MIB + 32n * KIB }),
        'IOMMU_IOAS_MAP',
        'EEXIST',
      );
      expect(iommufd.ioasMap({ ioasId: ioas, memory, memoryOffset: 64n * KIB, length: 64n * KIB, iova: MIB + 64n * KIB })).toBe(MIB + 64n * KIB);
    });

    it('IOMMU_IOAS_MAP into an unknown IOAS fails with ENOENT', () => {
      const iommufd = t.iommufd();
      const memory = t.memory(4n * KIB);
      expectKernelError(() => iommufd.ioasMap({ ioasId: 9, memory, length: 4n * KIB, iova: MIB }), 'IOMMU_IOAS_MAP', 'ENOENT');
    });

    it('IOMMU_IOAS_MAP fails with EOVERFLOW when iova + length passes 2^64, or iova is U64_MAX', () => {
      const iommufd = t.iommufd({ validateArguments: false });
      const ioas = iommufd.ioasAlloc();
      const memory = t.memory(8n * KIB);
      expectKernelError(() => iommufd.ioasMap({ ioasId: ioas, memory, length: 8n * KIB, iova: U64_MAX - 4n * KIB + 1n }), 'IOMMU_IOAS_MAP', 'EOVERFLOW');
      expectKernelError(() => iommufd.ioasMap({ ioasId: ioas, memory, length: 4n * KIB, iova: U64_MAX }), 'IOMMU_IOAS_MAP', 'EOVERFLOW');
    });

    it('IOMMU_IOAS_MAP that is neither readable nor writeable fails with EINVAL', () => {
      const iommufd = t.iommufd({ validateArguments: false });
      const ioas = iommufd.ioasAlloc();
      const memory = t.memory(4n * KIB);
      expectKernelError(
        () => iommufd.ioasMap({ ioasId: ioas, memory, length: 4n * KIB, iova: MIB, readable: false, writeable: false }),
        'IOMMU_IOAS_MAP',
        'EINVAL',
      );
    });

    it('a zero length is refused before any ioctl (InvalidArgumentError), and by the kernel with EINVAL', () => {
      const memory = t.memory(4n * KIB);
      const checked = t.iommufd();
      const checkedIoas = checked.ioasAlloc();
      expectInvalidArgument(() => checked.ioasMap({ ioasId: checkedIoas, memory, length: 0n, iova: MIB }), /length/);
      const raw = t.iommufd({ validateArguments: false });
      const rawIoas = raw.ioasAlloc();
      expectKernelError(() => raw.ioasMap({ ioasId: rawIoas, memory, length: 0n, iova: MIB }), 'IOMMU_IOAS_MAP', 'EINVAL');
      expect(checked.ioasUnmapAll(checkedIoas)).toBe(0n);
    });

    it('with a 2 KiB-page device attached the IOAS alignment is 2048: a misaligned IOVA or length fails with EINVAL', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      t.mock(iommufd, ioas);
      const memory = t.memory(8n * KIB);
      expectKernelError(() => iommufd.ioasMap({ ioasId: ioas, memory, length: 4n * KIB, iova: MOCK_APERTURE_START + KIB }), 'IOMMU_IOAS_MAP', 'EINVAL');
      expectKernelError(() => iommufd.ioasMap({ ioasId: ioas, memory, length: 5n * KIB, iova: MOCK_APERTURE_START }), 'IOMMU_IOAS_MAP', 'EINVAL');
      expect(iommufd.ioasMap({ ioasId: ioas, memory, length: 6n * KIB, iova: MOCK_APERTURE_START + 2n * KIB })).toBe(MOCK_APERTURE_START + 2n * KIB);
    });

    it('a fixed IOVA outside the attached device\'s aperture is reserved: EINVAL', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      t.mock(iommufd, ioas);
      const memory = t.memory(4n * KIB);
      expectKernelError(() => iommufd.ioasMap({ ioasId: ioas, memory, length: 4n * KIB, iova: 64n * KIB }), 'IOMMU_IOAS_MAP', 'EINVAL');
      expectKernelError(() => iommufd.ioasMap({ ioasId: ioas, memory, length: 4n * KIB, iova: MOCK_APERTURE_LAST + 1n }), 'IOMMU_IOAS_MAP', 'EINVAL');
    });

    it('the kernel chooses the lowest free aligned IOVA inside the aperture', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      t.mock(iommufd, ioas);
      const memory = t.memory(128n * KIB);
      expect(iommufd.ioasMap({ ioasId: ioas, memory, length: 64n * KIB })).toBe(MOCK_APERTURE_START);
      expect(iommufd.ioasMap({ ioasId: ioas, memory, memoryOffset: 64n * KIB, length: 64n * KIB })).toBe(MOCK_APERTURE_START + 64n * KIB);
    });

    it('a mapping outside a device\'s aperture keeps the device from attaching: EADDRINUSE', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const memory = t.memory(4n * KIB);
      iommufd.ioasMap({ ioasId: ioas, memory, length: 4n * KIB, iova: 64n * KIB });
      expectKernelError(() => t.mock(iommufd, ioas), 'IOMMU_TEST_CMD', 'EADDRINUSE');
      iommufd.ioasUnmapAll(ioas);
      t.mock(iommufd, ioas);
    });
  });

  describe('IOAS unmap and copy', () => {
    const t = new ContractFixture(target);

    it('IOMMU_IOAS_UNMAP must cover whole mappings: a part of one fails with ENOENT', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const memory = t.memory(64n * KIB);
      iommufd.ioasMap({ ioasId: ioas, memory, length: 64n * KIB, iova: MIB });
      expectKernelError(() => iommufd.ioasUnmap(ioas, MIB, 32n * KIB), 'IOMMU_IOAS_UNMAP', 'ENOENT');
      expectKernelError(() => iommufd.ioasUnmap(ioas, MIB + 4n * KIB, 64n * KIB), 'IOMMU_IOAS_UNMAP', 'ENOENT');
      expect(iommufd.ioasUnmap(ioas, MIB, 64n * KIB)).toBe(64n * KIB);
    });

    it('IOMMU_IOAS_UNMAP of a range with no mapping fails with ENOENT', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      expectKernelError(() => iommufd.ioasUnmap(ioas, MIB, 64n * KIB), 'IOMMU_IOAS_UNMAP', 'ENOENT');
      expectKernelError(() => iommufd.ioasUnmap(ioas + 1, MIB, 64n * KIB), 'IOMMU_IOAS_UNMAP', 'ENOENT');
    });

    it('one IOMMU_IOAS_UNMAP over several whole mappings returns their total length', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const memory = t.memory(192n * KIB);
      iommufd.ioasMap({ ioasId: ioas, memory, length: 64n * KIB, iova: MIB });
      iommufd.ioasMap({ ioasId: ioas, memory, memoryOffset: 64n * KIB, length: 64n * KIB, iova: MIB + 64n * KIB });
      iommufd.ioasMap({ ioasId: ioas, memory, memoryOffset: 128n * KIB, length: 64n * KIB, iova: 4n * MIB });
      expect(iommufd.ioasUnmap(ioas, 0n, 2n * MIB)).toBe(128n * KIB);
      expect(iommufd.ioasUnmap(ioas, 4n * MIB, 64n * KIB)).toBe(64n * KIB);
    });

    it('an unmap covering one mapping and half of the next unmaps the first, then fails with ENOENT', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const memory = t.memory(128n * KIB);
      iommufd.ioasMap({ ioasId: ioas, memory, length: 64n * KIB, iova: MIB });
      iommufd.ioasMap({ ioasId: ioas, memory, memoryOffset: 64n * KIB, length: 64n * KIB, iova: MIB + 64n * KIB });
      expectKernelError(() => iommufd.ioasUnmap(ioas, MIB, 96n * KIB), 'IOMMU_IOAS_UNMAP', 'ENOENT');
      // The first mapping is gone: its range maps again; the second is still there.
      iommufd.ioasMap({ ioasId: ioas, memory, length: 64n * KIB, iova: MIB });
      expect(iommufd.ioasUnmap(ioas, MIB + 64n * KIB, 64n * KIB)).toBe(64n * KIB);
    });

    it('unmap-all (iova 0, length U64_MAX) returns every mapped byte, and 0 on an empty IOAS', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      expect(iommufd.ioasUnmapAll(ioas)).toBe(0n);
      const memory = t.memory(96n * KIB);
      iommufd.ioasMap({ ioasId: ioas, memory, length: 32n * KIB, iova: MIB });
      iommufd.ioasMap({ ioasId: ioas, memory, memoryOffset: 32n * KIB, length: 64n * KIB, iova: GIB });
      expect(iommufd.ioasUnmap(ioas, 0n, U64_MAX)).toBe(96n * KIB);
      expect(iommufd.ioasUnmapAll(ioas)).toBe(0n);
    });

    it('IOMMU_IOAS_UNMAP fails with EOVERFLOW for iova U64_MAX or a range passing 2^64', () => {
      const iommufd = t.iommufd({ validateArguments: false });
      const ioas = iommufd.ioasAlloc();
      expectKernelError(() => iommufd.ioasUnmap(ioas, U64_MAX, 4n * KIB), 'IOMMU_IOAS_UNMAP', 'EOVERFLOW');
      expectKernelError(() => iommufd.ioasUnmap(ioas, U64_MAX - 4n * KIB + 1n, 8n * KIB), 'IOMMU_IOAS_UNMAP', 'EOVERFLOW');
    });

    it('IOMMU_IOAS_COPY maps the same pages in another IOAS, one area per source mapping', () => {
      const iommufd = t.iommufd();
      const source = iommufd.ioasAlloc();
      const destination = iommufd.ioasAlloc();
      const memory = t.memory(128n * KIB);
      iommufd.ioasMap({ ioasId: source, memory, length: 64n * KIB, iova: MIB });
      iommufd.ioasMap({ ioasId: source, memory, memoryOffset: 64n * KIB, length: 64n * KIB, iova: MIB + 64n * KIB });
      expect(iommufd.ioasCopy({ dstIoasId: destination, srcIoasId: source, srcIova: MIB, length: 128n * KIB, dstIova: 8n * MIB })).toBe(8n * MIB);
      // The source's two mappings became two areas: each unmaps on its own.
      expect(iommufd.ioasUnmap(destination, 8n * MIB, 64n * KIB)).toBe(64n * KIB);
      expect(iommufd.ioasUnmapAll(source)).toBe(128n * KIB);
      expect(iommufd.ioasUnmapAll(destination)).toBe(64n * KIB);
    });

    it('IOMMU_IOAS_COPY from a hole fails with ENOENT, as does an unknown source or destination IOAS', () => {
      const iommufd = t.iommufd();
      const source = iommufd.ioasAlloc();
      const destination = iommufd.ioasAlloc();
      const memory = t.memory(64n * KIB);
      iommufd.ioasMap({ ioasId: source, memory, length: 64n * KIB, iova: MIB });
      expectKernelError(() => iommufd.ioasCopy({ dstIoasId: destination, srcIoasId: source, srcIova: MIB, length: 128n * KIB }), 'IOMMU_IOAS_COPY', 'ENOENT');
      expectKernelError(() => iommufd.ioasCopy({ dstIoasId: destination, srcIoasId: 99, srcIova: MIB, length: 64n * KIB }), 'IOMMU_IOAS_COPY', 'ENOENT');
      expectKernelError(() => iommufd.ioasCopy({ dstIoasId: 99, srcIoasId: source, srcIova: MIB, length: 64n * KIB }), 'IOMMU_IOAS_COPY', 'ENOENT');
    });

    it('a read-only mapping cannot be copied writeable: EPERM', () => {
      const iommufd = t.iommufd();
      const source = iommufd.ioasAlloc();
      const destination = iommufd.ioasAlloc();
      const memory = t.memory(64n * KIB);
      iommufd.ioasMap({ ioasId: source, memory, length: 64n * KIB, iova: MIB, writeable: false });
      expectKernelError(
        () => iommufd.ioasCopy({ dstIoasId: destination, srcIoasId: source, srcIova: MIB, length: 64n * KIB, dstIova: MIB }),
        'IOMMU_IOAS_COPY',
        'EPERM',
      );
      iommufd.ioasCopy({ dstIoasId: destination, srcIoasId: source, srcIova: MIB, length: 64n * KIB, dstIova: MIB, writeable: false });
    });
  });

  describe('IOVA ranges and allowed IOVAs', () => {
    const t = new ContractFixture(target);
    const simIt = simOnly(target);

    it('a fresh IOAS spans the whole 64-bit space with alignment 1', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      expect(iommufd.ioasIovaRanges(ioas)).toEqual({ ranges: [{ start: 0n, last: U64_MAX }], alignment: 1n });
    });

    it('the ranges narrow to an attached device\'s aperture and widen back when it leaves', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const mock = t.mock(iommufd, ioas);
      expect(iommufd.ioasIovaRanges(ioas)).toEqual({ ranges: [{ start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST }], alignment: 2n * KIB });
      mock.close();
      expect(iommufd.ioasIovaRanges(ioas)).toEqual({ ranges: [{ start: 0n, last: U64_MAX }], alignment: 1n });
    });

    it('a device\'s reserved regions (its MSI window) are cut out of the ranges while it is attached', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const device = t.device(t.env.plainDevice);
      device.bindIommufd(iommufd);
      device.attachPt(ioas);
      const { ranges } = iommufd.ioasIovaRanges(ioas);
      // Every IOMMU reserves an MSI window (virtio-iommu adds a software one if the device has none).
      expect(ranges.length).toBeGreaterThanOrEqual(2);
      expect(ranges[0]!.start).toBe(0n);
      for (let index = 1; index < ranges.length; index++) expect(ranges[index]!.start).toBeGreaterThan(ranges[index - 1]!.last + 1n);
      device.detachPt();
      expect(iommufd.ioasIovaRanges(ioas).ranges).toEqual([{ start: 0n, last: U64_MAX }]);
    });

    it('a short range array fails with EMSGSIZE; the default call grows its array and retries', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      const device = t.device(t.env.plainDevice);
      device.bindIommufd(iommufd);
      device.attachPt(ioas);
      // The device's reserved regions (an MSI window at least) split the aperture.
      const answer = iommufd.ioasIovaRanges(ioas);
      expect(answer.ranges.length).toBeGreaterThanOrEqual(2);
      expectKernelError(() => iommufd.ioasIovaRanges(ioas, answer.ranges.length - 1), 'IOMMU_IOAS_IOVA_RANGES', 'EMSGSIZE');
      expect(iommufd.ioasIovaRanges(ioas, answer.ranges.length)).toEqual(answer);
      device.detachPt();
    });

    it('IOMMU_IOAS_ALLOW_IOVAS: start >= last, or two ranges overlapping, fail with EINVAL', () => {
      const iommufd = t.iommufd({ validateArguments: false });
      const ioas = iommufd.ioasAlloc();
      expectKernelError(() => iommufd.ioasAllowIovas(ioas, [{ start: 2n * MIB, last: 2n * MIB }]), 'IOMMU_IOAS_ALLOW_IOVAS', 'EINVAL');
      expectKernelError(
        () => iommufd.ioasAllowIovas(ioas, [{ start: MIB, last: 3n * MIB }, { start: 2n * MIB, last: 4n * MIB }]),
        'IOMMU_IOAS_ALLOW_IOVAS',
        'EINVAL',
      );
      expectKernelError(() => iommufd.ioasAllowIovas(ioas + 1, [{ start: MIB, last: 2n * MIB }]), 'IOMMU_IOAS_ALLOW_IOVAS', 'ENOENT');
    });

    it('an allowed range over a reserved one fails with EADDRINUSE', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      t.mock(iommufd, ioas);
      expectKernelError(() => iommufd.ioasAllowIovas(ioas, [{ start: 0n, last: 0xfffn }]), 'IOMMU_IOAS_ALLOW_IOVAS', 'EADDRINUSE');
      iommufd.ioasAllowIovas(ioas, [{ start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST }]);
    });

    it('with allowed ranges the kernel picks its IOVA inside them; a fixed IOVA is not bound by them', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      t.mock(iommufd, ioas);
      iommufd.ioasAllowIovas(ioas, [{ start: 64n * MIB, last: 96n * MIB - 1n }]);
      const memory = t.memory(128n * KIB);
      expect(iommufd.ioasMap({ ioasId: ioas, memory, length: 64n * KIB })).toBe(64n * MIB);
      expect(iommufd.ioasMap({ ioasId: ioas, memory, memoryOffset: 64n * KIB, length: 64n * KIB, iova: MOCK_APERTURE_START })).toBe(MOCK_APERTURE_START);
    });

    it('a device whose aperture leaves out an allowed range cannot attach: EADDRINUSE', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      iommufd.ioasAllowIovas(ioas, [{ start: 0x1000n, last: 0x1fffn }]);
      expectKernelError(() => t.mock(iommufd, ioas), 'IOMMU_TEST_CMD', 'EADDRINUSE');
      iommufd.ioasAllowIovas(ioas, []);
      t.mock(iommufd, ioas);
    });
  });

  describe('IOMMU_OPTION', () => {
    const t = new ContractFixture(target);

    it('HUGE_PAGES is on by default; off raises the IOAS alignment to PAGE_SIZE', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      expect(iommufd.optionGet(IOMMU_OPTION_HUGE_PAGES, ioas)).toBe(1n);
      iommufd.optionSet(IOMMU_OPTION_HUGE_PAGES, ioas, 0n);
      expect(iommufd.optionGet(IOMMU_OPTION_HUGE_PAGES, ioas)).toBe(0n);
      expect(iommufd.ioasIovaRanges(ioas).alignment).toBe(4n * KIB);
      iommufd.optionSet(IOMMU_OPTION_HUGE_PAGES, ioas, 1n);
      expect(iommufd.ioasIovaRanges(ioas).alignment).toBe(1n);
    });

    it('HUGE_PAGES cannot be turned off once a domain has mappings (EINVAL); unknown IOAS is ENOENT', () => {
      const iommufd = t.iommufd();
      const ioas = iommufd.ioasAlloc();
      t.mock(iommufd, ioas);
      const memory = t.memory(4n * KIB);
      iommufd.ioasMap({ ioasId: ioas, memory, length: 4n * KIB, iova: MOCK_APERTURE_START });
      expectKernelError(() => iommufd.optionSet(IOMMU_OPTION_HUGE_PAGES, ioas, 0n), 'IOMMU_OPTION', 'EINVAL');
      expectKernelError(() => iommufd.optionGet(IOMMU_OPTION_HUGE_PAGES, ioas + 100), 'IOMMU_OPTION', 'ENOENT');
    });

    it('RLIMIT_MODE takes no object (EOPNOTSUPP) and changes only on an empty iommufd (EBUSY)', () => {
      const iommufd = t.iommufd();
      expect(iommufd.optionGet(IOMMU_OPTION_RLIMIT_MODE, 0)).toBe(0n);
      iommufd.optionSet(IOMMU_OPTION_RLIMIT_MODE, 0, 1n);
      expect(iommufd.optionGet(IOMMU_OPTION_RLIMIT_MODE, 0)).toBe(1n);
      const ioas = iommufd.ioasAlloc();
      expectKernelError(() => iommufd.optionGet(IOMMU_OPTION_RLIMIT_MODE, ioas), 'IOMMU_OPTION', 'EOPNOTSUPP');
      expectKernelError(() => iommufd.optionSet(IOMMU_OPTION_RLIMIT_MODE, 0, 0n), 'IOMMU_OPTION', 'EBUSY');
    });

    it('an unknown option fails with EOPNOTSUPP', () => {
      const iommufd = t.iommufd();
      expectKernelError(() => iommufd.optionGet(42, 0), 'IOMMU_OPTION', 'EOPNOTSUPP');
    });
  });
}
