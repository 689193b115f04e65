// PCI hot reset on the real kernel (both boots). boot.sh puts QEMU's edu alone behind a
// pcie-root-port of the q35 machine, so vfio-pci finds a bus it can reset (pci_probe_reset_bus:
// the root port's secondary bus reset; there is no hotplug slot, CONFIG_HOTPLUG_PCI_PCIE is off):
// VFIO_DEVICE_GET_PCI_HOT_RESET_INFO lists edu alone, and VFIO_DEVICE_PCI_HOT_RESET succeeds in
// the iommufd form (dev IDs, no group fds) and the legacy form (the group fds). On a root bus the
// kernel answers ENODEV for both (pci_probe_reset_bus needs a bridge): that boot topology is no
// longer used, and the test fails on it rather than pass. An affected device that the
// caller does not own needs a second device on the bus, which QEMU's edu setup does not give:
// that refusal runs on the simulator. Each result goes to hot-reset.json; report.mjs prints it.
import { existsSync, readdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as uapi from '../../src/uapi/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';
import type { GroupHandle } from '../../src/kernel/types.js';
import { edu, inKernelGuest } from './harness/guest-env.js';
import { flushCoverage, kernel, resultsDir } from './support/kernel.js';

afterAll(() => flushCoverage('hot-reset.test.ts'));

interface HotResetRun {
  readonly backend: 'iommufd' | 'legacy';
  readonly device: string;
  readonly bridge: string;
  readonly flags: number;
  readonly affected: string[];
}

function record(run: HotResetRun): void {
  const path = join(resultsDir(), 'hot-reset.json');
  const runs: HotResetRun[] = existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as { runs: HotResetRun[] }).runs : [];
  runs.push(run);
  writeFileSync(path, JSON.stringify({ runs }, null, 2) + '\n');
}

/** The PCI devices whose parent in sysfs is `bridge`: what sits on its secondary bus. */
function devicesBehind(bridge: string): string[] {
  const root = '/sys/bus/pci/devices';
  return readdirSync(root).filter((name) => basename(dirname(realpathSync(join(root, name)))) === bridge).sort();
}

function liveness(device: { regionRead(index: number, offset: bigint, length: number): Uint8Array; regionWrite(index: number, offset: bigint, data: Uint8Array): void }): number {
  // edu's BAR0 0x04 reads back the inverse of what was written.
  const value = new Uint8Array(4);
  new DataView(value.buffer).setUint32(0, 0x0f0f_1234, true);
  device.regionWrite(0, 4n, value);
  return new DataView(device.regionRead(0, 4n, 4).buffer).getUint32(0, true);
}

describe.runIf(inKernelGuest)('PCI hot reset of edu behind a pcie-root-port', () => {
  it('edu is alone on the secondary bus of a bridge (boot.sh: pcie-root-port on q35)', () => {
    expect(edu.bridge, 'edu is on a root bus: boot.sh must attach it behind the pcie-root-port').toMatch(/^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/);
    // PCI_CLASS_BRIDGE_PCI (0x0604) with the PCIe root port programming interface 0
    expect(readFileSync(`/sys/bus/pci/devices/${edu.bridge}/class`, 'utf8').trim()).toBe('0x060400');
    expect(devicesBehind(edu.bridge)).toEqual([edu.bdf]);
  });

  for (const backend of ['on', 'off'] as const) {
    const name = backend === 'on' ? 'iommufd' : 'legacy';
    it(`${name === 'iommufd' ? 'iommufd (cdev, dev IDs, no group fds)' : 'legacy (group fds)'}: GET_PCI_HOT_RESET_INFO lists edu alone, the reset succeeds, edu works after it`, async () => {
      expect(edu.bridge, 'edu must sit behind a bridge').not.toBe('');
      const space = new AddressSpace(kernel());
      try {
        const device = await space.attach(edu.bdf, { iommufd: backend });
        const info = device.hotReset();
        // linux/vfio.h: the cdev form answers with dev IDs (FLAG_DEV_ID) and, when every affected
        // device is owned by the caller's iommufd, FLAG_DEV_ID_OWNED; the group form with group IDs.
        if (backend === 'on') {
          expect(info.flags).toBe(uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED);
          expect(info.devices.map((d) => ({ pciAddress: d.pciAddress, devId: d.devId }))).toEqual([{ pciAddress: edu.bdf, devId: device.devId }]);
          expect(device.devId).toBeGreaterThan(0);
        } else {
          expect(info.flags).toBe(0);
          const group = Number(basename(edu.group));
          expect(info.devices.map((d) => ({ pciAddress: d.pciAddress, groupId: d.groupId }))).toEqual([{ pciAddress: edu.bdf, groupId: group }]);
        }
        // The raw ioctl again, in the form the backend needs (no fds for a cdev; the group's fd).
        const groups = (space.containers[0] as unknown as { groups?: ReadonlyMap<number, GroupHandle> }).groups;
        device.handle.pciHotReset!(backend === 'on' ? [] : [groups!.get(device.groupId!)!.fd!]);
        // vfio-pci saves and restores config space around the bus reset: BAR0 still answers.
        expect(liveness(device.handle)).toBe(~0x0f0f_1234 >>> 0);
        record({ backend: name, device: edu.bdf, bridge: edu.bridge, flags: info.flags, affected: info.devices.map((d) => d.pciAddress) });
      } finally {
        await space.close();
      }
    });
  }
});
