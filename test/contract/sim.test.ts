// The contract suite on the simulated kernel (part of `npm test`). The devices mirror the guest
// the real run uses: `edu` as QEMU's edu device behind virtio-iommu (no hw_info, no dirty
// tracking, no DMA logging), plus the devices only the simulator has.
import { describe } from 'vitest';
import { simulatedKernel } from '../../src/kernel/sim/index.js';
import type { DeviceHandle } from '../../src/kernel/types.js';
import type { ContractTarget, MigrationDevices } from './context.js';
import { defineContract } from './index.js';

const EDU = '0000:00:03.0';
const EDU_GROUP = 3;
const MDEV_GROUP = 40;

/** BAR0 of a simulated migratable device is plain memory: the last byte written at an offset stays. */
const SIM_REGISTERS: readonly [offset: number, value: number][] = [[1, 0x08], [3, 0x1b], [7, 0x5a], [0, 0x6d], [0, 0x74]];
const simMigration: MigrationDevices = {
  source: 'mig0',
  destination: 'mig1',
  otherType: 'mig2',
  writeState: (device: DeviceHandle) => {
    for (const [offset, value] of SIM_REGISTERS) device.regionWrite(0, BigInt(offset), Uint8Array.of(value));
  },
  readState: (device: DeviceHandle) => [1, 3, 7, 0].map((offset) => device.regionRead(0, BigInt(offset), 1)[0]!),
  expectedState: [0x08, 0x1b, 0x5a, 0x74],
};

export const simulatedTarget: ContractTarget = {
  name: 'simulated kernel',
  simulated: true,
  create() {
    const kernel = simulatedKernel({
      devices: [
        { name: 'edu', pciAddress: EDU, pciId: { vendor: 0x1234, device: 0x11e8 }, iommuType: 'none', groupId: EDU_GROUP, bar0Size: 1n << 20n },
        { name: 'nic0', iommuType: 'intel-vtd', iommuDirtyTracking: true },
        { name: 'vf0', dmaLogging: { maxRanges: 4, pageSize: 4096n } },
        { name: 'vf1', dmaLogging: { maxRanges: 4, pageSize: 8192n, tooManyRanges: 'reject' } },
        { name: 'mdev0', mdev: true, groupId: MDEV_GROUP },
        // Migratable mdevs as mtty's: two of one type, one whose state is twice the size.
        { name: 'mig0', mdev: true, bar0Size: 8n, migration: {} },
        { name: 'mig1', mdev: true, bar0Size: 8n, migration: {} },
        { name: 'mig2', mdev: true, bar0Size: 16n, migration: {} },
      ],
    });
    return {
      kernel,
      plainDevice: EDU,
      plainGroupId: EDU_GROUP,
      migration: simMigration,
      sim: { kernel, dirtyDevice: 'nic0', loggingDevice: 'vf0', strictLoggingDevice: 'vf1', mdevDevice: 'mdev0', mdevGroupId: MDEV_GROUP },
      assertClean: () => kernel.assertClean(),
    };
  },
};

describe(`contract suite on the ${simulatedTarget.name}`, () => {
  defineContract(simulatedTarget);
});
