// `vfio-iommufd migrate`: a live migration of a simulated guest with real memory content from
// this process to a destination process over TCP, checked byte for byte at the end. By default
// the destination is a child process listening on 127.0.0.1; --listen and --connect run the two
// sides apart.
import { fork } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { availableParallelism, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { DirtySync } from '../dirty/index.js';
import { simulatedKernel, Xoshiro128 } from '../kernel/sim/index.js';
import type { HostMemory } from '../kernel/types.js';
import { DeviceMigration, DeviceMigrationSink, DeviceMigrationSource, Migration, MigrationTarget, type MigrationRound, type MigrationSummary } from '../migration/index.js';
import { AddressSpace } from '../vfio/address-space.js';
import { printJson, progress, table } from './output.js';
import { addReportOption, reportPath, writeReport, type ReportPage } from './report.js';
import { deviceSpec, guestRanges, parseDeviceOption, WORKLOADS, type SimulatedDeviceOption, type WorkloadName } from './simulation.js';
import { formatBytes, parseCount, parseDuration, parseRate, parseSize, UsageError } from './units.js';

const PAGE = 4096n;
const REGION_MAX = 1n << 30n;
const DEFAULT_DEVICES = ['nic0:iommu-dirty', 'gpu0:dma-logging'];

interface MigrateFlags {
  guestMemory: string;
  device: string[];
  workload: string;
  dirtyRate: string;
  bandwidth?: string;
  downtime: string;
  seed: string;
  workers: string;
  maxRounds: string;
  listen?: string;
  connect?: string;
  json?: boolean;
  report?: string;
}

/** The most guest memory `migrate` takes: both sides hold it, and the check reads it back. */
export function guestMemoryLimit(): bigint {
  return (BigInt(totalmem()) / 4n / (2n << 20n)) * (2n << 20n);
}

/** Guest RAM regions (at most 1 GiB each, as a VM's RAM blocks) over the x86 layout. */
export function regionLayout(guestMemory: bigint): { iova: bigint; length: bigint }[] {
  const out: { iova: bigint; length: bigint }[] = [];
  for (const range of guestRanges(guestMemory)) {
    for (let at = 0n; at < range.length; at += REGION_MAX) {
      out.push({ iova: range.iova + at, length: range.length - at < REGION_MAX ? range.length - at : REGION_MAX });
    }
  }
  return out;
}

function parseAddress(option: string, text: string): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(text);
  const port = match ? Number(match[2]) : NaN;
  if (!match || !(port >= 0 && port <= 65535)) throw new UsageError(`${option}: ${JSON.stringify(text)} must be HOST:PORT (for example 127.0.0.1:7000)`);
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port };
}

/** The guest's devices write pages with new content, in the chosen pattern, at the dirty rate. */
class ContentWorkload {
  private readonly random: Xoshiro128;
  private readonly page = new Uint8Array(Number(PAGE));
  private sweep = 0;
  stopped = false;
  pagesWritten = 0;

  constructor(
    private readonly kernel: ReturnType<typeof simulatedKernel>,
    private readonly regions: readonly { iova: bigint; length: bigint }[],
    private readonly devices: readonly string[],
    private readonly pattern: WorkloadName,
    private readonly dirtyRate: number,
    seed: number,
  ) {
    this.random = new Xoshiro128(seed);
  }

  /** The guest ran for `seconds`: its devices wrote rate × seconds bytes. */
  run(seconds: number): void {
    if (this.stopped || this.devices.length === 0) return;
    const total = this.regions.reduce((n, r) => n + Number(r.length / PAGE), 0);
    let pages = Math.round((this.dirtyRate * seconds) / Number(PAGE));
    const words = new Uint32Array(this.page.buffer);
    while (pages-- > 0) {
      let index: number;
      if (this.pattern === 'uniform') index = this.random.nextBelow(total);
      else if (this.pattern === 'hotset') index = this.random.nextBelow(1_000) < 900 ? this.random.nextBelow(Math.max(1, Math.floor(total * 0.05))) : this.random.nextBelow(total);
      else if (this.pattern === 'sweep') index = this.sweep++ % total;
      else index = (Math.floor(this.random.nextBelow(total) / 64) * 64 + (this.sweep++ % 64)) % total;
      for (let i = 0; i < words.length; i++) words[i] = this.random.nextUint32();
      let iova = 0n;
      let left = index;
      for (const r of this.regions) {
        const n = Number(r.length / PAGE);
        if (left < n) {
          iova = r.iova + BigInt(left) * PAGE;
          break;
        }
        left -= n;
      }
      this.kernel.dmaWrite(this.devices[this.random.nextBelow(this.devices.length)]!, iova, PAGE, this.page);
      this.pagesWritten++;
    }
  }
}

export interface MigrateResult {
  readonly guestBytes: number;
  readonly devices: { name: string; tracker: string }[];
  readonly rounds: MigrationRound[];
  readonly summary: MigrationSummary & { transport: 'tcp'; loopbackRawBytesPerSecond: number | null; workloadPagesWritten: number };
}

interface SourceOptions {
  guestMemory: bigint;
  devices: readonly SimulatedDeviceOption[];
  workload: WorkloadName;
  dirtyRate: number;
  bandwidth: number | undefined;
  downtimeMs: number;
  seed: number;
  workers: number;
  maxRounds: number;
  onRound?: (round: MigrationRound) => void;
}

/** The source side: a simulated guest with content, migrated over `socket`. */
export async function migrateSource(socket: Socket, options: SourceOptions): Promise<Omit<MigrateResult, 'summary'> & { summary: MigrationSummary; workloadPagesWritten: number }> {
  const kernel = simulatedKernel({ devices: options.devices.map(deviceSpec) });
  const space = new AddressSpace(kernel);
  const layout = regionLayout(options.guestMemory);
  const memories: HostMemory[] = [];
  const sync = new DirtySync(space, { workers: options.workers, pageSize: PAGE, allowUntrackedDevices: true });
  try {
    for (const region of layout) {
      const memory = kernel.allocateHostMemory(region.length, { content: true });
      // The guest's memory before migration: half of it data, half zero pages.
      for (let at = 0; at < memory.bytes!.length; at += 4 << 20) randomFillSync(memory.bytes!, at, Math.min(2 << 20, memory.bytes!.length - at));
      memories.push(memory);
      await space.map({ iova: region.iova, size: region.length, memory });
    }
    for (const device of options.devices) await space.attach(device.name);
    const devices = space.devices.map((d) => ({ name: d.name, tracker: d.dirtyTracker }));
    // Devices with VFIO migration state go with the RAM: PRE_COPY data while running, STOP_COPY at the switchover.
    const stateful = options.devices.filter((d) => d.words.includes('migration')).map((d) => new DeviceMigrationSource(new DeviceMigration(space.device(d.name).handle)));
    await sync.start();
    const workload = new ContentWorkload(kernel, layout, options.devices.map((d) => d.name), options.workload, options.dirtyRate, options.seed);
    const rounds: MigrationRound[] = [];
    const migration = new Migration(sync, {
      stream: socket, memories, devices: stateful, downtimeLimitMs: options.downtimeMs, maxRounds: options.maxRounds, bandwidthBytesPerSecond: options.bandwidth,
      stopGuest: () => {
        workload.stopped = true;
      },
      resumeGuest: () => {
        workload.stopped = false;
      },
      guestRan: (seconds) => workload.run(seconds),
      onRound: (round) => {
        rounds.push(round);
        options.onRound?.(round);
      },
    });
    const summary = await migration.run();
    return { guestBytes: Number(options.guestMemory), devices, rounds, summary, workloadPagesWritten: workload.pagesWritten };
  } finally {
    if (sync.started) await sync.stop();
    await space.close();
    for (const m of memories) m.release();
  }
}

/** The destination side: the same layout of memory and the same devices, loaded from `socket`. */
export async function migrateDestination(socket: Socket, guestMemory: bigint, devices: readonly SimulatedDeviceOption[] = []): Promise<{ ramBytes: number; rounds: number; deviceStateBytes: number }> {
  const kernel = simulatedKernel({ devices: devices.map(deviceSpec) });
  const space = new AddressSpace(kernel);
  const memories = regionLayout(guestMemory).map((r) => kernel.allocateHostMemory(r.length, { content: true }));
  try {
    const sinks: DeviceMigrationSink[] = [];
    for (const d of devices.filter((d) => d.words.includes('migration'))) sinks.push(new DeviceMigrationSink(new DeviceMigration((await space.attach(d.name)).handle)));
    const target = new MigrationTarget({ stream: socket, memories, pageSize: Number(PAGE), devices: sinks });
    const summary = await target.run();
    return { ramBytes: summary.ramBytes, rounds: summary.rounds, deviceStateBytes: summary.deviceStateBytes };
  } finally {
    await space.close();
    for (const m of memories) m.release();
  }
}

/** Raw TCP throughput of the loopback on this machine now: 256 MiB through one connection, no framing. */
async function loopbackThroughput(): Promise<number> {
  const server = createServer((socket) => socket.resume());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const socket = connect(port, '127.0.0.1');
  await once(socket, 'connect');
  const chunk = Buffer.alloc(1 << 20, 0xa5);
  const total = 256;
  const t0 = performance.now();
  for (let i = 0; i < total; i++) if (!socket.write(chunk)) await once(socket, 'drain');
  socket.end();
  await once(socket, 'close');
  const seconds = (performance.now() - t0) / 1000;
  server.close();
  return (total * chunk.length) / seconds;
}

function listen(address: { host: string; port: number }): Promise<Server> {
  const server = createServer();
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => resolve(server));
  });
}

/** The --report page: pages sent by round, and the downtime each round predicted against the one measured. */
export function migratePage(result: MigrateResult, options: readonly string[]): ReportPage {
  const s = result.summary;
  const rounds = result.rounds.map((r) => ({ round: r.round, kind: r.kind, dirtyPages: r.dirtyPages, zeroPages: r.zeroPages, predictedDowntimeMs: Number.isFinite(r.predictedDowntimeMs) ? r.predictedDowntimeMs : null }));
  return {
    title: 'vfio-iommufd migrate',
    summary: [
      `guest ${formatBytes(result.guestBytes)}, ${result.devices.map((d) => `${d.name} (${d.tracker})`).join(', ')}, over TCP`,
      s.converged ? `converged after ${s.rounds} rounds` : `did not converge: ${s.reason}`,
      `downtime ${s.downtimeMs.toFixed(1)} ms measured, ${s.predictedDowntimeMs === null ? '-' : `${s.predictedDowntimeMs.toFixed(1)} ms`} predicted`,
      `verified: ${s.verified ? 'yes' : 'NO'} (${formatBytes(s.ramBytesCompared)} compared byte for byte, ${s.mismatchedPages} mismatched pages)`,
      `stream ${formatBytes(s.throughputBytesPerSecond)}/s; loopback raw ${s.loopbackRawBytesPerSecond === null ? '-' : `${formatBytes(s.loopbackRawBytesPerSecond)}/s`}`,
      `options: ${options.join(' ') || '(defaults)'}`,
    ],
    charts: [
      {
        id: 'dirty-pages', title: 'Pages sent by round', caption: 'Dirty pages each round handed over, and how many of them were zero pages (sent without data); log scale.',
        spec: {
          width: 720, height: 260,
          data: { values: rounds.flatMap((r) => [{ round: r.round, pages: r.dirtyPages, series: 'dirty (sent)' }, { round: r.round, pages: r.zeroPages, series: 'zero pages' }]).filter((p) => p.pages > 0) },
          mark: { type: 'line', point: true },
          encoding: {
            x: { field: 'round', type: 'ordinal', title: 'round' },
            y: { field: 'pages', type: 'quantitative', scale: { type: 'log' }, title: 'pages (4 KiB)' },
            color: { field: 'series', type: 'nominal', title: null },
          },
        },
      },
      {
        id: 'downtime', title: 'Predicted downtime by round, and the measured one', caption: `The downtime each round predicted for a switchover after it; the rule is the downtime measured at the switchover (${s.downtimeMs.toFixed(1)} ms).`,
        spec: {
          width: 720, height: 260,
          layer: [
            { data: { values: rounds.filter((r) => r.predictedDowntimeMs !== null) }, mark: { type: 'bar' }, encoding: { x: { field: 'round', type: 'ordinal', title: 'round' }, y: { field: 'predictedDowntimeMs', type: 'quantitative', title: 'downtime (ms)' }, color: { field: 'kind', type: 'nominal', title: null } } },
            { data: { values: [{ measured: s.downtimeMs }] }, mark: { type: 'rule', color: 'black', strokeDash: [4, 3] }, encoding: { y: { field: 'measured', type: 'quantitative' } } },
          ],
        },
      },
    ],
    document: result,
  };
}

function render(result: MigrateResult): string {
  const lines: string[] = [];
  const s = result.summary;
  lines.push(`guest ${formatBytes(result.guestBytes)}; devices: ${result.devices.map((d) => `${d.name} (${d.tracker})`).join(', ')}; transport: tcp`);
  lines.push(table(
    ['round', 'kind', 'dirty pages', 'zero pages', 'RAM sent', 'device state', 'seconds', 'throughput', 'dirty rate', 'predicted downtime'],
    result.rounds.map((r) => [
      r.round, r.kind, r.dirtyPages, r.zeroPages, formatBytes(r.ramBytes), formatBytes(r.deviceStateBytes), r.seconds.toFixed(3),
      `${formatBytes(r.throughputBytesPerSecond)}/s`, `${formatBytes(r.dirtyRateBytesPerSecond)}/s`, Number.isFinite(r.predictedDowntimeMs) ? `${r.predictedDowntimeMs.toFixed(1)} ms` : '-',
    ]),
  ));
  lines.push(s.converged ? `converged after ${s.rounds} rounds` : `did not converge: ${s.reason}`);
  lines.push(`downtime: ${s.downtimeMs.toFixed(1)} ms (predicted ${s.predictedDowntimeMs === null ? '-' : `${s.predictedDowntimeMs.toFixed(1)} ms`})`);
  lines.push(`stream: ${formatBytes(s.streamBytes)} at ${formatBytes(s.throughputBytesPerSecond)}/s; loopback raw: ${s.loopbackRawBytesPerSecond === null ? '-' : `${formatBytes(s.loopbackRawBytesPerSecond)}/s`}`);
  lines.push(`verified: ${s.verified ? 'yes' : 'NO'}: ${formatBytes(s.ramBytesCompared)} compared byte for byte, ${s.mismatchedPages} mismatched pages`);
  return lines.join('\n');
}

export function registerMigrate(program: Command): void {
  addReportOption(program
    .command('migrate'))
    .description('live-migrate a simulated guest (real memory content) to a destination process over TCP and check the destination byte for byte')
    .option('--guest-memory <size>', `guest memory (at most a quarter of this machine's memory: ${formatBytes(guestMemoryLimit())})`, '1GiB')
    .option('--device <name:spec>', `a device, repeatable; spec words joined by +: iommu-dirty, dma-logging, mdev, legacy, migration (VFIO migration v2 state, moved with the RAM) (default: ${DEFAULT_DEVICES.join(' ')}); give the destination the same devices`, (value: string, all: string[]) => [...all, value], [] as string[])
    .option('--workload <kind>', `guest write pattern: ${WORKLOADS.join('|')}`, 'hotset')
    .option('--dirty-rate <rate>', 'bytes the guest\'s devices write per second', '100MiB/s')
    .option('--bandwidth <rate>', 'limit the migration stream to this rate (default: as fast as the link goes)')
    .option('--downtime <duration>', 'downtime limit', '300ms')
    .option('--seed <n>', 'workload seed', '1')
    .option('--workers <n>', 'engine worker threads', String(availableParallelism()))
    .option('--max-rounds <n>', 'precopy rounds before switching over anyway', '30')
    .option('--listen <host:port>', 'be the destination: accept one migration on this address')
    .option('--connect <host:port>', 'be the source: migrate to the destination at this address')
    .option('--json', 'print one JSON document')
    .action(async (flags: MigrateFlags) => {
      const reportFile = reportPath(flags.report);
      const guestMemory = parseSize('--guest-memory', flags.guestMemory);
      if (guestMemory % (2n << 20n) !== 0n) throw new UsageError('--guest-memory must be a multiple of 2MiB');
      const limit = guestMemoryLimit();
      if (guestMemory > limit) throw new UsageError(`--guest-memory ${formatBytes(guestMemory)} is more than migrate holds on this machine (${formatBytes(limit)}: a quarter of its memory, since both sides hold the guest)`);
      if (flags.listen && flags.connect) throw new UsageError('--listen and --connect: give one, or neither to run both sides here');
      if (flags.listen) {
        const server = await listen(parseAddress('--listen', flags.listen));
        const address = server.address() as { address: string; port: number };
        process.send?.({ listening: address.port });
        if (!process.send) process.stderr.write(`vfio-iommufd migrate: listening on ${address.address}:${address.port}\n`);
        const [socket] = (await once(server, 'connection')) as [Socket];
        server.close();
        const result = await migrateDestination(socket, guestMemory, (flags.device.length ? flags.device : DEFAULT_DEVICES).map(parseDeviceOption));
        if (flags.json) printJson({ destination: result });
        else process.stdout.write(`destination: ${result.rounds} rounds, ${formatBytes(result.ramBytes)} of RAM and ${formatBytes(result.deviceStateBytes)} of device state loaded; the guest runs here\n`);
        return;
      }
      if (!WORKLOADS.includes(flags.workload as WorkloadName)) throw new UsageError(`--workload: ${JSON.stringify(flags.workload)} is not one of ${WORKLOADS.join(', ')}`);
      const devices = (flags.device.length ? flags.device : DEFAULT_DEVICES).map(parseDeviceOption);
      const names = new Set<string>();
      for (const d of devices) {
        if (names.has(d.name)) throw new UsageError(`--device ${d.name} is given twice`);
        names.add(d.name);
      }
      const maxRounds = parseCount('--max-rounds', flags.maxRounds, 2);
      const source: SourceOptions = {
        guestMemory, devices, workload: flags.workload as WorkloadName, dirtyRate: parseRate('--dirty-rate', flags.dirtyRate),
        bandwidth: flags.bandwidth ? parseRate('--bandwidth', flags.bandwidth) : undefined, downtimeMs: parseDuration('--downtime', flags.downtime),
        seed: parseCount('--seed', flags.seed, 0), workers: parseCount('--workers', flags.workers, 0), maxRounds,
      };
      let child: ReturnType<typeof fork> | undefined;
      let address: { host: string; port: number };
      let raw: number | null = null;
      if (flags.connect) {
        address = parseAddress('--connect', flags.connect);
      } else {
        raw = await loopbackThroughput();
        // The destination: this command again, as a child process listening on an ephemeral port.
        const deviceFlags = (flags.device.length ? flags.device : DEFAULT_DEVICES).flatMap((d) => ['--device', d]);
        child = fork(fileURLToPath(new URL('./main.js', import.meta.url)), ['migrate', '--listen', '127.0.0.1:0', '--guest-memory', flags.guestMemory, ...deviceFlags, '--json'], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
        const [message] = (await Promise.race([once(child, 'message'), once(child, 'exit').then(() => { throw new Error('the destination process exited before listening'); })])) as [{ listening: number }];
        address = { host: '127.0.0.1', port: message.listening };
      }
      const socket = connect(address.port, address.host);
      await once(socket, 'connect');
      const bar = progress(maxRounds, 'precopy', !flags.json);
      let outcome;
      try {
        source.onRound = (round) => bar.update(round.round, `${round.kind}, ${formatBytes(round.ramBytes)}`);
        outcome = await migrateSource(socket, source);
      } finally {
        bar.stop();
        socket.destroy();
      }
      if (child && child.exitCode === null) await once(child, 'exit');
      if (child && child.exitCode !== 0) throw new Error(`the destination process exited with ${child.exitCode}`);
      const result: MigrateResult = {
        guestBytes: outcome.guestBytes, devices: outcome.devices, rounds: outcome.rounds,
        summary: { ...outcome.summary, transport: 'tcp', loopbackRawBytesPerSecond: raw, workloadPagesWritten: outcome.workloadPagesWritten },
      };
      if (reportFile) await writeReport(reportFile, migratePage(result, process.argv.slice(3)));
      if (flags.json) printJson(result);
      else process.stdout.write(`${render(result)}\n`);
      if (!result.summary.verified) process.exitCode = 1;
    });
}
