// The destination process of the real-kernel live migration (test/kernel/live-migration.test.ts):
// listens on 127.0.0.1, opens the mtty destination mdev on the real kernel, loads RAM into its
// own memory and the device state into the mdev, then prints what it holds as one JSON line:
// the UART registers read back from BAR0 and a SHA-256 of its RAM.
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { linuxKernel } from '../../../src/kernel/linux/index.js';
import { DeviceMigration, DeviceMigrationSink, MigrationTarget } from '../../../src/migration/index.js';
import { AddressSpace } from '../../../src/vfio/address-space.js';
import { mtty, mttyMigration } from './mtty.js';

const bytes = BigInt(process.argv[2] ?? '1048576');
const kernel = linuxKernel();
const space = new AddressSpace(kernel);
const memory = kernel.allocateHostMemory(bytes);
try {
  const device = await space.attach(mtty.destination);
  device.handle.reset(); // closing a device keeps its migration state: start from RUNNING
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  process.stdout.write(`${JSON.stringify({ port: (server.address() as { port: number }).port })}\n`);
  const [socket] = (await once(server, 'connection')) as [Socket];
  server.close();
  const migration = new DeviceMigration(device.handle);
  const summary = await new MigrationTarget({ stream: socket, memories: [memory], pageSize: 4096, devices: [new DeviceMigrationSink(migration, 'serial0')] }).run();
  const state = mttyMigration.readState(device.handle);
  const sha256 = createHash('sha256').update(memory.bytes!).digest('hex');
  process.stdout.write(`${JSON.stringify({ state, sha256, rounds: summary.rounds, deviceStateBytes: summary.deviceStateBytes, migrationState: migration.state })}\n`);
  migration.close();
} finally {
  await space.close();
  memory.release();
}
