// L. A live migration on the real kernel, source to destination process over loopback TCP: RAM
// mapped in an IOAS that edu's DMA engine writes into during precopy, and the mtty mdev's device
// state (VFIO migration v2). The destination checks both: its RAM is the source's byte for byte
// (and by SHA-256), and its UART registers read back the state the source set.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { DirtySync } from '../../src/dirty/index.js';
import { DeviceMigration, DeviceMigrationSource, Migration } from '../../src/migration/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';
import { edu, onVirtioIommu } from './harness/guest-env.js';
import { eduCopy, eduDriver, enableBusMaster, pattern } from './support/edu.js';
import { flushCoverage, kernel } from './support/kernel.js';
import { hasMtty, mtty, mttyMigration, MTTY_STATE } from './support/mtty.js';

const RAM = 1n << 20n;
const IOVA = 0x10_0000n;
afterAll(() => flushCoverage('live-migration.test.ts'));

describe.runIf(onVirtioIommu && hasMtty)('live migration over TCP on the real kernel', () => {
  it('moves edu-written RAM and mtty state to a destination process, which holds both exactly', async () => {
    const space = new AddressSpace(kernel());
    const memory = kernel().allocateHostMemory(RAM);
    const bytes = memory.bytes!;
    bytes.set(pattern(Number(RAM), 7));
    bytes.fill(0, Number(RAM) / 2); // a zero half: sent as zero pages
    // The destination runs the compiled package, as a user's second process would.
    const script = fileURLToPath(new URL('../../dist/test/kernel/support/migration-destination.js', import.meta.url));
    const destination = spawn(process.execPath, [script, String(RAM)], { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
    const exited = once(destination, 'exit');
    const lines = createInterface({ input: destination.stdout! })[Symbol.asyncIterator]();
    try {
      await space.map({ iova: IOVA, size: RAM, memory });
      const eduDevice = await space.attach(edu.cdev);
      const source = await space.attach(mtty.source);
      source.handle.reset();
      mttyMigration.writeState(source.handle);
      // edu has no dirty tracking on virtio-iommu: its memory is sent whole every round.
      const sync = new DirtySync(space, { workers: 1, allowUntrackedDevices: true });
      await sync.start();
      enableBusMaster(eduDevice.handle);
      const driver = eduDriver(eduDevice.handle);
      const { port } = JSON.parse((await lines.next()).value as string) as { port: number };
      const socket = connect(port, '127.0.0.1');
      await once(socket, 'connect');
      let dmas = 0;
      const device = new DeviceMigration(source.handle);
      const migration = new Migration(sync, {
        stream: socket, memories: [memory], devices: [new DeviceMigrationSource(device, 'serial0')], downtimeLimitMs: 10_000, maxRounds: 4,
        stopGuest: () => undefined, resumeGuest: () => undefined,
        // While precopy runs, edu copies RAM into RAM by DMA (through its buffer), into the zero half.
        guestRan: async () => {
          if (dmas++ > 0) return;
          await eduCopy(driver, IOVA, IOVA + 0x8_0000n);
        },
      });
      const summary = await migration.run();
      const landed = JSON.parse((await lines.next()).value as string) as { state: number[]; sha256: string; deviceStateBytes: number; migrationState: number };
      // The DMA landed in the source's RAM (in the zero half) during precopy, and went over.
      expect(dmas).toBeGreaterThan(0);
      expect(Buffer.from(bytes.subarray(0x8_0000, 0x8_0000 + 2048)).equals(Buffer.from(bytes.subarray(0, 2048)))).toBe(true);
      expect(summary).toMatchObject({ verified: true, mismatchedPages: 0, ramBytesCompared: Number(RAM) });
      expect(summary.deviceStateBytes).toBe(96); // MIG_DATA_SIZE of mtty-2: a 24-byte header and 36 bytes per port
      expect(landed.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
      expect(landed.state).toEqual([...MTTY_STATE]);
      expect(landed.deviceStateBytes).toBe(96);
      socket.destroy();
      device.close();
      await sync.stop();
    } finally {
      await space.close();
      memory.release();
      destination.kill();
      await exited;
    }
    expect(destination.exitCode === 0 || destination.signalCode === 'SIGTERM').toBe(true);
  }, 300_000);
});
