// PCI hot reset on the real kernel (both boots). QEMU's edu sits alone on the root bus of the
// guest's i440fx/q35 machine: no hotplug slot reset and no bridge for a secondary bus reset, so
// vfio_pci_ioctl_get_pci_hot_reset_info answers ENODEV and VFIO_DEVICE_PCI_HOT_RESET the same.
// What this boot cannot show (a reset that succeeds, affected-device lists) runs on the simulator.
import { afterAll, describe, expect, it } from 'vitest';
import { AddressSpace } from '../../src/vfio/address-space.js';
import { edu, inKernelGuest } from './harness/guest-env.js';
import { expectKernelError, flushCoverage, kernel } from './support/kernel.js';

afterAll(() => flushCoverage('hot-reset.test.ts'));

describe.runIf(inKernelGuest)('PCI hot reset of edu', () => {
  for (const backend of ['on', 'off'] as const) {
    it(`${backend === 'on' ? 'iommufd (cdev, dev IDs)' : 'legacy (group fds)'}: the kernel answers ENODEV for a device alone on the root bus`, async () => {
      const space = new AddressSpace(kernel());
      try {
        const device = await space.attach(edu.bdf, { iommufd: backend });
        expectKernelError(() => device.hotReset(), 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', 'ENODEV');
        expectKernelError(() => device.handle.pciHotReset!(backend === 'on' ? [] : [(space.containers[0] as unknown as { groups: Map<number, { fd: number }> }).groups.get(device.groupId!)!.fd]), 'VFIO_DEVICE_PCI_HOT_RESET', 'ENODEV');
        process.stderr.write(`hot reset (${backend === 'on' ? 'iommufd' : 'legacy'}): edu has no slot or bus reset (ENODEV); success and affected-device checks run on the simulator only\n`);
      } finally {
        await space.close();
      }
    });
  }
});
