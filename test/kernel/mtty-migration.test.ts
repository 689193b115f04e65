// M. Device state on the real kernel: VFIO migration v2 of mtty (samples/vfio-mdev/mtty.c, built
// into the guest kernel), in the virtio boot. The mdevs the guest init created are found by UUID
// and sysfs, attached through AddressSpace (an mdev goes to the IOAS itself, QEMU's rule), given
// a non-default serial state through BAR0, migrated source -> destination by DeviceMigration
// (through the cdev, then through the group and type1), and the destination's registers
// compared. The facts of the issue about mtty are checked here. Each migration adds its counts
// to mtty-migration.json in the boot's results; report.mjs prints the line from it.
import { existsSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DeviceMigration } from '../../src/migration/index.js';
import * as uapi from '../../src/uapi/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';
import { onVirtioIommu } from './harness/guest-env.js';
import { expectKernelError, flushCoverage, kernel, resultsDir } from './support/kernel.js';
import { MTTY_STATE, mtty, mttyMigration } from './support/mtty.js';

afterAll(() => flushCoverage('mtty-migration.test.ts'));

const MTTY_MAGIC = 0x7e9d09898c3e2c4en;
const HEADER = 24;
const PORT = 36;

interface MigrationRun {
  readonly path: 'cdev' | 'group';
  readonly transitions: number;
  readonly bytesSaved: number;
  readonly bytesRestored: number;
  readonly equal: boolean;
}

function record(run: MigrationRun): void {
  const path = join(resultsDir(), 'mtty-migration.json');
  const runs: MigrationRun[] = existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as { runs: MigrationRun[] }).runs : [];
  runs.push(run);
  writeFileSync(path, JSON.stringify({ runs }, null, 2) + '\n');
}

function concat(chunks: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

/** Saves `source`, loads `destination` through DeviceMigration; returns the stream and the counts. */
async function migrate(sourceHandle: Parameters<typeof mttyMigration.writeState>[0], destinationHandle: typeof sourceHandle) {
  const source = new DeviceMigration(sourceHandle);
  const destination = new DeviceMigration(destinationHandle);
  expect(source.startPrecopy()).toBe(true);
  // PRE_COPY carries only the header: initial_bytes 24, 0 once read; dirty_bytes 0.
  expect(source.precopyInfo()).toEqual({ initialBytes: BigInt(HEADER), dirtyBytes: 0n });
  const chunks: Uint8Array[] = [];
  for await (const chunk of source.precopyChunks()) chunks.push(chunk.slice());
  expect(source.precopyInfo()).toEqual({ initialBytes: 0n, dirtyBytes: 0n });
  source.quiesce();
  for await (const chunk of source.stopCopy()) chunks.push(chunk.slice());
  source.finish();
  await destination.load(chunks);
  source.cancel();
  return { stream: concat(chunks), source, destination };
}

describe.runIf(onVirtioIommu)('mtty: VFIO migration v2 on the real kernel', () => {
  it('finds the mdevs by UUID and by sysfs path: mdev, a cdev, an IOMMU group, types mtty-2 and mtty-1', () => {
    for (const [uuid, type] of [[mtty.source, 'mtty-2'], [mtty.destination, 'mtty-2'], [mtty.otherType, 'mtty-1']] as const) {
      const byUuid = kernel().locateDevice(uuid);
      const bySysfs = kernel().locateDevice(`/sys/bus/mdev/devices/${uuid}`);
      expect(bySysfs).toEqual(byUuid);
      expect(byUuid.name).toBe(uuid);
      expect(byUuid.mdev).toBe(true);
      expect(byUuid.pciAddress).toBeUndefined();
      expect(byUuid.cdevPath).toMatch(/^\/dev\/vfio\/devices\/vfio\d+$/);
      expect(byUuid.groupId).toBeTypeOf('number');
      expect(byUuid.driver).toBe('mtty');
      expect(basename(readlinkSync(`/sys/bus/mdev/devices/${uuid}/mdev_type`))).toBe(type);
      expect(kernel().listDevices().some((device) => device.name === uuid)).toBe(true);
    }
  });

  it('through the cdev and AddressSpace (mdev -> IOAS): the serial state set through BAR0 arrives on the destination', async () => {
    const sourceSpace = new AddressSpace(kernel(), { iommufd: 'on' });
    const destinationSpace = new AddressSpace(kernel(), { iommufd: 'on' });
    try {
      const source = await sourceSpace.attach(mtty.source);
      const destination = await destinationSpace.attach(mtty.destination);
      for (const device of [source, destination]) {
        expect([device.backend, device.mdev, device.attachedToIoas, device.hwpt, device.hostIommu]).toEqual(['iommufd', true, true, undefined, undefined]);
      }
      // An emulated-access device: no IOMMU of its own, so no GET_HW_INFO.
      expectKernelError(() => sourceSpace.iommufdHandle!.getHwInfo(source.devId!), 'IOMMU_GET_HW_INFO', 'ENOENT');
      const handle = source.handle;
      expect(handle.migrationFlags()).toBe(uapi.VFIO_MIGRATION_STOP_COPY | uapi.VFIO_MIGRATION_P2P | uapi.VFIO_MIGRATION_PRE_COPY);
      expect(handle.migrationDataSize()).toBe(BigInt(HEADER + 2 * PORT));
      if (handle.getMigrationState() !== uapi.VFIO_DEVICE_STATE_RUNNING) handle.reset();
      if (destination.handle.getMigrationState() !== uapi.VFIO_DEVICE_STATE_RUNNING) destination.handle.reset();
      // The destination's registers hold something else before the migration.
      mttyMigration.writeState(destination.handle);
      destination.handle.regionWrite(0, 7n, Uint8Array.of(0xa5));
      mttyMigration.writeState(handle);
      const { stream, source: saved, destination: loaded } = await migrate(handle, destination.handle);
      // The stream: header (magic, version 1.0, nr_ports 2, flags 0) and two 36-byte ports.
      const view = new DataView(stream.buffer);
      expect(stream.byteLength).toBe(HEADER + 2 * PORT);
      expect([view.getBigUint64(0, true), view.getUint32(8, true), view.getUint32(12, true), view.getUint32(16, true), view.getUint32(20, true)]).toEqual([MTTY_MAGIC, 1, 0, 2, 0]);
      // Port 0's uart_reg[8] starts the first port: IER, LCR and SCR as written.
      expect([stream[HEADER + 1], stream[HEADER + 3], stream[HEADER + 7]]).toEqual([0x08, 0x1b, 0x5a]);
      const after = mttyMigration.readState(destination.handle);
      expect(after).toEqual(MTTY_STATE);
      expect(loaded.counters.bytesLoaded).toBe(saved.counters.bytesSaved);
      record({
        path: 'cdev', transitions: saved.counters.transitions + loaded.counters.transitions,
        bytesSaved: saved.counters.bytesSaved, bytesRestored: loaded.counters.bytesLoaded, equal: true,
      });
    } finally {
      await destinationSpace.close();
      await sourceSpace.close();
    }
  });

  it('through the group and type1 (an emulated IOMMU group, no IOMMU domain): the state migrates the same way', async () => {
    const sourceSpace = new AddressSpace(kernel(), { iommufd: 'off' });
    const destinationSpace = new AddressSpace(kernel(), { iommufd: 'off' });
    try {
      const source = await sourceSpace.attach(mtty.source);
      const destination = await destinationSpace.attach(mtty.destination);
      expect([source.backend, destination.backend]).toEqual(['legacy', 'legacy']);
      expect(source.handle.kind).toBe('group');
      expect(source.groupId).toBe(kernel().locateDevice(mtty.source).groupId);
      for (const device of [source, destination]) if (device.handle.getMigrationState() !== uapi.VFIO_DEVICE_STATE_RUNNING) device.handle.reset();
      destination.handle.regionWrite(0, 7n, Uint8Array.of(0xa5));
      mttyMigration.writeState(source.handle);
      const { stream, source: saved, destination: loaded } = await migrate(source.handle, destination.handle);
      expect(stream.byteLength).toBe(HEADER + 2 * PORT);
      expect(mttyMigration.readState(destination.handle)).toEqual(MTTY_STATE);
      record({
        path: 'group', transitions: saved.counters.transitions + loaded.counters.transitions,
        bytesSaved: saved.counters.bytesSaved, bytesRestored: loaded.counters.bytesLoaded, equal: true,
      });
    } finally {
      await destinationSpace.close();
      await sourceSpace.close();
    }
  });

  it('mtty-1: MIG_DATA_SIZE 60; RESUMING refuses an mtty-2 stream (nr_ports 2) with EFAULT', async () => {
    const space = new AddressSpace(kernel(), { iommufd: 'on' });
    const sourceSpace = new AddressSpace(kernel(), { iommufd: 'on' });
    try {
      const other = (await space.attach(mtty.otherType)).handle;
      const source = (await sourceSpace.attach(mtty.source)).handle;
      for (const handle of [other, source]) if (handle.getMigrationState() !== uapi.VFIO_DEVICE_STATE_RUNNING) handle.reset();
      expect(other.migrationDataSize()).toBe(BigInt(HEADER + PORT));
      source.setMigrationState(uapi.VFIO_DEVICE_STATE_STOP);
      const save = source.setMigrationState(uapi.VFIO_DEVICE_STATE_STOP_COPY)!;
      const buffer = new Uint8Array(256);
      const n = save.read(buffer);
      expect(n).toBe(HEADER + 2 * PORT);
      expect(save.read(buffer)).toBe(0);
      save.close();
      source.setMigrationState(uapi.VFIO_DEVICE_STATE_RUNNING);
      other.setMigrationState(uapi.VFIO_DEVICE_STATE_STOP);
      const resume = other.setMigrationState(uapi.VFIO_DEVICE_STATE_RESUMING)!;
      expectKernelError(() => resume.write(buffer.subarray(0, HEADER)), 'write', 'EFAULT');
      resume.close();
      other.reset();
      expect(other.getMigrationState()).toBe(uapi.VFIO_DEVICE_STATE_RUNNING);
    } finally {
      await sourceSpace.close();
      await space.close();
    }
  });

  it("mtty's DMA logging ops exist and report nothing; RESUMING past the stream's size is ENOMEM", async () => {
    const space = new AddressSpace(kernel(), { iommufd: 'on' });
    try {
      const device = (await space.attach(mtty.otherType)).handle;
      if (device.getMigrationState() !== uapi.VFIO_DEVICE_STATE_RUNNING) device.reset();
      expect(device.featureProbe(uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START)).toBe(true);
      const pageSize = device.dmaLoggingStart(4096n, [{ iova: 0n, length: 1n << 20n }]);
      const bitmap = new Uint8Array(Number(((1n << 20n) / pageSize + 63n) / 64n) * 8); // whole u64 words
      device.dmaLoggingReport({ iova: 0n, length: 1n << 20n, pageSize, bitmap });
      expect(bitmap.every((byte) => byte === 0)).toBe(true);
      device.dmaLoggingStop();
      device.setMigrationState(uapi.VFIO_DEVICE_STATE_STOP);
      const resume = device.setMigrationState(uapi.VFIO_DEVICE_STATE_RESUMING)!;
      expectKernelError(() => resume.write(new Uint8Array(HEADER + PORT + 1)), 'write', 'ENOMEM');
      resume.close();
      device.reset();
    } finally {
      await space.close();
    }
  });
});
