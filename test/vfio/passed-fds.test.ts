// Passed-in fds and IOAS_COPY on the simulated kernel: an iommufd opened by the caller and shared
// by several address spaces (closed by the caller, never by a space), a device cdev passed by fd
// (owned by the space from attach on, as QEMU owns `vfio-pci,fd=`), and a second IOAS of one
// iommufd filled with IOMMU_IOAS_COPY instead of a second IOMMU_IOAS_MAP of the same pages.
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/kernel/errors.js';
import { simulatedKernel } from '../../src/kernel/sim/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';

const MiB = 1n << 20n;
const devices = () => [{ name: 'a', iommuDirtyTracking: true }, { name: 'b', iommuDirtyTracking: true }];

describe('a second IOAS in the same iommufd', () => {
  it('is filled with IOMMU_IOAS_COPY, and later maps copy into it', async () => {
    const kernel = simulatedKernel({ devices: devices() });
    const space = new AddressSpace(kernel);
    await space.map({ iova: 0n, size: 2n * MiB });
    await space.attach('a');
    kernel.failNext('VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'EADDRINUSE'); // b cannot share a's IOAS
    const trace = kernel.startTrace();
    await space.attach('b');
    await space.map({ iova: 16n * MiB, size: MiB });
    trace.stop();
    expect(space.containers).toHaveLength(2);
    const maps = trace.records.filter((r) => r.ioctl === 'IOMMU_IOAS_MAP' || r.ioctl === 'IOMMU_IOAS_COPY').map((r) => r.ioctl);
    // The replay of the first mapping, then the new mapping: mapped into a's IOAS, copied into b's.
    expect(maps).toEqual(['IOMMU_IOAS_COPY', 'IOMMU_IOAS_MAP', 'IOMMU_IOAS_COPY']);
    const copy = trace.records.filter((r) => r.ioctl === 'IOMMU_IOAS_COPY')[0]!;
    const [aIoas, bIoas] = space.containers.map((c) => (c.describe() as { ioasId: number }).ioasId);
    expect(copy.objects).toMatchObject({ dst_ioas_id: bIoas, src_ioas_id: aIoas, src_iova: 0n, length: 2n * MiB });
    // The copies translate: b's DMA reaches memory through both.
    expect(kernel.dmaWrite('b', 0x1000n, 0x1000n)).toEqual({ written: 0x1000n, faulted: 0n });
    expect(kernel.dmaWrite('b', 16n * MiB, 0x1000n)).toEqual({ written: 0x1000n, faulted: 0n });
    // Unmapping removes both; detaching a leaves b's copy working.
    await space.unmap({ iova: 16n * MiB, size: MiB });
    expect(kernel.dmaWrite('b', 16n * MiB, 0x1000n).faulted).toBe(0x1000n);
    await space.detach('a');
    expect(kernel.dmaWrite('b', 0x1000n, 0x1000n).written).toBe(0x1000n);
    await space.map({ iova: 32n * MiB, size: MiB }); // no source left: mapped
    expect(kernel.dmaWrite('b', 32n * MiB, 0x1000n).written).toBe(0x1000n);
    await space.close();
    kernel.assertClean();
  });
});

describe('an iommufd passed in', () => {
  it('is shared by two address spaces, each with its own IOAS, and closed only by its owner', async () => {
    const kernel = simulatedKernel({ devices: devices() });
    const iommufd = kernel.adoptIommufd(kernel.openIommufd().fd);
    const first = new AddressSpace(kernel, { iommufdHandle: iommufd });
    const second = new AddressSpace(kernel, { iommufdHandle: iommufd });
    await first.map({ iova: 0n, size: MiB });
    await second.map({ iova: 0n, size: MiB });
    await first.attach('a');
    await second.attach('b');
    expect(first.iommufdHandle).toBe(iommufd);
    expect(second.iommufdHandle).toBe(iommufd);
    const table = kernel.objects();
    expect(table.iommufds).toHaveLength(1);
    expect(table.iommufds[0]!.objects.filter((o) => o.type === 'ioas')).toHaveLength(2);
    await first.close();
    await second.close();
    expect(iommufd.closed).toBe(false);
    expect(kernel.objects().iommufds[0]!.objects).toEqual([]);
    iommufd.close();
    kernel.assertClean();
  });

  it('a closed one is refused before any ioctl', () => {
    const kernel = simulatedKernel({ devices: devices() });
    const iommufd = kernel.openIommufd();
    iommufd.close();
    expect(() => new AddressSpace(kernel, { iommufdHandle: iommufd })).toThrow(InvalidArgumentError);
    expect(() => kernel.adoptIommufd(iommufd.fd)).toThrow(/EBADF|Bad file descriptor/);
  });
});

describe('a device passed by fd', () => {
  it('is bound and attached on that fd, and closed by detach', async () => {
    const kernel = simulatedKernel({ devices: devices() });
    const opened = kernel.openDevice('a') as ReturnType<typeof kernel.openDevice> & { fd: number };
    const space = new AddressSpace(kernel);
    await space.map({ iova: 0n, size: MiB });
    const device = await space.attach('a', { fd: opened.fd });
    expect(device.handle).toBe(opened);
    expect(opened.devId).toBeGreaterThan(0);
    expect(kernel.dmaWrite(device.handle, 0x1000n, 0x1000n).written).toBe(0x1000n);
    await space.detach(device);
    expect(opened.closed).toBe(true);
    await space.close();
    kernel.assertClean();
  });

  it('the fd of another device, or one not open, is refused; a failed attach closes the fd', async () => {
    const kernel = simulatedKernel({ devices: devices() });
    const opened = kernel.openDevice('b') as ReturnType<typeof kernel.openDevice> & { fd: number };
    const space = new AddressSpace(kernel);
    await expect(space.attach('a', { fd: opened.fd })).rejects.toThrow(/is b's cdev, not a's cdev/);
    await expect(space.attach('a', { fd: 999 })).rejects.toThrow(/Bad file descriptor/);
    await expect(space.attach('a', { fd: -1 })).rejects.toThrow(InvalidArgumentError);
    await expect(space.attach('a', { fd: opened.fd, iommufd: 'off' })).rejects.toThrow(/needs iommufd on/);
    kernel.failNext('VFIO_DEVICE_BIND_IOMMUFD', 'EIO');
    await expect(space.attach('b', { fd: opened.fd })).rejects.toMatchObject({ ioctl: 'VFIO_DEVICE_BIND_IOMMUFD' });
    expect(opened.closed).toBe(true);
    await space.close();
    kernel.assertClean();
  });
});
