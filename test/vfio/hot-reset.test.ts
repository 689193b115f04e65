// PCI hot reset on the simulated kernel and the shim's encoding on recorded syscalls. The
// kernel's rules (drivers/vfio/pci/vfio_pci_core.c, 6.12): INFO lists every device the reset
// reaches; through a cdev their dev IDs (VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0, _DEV_ID_OWNED =
// 1 << 1, VFIO_PCI_DEVID_OWNED 0, VFIO_PCI_DEVID_NOT_OWNED -1); HOT_RESET from a cdev takes no
// group fds and refuses (EPERM) when an affected device is not owned by its iommufd.
import { describe, expect, it } from 'vitest';
import { KernelError } from '../../src/kernel/errors.js';
import { LinuxDevice } from '../../src/kernel/linux/index.js';
import { simulatedKernel } from '../../src/kernel/sim/index.js';
import * as uapi from '../../src/uapi/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';
import { VfioSetupError } from '../../src/vfio/errors.js';
import { RecordingSyscalls } from '../linux/recording-syscalls.js';

const FLAG_DEV_ID = 1 << 0;
const FLAG_DEV_ID_OWNED = 1 << 1;
const DEVID_NOT_OWNED = 0xffff_ffff;
const BAR0 = 0;

const onOneBus = (extra: object = {}) => [
  { name: 'a', pciAddress: '0000:05:00.0', groupId: 50, ...extra },
  { name: 'b', pciAddress: '0000:05:01.0', groupId: 51, ...extra },
  { name: 'c', pciAddress: '0000:06:00.0', groupId: 60, ...extra },
];

describe('Device.hotReset on iommufd', () => {
  it('resets every device on the bus when all are bound to the space\'s iommufd', async () => {
    const kernel = simulatedKernel({ devices: onOneBus() });
    const space = new AddressSpace(kernel);
    const a = await space.attach('a');
    const b = await space.attach('b');
    b.handle.regionWrite(BAR0, 0n, Uint8Array.of(0xaa, 0xbb));
    const info = a.hotReset();
    expect(info.flags).toBe(FLAG_DEV_ID | FLAG_DEV_ID_OWNED);
    expect(info.devices).toEqual([
      { groupId: undefined, devId: a.devId, pciAddress: '0000:05:00.0' },
      { groupId: undefined, devId: b.devId, pciAddress: '0000:05:01.0' },
    ]);
    // b's BAR0 went back to its reset state: the reset reached it.
    expect([...b.handle.regionRead(BAR0, 0n, 2)]).toEqual([0, 0]);
    await space.close();
    kernel.assertClean();
  });

  it('names the affected devices the caller does not own, and issues no reset', async () => {
    const kernel = simulatedKernel({ devices: onOneBus() });
    const space = new AddressSpace(kernel);
    const a = await space.attach('a');
    const trace = kernel.startTrace();
    expect(() => a.hotReset()).toThrow(VfioSetupError);
    expect(() => a.hotReset()).toThrow(/also resets 0000:05:01.0, which this iommufd does not own/);
    trace.stop();
    expect(trace.summary).toEqual(['VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO']);
    // The kernel itself refuses the reset (EPERM) and reports b as not owned.
    expect(a.handle.getPciHotResetInfo!().devices[1]!.devId).toBe(DEVID_NOT_OWNED);
    expect(() => a.handle.pciHotReset!([])).toThrow(expect.objectContaining({ ioctl: 'VFIO_DEVICE_PCI_HOT_RESET', code: 'EPERM' }));
    // A cdev must not pass group fds.
    expect(() => a.handle.pciHotReset!([3])).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    await space.close();
  });

  it('a device without slot or bus reset is ENODEV from the kernel', async () => {
    const kernel = simulatedKernel({ devices: [{ name: 'root', pciReset: 'none' }] });
    const space = new AddressSpace(kernel);
    const device = await space.attach('root');
    expect(() => device.hotReset()).toThrow(KernelError);
    expect(() => device.hotReset()).toThrow(/VFIO_DEVICE_GET_PCI_HOT_RESET_INFO\(device root\) failed: No such device/);
    await space.close();
  });
});

describe('Device.hotReset on the legacy backend', () => {
  it('passes the fds of every affected group of the container', async () => {
    const kernel = simulatedKernel({ devices: onOneBus({ legacyOnly: true }) });
    const space = new AddressSpace(kernel);
    const a = await space.attach('a');
    expect(() => a.hotReset()).toThrow(/also resets 0000:05:01.0 \(group 51\), whose groups are not in this container/);
    const b = await space.attach('b');
    b.handle.regionWrite(BAR0, 0n, Uint8Array.of(1));
    const info = a.hotReset();
    expect(info.flags).toBe(0);
    expect(info.devices.map((d) => d.groupId)).toEqual([50, 51]);
    expect([...b.handle.regionRead(BAR0, 0n, 1)]).toEqual([0]);
    await space.close();
    kernel.assertClean();
  });
});

describe('the shim\'s hot reset structs', () => {
  it('grows the INFO array on ENOSPC and decodes group IDs and addresses', () => {
    const sys = new RecordingSyscalls();
    let calls = 0;
    sys.handlers.set(uapi.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, (arg) => {
      const s = arg as Uint8Array;
      const view = new DataView(s.buffer, s.byteOffset);
      calls++;
      // struct vfio_pci_hot_reset_info { argsz, flags, count } then 8-byte devices.
      if (view.getUint32(0, true) < 12 + 10 * 8) {
        view.setUint32(8, 10, true);
        return { errno: 28 }; // ENOSPC
      }
      view.setUint32(4, 0, true);
      view.setUint32(8, 10, true);
      for (let i = 0; i < 10; i++) {
        view.setUint32(12 + 8 * i, 40 + i, true); // group_id
        view.setUint16(16 + 8 * i, 1, true); // segment
        view.setUint8(18 + 8 * i, 0x3a); // bus
        view.setUint8(19 + 8 * i, (2 << 3) | i % 8); // devfn: slot 2, function i % 8
      }
      return 0;
    });
    const info = new LinuxDevice(sys, 'dev0', 'group', 7).getPciHotResetInfo();
    expect(calls).toBe(2);
    expect(info.devices).toHaveLength(10);
    expect(info.devices[3]).toEqual({ groupId: 43, devId: undefined, pciAddress: '0001:3a:02.3' });
  });

  it('sends argsz, count and the group fds of struct vfio_pci_hot_reset', () => {
    const sys = new RecordingSyscalls();
    sys.handlers.set(uapi.VFIO_DEVICE_PCI_HOT_RESET, () => 0);
    new LinuxDevice(sys, 'dev0', 'group', 7).pciHotReset([11, 12]);
    const sent = sys.ioctls[0]!.sent as Uint8Array;
    const view = new DataView(sent.buffer, sent.byteOffset);
    expect([view.getUint32(0, true), view.getUint32(4, true), view.getUint32(8, true), view.getInt32(12, true), view.getInt32(16, true)]).toEqual([20, 0, 2, 11, 12]);
  });
});
