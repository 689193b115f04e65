// The hw/vfio layer's hardening on the simulated kernel: container reuse moves on after any
// refused attach (QEMU's iommufd_cdev_attach tries the next container whatever the errno),
// the page size defaults to the host's, and mappings respect the IOAS's IOVA alignment.
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, KernelError } from '../../src/kernel/errors.js';
import { simulatedKernel } from '../../src/kernel/sim/index.js';
import type { Kernel } from '../../src/kernel/types.js';
import { AddressSpace } from '../../src/vfio/address-space.js';

const MiB = 1n << 20n;

describe('container reuse', () => {
  // EINVAL at a HWPT's attach is AutoDomains' business (an incompatible HWPT: it allocates another in
  // the same IOAS); any other refusal is the IOAS's, and the device moves on.
  for (const errno of ['EADDRINUSE', 'ENOSPC', 'EBUSY'] as const) {
    it(`an attach to the existing IOAS refused with ${errno} puts the device in a new container`, async () => {
      const kernel = simulatedKernel({ devices: [{ name: 'a', iommuDirtyTracking: true }, { name: 'b', iommuDirtyTracking: true }] });
      const space = new AddressSpace(kernel);
      await space.map({ iova: 0n, size: 2n * MiB });
      await space.attach('a');
      kernel.failNext('VFIO_DEVICE_ATTACH_IOMMUFD_PT', errno);
      await space.attach('b');
      const containers = space.topology().containers;
      expect(containers.map((c) => c.backend)).toEqual(['iommufd', 'iommufd']);
      expect(space.device('b').container).not.toBe(space.device('a').container);
      // The new container got the space's mapping too.
      expect(kernel.objects().iommufds[0]!.objects.filter((o) => o.type === 'ioas')).toHaveLength(2);
      await space.close();
      expect(kernel.objects().openFds).toBe(0);
    });
  }
});

describe('page size and IOVA alignment', () => {
  it('defaults to the kernel\'s system page size', () => {
    const kernel = simulatedKernel();
    expect(kernel.systemPageSize).toBe(4096n);
    expect(new AddressSpace(kernel).pageSize).toBe(4096n);
    const sixteenK = Object.create(kernel, { systemPageSize: { value: 16384n } }) as Kernel;
    expect(new AddressSpace(sixteenK).pageSize).toBe(16384n);
    expect(new AddressSpace(sixteenK, { pageSize: 65536n }).pageSize).toBe(65536n);
  });

  it('refuses, before any ioctl, a mapping the IOAS alignment does not allow', async () => {
    // A space with 1 KiB pages over an IOMMU with 4 KiB pages: attaching its domain raises
    // iopt->iova_alignment to 4 KiB (the domain's smallest page), which the space must follow.
    const kernel = simulatedKernel({ devices: [{ name: 'dev', pageSizes: [4096n, 2n * MiB] }] });
    const space = new AddressSpace(kernel, { pageSize: 1024n });
    await space.attach('dev');
    const container = space.containers[0]!;
    expect(container.alignment).toBe(4096n);
    const trace = kernel.startTrace();
    await expect(space.map({ iova: 1024n, size: 4096n })).rejects.toThrow(InvalidArgumentError);
    await expect(space.map({ iova: 0n, size: 3072n })).rejects.toThrow(/IOVA alignment 0x1000/);
    trace.stop();
    expect(trace.records).toEqual([]);
    await space.map({ iova: 4096n, size: 4096n });
    await space.close();
  });
});

describe('vIOMMU compatibility of an attached device', () => {
  it('combines the host MGAW and the container\'s IOVA ranges', async () => {
    // CAP_REG.MGAW (bits 21:16) = 47: a 48-bit VT-d; the simulated IOMMU translates 40 bits.
    const kernel = simulatedKernel({ devices: [{ name: 'nic', iommuType: 'intel-vtd', addressWidth: 40, vendorRegisters: { capReg: 47n << 16n, ecapReg: 0n } }] });
    const space = new AddressSpace(kernel);
    const device = await space.attach('nic');
    expect(device.hostIommu?.addressWidth).toBe(48);
    expect(device.viommuCompatibility({ addressWidth: 39 })).toEqual({ supported: true, reasons: [], hostAddressWidth: 40 });
    expect(device.viommuCompatibility({ addressWidth: 48 })).toEqual({ supported: false, reasons: ['aw-bits 48 > host aw-bits 40 (the usable IOVA ranges)'], hostAddressWidth: 40 });
    await space.close();
  });
});

describe('memory the space gives back', () => {
  it('an unmap done in the kernel stays done when munmap fails; close() gives the memory back', async () => {
    const kernel = simulatedKernel({ devices: [{ name: 'a' }] });
    let failures = 1;
    const failingOnce = Object.create(kernel, {
      allocateHostMemory: {
        value: (length: bigint) => {
          const memory = kernel.allocateHostMemory(length);
          const release = memory.release.bind(memory);
          return Object.assign(Object.create(Object.getPrototypeOf(memory)), memory, {
            release: () => {
              if (failures-- > 0) throw new KernelError('munmap', 12, {}); // ENOMEM
              release();
            },
          });
        },
      },
    }) as Kernel;
    const space = new AddressSpace(failingOnce);
    await space.attach('a');
    await space.map({ iova: 0n, size: 2n * MiB });
    const removed = await space.unmap({ iova: 0n, size: 2n * MiB });
    expect(removed).toHaveLength(1);
    expect(space.mappings).toEqual([]);
    expect(kernel.dmaWrite('a', 0x1000n, 0x1000n).faulted).toBe(0x1000n); // unmapped in the kernel
    await space.close();
    kernel.assertClean();
  });
});
