// The linux shim's hardening, on recorded syscalls: the cdev's major:minor is checked against
// sysfs (QEMU's open_cdev), DMA memory gets MADV_DONTFORK (10 in asm-generic/mman-common.h),
// DMA_LOGGING_START's range limit is PAGE_SIZE / sizeof(struct vfio_device_feature_dma_logging_range)
// (16 bytes: two __aligned_u64), and a short region read is the kernel's answer, not a bad argument.
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, KernelError } from '../../src/kernel/errors.js';
import { KernelAnswerError, LinuxDevice, MmapMemory, linuxKernel } from '../../src/kernel/linux/index.js';
import * as uapi from '../../src/uapi/index.js';
import { RecordingSyscalls } from './recording-syscalls.js';

const MADV_DONTFORK = 10;
const ENOMEM = 12;
const SIZEOF_DMA_LOGGING_RANGE = 16;

function sysfsWithCdev(devNumber: string): string {
  const sys = mkdtempSync(join(tmpdir(), 'sysfs-'));
  const device = join(sys, 'devices/pci0000:00/0000:00:03.0');
  mkdirSync(join(device, 'vfio-dev/vfio0'), { recursive: true });
  writeFileSync(join(device, 'vfio-dev/vfio0/dev'), `${devNumber}\n`);
  mkdirSync(join(sys, 'bus/pci/devices'), { recursive: true });
  mkdirSync(join(sys, 'bus/pci/drivers/vfio-pci'), { recursive: true });
  symlinkSync(join(sys, 'bus/pci/drivers/vfio-pci'), join(device, 'driver'));
  symlinkSync(device, join(sys, 'bus/pci/devices/0000:00:03.0'));
  return sys;
}

describe('opening a VFIO cdev', () => {
  it('opens the node whose major:minor is the one sysfs names', () => {
    const sys = new RecordingSyscalls();
    sys.deviceNumbers.set(100, '511:0');
    const device = linuxKernel({ syscalls: sys, sysfs: { sys: sysfsWithCdev('511:0') } }).openDevice('0000:00:03.0');
    expect(device.kind).toBe('cdev');
    expect(sys.opened).toEqual(['/dev/vfio/devices/vfio0']);
    expect(sys.closed).toEqual([]);
  });

  it('refuses and closes a node that is another character device', () => {
    const sys = new RecordingSyscalls();
    sys.deviceNumbers.set(100, '511:3');
    sys.deviceNumbers.set(101, '511:3');
    const kernel = linuxKernel({ syscalls: sys, sysfs: { sys: sysfsWithCdev('511:0') } });
    expect(() => kernel.openDevice('0000:00:03.0')).toThrow(KernelAnswerError);
    expect(() => kernel.openDevice('0000:00:03.0')).toThrow(/is character device 511:3, but 0000:00:03.0's VFIO cdev is 511:0/);
    expect(sys.closed).toEqual([100, 101]);
  });
});

describe('DMA memory', () => {
  it('is marked MADV_DONTFORK over its whole length', () => {
    const sys = new RecordingSyscalls();
    const memory = new MmapMemory(sys, 1n << 21n);
    expect(sys.madvised).toEqual([{ address: memory.address, length: 1n << 21n, advice: MADV_DONTFORK }]);
  });

  it('is unmapped again when madvise fails, with a KernelError naming madvise', () => {
    const sys = new RecordingSyscalls();
    sys.madviseErrno = ENOMEM;
    let caught: unknown;
    try {
      new MmapMemory(sys, 4096n);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(KernelError);
    expect(caught).toMatchObject({ ioctl: 'madvise', code: 'ENOMEM' });
    expect(sys.unmapped).toHaveLength(1);
  });
});

describe('DMA_LOGGING_START range limit', () => {
  for (const pageSize of [4096, 16384, 65536]) {
    it(`is PAGE_SIZE / 16 = ${pageSize / SIZEOF_DMA_LOGGING_RANGE} ranges with ${pageSize / 1024} KiB pages`, () => {
      const sys = new RecordingSyscalls();
      sys.hostPageSize = pageSize;
      sys.handlers.set(uapi.VFIO_DEVICE_FEATURE, () => 0);
      const device = new LinuxDevice(sys, 'dev0', 'cdev', 7);
      const limit = pageSize / SIZEOF_DMA_LOGGING_RANGE;
      const ranges = (n: number) => Array.from({ length: n }, (_, i) => ({ iova: BigInt(i) << 24n, length: 4096n }));
      expect(() => device.dmaLoggingStart(4096n, ranges(limit + 1))).toThrow(InvalidArgumentError);
      expect(sys.ioctls).toHaveLength(0);
      device.dmaLoggingStart(4096n, ranges(limit));
      expect(sys.ioctls).toHaveLength(1);
    });
  }
});

describe('region access', () => {
  it('a short read is a KernelAnswerError naming pread', () => {
    const sys = new (class extends RecordingSyscalls {
      override pread(): number {
        return 2;
      }
    })();
    sys.handlers.set(uapi.VFIO_DEVICE_GET_REGION_INFO, (arg) => {
      uapi.vfio_region_info.write(arg as Uint8Array, { argsz: uapi.vfio_region_info.size, index: 0, size: 4096n, offset: 0n });
      return 0;
    });
    const device = new LinuxDevice(sys, 'dev0', 'cdev', 7);
    expect(() => device.regionRead(0, 0n, 4)).toThrow(KernelAnswerError);
    expect(() => device.regionRead(0, 0n, 4)).toThrow(/pread: region 0 gave 2 of 4 bytes/);
  });
});
