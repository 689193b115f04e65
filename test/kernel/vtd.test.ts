// G. Emulated VT-d (QEMU intel-iommu, interrupt remapping, caching mode): IOMMU_GET_HW_INFO on
// edu returns the unit's capability registers, HostIommuInfo decodes them, and binding edu's
// cdev works without allow_unsafe_interrupts because interrupts are remapped. Intel boot.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { U64_MAX } from '../../src/kernel/validate.js';
import * as uapi from '../../src/uapi/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';
import { HostIommuInfo } from '../../src/vfio/host-iommu-info.js';
import { edu, onIntelIommu } from './harness/guest-env.js';
import { expectKernelError, flushCoverage, kernel, perTestCleanup } from './support/kernel.js';

/** What QEMU's intel-iommu (intremap=on, caching-mode=on) reported when this suite was written. */
const MEASURED = { capReg: 0xd2008c22260286n, ecapReg: 0xf00f4an };
const TOP_39_BITS = (1n << 39n) - 1n;

const { track } = perTestCleanup();
afterAll(() => flushCoverage('vtd.test.ts'));

/** The DMAR unit's registers as the kernel shows them in sysfs. */
function sysfsRegisters(): { capReg: bigint; ecapReg: bigint } {
  const unit = readdirSync('/sys/class/iommu').find((name) => name.startsWith('dmar'))!;
  const read = (name: string) => BigInt(`0x${readFileSync(`/sys/class/iommu/${unit}/intel-iommu/${name}`, 'utf8').trim()}`);
  return { capReg: read('cap'), ecapReg: read('ecap') };
}

function boundEdu() {
  const fd = track(kernel().openIommufd());
  const device = track(kernel().openDevice(edu.cdev));
  const devId = device.bindIommufd(fd);
  return { fd, device, devId };
}

describe.runIf(onIntelIommu)('VT-d: IOMMU_GET_HW_INFO on edu', () => {
  it('returns type INTEL_VTD with the cap and ecap registers of the DMAR unit', () => {
    const { fd, devId } = boundEdu();
    const info = fd.getHwInfo(devId);
    expect(info.type).toBe(uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD);
    expect(info.type).toBe(1);
    expect(info.capabilities).toBe(0n);
    expect(info.data.byteLength).toBe(uapi.iommu_hw_info_vtd.size);
    const capReg = uapi.iommu_hw_info_vtd.readBigint(info.data, 'cap_reg');
    const ecapReg = uapi.iommu_hw_info_vtd.readBigint(info.data, 'ecap_reg');
    expect({ capReg, ecapReg }).toEqual(sysfsRegisters());
    expect({ capReg, ecapReg }).toEqual(MEASURED);
  });

  it('HostIommuInfo decodes them: 39-bit MGAW, 3-level SAGAW, caching mode, interrupt remapping, no dirty tracking', () => {
    const { fd, devId } = boundEdu();
    const host = new HostIommuInfo(fd.getHwInfo(devId));
    expect(host.type).toBe('intel-vtd');
    expect(host.dirtyTracking).toBe(false);
    expect(host.vtd).toMatchObject({
      capReg: MEASURED.capReg,
      ecapReg: MEASURED.ecapReg,
      mgaw: 39,
      sagaw: 0b00010,
      supportedAddressWidths: [39],
      cachingMode: true,
      numberOfDomains: 65536,
      secondLevelLargePages: { twoMiB: true, oneGiB: true },
      queuedInvalidation: true,
      interruptRemapping: true,
      passThrough: true,
      scalableMode: false,
      slads: false,
      dirtyTracking: false,
    });
    expect(host.toJSON()).toMatchObject({ type: 'intel-vtd', capabilities: { dirtyTracking: false }, registers: { mgaw: 39, capReg: '0xd2008c22260286' } });
  });
});

describe.runIf(onIntelIommu)('VT-d: domains for edu', () => {
  it('no dirty-tracking HWPT (EOPNOTSUPP); a plain one holds a 39-bit IOVA space around the interrupt window', () => {
    const { fd, device, devId } = boundEdu();
    const ioas = fd.ioasAlloc();
    expectKernelError(() => fd.hwptAlloc({ devId, ptId: ioas, flags: uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING }), 'IOMMU_HWPT_ALLOC', 'EOPNOTSUPP');
    const hwpt = fd.hwptAlloc({ devId, ptId: ioas });
    expect(device.attachPt(hwpt)).toBe(hwpt);
    expect(fd.ioasIovaRanges(ioas)).toEqual({
      ranges: [{ start: 0n, last: 0xfedf_ffffn }, { start: 0xfef0_0000n, last: TOP_39_BITS }],
      alignment: 4096n,
    });
    // past 39 bits is out of the aperture
    const memory = kernel().allocateHostMemory(4096n);
    try {
      expectKernelError(() => fd.ioasMap({ ioasId: ioas, memory, length: 4096n, iova: 1n << 39n }), 'IOMMU_IOAS_MAP', 'EINVAL');
      expect(fd.ioasMap({ ioasId: ioas, memory, length: 4096n, iova: TOP_39_BITS - 4095n })).toBe(TOP_39_BITS - 4095n);
      fd.ioasUnmapAll(ioas);
    } finally {
      device.detachPt();
      fd.destroy(hwpt);
      memory.release();
    }
    expect(fd.ioasIovaRanges(ioas).ranges).toEqual([{ start: 0n, last: U64_MAX }]);
  });

  it('binds without allow_unsafe_interrupts: interrupts are remapped', () => {
    const cmdline = readFileSync('/proc/cmdline', 'utf8');
    expect(cmdline).toMatch(/intel_iommu=on/);
    expect(cmdline).not.toMatch(/allow_unsafe_interrupts/);
    for (const module of ['iommufd', 'vfio_iommu_type1']) {
      const parameter = `/sys/module/${module}/parameters/allow_unsafe_interrupts`;
      if (existsSync(parameter)) expect(readFileSync(parameter, 'utf8').trim()).toBe('N');
    }
    const { devId } = boundEdu();
    expect(devId).toBeGreaterThan(0);
  });

  it('the legacy type1 container sees the same 39-bit space, with 4K/2M/1G IOMMU pages', () => {
    const groupId = kernel().locateDevice(edu.bdf).groupId!;
    const group = track(kernel().openGroup(groupId));
    expect(group.getStatus().viable).toBe(true);
    const container = track(kernel().openLegacyContainer());
    group.setContainer(container);
    container.setIommu(uapi.VFIO_TYPE1v2_IOMMU);
    const info = container.getIommuInfo();
    expect(info.iovaRanges).toEqual([{ start: 0n, last: 0xfedf_ffffn }, { start: 0xfef0_0000n, last: TOP_39_BITS }]);
    expect(info.iovaPageSizes & 0x4020_1000n).toBe(0x4020_1000n);
    expect(info.migration?.pageSizeBitmap).toBe(4096n);
    group.unsetContainer();
  });
});

describe.runIf(onIntelIommu)('VT-d: AddressSpace', () => {
  it('attaches edu through iommufd with its VT-d registers decoded, and through type1', async () => {
    const space = new AddressSpace(kernel());
    const viaIommufd = await space.attach(edu.bdf, { iommufd: 'on' });
    expect(viaIommufd.hostIommu?.vtd?.mgaw).toBe(39);
    expect(viaIommufd.dirtyTracker).toBe('none');
    expect(space.topology().containers[0]).toMatchObject({
      backend: 'iommufd', hwpts: [{ dirtyTracking: false, devices: [edu.bdf] }],
      iovaRanges: [{ start: '0x0', last: '0xfedfffff' }, { start: '0xfef00000', last: '0x7fffffffff' }],
    });
    await space.map({ iova: 1n << 20n, size: 1n << 20n });
    await space.detach(viaIommufd);
    const viaType1 = await space.attach(edu.bdf, { iommufd: 'off' });
    expect(viaType1.dirtyTracker).toBe('type1');
    expect(viaType1.hostIommu).toBeUndefined();
    // the new container got the space's mapping replayed: it can be unmapped from it
    expect(await space.unmap({ iova: 1n << 20n, size: 1n << 20n })).toHaveLength(1);
    await space.close();
    expect(space.topology()).toEqual({ containers: [], devices: [] });
  });
});
