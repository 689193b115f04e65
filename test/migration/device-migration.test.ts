// DeviceMigration on the simulated kernel, for what the contract suite does not reach: devices
// without P2P or PRE_COPY, bounded chunks of a large state, EAGAIN and short writes on the data
// fd, arguments refused before any ioctl.
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/kernel/errors.js';
import { simulatedKernel } from '../../src/kernel/sim/index.js';
import type { SimulatedDeviceSpecInput } from '../../src/kernel/sim/spec.js';
import type { DeviceHandle, MigrationDataHandle } from '../../src/kernel/types.js';
import { DeviceMigration, saveDevices } from '../../src/migration/index.js';
import * as uapi from '../../src/uapi/index.js';

function open(devices: SimulatedDeviceSpecInput[]) {
  const kernel = simulatedKernel({ devices });
  const iommufd = kernel.openIommufd();
  const handles = devices.map((spec) => {
    const device = kernel.openDevice(spec.name);
    device.bindIommufd(iommufd);
    device.attachPt(iommufd.ioasAlloc());
    return device;
  });
  return { kernel, iommufd, handles };
}

async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const chunk of stream) out.push(chunk instanceof Uint8Array ? (chunk.slice() as T) : chunk);
  return out;
}

describe('DeviceMigration', () => {
  it('a 1 MiB state moves in chunks of at most chunkSize, and arrives whole', async () => {
    const { handles: [source, destination] } = open([
      { name: 'big0', bar0Size: 1n << 20n, migration: {} }, { name: 'big1', bar0Size: 1n << 20n, migration: {} },
    ]);
    const pattern = Uint8Array.from({ length: 4096 }, (_, i) => (i * 7) & 0xff);
    for (let offset = 0; offset < 1 << 20; offset += 64 * 1024) source!.regionWrite(0, BigInt(offset), pattern);
    const migration = new DeviceMigration(source!, { chunkSize: 64 * 1024 });
    const chunks = await collect(migration.save());
    expect(chunks.length).toBeGreaterThan(16);
    expect(Math.max(...chunks.map((c) => c.byteLength))).toBe(64 * 1024);
    await new DeviceMigration(destination!).load(chunks);
    for (let offset = 0; offset < 1 << 20; offset += 64 * 1024) expect(destination!.regionRead(0, BigInt(offset), 4096)).toEqual(pattern);
    expect(source!.getMigrationState()).toBe(uapi.VFIO_DEVICE_STATE_STOP);
  });

  it('without P2P and PRE_COPY: straight RUNNING -> STOP_COPY (the kernel goes through STOP), RESUMING -> RUNNING via STOP', async () => {
    const { handles: [source, destination] } = open([
      { name: 'old0', migration: { p2p: false, preCopy: false } }, { name: 'old1', migration: { p2p: false, preCopy: false } },
    ]);
    const migration = new DeviceMigration(source!);
    expect([migration.p2p, migration.preCopy, migration.startPrecopy()]).toEqual([false, false, false]);
    expect(migration.supports(uapi.VFIO_DEVICE_STATE_RUNNING_P2P)).toBe(false);
    expect(() => migration.transition(uapi.VFIO_DEVICE_STATE_PRE_COPY)).toThrow(InvalidArgumentError);
    source!.regionWrite(0, 0n, Uint8Array.of(9));
    const chunks = await collect(migration.save());
    await new DeviceMigration(destination!).load(chunks);
    expect(destination!.regionRead(0, 0n, 1)[0]).toBe(9);
    expect(destination!.getMigrationState()).toBe(uapi.VFIO_DEVICE_STATE_RUNNING);
  });

  it('refuses more than one device without P2P, as QEMU does, before any ioctl', async () => {
    const { handles } = open([{ name: 'a', migration: { p2p: false } }, { name: 'b', migration: {} }]);
    const devices = handles.map((h) => new DeviceMigration(h));
    await expect(collect(saveDevices(devices))).rejects.toThrow(/without VFIO_MIGRATION_P2P/);
    expect(handles.map((h) => h.getMigrationState())).toEqual([uapi.VFIO_DEVICE_STATE_RUNNING, uapi.VFIO_DEVICE_STATE_RUNNING]);
  });

  it('a device without migration is ENOTTY at construction; a bad chunk size is refused', () => {
    const { handles: [plain, migratable] } = open([{ name: 'p' }, { name: 'm', migration: {} }]);
    expect(() => new DeviceMigration(plain!)).toThrow(/VFIO_DEVICE_FEATURE\(device p, feature MIGRATION\) failed: Inappropriate ioctl/);
    for (const chunkSize of [0, 1.5, (1 << 20) + 1]) expect(() => new DeviceMigration(migratable!, { chunkSize })).toThrow(InvalidArgumentError);
  });

  it('EAGAIN on read and write is retried; short writes are completed', async () => {
    const { handles: [source, destination] } = open([{ name: 's', bar0Size: 64n, migration: {} }, { name: 'd', bar0Size: 64n, migration: {} }]);
    source!.regionWrite(0, 5n, Uint8Array.of(0x42));
    // Wrap the data fds: every other call would block, and writes take 3 bytes at most.
    const flaky = (device: DeviceHandle): DeviceHandle => new Proxy(device, {
      get(target, property) {
        if (property !== 'setMigrationState') {
          const value = Reflect.get(target, property, target) as unknown;
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        }
        return (state: number) => {
          const data = target.setMigrationState(state);
          if (!data) return data;
          let calls = 0;
          const wrapped: MigrationDataHandle = {
            get fd() { return data.fd; },
            get closed() { return data.closed; },
            read: (buffer) => (calls++ % 2 === 0 ? null : data.read(buffer)),
            write: (bytes) => (calls++ % 2 === 0 ? null : data.write(bytes.subarray(0, 3))),
            precopyInfo: () => data.precopyInfo(),
            close: () => data.close(),
          };
          return wrapped;
        };
      },
    });
    const saver = new DeviceMigration(flaky(source!), { retryDelayMs: 0 });
    const chunks = await collect(saver.save());
    const loader = new DeviceMigration(flaky(destination!), { retryDelayMs: 0 });
    await loader.load(chunks);
    expect(loader.counters.bytesLoaded).toBe(saver.counters.bytesSaved);
    expect(destination!.regionRead(0, 5n, 1)[0]).toBe(0x42);
  });
});
