// The contract suite on the real kernel, in the harness guest's virtio-iommu boot (untagged: see
// vitest.kernel.config.ts): QEMU's edu on vfio-pci is the plain device, the IOMMUFD_TEST mock
// devices stand in for dirty-capable hardware. Tests marked [sim only: ...] are skipped here.
// Outside the guest (a plain `vitest run`) the whole suite is skipped.
import { readdirSync, readlinkSync } from 'node:fs';
import { basename } from 'node:path';
import { afterAll, describe, expect } from 'vitest';
import type { ContractTarget } from '../contract/context.js';
import { defineContract } from '../contract/index.js';
import { edu, inKernelGuest, onVirtioIommu } from './harness/guest-env.js';
import { flushCoverage, kernel } from './support/kernel.js';
import { hasMtty, mttyMigration } from './support/mtty.js';

// The suite's ioctls (and migration arcs) go into the boot's ioctl-coverage.json with the others.
afterAll(() => flushCoverage('contract.test.ts'));

/** This process's open fds on /dev/iommu and /dev/vfio: the kernel objects a test could leak. */
function vfioFds(): string[] {
  const open: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target === '/dev/iommu' || target.startsWith('/dev/vfio/')) open.push(`${fd} -> ${target}`);
    } catch {
      // The fd readdir itself used is gone by now.
    }
  }
  return open;
}

export const realTarget: ContractTarget = {
  name: 'real kernel',
  simulated: false,
  create() {
    const before = vfioFds();
    return {
      kernel: kernel(),
      plainDevice: edu.bdf,
      plainGroupId: Number(basename(edu.group)),
      sim: undefined,
      migration: hasMtty ? mttyMigration : undefined,
      // Closing every fd releases every object on the real kernel: no fd left means nothing leaked.
      assertClean: () => expect(vfioFds()).toEqual(before),
    };
  },
};

describe.runIf(inKernelGuest && onVirtioIommu)(`contract suite on the ${realTarget.name}`, () => {
  defineContract(realTarget);
});
