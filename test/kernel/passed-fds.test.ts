// Passed-in fds and IOAS_COPY on the real kernel (both boots): an iommufd opened by someone else
// and adopted by its fd, shared by two address spaces and closed by its owner; edu's cdev passed
// by fd, bound, attached, mapped and closed by detach; a wrong fd refused by its device number
// (fstat against sysfs and /dev/iommu); a second IOAS filled with IOMMU_IOAS_COPY.
import { afterAll, describe, expect, it } from 'vitest';
import { KernelAnswerError } from '../../src/kernel/linux/index.js';
import * as uapi from '../../src/uapi/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';
import { IommufdContainer } from '../../src/vfio/iommufd-container.js';
import type { Mapping } from '../../src/vfio/container.js';
import { edu, inKernelGuest, onVirtioIommu } from './harness/guest-env.js';
import { expectKernelError, flushCoverage, kernel, MiB, perTestCleanup, syscalls } from './support/kernel.js';

const START = uapi.MOCK_APERTURE_START;
const { track, memory } = perTestCleanup();
afterAll(() => flushCoverage('passed-fds.test.ts'));

describe.runIf(inKernelGuest)('passed-in fds on the real kernel', () => {
  // The mocks bind only in the virtio boot (MOCK_DOMAIN is EINVAL under intel_iommu=on).
  it.runIf(onVirtioIommu)('an iommufd adopted by fd is shared by two address spaces and closed only by its owner', async () => {
    const fdsBefore = syscalls().openFds().length;
    const k = kernel();
    const opened = k.openIommufd();
    const iommufd = k.adoptIommufd(opened.fd);
    expect(iommufd.fd).toBe(opened.fd);
    const first = new AddressSpace(k, { iommufdHandle: iommufd });
    const second = new AddressSpace(k, { iommufdHandle: iommufd });
    await first.attach('mock');
    await second.attach('mock');
    await first.map({ iova: START, size: 2n * MiB });
    await second.map({ iova: START, size: 2n * MiB });
    const ioasIds = [first, second].map((space) => (space.containers[0] as IommufdContainer).ioasId);
    expect(ioasIds[0]).not.toBe(ioasIds[1]);
    await first.close();
    await second.close();
    expect(iommufd.closed).toBe(false);
    // Both spaces destroyed their IOASes in the shared iommufd.
    for (const id of ioasIds) expectKernelError(() => iommufd.destroy(id), 'IOMMU_DESTROY', 'ENOENT');
    iommufd.close();
    expect(syscalls().openFds().length).toBe(fdsBefore);
  });

  it('edu\'s cdev passed by fd is bound and attached on that fd, and closed by detach', async () => {
    const fdsBefore = syscalls().openFds().length;
    const k = kernel();
    const cdev = k.openDevice(edu.cdev) as unknown as { fd: number };
    const space = new AddressSpace(k);
    await space.map({ iova: 0x10_0000n, size: 2n * MiB });
    const device = await space.attach(edu.bdf, { fd: cdev.fd });
    expect((device.handle as unknown as { fd: number }).fd).toBe(cdev.fd);
    expect(device.devId).toBeGreaterThan(0);
    expect(device.backend).toBe('iommufd');
    await space.detach(device);
    expect(syscalls().openFds().length).toBe(fdsBefore + 1); // the space's iommufd
    await space.close();
    expect(syscalls().openFds().length).toBe(fdsBefore);
  });

  it('refuses an fd that is not the device\'s cdev, or not an iommufd, by its device number', () => {
    const k = kernel();
    const iommufd = track(k.openIommufd());
    const cdev = track(k.openDevice(edu.cdev)) as unknown as { fd: number };
    expect(() => k.adoptDeviceFd(edu.bdf, iommufd.fd)).toThrow(KernelAnswerError);
    expect(() => k.adoptDeviceFd(edu.bdf, iommufd.fd)).toThrow(/VFIO cdev is \d+:\d+/);
    expect(() => k.adoptIommufd(cdev.fd)).toThrow(/not \/dev\/iommu/);
  });

  it('a second IOAS is filled with IOMMU_IOAS_COPY from the first', () => {
    const k = kernel();
    const iommufd = track(k.openIommufd());
    const first = new IommufdContainer(iommufd, iommufd.ioasAlloc());
    const second = new IommufdContainer(iommufd, iommufd.ioasAlloc(), () => first);
    const mapping: Mapping = { iova: START, size: 2n * MiB, memory: memory(2n * MiB), memoryOffset: 0n, readonly: false, ownsMemory: false };
    const from = syscalls().records.length;
    first.map(mapping);
    second.map(mapping);
    expect(syscalls().records.slice(from).map((r) => `${r.name} ${r.result}`)).toEqual(['IOMMU_IOAS_MAP ok', 'IOMMU_IOAS_COPY ok']);
    // Both IOASes hold the whole range: each unmap removes 2 MiB.
    expect(iommufd.ioasUnmap(second.ioasId, START, 2n * MiB)).toBe(2n * MiB);
    expect(iommufd.ioasUnmap(first.ioasId, START, 2n * MiB)).toBe(2n * MiB);
    iommufd.destroy(second.ioasId);
    iommufd.destroy(first.ioasId);
  });
});
