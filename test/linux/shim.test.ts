import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fc, test as propertyTest } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, KernelError } from '../../src/kernel/errors.js';
import { libcSyscalls } from '../../src/kernel/linux/libc.js';
import {
  LinuxIommufd, LinuxLegacyContainer, LinuxDevice, MmapMemory, linuxKernel, locateDevice, parseType1Info,
} from '../../src/kernel/linux/index.js';
import * as uapi from '../../src/uapi/index.js';
import { RecordingSyscalls } from './recording-syscalls.js';

const ENOTTY = 25;
const EMSGSIZE = 90;

describe('errno mapping on a real file descriptor', () => {
  it('an iommufd ioctl on /dev/null fails with ENOTTY as a typed KernelError', () => {
    const iommufd = new LinuxIommufd(libcSyscalls(), {}, '/dev/null');
    try {
      let caught: unknown;
      try {
        iommufd.ioasAlloc();
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(KernelError);
      const error = caught as KernelError;
      expect(error.ioctl).toBe('IOMMU_IOAS_ALLOC');
      expect(error.errno).toBe(ENOTTY);
      expect(error.code).toBe('ENOTTY');
      expect(error.message).toBe('IOMMU_IOAS_ALLOC() failed: Inappropriate ioctl for device');
      expect(() => iommufd.destroy(7)).toThrow(expect.objectContaining({ ioctl: 'IOMMU_DESTROY', code: 'ENOTTY', objects: { id: 7 } }));
    } finally {
      iommufd.close();
    }
  });

  it('names the object IDs in QEMU form', () => {
    const error = new KernelError('IOMMU_HWPT_ALLOC', 95, { dev_id: 2, pt_id: 1 });
    expect(error.message).toBe('IOMMU_HWPT_ALLOC(dev_id 2, pt_id 1) failed: Operation not supported');
    expect(error.code).toBe('EOPNOTSUPP');
  });

  it('opening a path that does not exist fails with ENOENT', () => {
    expect(() => new LinuxIommufd(libcSyscalls(), {}, '/nonexistent/iommu')).toThrow(expect.objectContaining({ ioctl: 'open', code: 'ENOENT' }));
  });

  it('a legacy container ioctl on /dev/null is ENOTTY too', () => {
    // LinuxLegacyContainer opens its path; /dev/null answers every VFIO ioctl with ENOTTY.
    const container = new LinuxLegacyContainer(libcSyscalls(), {}, '/dev/null');
    expect(() => container.getApiVersion()).toThrow(expect.objectContaining({ ioctl: 'VFIO_GET_API_VERSION', code: 'ENOTTY' }));
    container.close();
  });
});

function recordingIommufd(options = {}) {
  const sys = new RecordingSyscalls();
  return { sys, iommufd: new LinuxIommufd(sys, options) };
}

describe('argument validation happens before any ioctl', () => {
  const bitmap = new Uint8Array(8);
  const cases: [string, (i: LinuxIommufd) => unknown, RegExp][] = [
    ['misaligned iova', (i) => i.hwptGetDirtyBitmap({ hwptId: 1, iova: 0x1001n, length: 0x4000n, pageSize: 0x1000n, bitmap }), /not aligned to 0x1000/],
    ['misaligned length', (i) => i.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length: 0x1800n, pageSize: 0x1000n, bitmap }), /not aligned/],
    ['page size not a power of two', (i) => i.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length: 0x3000n, pageSize: 0x3000n, bitmap }), /power of two/],
    ['page size zero', (i) => i.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length: 0x3000n, pageSize: 0n, bitmap }), /power of two/],
    // The kernel's rule: DIV_ROUND_UP(pages, 64) u64 words. 65 pages need 16 bytes, 33 need 8.
    ['bitmap too small', (i) => i.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length: 65n * 0x1000n, pageSize: 0x1000n, bitmap }), /65 pages need 16/],
    ['bitmap of whole bytes ending mid-u64', (i) => i.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length: 33n * 0x1000n, pageSize: 0x1000n, bitmap: bitmap.subarray(0, 5) }), /33 pages need 8/],
    ['bitmap off a u64 word', (i) => i.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length: 33n * 0x1000n, pageSize: 0x1000n, bitmap: new Uint8Array(new ArrayBuffer(16), 4, 8) }), /not on a u64 word/],
    ['range overflowing 2^64', (i) => i.ioasUnmap(1, (1n << 64n) - 0x1000n, 0x2000n), /overflows past 2\^64/],
    ['zero length', (i) => i.ioasUnmap(1, 0n, 0n), /must not be zero/],
    ['negative iova', (i) => i.ioasUnmap(1, -1n, 0x1000n), /from 0 to 2\^64-1/],
    ['iova as a number', (i) => i.ioasUnmap(1, 4096 as unknown as bigint, 0x1000n), /must be a bigint/],
    ['non-integer ID', (i) => i.destroy(1.5), /integer from 0 to 4294967295/],
    ['negative ID', (i) => i.destroy(-1), /integer from 0 to 4294967295/],
    ['allow-iovas with last below start', (i) => i.ioasAllowIovas(1, [{ start: 0x2000n, last: 0x1000n }]), /last must be above start/],
  ];
  for (const [what, call, message] of cases) {
    it(`rejects ${what}`, () => {
      const { sys, iommufd } = recordingIommufd();
      expect(() => call(iommufd)).toThrow(InvalidArgumentError);
      expect(() => call(iommufd)).toThrow(message);
      expect(sys.ioctls).toHaveLength(0);
    });
  }

  it('passes the same request through when validation is off, so the kernel answers', () => {
    const { sys, iommufd } = recordingIommufd({ validateArguments: false });
    expect(() => iommufd.ioasUnmap(1, (1n << 64n) - 0x1000n, 0x2000n)).toThrow(KernelError);
    expect(sys.ioctls).toHaveLength(1);
  });

  it('with validation off, a bitmap the kernel would write past never reaches it; what the kernel refuses first does', () => {
    const sys = new RecordingSyscalls();
    const off = { validateArguments: false };
    const iommufd = new LinuxIommufd(sys, off);
    const device = new LinuxDevice(sys, 'dev0', 'cdev', 7, off);
    const container = new LinuxLegacyContainer(sys, off);
    // 65 pages are DIV_ROUND_UP(65, 64) = 2 u64 words: 16 bytes (iova_bitmap's and type1's count).
    const short = new Uint8Array(9);
    const unaligned = new Uint8Array(new ArrayBuffer(32), 4, 16);
    const length = 65n * 0x1000n;
    for (const bitmap of [short, unaligned]) {
      expect(() => iommufd.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length, pageSize: 0x1000n, bitmap })).toThrow(InvalidArgumentError);
      expect(() => device.dmaLoggingReport({ iova: 0n, length, pageSize: 0x1000n, bitmap })).toThrow(InvalidArgumentError);
      expect(() => container.dirtyPagesGetBitmap({ iova: 0n, length, pageSize: 0x1000n, bitmap })).toThrow(InvalidArgumentError);
      expect(() => container.unmapDma(0n, length, { pageSize: 0x1000n, bitmap })).toThrow(InvalidArgumentError);
    }
    // A page size not a power of two counts a bit per 1 << __ffs(page_size) bytes: at 0x3000, 65
    // pages are 195 bits of 4 KiB, 4 u64 words, though 65 bits would fit in 16 bytes.
    expect(() => iommufd.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length: 65n * 0x3000n, pageSize: 0x3000n, bitmap: new Uint8Array(24) })).toThrow(/kernel writes 32/);
    // iova_bitmap over a zero length spans all of IOVA, and the VFIO core's REPORT does not refuse it.
    expect(() => device.dmaLoggingReport({ iova: 0n, length: 0n, pageSize: 0x1000n, bitmap: new Uint8Array(8) })).toThrow(InvalidArgumentError);
    expect(sys.ioctls).toHaveLength(0);
    // iommufd_check_iova_range refuses a zero length or page size before the bitmap; type1 is told a
    // zero bitmap size, which verify_bitmap_size refuses.
    expect(() => iommufd.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length: 0n, pageSize: 0x1000n, bitmap: short })).toThrow(KernelError);
    expect(() => iommufd.hwptGetDirtyBitmap({ hwptId: 1, iova: 0n, length, pageSize: 0n, bitmap: short })).toThrow(KernelError);
    expect(() => container.dirtyPagesGetBitmap({ iova: 0n, length, pageSize: 0n, bitmap: short })).toThrow(KernelError);
    const told = sys.ioctls[sys.ioctls.length - 1]!.sent as Uint8Array;
    expect(uapi.vfio_iommu_type1_dirty_bitmap_get.readBigint(told, 'bitmap.size', uapi.vfio_iommu_type1_dirty_bitmap.size)).toBe(0n);
    expect(sys.ioctls).toHaveLength(3);
    // A good request tells type1 the kernel's DIRTY_BITMAP_BYTES(65) = 16.
    expect(() => container.dirtyPagesGetBitmap({ iova: 0n, length, pageSize: 0x1000n, bitmap: new Uint8Array(16) })).toThrow(KernelError);
    const good = sys.ioctls[sys.ioctls.length - 1]!.sent as Uint8Array;
    expect(uapi.vfio_iommu_type1_dirty_bitmap_get.readBigint(good, 'bitmap.size', uapi.vfio_iommu_type1_dirty_bitmap.size)).toBe(16n);
  });

  it('rejects mapping memory beyond its length, or released memory', () => {
    const { sys, iommufd } = recordingIommufd();
    const memory = new MmapMemory(sys, 0x4000n);
    expect(() => iommufd.ioasMap({ ioasId: 1, memory, memoryOffset: 0x2000n, length: 0x4000n })).toThrow(/does not fit/);
    memory.release();
    expect(() => iommufd.ioasMap({ ioasId: 1, memory, length: 0x1000n })).toThrow(/released/);
    expect(sys.ioctls).toHaveLength(0);
  });
});

describe('struct encoding', () => {
  propertyTest.prop([fc.constantFrom(...uapi.ALL_STRUCTS), fc.array(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), { minLength: 32, maxLength: 32 })])(
    'every scalar field round-trips through encode and decode at its own offset',
    (layout, randoms) => {
      const values: Record<string, number | bigint> = {};
      let index = 0;
      for (const [name, field] of layout.fields) {
        if (field.type === 'bytes' || name.includes('.')) continue; // union members overlap: top-level only
        const random = randoms[index++ % randoms.length]!;
        values[name] = field.type === 'u64' ? random : field.type === 's32' ? Number(BigInt.asIntN(32, random)) : Number(random & ((1n << BigInt(field.size * 8)) - 1n));
      }
      const bytes = layout.encode(values);
      expect(bytes.byteLength).toBe(layout.size);
      for (const [name, value] of Object.entries(values)) expect(layout.read(bytes, name)).toBe(value);
    },
  );

  it('lays iommu_hwpt_get_dirty_bitmap out as the header says', () => {
    const bytes = uapi.iommu_hwpt_get_dirty_bitmap.encode({ size: 48, hwpt_id: 5, flags: 1, iova: 0x1000n, length: 0x8000n, page_size: 0x1000n, data: 0xdead0000n });
    const view = new DataView(bytes.buffer);
    expect([view.getUint32(0, true), view.getUint32(4, true), view.getUint32(8, true)]).toEqual([48, 5, 1]);
    expect([view.getBigUint64(16, true), view.getBigUint64(24, true), view.getBigUint64(32, true), view.getBigUint64(40, true)]).toEqual([0x1000n, 0x8000n, 0x1000n, 0xdead0000n]);
  });
});

describe('IOMMU_IOAS_IOVA_RANGES grows its array on EMSGSIZE', () => {
  it('retries with the count the kernel wrote and decodes every range', () => {
    const { sys, iommufd } = recordingIommufd();
    const ranges = Array.from({ length: 6 }, (_, i) => ({ start: BigInt(i) * 0x10_0000n, last: BigInt(i) * 0x10_0000n + 0xfffffn - 0x1000n }));
    const layout = uapi.iommu_ioas_iova_ranges;
    sys.handlers.set(uapi.IOMMU_IOAS_IOVA_RANGES, (arg, call) => {
      const s = arg as Uint8Array;
      const capacity = layout.readNumber(s, 'num_iovas');
      layout.write(s, { num_iovas: ranges.length, out_iova_alignment: 0x1000n });
      if (capacity < ranges.length) return { errno: EMSGSIZE };
      const array = call.resolve(layout.readBigint(s, 'allowed_iovas'));
      ranges.forEach((r, i) => uapi.iommu_iova_range.write(array, { start: r.start, last: r.last }, i * 16));
      return 0;
    });
    const answer = iommufd.ioasIovaRanges(3);
    expect(answer).toEqual({ ranges, alignment: 0x1000n });
    expect(sys.ioctls).toHaveLength(2);
    expect(layout.readNumber(sys.ioctls[0]!.sent as Uint8Array, 'num_iovas')).toBe(4);
    expect(layout.readNumber(sys.ioctls[1]!.sent as Uint8Array, 'num_iovas')).toBe(6);
    expect(layout.readNumber(sys.ioctls[1]!.sent as Uint8Array, 'ioas_id')).toBe(3);
  });

  it('gives up with the EMSGSIZE error when the ranges keep growing', () => {
    const { sys, iommufd } = recordingIommufd();
    let count = 4;
    sys.handlers.set(uapi.IOMMU_IOAS_IOVA_RANGES, (arg) => {
      uapi.iommu_ioas_iova_ranges.write(arg as Uint8Array, { num_iovas: ++count * 2 });
      return { errno: EMSGSIZE };
    });
    expect(() => iommufd.ioasIovaRanges(1)).toThrow(expect.objectContaining({ ioctl: 'IOMMU_IOAS_IOVA_RANGES', code: 'EMSGSIZE' }));
    expect(sys.ioctls.length).toBe(9);
  });
});

/** A type1 info struct followed by a capability chain, as the kernel writes it. */
function type1InfoFixture(): Uint8Array {
  const info = uapi.vfio_iommu_type1_info;
  const iovaCap = uapi.vfio_iommu_type1_info_cap_iova_range;
  const migration = uapi.vfio_iommu_type1_info_cap_migration;
  const avail = uapi.vfio_iommu_type1_info_dma_avail;
  const first = info.size; // 24
  const ranges = 2;
  const second = first + iovaCap.size + ranges * uapi.vfio_iova_range.size; // 24 + 16 + 32
  const third = second + migration.size;
  const bytes = new Uint8Array(third + avail.size);
  info.write(bytes, { argsz: bytes.byteLength, flags: uapi.VFIO_IOMMU_INFO_PGSIZES | uapi.VFIO_IOMMU_INFO_CAPS, iova_pgsizes: 0x40201000n, cap_offset: first });
  iovaCap.write(bytes, { 'header.id': 1, 'header.version': 1, 'header.next': second, nr_iovas: ranges }, first);
  uapi.vfio_iova_range.write(bytes, { start: 0n, end: 0xfedfffffn }, first + iovaCap.size);
  uapi.vfio_iova_range.write(bytes, { start: 0xfef00000n, end: (1n << 48n) - 1n }, first + iovaCap.size + 16);
  migration.write(bytes, { 'header.id': 2, 'header.version': 1, 'header.next': third, flags: 0, pgsize_bitmap: 0x40201000n, max_dirty_bitmap_size: 1n << 28n }, second);
  avail.write(bytes, { 'header.id': 3, 'header.version': 1, 'header.next': 0, avail: 65535 }, third);
  return bytes;
}

describe('the type1 capability chain', () => {
  it('parses IOVA ranges, migration and DMA-available capabilities', () => {
    expect(parseType1Info(type1InfoFixture())).toEqual({
      flags: 3,
      iovaPageSizes: 0x40201000n,
      iovaRanges: [{ start: 0n, last: 0xfedfffffn }, { start: 0xfef00000n, last: (1n << 48n) - 1n }],
      migration: { flags: 0, pageSizeBitmap: 0x40201000n, maxDirtyBitmapSize: 1n << 28n },
      dmaAvailable: 65535,
    });
  });

  it('refuses a chain that loops or runs past the buffer', () => {
    const looping = type1InfoFixture();
    uapi.vfio_info_cap_header.write(looping, { next: 24 }, looping.byteLength - uapi.vfio_iommu_type1_info_dma_avail.size);
    expect(() => parseType1Info(looping)).toThrow(/capability chain is corrupt/);
    const truncated = type1InfoFixture().slice(0, 60);
    expect(() => parseType1Info(truncated)).toThrow(/past the end|corrupt/);
  });

  it('VFIO_IOMMU_GET_INFO asks again with the size the kernel needs', () => {
    const sys = new RecordingSyscalls();
    const fixture = type1InfoFixture();
    sys.handlers.set(uapi.VFIO_IOMMU_GET_INFO, (arg) => {
      const s = arg as Uint8Array;
      const argsz = uapi.vfio_iommu_type1_info.readNumber(s, 'argsz');
      if (argsz < fixture.byteLength) {
        s.set(fixture.subarray(0, s.byteLength));
        uapi.vfio_iommu_type1_info.write(s, { argsz: fixture.byteLength, flags: 1, cap_offset: 0 });
        return 0;
      }
      s.set(fixture);
      return 0;
    });
    const container = new LinuxLegacyContainer(sys);
    expect(container.getIommuInfo().migration?.maxDirtyBitmapSize).toBe(1n << 28n);
    expect(sys.ioctls.map((c) => uapi.vfio_iommu_type1_info.readNumber(c.sent as Uint8Array, 'argsz'))).toEqual([24, fixture.byteLength]);
  });
});

describe('pointer safety', () => {
  it('every address written into a struct belongs to a buffer held by that very call', () => {
    const sys = new RecordingSyscalls();
    const iommufd = new LinuxIommufd(sys);
    const seen: string[] = [];
    const holds = (field: string, layout: uapi.StructLayout, base = 0) => (arg: unknown, call: { resolve: (a: bigint) => Uint8Array }) => {
      const address = layout.readBigint(arg as Uint8Array, field, base);
      if (address !== 0n) call.resolve(address); // throws unless held by the call
      seen.push(field);
      return 0;
    };
    sys.handlers.set(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, holds('data', uapi.iommu_hwpt_get_dirty_bitmap));
    sys.handlers.set(uapi.IOMMU_GET_HW_INFO, holds('data_uptr', uapi.iommu_hw_info));
    sys.handlers.set(uapi.IOMMU_HWPT_ALLOC, holds('data_uptr', uapi.iommu_hwpt_alloc));
    sys.handlers.set(uapi.IOMMU_IOAS_ALLOW_IOVAS, holds('allowed_iovas', uapi.iommu_ioas_allow_iovas));
    const bitmap = new Uint8Array(new ArrayBuffer(64), 8, 8); // off the buffer's start, on a u64 word
    iommufd.hwptGetDirtyBitmap({ hwptId: 2, iova: 0n, length: 64n * 4096n, pageSize: 4096n, bitmap });
    iommufd.getHwInfo(1);
    iommufd.hwptAlloc({ devId: 1, ptId: 2, data: new Uint8Array([1, 2, 3, 4]) });
    iommufd.ioasAllowIovas(2, [{ start: 0n, last: 0xfffffn }]);
    expect(seen).toEqual(['data', 'data_uptr', 'data_uptr', 'allowed_iovas']);
    expect(sys.ioctls[0]!.held).toContain(bitmap);

    const device = new LinuxDevice(sys, 'dev0', 'cdev', 7);
    sys.handlers.set(uapi.VFIO_DEVICE_FEATURE, (arg, call) => {
      const s = arg as Uint8Array;
      const feature = uapi.vfio_device_feature.readNumber(s, 'flags') & uapi.VFIO_DEVICE_FEATURE_MASK;
      if (feature === uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START) {
        const ranges = call.resolve(uapi.vfio_device_feature_dma_logging_control.readBigint(s, 'ranges', 8));
        expect(uapi.vfio_device_feature_dma_logging_range.readBigint(ranges, 'length', 16)).toBe(0x2000n);
        uapi.vfio_device_feature_dma_logging_control.write(s, { page_size: 0x10000n }, 8);
      } else if (feature === uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT) {
        call.resolve(uapi.vfio_device_feature_dma_logging_report.readBigint(s, 'bitmap', 8))[0] = 0x81;
      }
      return 0;
    });
    expect(device.dmaLoggingStart(0x1000n, [{ iova: 0n, length: 0x1000n }, { iova: 0x10000n, length: 0x2000n }])).toBe(0x10000n);
    const report = new Uint8Array(8); // 8 pages: one u64 word
    device.dmaLoggingReport({ iova: 0n, length: 0x8000n, pageSize: 0x1000n, bitmap: report });
    expect(report[0]).toBe(0x81);
  });

  it('mapped memory cannot be released until it is unmapped', () => {
    const sys = new RecordingSyscalls();
    sys.handlers.set(uapi.IOMMU_IOAS_MAP, () => 0);
    sys.handlers.set(uapi.IOMMU_IOAS_UNMAP, () => 0);
    const iommufd = new LinuxIommufd(sys);
    const memory = new MmapMemory(sys, 0x10000n);
    iommufd.ioasMap({ ioasId: 1, memory, length: 0x10000n, iova: 0x100000n });
    expect(memory.mappingCount).toBe(1);
    expect(() => memory.release()).toThrow(/still mapped by 1 mapping/);
    iommufd.ioasUnmap(1, 0x100000n, 0x10000n);
    expect(memory.mappingCount).toBe(0);
    memory.release();
    expect(memory.released).toBe(true);
  });

  it('a failed map does not take a reference', () => {
    const sys = new RecordingSyscalls();
    sys.handlers.set(uapi.IOMMU_IOAS_MAP, () => ({ errno: 22 }));
    const iommufd = new LinuxIommufd(sys);
    const memory = new MmapMemory(sys, 0x1000n);
    expect(() => iommufd.ioasMap({ ioasId: 1, memory, length: 0x1000n, iova: 0x1000n })).toThrow(expect.objectContaining({ code: 'EINVAL', ioctl: 'IOMMU_IOAS_MAP' }));
    expect(memory.mappingCount).toBe(0);
  });

  it('real mmap memory is addressable and writable from JavaScript', () => {
    const kernel = linuxKernel();
    const memory = kernel.allocateHostMemory(0x2000n);
    const bytes = memory.bytes!;
    bytes[0x1fff] = 0xa5;
    expect(bytes[0x1fff]).toBe(0xa5);
    expect(memory.address % 4096n).toBe(0n);
    memory.release();
    expect(memory.bytes).toBeUndefined();
  });
});

describe('finding a device in sysfs', () => {
  function fixtureSysfs(): string {
    const sys = mkdtempSync(join(tmpdir(), 'sysfs-'));
    const device = join(sys, 'devices/pci0000:00/0000:00:03.0');
    mkdirSync(join(device, 'vfio-dev/vfio0'), { recursive: true });
    mkdirSync(join(sys, 'kernel/iommu_groups/5'), { recursive: true });
    mkdirSync(join(sys, 'bus/pci/drivers/vfio-pci'), { recursive: true });
    mkdirSync(join(sys, 'bus/pci/devices'), { recursive: true });
    mkdirSync(join(sys, 'class/vfio-dev/vfio0'), { recursive: true });
    symlinkSync(join(sys, 'kernel/iommu_groups/5'), join(device, 'iommu_group'));
    symlinkSync(join(sys, 'bus/pci/drivers/vfio-pci'), join(device, 'driver'));
    symlinkSync(device, join(sys, 'bus/pci/devices/0000:00:03.0'));
    symlinkSync(device, join(sys, 'class/vfio-dev/vfio0/device'));
    writeFileSync(join(device, 'vendor'), '0x1234\n');
    return sys;
  }

  it('finds the same device from its PCI address, short address, sysfs path and cdev', () => {
    const sys = fixtureSysfs();
    const expected = { name: '0000:00:03.0', pciAddress: '0000:00:03.0', cdevPath: '/dev/vfio/devices/vfio0', groupId: 5, mdev: false, driver: 'vfio-pci' };
    for (const location of ['0000:00:03.0', '00:03.0', join(sys, 'bus/pci/devices/0000:00:03.0'), '/dev/vfio/devices/vfio0']) {
      expect(locateDevice(location, { sys })).toMatchObject(expected);
    }
  });

  it('says what is allowed for an unknown device', () => {
    const sys = fixtureSysfs();
    expect(() => locateDevice('0000:00:04.0', { sys })).toThrow(InvalidArgumentError);
    expect(() => locateDevice('nic0', { sys })).toThrow(/give a PCI address \(0000:00:03.0\), a sysfs device path/);
    const kernel = linuxKernel({ sysfs: { sys }, syscalls: new RecordingSyscalls() });
    expect(() => kernel.openDevice('nope')).toThrow(InvalidArgumentError);
  });
});
