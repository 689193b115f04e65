// The contract suite on the simulated kernel (part of `npm test`). The devices mirror the guest
// the real run uses: `edu` as QEMU's edu device behind virtio-iommu (no hw_info, no dirty
// tracking, no DMA logging), plus the devices only the simulator has.
import { describe } from 'vitest';
import { simulatedKernel } from '../../src/kernel/sim/index.js';
import type { ContractTarget } from './context.js';
import { defineContract } from './index.js';

const EDU = '0000:00:03.0';
const EDU_GROUP = 3;
const MDEV_GROUP = 40;

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
      ],
    });
    return {
      kernel,
      plainDevice: EDU,
      plainGroupId: EDU_GROUP,
      sim: { kernel, dirtyDevice: 'nic0', loggingDevice: 'vf0', strictLoggingDevice: 'vf1', mdevDevice: 'mdev0', mdevGroupId: MDEV_GROUP },
      assertClean: () => kernel.assertClean(),
    };
  },
};

describe(`contract suite on the ${simulatedTarget.name}`, () => {
  defineContract(simulatedTarget);
});
