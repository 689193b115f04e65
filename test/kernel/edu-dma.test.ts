// E. Real DMA through the IOMMU: edu's DMA engine copies host memory that the library mapped
// into an IOAS (VFIO cdev + iommufd) or a type1 container (legacy group), and the IOMMU stops it
// once the mapping is gone or when the mapping is read-only. Runs in both boots: virtio-iommu
// and emulated VT-d translate edu's DMA.
import { afterAll, describe, expect, it } from 'vitest';
import type { DeviceHandle, HostMemory } from '../../src/kernel/types.js';
import { edu, inKernelGuest } from './harness/guest-env.js';
import { EDU_BUFFER_SIZE, EDU_DMA_LIMIT, eduCopy, eduDma, eduDriver, enableBusMaster, EDU_BUFFER, pattern } from './support/edu.js';
import { flushCoverage, kernel, perTestCleanup } from './support/kernel.js';

/** Each host buffer is one page; transfers move EDU_BUFFER_SIZE bytes of it. */
const SIZE = 4096n;
const IOVA_A = 0x0010_0000n;
const IOVA_B = 0x0020_0000n;
const IOVA_C = 0x0030_0000n;
const IOVA_R = 0x0040_0000n;

const { track, keep } = perTestCleanup();
afterAll(() => flushCoverage('edu-dma.test.ts'));

function buffer(): HostMemory & { bytes: Uint8Array } {
  const m = kernel().allocateHostMemory(SIZE);
  keep(m);
  if (!m.bytes) throw new Error('host memory without a view');
  return m as HostMemory & { bytes: Uint8Array };
}

/** The same story on both backends: `map`/`unmap` are the backend's, `device` is attached. */
async function dmaStory(
  device: DeviceHandle,
  map: (memory: HostMemory, iova: bigint, writeable: boolean) => void,
  unmap: (iova: bigint) => void,
): Promise<{ copyMs: number }> {
  const a = buffer();
  const b = buffer();
  const c = buffer();
  const r = buffer();
  for (const iova of [IOVA_A, IOVA_B, IOVA_C, IOVA_R]) expect(iova + SIZE <= EDU_DMA_LIMIT).toBe(true);
  map(a, IOVA_A, true);
  map(b, IOVA_B, true);
  map(r, IOVA_R, false);
  const command = enableBusMaster(device);
  expect(command & 0x6).toBe(0x6);
  const driver = eduDriver(device);

  // RAM (A) -> edu -> RAM (B)
  const first = pattern(EDU_BUFFER_SIZE, 1);
  a.bytes.set(first);
  b.bytes.fill(0);
  const begin = performance.now();
  await eduCopy(driver, IOVA_A, IOVA_B);
  const copyMs = performance.now() - begin;
  expect(Buffer.from(b.bytes.subarray(0, EDU_BUFFER_SIZE)).equals(Buffer.from(first))).toBe(true);
  expect(b.bytes.subarray(EDU_BUFFER_SIZE).every((x) => x === 0)).toBe(true);
  // a partial copy lands at an offset and touches nothing else
  b.bytes.fill(0);
  await eduDma(driver, { src: EDU_BUFFER + 16n, dst: IOVA_B + 256n, count: 100, toRam: true });
  expect(b.bytes.subarray(0, 256).every((x) => x === 0)).toBe(true);
  expect(Buffer.from(b.bytes.subarray(256, 356)).equals(Buffer.from(first.subarray(16, 116)))).toBe(true);
  expect(b.bytes.subarray(356).every((x) => x === 0)).toBe(true);

  // B unmapped: edu's write to IOVA B faults in the IOMMU and never reaches B's memory
  unmap(IOVA_B);
  const second = pattern(EDU_BUFFER_SIZE, 2);
  a.bytes.set(second);
  b.bytes.fill(0x5a);
  await eduCopy(driver, IOVA_A, IOVA_B);
  expect(b.bytes.every((x) => x === 0x5a)).toBe(true);

  // a read-only mapping: the device may read it but not write it
  r.bytes.fill(0xa5);
  await eduDma(driver, { src: EDU_BUFFER, dst: IOVA_R, count: EDU_BUFFER_SIZE, toRam: true });
  expect(r.bytes.every((x) => x === 0xa5)).toBe(true);
  await eduCopy(driver, IOVA_R, IOVA_A);
  expect(a.bytes.subarray(0, EDU_BUFFER_SIZE).every((x) => x === 0xa5)).toBe(true);

  // the control: the device is fine, the data was there, a mapped C receives it
  map(c, IOVA_C, true);
  c.bytes.fill(0);
  a.bytes.set(second);
  await eduCopy(driver, IOVA_A, IOVA_C);
  expect(Buffer.from(c.bytes.subarray(0, EDU_BUFFER_SIZE)).equals(Buffer.from(second))).toBe(true);
  return { copyMs };
}

describe.runIf(inKernelGuest)('edu DMA through iommufd (VFIO cdev)', () => {
  it('copies RAM to RAM through mapped IOVAs, and the IOMMU blocks an unmapped or read-only IOVA', async () => {
    const fd = kernel().openIommufd();
    track(fd);
    const ioas = fd.ioasAlloc();
    const device = kernel().openDevice(edu.cdev);
    track(device);
    device.bindIommufd(fd);
    device.attachPt(ioas);
    const { copyMs } = await dmaStory(
      device,
      (memory, iova, writeable) => expect(fd.ioasMap({ ioasId: ioas, memory, length: SIZE, iova, writeable })).toBe(iova),
      (iova) => expect(fd.ioasUnmap(ioas, iova, SIZE)).toBe(SIZE),
    );
    expect(copyMs).toBeGreaterThan(0);
    device.detachPt();
  });
});

describe.runIf(inKernelGuest)('edu DMA through the legacy type1 container (VFIO group)', () => {
  it('copies RAM to RAM through mapped IOVAs, and the IOMMU blocks an unmapped or read-only IOVA', async () => {
    const groupId = kernel().locateDevice(edu.bdf).groupId!;
    const group = kernel().openGroup(groupId);
    track(group);
    const container = kernel().openLegacyContainer();
    track(container);
    group.setContainer(container);
    container.setIommu(3 /* VFIO_TYPE1v2_IOMMU */);
    const device = group.openDevice(edu.bdf);
    track(device);
    await dmaStory(
      device,
      (memory, iova, writeable) => container.mapDma({ memory, iova, size: SIZE, writeable }),
      (iova) => expect(container.unmapDma(iova, SIZE)).toBe(SIZE),
    );
    device.close();
    container.unmapAll();
    group.unsetContainer();
  });
});
