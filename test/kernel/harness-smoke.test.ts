// Harness smoke test: the guest has what the kernel suite needs. Runs in both boots.
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { basename } from 'node:path';
import { describe, expect, it } from 'vitest';
import { edu, inKernelGuest, onVirtioIommu, viommu } from './harness/guest-env.js';

describe.runIf(inKernelGuest)('kernel harness guest', () => {
  it('has /dev/iommu, and it opens', () => {
    const fd = openSync('/dev/iommu', 'r+');
    closeSync(fd);
  });

  it('has the legacy VFIO container /dev/vfio/vfio', () => {
    expect(existsSync('/dev/vfio/vfio')).toBe(true);
  });

  it('has edu (1234:11e8) on vfio-pci with a VFIO cdev', () => {
    expect(edu.bdf).not.toBe('');
    const dev = `/sys/bus/pci/devices/${edu.bdf}`;
    expect(readFileSync(`${dev}/vendor`, 'utf8').trim()).toBe('0x1234');
    expect(readFileSync(`${dev}/device`, 'utf8').trim()).toBe('0x11e8');
    expect(basename(readlinkSync(`${dev}/driver`))).toBe('vfio-pci');
    const cdevs = readdirSync(`${dev}/vfio-dev`);
    expect(cdevs).toHaveLength(1);
    expect(edu.cdev).toBe(`/dev/vfio/devices/${cdevs[0]}`);
    expect(existsSync(edu.cdev)).toBe(true);
    const group = basename(readlinkSync(`${dev}/iommu_group`));
    expect(edu.group).toBe(`/dev/vfio/${group}`);
    expect(existsSync(edu.group)).toBe(true);
  });

  it('has the IOMMUFD_TEST mock (iommufd_mock bus, fail_iommufd fault attr)', () => {
    expect(existsSync('/sys/bus/iommufd_mock')).toBe(true);
    expect(existsSync('/sys/kernel/debug/fail_iommufd')).toBe(true);
  });

  it('has edu behind the vIOMMU this boot asked for', () => {
    // the IOMMU that translates edu: virtio-iommu is named by its PCI address, VT-d units dmarN
    const iommu = basename(readlinkSync(`/sys/bus/pci/devices/${edu.bdf}/iommu`));
    expect(readdirSync('/sys/class/iommu')).toContain(iommu);
    if (onVirtioIommu) {
      expect(viommu).toBe('virtio');
      const pci = `/sys/bus/pci/devices/${iommu}`;
      expect(`${readFileSync(`${pci}/vendor`, 'utf8').trim()}:${readFileSync(`${pci}/device`, 'utf8').trim()}`).toBe(
        '0x1af4:0x1057',
      );
    } else {
      expect(viommu).toBe('intel');
      expect(iommu).toMatch(/^dmar\d+$/);
    }
  });
});
