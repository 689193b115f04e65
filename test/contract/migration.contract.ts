// VFIO migration v2 on both kernels: mtty mdevs in the real kernel's virtio boot, simulated mdevs
// with a migration spec. The arcs and their data fds, the arcs the kernel refuses, PRECOPY_INFO,
// MIG_DATA_SIZE, a wrong-type destination, reset during migration, and a whole migration through
// DeviceMigration with P2P quiescing before any STOP_COPY.
import { describe, expect, it } from 'vitest';
import { KernelError } from '../../src/kernel/errors.js';
import type { DeviceHandle, MigrationDataHandle } from '../../src/kernel/types.js';
import { DeviceMigration, MigrationTransitionError, saveDevices } from '../../src/migration/index.js';
import * as uapi from '../../src/uapi/index.js';
import { MIGRATION_STATE_NAMES, migrationPath } from '../../src/uapi/index.js';
import { ContractFixture, expectKernelError, expectInvalidArgument, simOnly, type ContractTarget, type MigrationDevices } from './context.js';

const {
  VFIO_DEVICE_STATE_ERROR: ERROR, VFIO_DEVICE_STATE_STOP: STOP, VFIO_DEVICE_STATE_RUNNING: RUNNING,
  VFIO_DEVICE_STATE_STOP_COPY: STOP_COPY, VFIO_DEVICE_STATE_RESUMING: RESUMING, VFIO_DEVICE_STATE_RUNNING_P2P: RUNNING_P2P,
  VFIO_DEVICE_STATE_PRE_COPY: PRE_COPY, VFIO_DEVICE_STATE_PRE_COPY_P2P: PRE_COPY_P2P,
} = uapi;
const ALL = uapi.VFIO_MIGRATION_STOP_COPY | uapi.VFIO_MIGRATION_P2P | uapi.VFIO_MIGRATION_PRE_COPY;
const name = (state: number) => MIGRATION_STATE_NAMES[state];

/** The arcs on which mtty_step_state (and the simulator) return a new data fd. */
const OPENS_FD = new Set([`${RUNNING}>${PRE_COPY}`, `${RUNNING_P2P}>${PRE_COPY_P2P}`, `${STOP}>${STOP_COPY}`, `${STOP}>${RESUMING}`]);

/** Reads a data fd to its end (or to "nothing more for now"), in `size`-byte reads. */
function drain(data: MigrationDataHandle, size = 4096): Uint8Array {
  const parts: Uint8Array[] = [];
  for (;;) {
    const buffer = new Uint8Array(size);
    const n = data.read(buffer);
    if (n === null) continue;
    if (n === 0) break;
    parts.push(buffer.slice(0, n));
  }
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.byteLength, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

async function collect(stream: AsyncIterable<Uint8Array>): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of stream) chunks.push(chunk.slice());
  return chunks;
}

export function defineMigrationContract(target: ContractTarget): void {
  describe(`migration v2 (${target.name})`, () => {
    const t = new ContractFixture(target);
    const simIt = simOnly(target);

    const mig = (): MigrationDevices => {
      const devices = t.env.migration;
      if (!devices) throw new Error('this kernel has no migratable device (the virtio boot creates mtty mdevs)');
      return devices;
    };

    /** Opens a migratable mdev through its cdev, bound and attached to a fresh IOAS (an mdev's access). */
    const open = (location: string, options?: { validateArguments?: boolean }): DeviceHandle => {
      const iommufd = t.iommufd();
      const device = t.device(location, options);
      device.bindIommufd(iommufd);
      device.attachPt(iommufd.ioasAlloc());
      // mtty keeps its migration state across opens (mtty_close leaves it): start from RUNNING.
      if (device.getMigrationState() !== RUNNING) device.reset();
      return device;
    };

    it('VFIO_DEVICE_FEATURE_MIGRATION reports STOP_COPY | P2P | PRE_COPY and the device starts RUNNING; a device without migration answers ENOTTY', () => {
      const device = open(mig().source);
      expect(device.migrationFlags()).toBe(ALL);
      expect(device.getMigrationState()).toBe(RUNNING);
      expect(device.featureProbe(uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)).toBe(true);
      const plain = t.device(t.env.plainDevice);
      plain.bindIommufd(t.iommufd());
      expectKernelError(() => plain.migrationFlags(), 'VFIO_DEVICE_FEATURE', 'ENOTTY');
      expectKernelError(() => plain.getMigrationState(), 'VFIO_DEVICE_FEATURE', 'ENOTTY');
      expectKernelError(() => plain.migrationDataSize(), 'VFIO_DEVICE_FEATURE', 'ENOTTY');
    });

    it('every arc from every state but RESUMING reaches its target; a data fd comes back exactly on the arcs that open a file', () => {
      const device = open(mig().source);
      const states = [STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P];
      let arcs = 0;
      for (const from of states.filter((state) => state !== RESUMING)) {
        for (const to of states) {
          if (from === to || migrationPath(ALL, from, to) === undefined) continue;
          device.reset();
          expect(device.getMigrationState()).toBe(RUNNING);
          if (from !== RUNNING) device.setMigrationState(from)?.close();
          expect(device.getMigrationState(), `reached ${name(from)}`).toBe(from);
          const data = device.setMigrationState(to);
          const path = migrationPath(ALL, from, to)!;
          const last = path.length > 1 ? path.at(-2)! : from;
          expect(device.getMigrationState(), `${name(from)} -> ${name(to)}`).toBe(to);
          expect(data !== undefined, `${name(from)} -> ${name(to)} via ${path.map(name).join(',')}: data fd`).toBe(OPENS_FD.has(`${last}>${to}`));
          data?.close();
          arcs++;
        }
      }
      expect(arcs).toBe(34);
      device.reset();
    });

    it('the kernel refuses STOP_COPY -> PRE_COPY and -> PRE_COPY_P2P with EINVAL and stays in STOP_COPY; ERROR and 8 are EINVAL', () => {
      const raw = open(mig().source, { validateArguments: false });
      raw.setMigrationState(STOP_COPY)?.close();
      for (const to of [PRE_COPY, PRE_COPY_P2P, ERROR, 8]) {
        expectKernelError(() => raw.setMigrationState(to), 'VFIO_DEVICE_FEATURE', 'EINVAL');
        expect(raw.getMigrationState()).toBe(STOP_COPY);
      }
      // The library refuses them before any ioctl.
      const migration = new DeviceMigration(raw);
      expect(migration.state).toBe(STOP_COPY);
      expectInvalidArgument(() => migration.transition(PRE_COPY), 'state');
      expectInvalidArgument(() => migration.transition(ERROR), 'state');
      raw.reset();
    });

    it('leaving RESUMING without a whole stream is EINVAL and the device stays RESUMING; VFIO_DEVICE_RESET forces RUNNING and disables the data fd (ENODEV)', () => {
      const device = open(mig().destination);
      const data = device.setMigrationState(RESUMING)!;
      expect(data).toBeDefined();
      expectKernelError(() => device.setMigrationState(RUNNING), 'VFIO_DEVICE_FEATURE', 'EINVAL');
      expect(device.getMigrationState()).toBe(RESUMING);
      device.reset();
      expect(device.getMigrationState()).toBe(RUNNING);
      expectKernelError(() => data.write(new Uint8Array(8)), 'write', 'ENODEV');
      data.close();
    });

    it('PRECOPY_INFO: initial bytes until they are read, then 0; the PRE_COPY fd goes on into STOP_COPY (no new fd), where PRECOPY_INFO is EINVAL', () => {
      const device = open(mig().source);
      const size = device.migrationDataSize();
      const data = device.setMigrationState(PRE_COPY)!;
      const before = data.precopyInfo();
      expect(before.initialBytes).toBeGreaterThan(0n);
      const precopy = drain(data);
      expect(BigInt(precopy.byteLength)).toBe(before.initialBytes + before.dirtyBytes);
      expect(data.precopyInfo()).toEqual({ initialBytes: 0n, dirtyBytes: 0n });
      expect(device.setMigrationState(PRE_COPY_P2P)).toBeUndefined();
      expect(data.precopyInfo().initialBytes).toBe(0n);
      expect(device.setMigrationState(STOP_COPY)).toBeUndefined();
      expectKernelError(() => data.precopyInfo(), 'VFIO_MIG_GET_PRECOPY_INFO', 'EINVAL');
      const rest = drain(data);
      expect(rest.byteLength).toBeGreaterThan(0);
      expect(data.read(new Uint8Array(64))).toBe(0);
      data.close();
      device.setMigrationState(RUNNING);
      // From STOP, STOP_COPY's stream is MIG_DATA_SIZE bytes.
      device.setMigrationState(STOP);
      const stopCopy = device.setMigrationState(STOP_COPY)!;
      expect(BigInt(drain(stopCopy, 7).byteLength)).toBe(size);
      stopCopy.close();
      device.setMigrationState(RUNNING);
    });

    it('PRECOPY_INFO outside PRE_COPY states is EINVAL; on the resuming fd it is ENOTTY', () => {
      const device = open(mig().source);
      device.setMigrationState(STOP);
      const save = device.setMigrationState(STOP_COPY)!;
      expectKernelError(() => save.precopyInfo(), 'VFIO_MIG_GET_PRECOPY_INFO', 'EINVAL');
      save.close();
      device.setMigrationState(STOP);
      const resume = device.setMigrationState(RESUMING)!;
      expectKernelError(() => resume.precopyInfo(), 'VFIO_MIG_GET_PRECOPY_INFO', 'ENOTTY');
      resume.close();
      device.reset();
    });

    it('DeviceMigration carries the register state source -> destination in chunks, P2P quiescing every device before any STOP_COPY', async () => {
      const devices = mig();
      const source = open(devices.source);
      const destination = open(devices.destination);
      devices.writeState(source);
      const order: string[] = [];
      const watch = (device: DeviceHandle, label: string): DeviceHandle =>
        new Proxy(device, {
          get(target, property) {
            const value = Reflect.get(target, property, target) as unknown;
            if (property === 'setMigrationState') return (state: number) => (order.push(`${label}:${name(state)}`), target.setMigrationState(state));
            return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
          },
        });
      // Two sources at once (the destination device saved too, then reset) show QEMU's order.
      const a = new DeviceMigration(watch(source, 'a'), { chunkSize: 16 });
      const b = new DeviceMigration(watch(destination, 'b'), { chunkSize: 16 });
      const chunks = new Map<DeviceMigration, Uint8Array[]>([[a, []], [b, []]]);
      for await (const chunk of saveDevices([a, b])) chunks.get(chunk.device)!.push(chunk.bytes.slice());
      expect(order).toEqual(['a:PRE_COPY', 'b:PRE_COPY', 'a:PRE_COPY_P2P', 'b:PRE_COPY_P2P', 'a:STOP_COPY', 'b:STOP_COPY', 'a:STOP', 'b:STOP']);
      expect(chunks.get(a)!.every((chunk) => chunk.byteLength <= 16)).toBe(true);
      const saved = chunks.get(a)!.reduce((sum, chunk) => sum + chunk.byteLength, 0);
      expect(saved).toBe(a.counters.bytesSaved);
      // The destination: back to RUNNING (as a fresh one), then load a's stream.
      b.cancel();
      expect(destination.getMigrationState()).toBe(RUNNING);
      expect(devices.readState(destination)).not.toEqual(devices.expectedState);
      destination.reset();
      await b.load(chunks.get(a)!);
      expect(b.counters.bytesLoaded).toBe(saved);
      expect(destination.getMigrationState()).toBe(RUNNING);
      expect(devices.readState(destination)).toEqual(devices.expectedState);
      a.cancel();
      expect(source.getMigrationState()).toBe(RUNNING);
    });

    it('a destination of another type refuses the stream with EFAULT; DeviceMigration.load recovers it to RUNNING (reset) and names the arc', async () => {
      const devices = mig();
      const source = new DeviceMigration(open(devices.source));
      const stream = await collect(source.save());
      source.cancel();
      const other = open(devices.otherType, { validateArguments: false });
      other.setMigrationState(STOP);
      const data = other.setMigrationState(RESUMING)!;
      const whole = new Uint8Array(stream.reduce((sum, chunk) => sum + chunk.byteLength, 0));
      let offset = 0;
      for (const chunk of stream) {
        whole.set(chunk, offset);
        offset += chunk.byteLength;
      }
      const refused = (() => {
        try {
          data.write(whole.subarray(0, 24));
        } catch (error) {
          return error;
        }
      })();
      expect(refused).toBeInstanceOf(KernelError);
      expect([(refused as KernelError).ioctl, (refused as KernelError).code]).toEqual(['write', 'EFAULT']);
      data.close();
      other.reset();
      const destination = new DeviceMigration(other);
      let failure: unknown;
      try {
        await destination.load(stream);
      } catch (error) {
        failure = error;
      }
      expect(failure).toBeInstanceOf(KernelError);
      expect(other.getMigrationState()).toBe(RUNNING);
      expect(destination.state).toBe(RUNNING);
    });

    it('VFIO_DEVICE_RESET during a save: the device is RUNNING and the data fd reads ENODEV', () => {
      const device = open(mig().source);
      const data = device.setMigrationState(PRE_COPY)!;
      device.reset();
      expect(device.getMigrationState()).toBe(RUNNING);
      expectKernelError(() => data.read(new Uint8Array(16)), 'read', 'ENODEV');
      data.close();
    });

    simIt('a failed SET is recovered to the recovery state, and when that fails too, by VFIO_DEVICE_RESET to RUNNING [sim only: fault injection]', () => {
      const device = open(mig().source);
      const migration = new DeviceMigration(device);
      migration.transition(RUNNING_P2P);
      t.sim.kernel.failNext('VFIO_DEVICE_FEATURE', 'EIO', { objects: { feature: 'MIG_DEVICE_STATE', device_state: STOP_COPY } });
      let error = (() => {
        try {
          migration.transition(STOP_COPY, RUNNING);
        } catch (caught) {
          return caught;
        }
      })() as MigrationTransitionError;
      expect(error).toBeInstanceOf(MigrationTransitionError);
      expect([error.arc, error.recovery, error.reached, error.state, error.cause?.code]).toEqual(['RUNNING_P2P -> STOP_COPY', 'recovery-state', RUNNING_P2P, RUNNING, 'EIO']);
      expect(device.getMigrationState()).toBe(RUNNING);
      t.sim.kernel.failNext('VFIO_DEVICE_FEATURE', 'EIO', { objects: { feature: 'MIG_DEVICE_STATE' }, times: 2 });
      error = (() => {
        try {
          migration.transition(PRE_COPY);
        } catch (caught) {
          return caught;
        }
      })() as MigrationTransitionError;
      expect([error.arc, error.recovery, error.state]).toEqual(['RUNNING -> PRE_COPY', 'reset', RUNNING]);
      expect(error.message).toMatch(/RUNNING -> PRE_COPY failed .*VFIO_DEVICE_RESET: the device is RUNNING/);
      expect(device.getMigrationState()).toBe(RUNNING);
    });

    simIt('PRE_COPY dirty bytes grow with device activity while running, and the dirtied state arrives [sim only: mtty reports dirty_bytes 0 always]', async () => {
      const devices = mig();
      const source = open(devices.source);
      const destination = open(devices.destination);
      const migration = new DeviceMigration(source, { chunkSize: 8 });
      expect(migration.startPrecopy()).toBe(true);
      const first = await collect(migration.precopyChunks());
      expect(migration.precopyInfo()).toEqual({ initialBytes: 0n, dirtyBytes: 0n });
      devices.writeState(source);
      const dirty = migration.precopyInfo()!.dirtyBytes;
      expect(dirty).toBeGreaterThan(0n);
      expect(migration.pendingBytes()).toBe(dirty);
      const second = await collect(migration.precopyChunks());
      expect(BigInt(second.reduce((sum, chunk) => sum + chunk.byteLength, 0))).toBe(dirty);
      migration.quiesce();
      const last = await collect(migration.stopCopy());
      await new DeviceMigration(destination).load([...first, ...second, ...last]);
      expect(devices.readState(destination)).toEqual(devices.expectedState);
      migration.cancel();
    });
  });
}
