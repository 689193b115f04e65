// Migration and MigrationTarget over loopback TCP on the simulated kernel: memory with content,
// device DMA writing new bytes between rounds, and the faults: a dropped connection, a refusing
// destination, a device failing its transition, a link slower than the dirty rate.
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirtySync } from '../../src/dirty/index.js';
import { Engine } from '../../src/engine/index.js';
import { simulatedKernel } from '../../src/kernel/sim/index.js';
import type { HostMemory } from '../../src/kernel/types.js';
import {
  Migration, MigrationFailedError, MigrationRefusedError, MigrationTarget, StreamFormatError, type DeviceStateSink, type DeviceStateSource,
} from '../../src/migration/index.js';
import { AddressSpace } from '../../src/vfio/address-space.js';

const PAGE = 4096n;
const MiB = 1n << 20n;
let engine: Engine;
beforeAll(async () => {
  engine = await Engine.create({ workers: 2 });
});
afterAll(async () => {
  await engine.close();
});

/** A connected pair of loopback TCP sockets. */
async function socketPair(): Promise<[Socket, Socket]> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = connect((server.address() as { port: number }).port, '127.0.0.1');
  const [accepted] = (await once(server, 'connection')) as [Socket];
  await once(client, 'connect').catch(() => undefined);
  server.close();
  return [client, accepted];
}

/** Starts the destination; its rejection is observed now and asserted later. */
function started<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/** A device whose state is a blob: precopy sends its first half, stop-copy the rest. */
class BlobDevice implements DeviceStateSource {
  readonly calls: string[] = [];
  constructor(readonly name: string, readonly blob: Uint8Array, private readonly failQuiesce = false) {}
  async pendingBytes() {
    return this.calls.includes('precopy') ? this.blob.length / 2 : this.blob.length;
  }
  async *precopy() {
    if (this.calls.includes('precopy')) return;
    this.calls.push('precopy');
    yield this.blob.subarray(0, this.blob.length / 2);
  }
  async quiesce() {
    this.calls.push('quiesce');
    if (this.failQuiesce) throw new Error('VFIO_DEVICE_FEATURE(MIG_DEVICE_STATE PRE_COPY -> PRE_COPY_P2P) failed: Input/output error');
  }
  async *stopCopy() {
    this.calls.push('stop-copy');
    yield this.blob.subarray(this.blob.length / 2);
  }
  async resume() {
    this.calls.push('resume');
  }
}

class BlobSink implements DeviceStateSink {
  readonly chunks: Uint8Array[] = [];
  readonly calls: string[] = [];
  constructor(readonly name: string) {}
  async begin() { this.calls.push('resuming'); }
  async write(chunk: Uint8Array) { this.chunks.push(Uint8Array.from(chunk)); }
  async quiesced() { this.calls.push('running-p2p'); }
  async run() { this.calls.push('running'); }
  async abort() { this.calls.push('abort'); }
  get bytes() { return Buffer.concat(this.chunks); }
}

async function source(regions: bigint[], devices = [{ name: 'nic0', iommuDirtyTracking: true }, { name: 'gpu0', dmaLogging: { pageSize: 65536n } }]) {
  const kernel = simulatedKernel({ devices });
  const space = new AddressSpace(kernel);
  const memories: HostMemory[] = [];
  let iova = 0n;
  for (const length of regions) {
    const memory = kernel.allocateHostMemory(length, { content: true });
    memory.bytes!.fill(7, 0, Number(length) / 2); // half data, half zero pages
    memories.push(memory);
    await space.map({ iova, size: length, memory });
    iova += 1n << 30n;
  }
  for (const d of devices) await space.attach(d.name);
  const sync = new DirtySync(space, { engine });
  await sync.start();
  let writes = 0;
  const guest = {
    stopped: false,
    stops: 0,
    resumes: 0,
    /** The devices write `pages` pages of new content. */
    run(pages: number) {
      if (this.stopped) return;
      const data = new Uint8Array(Number(PAGE));
      for (let i = 0; i < pages; i++) {
        data.fill(++writes & 0xff);
        const region = writes % regions.length;
        const page = BigInt((writes * 7919) % Number(regions[region]! / PAGE));
        kernel.dmaWrite(devices[writes % devices.length]!.name, BigInt(region) * (1n << 30n) + page * PAGE, PAGE, data);
      }
    },
  };
  const close = async () => {
    if (sync.started) await sync.stop();
    await space.close();
    for (const m of memories) m.release();
    kernel.assertClean();
  };
  return { kernel, space, sync, memories, guest, close };
}

function destinationMemories(regions: bigint[]) {
  const kernel = simulatedKernel({ devices: [] });
  return regions.map((length) => kernel.allocateHostMemory(length, { content: true }));
}

describe('Migration over TCP', () => {
  it('moves RAM and device state; the destination equals the source byte for byte', async () => {
    const regions = [8n * MiB, 4n * MiB];
    const src = await source(regions);
    const [a, b] = await socketPair();
    const device = new BlobDevice('gpu0', Uint8Array.from({ length: 1000 }, (_, i) => i % 251));
    const sink = new BlobSink('gpu0');
    const memories = destinationMemories(regions);
    let ran = 0;
    const target = started(new MigrationTarget({ stream: b, memories, pageSize: 4096, devices: [sink], runGuest: () => void ran++ }).run());
    const migration = new Migration(src.sync, {
      stream: a, memories: src.memories, devices: [device], downtimeLimitMs: 1000, maxRounds: 10,
      stopGuest: () => { src.guest.stopped = true; src.guest.stops++; },
      resumeGuest: () => { src.guest.stopped = false; },
      guestRan: () => src.guest.run(50),
    });
    const summary = await migration.run();
    const landed = await target;
    expect(summary).toMatchObject({ verified: true, mismatchedPages: 0, ramBytesCompared: Number(12n * MiB), deviceStateBytes: 1000 });
    expect(summary.zeroPages).toBeGreaterThan(0);
    expect(summary.rounds).toBeGreaterThanOrEqual(2);
    // Independently of the stream's own check: the bytes are equal.
    for (const [i, m] of memories.entries()) expect(Buffer.compare(m.bytes!, src.memories[i]!.bytes!)).toBe(0);
    expect(sink.bytes.equals(Buffer.from(device.blob))).toBe(true);
    expect(device.calls).toEqual(['precopy', 'quiesce', 'stop-copy']);
    expect(sink.calls).toEqual(['resuming', 'running-p2p', 'running']);
    expect(ran).toBe(1);
    expect(landed.rounds).toBe(summary.rounds);
    await src.close();
  });

  it('a destination with other memory refuses before it changes anything; the source keeps running', async () => {
    const src = await source([8n * MiB]);
    const [a, b] = await socketPair();
    const memories = destinationMemories([4n * MiB]);
    const target = started(new MigrationTarget({ stream: b, memories, pageSize: 4096 }).run());
    const migration = new Migration(src.sync, {
      stream: a, memories: src.memories, downtimeLimitMs: 300, maxRounds: 5, stopGuest: () => void src.guest.stops++, resumeGuest: () => undefined,
    });
    await expect(migration.run()).rejects.toThrow(/the destination refused: RAM regions 0x800000; this destination has 0x400000/);
    await expect(target).rejects.toBeInstanceOf(MigrationRefusedError);
    expect(memories[0]!.bytes!.every((byte) => byte === 0)).toBe(true);
    expect(src.guest.stops).toBe(0);
    await src.close();
  });

  it('a connection dropped mid-round fails the source, which runs on with nothing lost; the destination never runs the guest', async () => {
    const regions = [16n * MiB];
    const src = await source(regions);
    const [a, b] = await socketPair();
    const memories = destinationMemories(regions);
    let received = 0;
    b.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received > 2 * Number(MiB)) b.destroy(); // the link goes down in the bulk round
    });
    let ran = 0;
    const target = started(new MigrationTarget({ stream: b, memories, pageSize: 4096, devices: [new BlobSink('gpu0')], runGuest: () => void ran++ }).run());
    const device = new BlobDevice('gpu0', new Uint8Array(64));
    const migration = new Migration(src.sync, {
      stream: a, memories: src.memories, devices: [device], downtimeLimitMs: 300, maxRounds: 5, stopGuest: () => void src.guest.stops++, resumeGuest: () => undefined,
    });
    const error = await migration.run().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MigrationFailedError);
    expect((error as MigrationFailedError).step).toBe('precopy round 1');
    await expect(target).rejects.toBeInstanceOf(Error);
    expect(ran).toBe(0);
    expect(src.guest.stops).toBe(0);
    expect(device.calls).toContain('resume');
    // The pages the failed round took were given back: the next round hands all of memory over again.
    expect((await src.sync.round()).dirtyPages).toBe(Number(16n * MiB / PAGE));
    await src.close();
  });

  it('a device failing its transition at the switchover fails the migration and resumes the guest and devices', async () => {
    const regions = [4n * MiB];
    const src = await source(regions);
    const [a, b] = await socketPair();
    const target = started(new MigrationTarget({ stream: b, memories: destinationMemories(regions), pageSize: 4096, devices: [new BlobSink('gpu0')] }).run());
    const device = new BlobDevice('gpu0', new Uint8Array(64), true);
    const migration = new Migration(src.sync, {
      stream: a, memories: src.memories, devices: [device], downtimeLimitMs: 10_000, maxRounds: 3,
      stopGuest: () => { src.guest.stopped = true; src.guest.stops++; },
      resumeGuest: () => { src.guest.stopped = false; src.guest.resumes++; },
    });
    await expect(migration.run()).rejects.toThrow(/migration failed during the stop-and-copy: .*PRE_COPY -> PRE_COPY_P2P.*; the source guest is running again/);
    expect(src.guest).toMatchObject({ stopped: false, stops: 1, resumes: 1 });
    expect(device.calls.at(-1)).toBe('resume');
    await expect(target).rejects.toBeInstanceOf(Error);
    await src.close();
  });

  it('a link slower than the dirty rate never converges: it stops at the round limit, says so, and still verifies', async () => {
    const regions = [4n * MiB];
    const src = await source(regions);
    const [a, b] = await socketPair();
    const target = started(new MigrationTarget({ stream: b, memories: destinationMemories(regions), pageSize: 4096 }).run());
    const migration = new Migration(src.sync, {
      stream: a, memories: src.memories, downtimeLimitMs: 5, maxRounds: 3, bandwidthBytesPerSecond: 8 * 1024 * 1024,
      stopGuest: () => { src.guest.stopped = true; }, resumeGuest: () => undefined,
      guestRan: () => src.guest.run(400),
    });
    const summary = await migration.run();
    await target;
    expect(summary.converged).toBe(false);
    expect(summary.reason).toMatch(/did not converge within 3 rounds/);
    expect(summary.rounds).toBe(4); // three precopy rounds, then the stop-and-copy
    expect(summary).toMatchObject({ verified: true, mismatchedPages: 0 });
    await src.close();
  });

  it('the destination rejects a corrupted record (checksum) and never runs the guest', async () => {
    const regions = [4n * MiB];
    const src = await source(regions);
    const [a, b] = await socketPair();
    let seen = 0;
    let ran = 0;
    const { PassThrough, Duplex } = await import('node:stream');
    const corrupt = new PassThrough();
    b.on('data', (chunk: Buffer) => {
      const copy = Buffer.from(chunk);
      if (seen < 100_000 && seen + copy.length > 100_000) copy[100_000 - seen]! ^= 0xff;
      seen += copy.length;
      corrupt.write(copy);
    });
    const stream = Duplex.from({ readable: corrupt, writable: b });
    // The destination's process would close its socket as it fails: do that for the wrapper.
    const target = started(new MigrationTarget({ stream, memories: destinationMemories(regions), pageSize: 4096, runGuest: () => void ran++ }).run());
    target.catch(() => b.destroy());
    const migration = new Migration(src.sync, {
      stream: a, memories: src.memories, downtimeLimitMs: 300, maxRounds: 3, stopGuest: () => undefined, resumeGuest: () => undefined,
    });
    const running = started(migration.run());
    await expect(target).rejects.toBeInstanceOf(StreamFormatError);
    await expect(running).rejects.toBeInstanceOf(MigrationFailedError);
    expect(ran).toBe(0);
    await src.close();
  });
});
