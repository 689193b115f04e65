// The no-loss soak: randomized DirtySync rounds on the simulated kernel against a ground truth
// kept here, by guest memory page (never read from the library): every page a device writes,
// and all of any memory newly mapped, must be handed over by a round that starts after the write.
// Events come between round() and the send (writes, maps, unmaps, remaps onto other memory,
// aliases, adjacent small mappings under a 64 KiB logging page, hot-plug, hot-unplug, refused
// and failed maps, failed queries, worker faults that kill a worker mid-task) and inside the
// consumer's callback. `npm run soak -- --rounds N [--seed S]`.
// Diagnosis: SOAK_DEBUG=1 lists the lost pages with what owed them; SOAK_TRACE=SEED logs that
// seed's events and rounds. Their strings are built only when asked for.
import { pathToFileURL } from 'node:url';
import { Command, InvalidArgumentError as CommanderArgumentError } from 'commander';
import { DirtySync, MigrationBlockedError } from '../dirty/index.js';
import { Engine } from '../engine/index.js';
import { InvalidArgumentError, isKernelError } from '../kernel/errors.js';
import { simulatedKernel, Xoshiro128, type SimulatedDeviceSpecInput } from '../kernel/sim/index.js';
import type { HostMemory } from '../kernel/types.js';
import { AddressSpace } from '../vfio/address-space.js';

export interface SoakOptions {
  readonly rounds: number;
  readonly seed: number;
  /** Inject worker faults (default true). */
  readonly faults?: boolean;
  /** Called after each round (progress). */
  readonly onRound?: (done: number) => void;
}

export interface SoakResult {
  rounds: number;
  /** Rounds the consumer failed (its callback threw before taking a chunk). */
  consumerFailures: number;
  events: number;
  writes: number;
  maps: number;
  unmaps: number;
  refusedMaps: number;
  failedMaps: number;
  failedUnmaps: number;
  failedQueries: number;
  hotPlugs: number;
  refusedPlugs: number;
  hotUnplugs: number;
  redirtied: number;
  faultsInjected: number;
  faultsFired: number;
  /** Pages written (or newly mapped) that no later round handed over. */
  lost: number;
  /** Pages handed over that nothing wrote since they were last handed over (rounds with all-dirty type1 sources excluded). */
  extra: number;
  /** Pages handed over in the rounds counted for `extra`. */
  reportedCounted: number;
  seeds: number;
}

/** Read once: the soak's loops test these flags, never the environment. */
const DEBUG = Boolean(process.env.SOAK_DEBUG);
const TRACE_SEED = process.env.SOAK_TRACE;

const KiB = 1024n;
const MiB = 1024n * KiB;
const WRITE = 4096n;
const BLOCKS = 4;
const BLOCK_SIZE = 8n * MiB;
/** IOVA slots at 4 MiB strides: a mapping of 1 MiB, or two adjacent 32 KiB ones under one 64 KiB device page. */
const SLOTS = 24;
const SLOT_STRIDE = 4n * MiB;

class ConsumerFailure extends Error {
  constructor() {
    super('the consumer could not take this chunk');
  }
}

interface LiveMapping {
  readonly iova: bigint;
  readonly size: bigint;
  readonly memory: HostMemory;
  readonly memoryOffset: bigint;
  /** Memory allocated for this mapping alone: released when it is unmapped. */
  readonly own: boolean;
}

/** One seed's topology: every tracker kind, and the migration page size below or above the logging pages. */
function topology(seed: number): { pageSize: bigint; devices: SimulatedDeviceSpecInput[]; start: string[]; pool: string[] } {
  const pageSize = seed % 2 === 0 ? 4096n : 16384n;
  const devices: SimulatedDeviceSpecInput[] = [
    { name: 'nic0', iommuDirtyTracking: true },
    { name: 'gpu0', dmaLogging: { pageSize: 4096n } },
    { name: 'gpu1', dmaLogging: { pageSize: 65536n } },
    { name: 'nic2', iommuDirtyTracking: true },
    { name: 'gpu2', dmaLogging: { pageSize: 65536n } },
    { name: 'old0' },
  ];
  const start = ['nic0', 'gpu0', 'gpu1'];
  const pool = ['nic2', 'gpu2', 'old0'];
  // Every third seed has a legacy type1 device (which reports every mapped page dirty).
  if (seed % 3 === 0) {
    devices.push({ name: 'leg0', legacyOnly: true }, { name: 'leg1', legacyOnly: true });
    start.push('leg0');
    pool.push('leg1');
  }
  return { pageSize, devices, start, pool };
}

/** The ground truth: pages (by memory and migration page) owed to the consumer, with the event that made them dirty. */
class Truth {
  private readonly pending = new Map<HostMemory, Map<number, number>>();

  constructor(private readonly pageSize: bigint) {}

  /** Why each owed page is owed (SOAK_DEBUG=1). */
  readonly why = new Map<string, string>();
  note = '';

  add(memory: HostMemory, offset: bigint, length: bigint, event: number): void {
    if (DEBUG) this.why.set(`${memory.address.toString(16)}:${offset / this.pageSize}`, `${this.note} event ${event}`);
    let pages = this.pending.get(memory);
    if (!pages) this.pending.set(memory, (pages = new Map()));
    const first = Number(offset / this.pageSize);
    const end = Number((offset + length + this.pageSize - 1n) / this.pageSize);
    for (let p = first; p < end; p++) pages.set(p, event);
  }

  /** A page handed over by a round that started after `roundStart` events: true when it was owed. */
  take(memory: HostMemory, page: number, roundStart: number): boolean {
    const pages = this.pending.get(memory);
    const event = pages?.get(page);
    if (event === undefined) return false;
    if (event < roundStart) pages!.delete(page);
    return true;
  }

  lostList(): string[] {
    const out: string[] = [];
    for (const [memory, pages] of this.pending) for (const [p, e] of pages) out.push(`mem ${memory.address.toString(16)} page ${p} event ${e}: ${this.why.get(`${memory.address.toString(16)}:${BigInt(p)}`) ?? ''}`);
    return out;
  }

  get size(): number {
    let n = 0;
    for (const pages of this.pending.values()) n += pages.size;
    return n;
  }
}

async function soakSeed(seed: number, rounds: number, engine: Engine, faults: boolean, totals: SoakResult, onRound?: () => void): Promise<void> {
  const random = new Xoshiro128(seed);
  const below = (n: number) => random.nextBelow(n);
  const chance = (p: number) => below(1_000_000) < p * 1_000_000;
  const { pageSize, devices, start, pool } = topology(seed);
  const kernel = simulatedKernel({ devices });
  const space = new AddressSpace(kernel);
  const blocks = Array.from({ length: BLOCKS }, () => kernel.allocateHostMemory(BLOCK_SIZE));
  const live: LiveMapping[] = [];
  const attached = new Set<string>();
  const truth = new Truth(pageSize);
  /** Memory the migration has seen: mapping it again owes nothing new. */
  const known = new Set<HostMemory>();
  let event = 0;
  const tracing = TRACE_SEED === String(seed);
  const trace = (what: () => string) => {
    if (tracing) console.error(`[${seed}] event ${event}: ${what()}`);
  };
  const tick = () => {
    event++;
    totals.events++;
  };

  const freeSlots = () => Array.from({ length: SLOTS }, (_, i) => i).filter((i) => !live.some((m) => m.iova >= BigInt(i) * SLOT_STRIDE && m.iova < BigInt(i + 1) * SLOT_STRIDE));
  const pickMemory = (size: bigint): { memory: HostMemory; memoryOffset: bigint; own: boolean } => {
    if (chance(0.25)) return { memory: kernel.allocateHostMemory(size), memoryOffset: 0n, own: true };
    // Any block at any offset: two mappings may alias the same memory (a vIOMMU guest).
    const memory = blocks[below(BLOCKS)]!;
    const slots = Number((BLOCK_SIZE - size) / (16n * KiB)) + 1;
    return { memory, memoryOffset: BigInt(below(slots)) * 16n * KiB, own: false };
  };
  const map = async (iova: bigint, size: bigint, tracked: boolean): Promise<void> => {
    const m = pickMemory(size);
    try {
      await space.map({ iova, size, memory: m.memory, memoryOffset: m.memoryOffset });
    } catch (error) {
      if (m.own) m.memory.release();
      throw error;
    }
    live.push({ iova, size, ...m });
    // Memory never seen by the migration is owed whole (never sent); memory already known owes nothing new.
    if (DEBUG) truth.note = `new map ${iova.toString(16)}+${size.toString(16)}`;
    if (tracked && !known.has(m.memory)) truth.add(m.memory, 0n, m.memory.length, event);
    known.add(m.memory);
  };
  const mapSlot = async (slot: number, tracked: boolean) => {
    const base = BigInt(slot) * SLOT_STRIDE;
    if (slot % 3 === 0) {
      // Adjacent small mappings of different memory sharing one 64 KiB device logging page.
      await map(base, 32n * KiB, tracked);
      await map(base + 32n * KiB, 32n * KiB, tracked);
    } else {
      await map(base, MiB, tracked);
    }
  };
  const unmap = async (mapping: LiveMapping) => {
    await space.unmap({ iova: mapping.iova, size: mapping.size });
    live.splice(live.indexOf(mapping), 1);
    if (mapping.own) mapping.memory.release();
  };
  const write = (device: string) => {
    if (live.length === 0) return;
    const m = live[below(live.length)]!;
    const offset = BigInt(below(Number(m.size / WRITE))) * WRITE;
    const result = kernel.dmaWrite(device, m.iova + offset, WRITE);
    if (DEBUG) truth.note = `write ${device} iova ${(m.iova + offset).toString(16)} map ${m.iova.toString(16)}+${m.size.toString(16)}`;
    if (result.written === WRITE) truth.add(m.memory, m.memoryOffset + offset, WRITE, event);
    totals.writes++;
  };
  // The ioctl a map or unmap issues first: iommufd's while an iommufd container exists, else type1's.
  const hasIommufd = () => space.containers.some((c) => c.backend === 'iommufd');
  const mapIoctl = () => (hasIommufd() ? 'IOMMU_IOAS_MAP' : 'VFIO_IOMMU_MAP_DMA');
  const unmapIoctl = () => (hasIommufd() ? 'IOMMU_IOAS_UNMAP' : 'VFIO_IOMMU_UNMAP_DMA');
  const writeSome = (n: number) => {
    const names = [...attached];
    for (let i = 0; i < n && names.length; i++) write(names[below(names.length)]!);
  };

  for (let slot = 0; slot < 8; slot++) await mapSlot(slot, false);
  for (const name of start) {
    await space.attach(name);
    attached.add(name);
  }
  const sync = new DirtySync(space, { engine, pageSize, initiallyDirty: false });
  await sync.start();
  const allDirty = () => [...attached].some((n) => n.startsWith('leg'));

  const handOver = async (final: boolean) => {
    // Everything before this tick happened before the round's queries.
    tick();
    const roundStart = event;
    let counted = !allDirty();
    // Sometimes the consumer fails on a chunk before taking any of it: the round rejects and
    // those pages, with every chunk not yet handed over, must come again.
    const failAt = !final && chance(0.02) ? below(3) : -1;
    let chunks = 0;
    const result = await sync.round({
      onRuns: (runs, count, base) => {
        if (chunks++ === failAt) throw new ConsumerFailure();
        for (let i = 0; i < count; i++) {
          for (const range of sync.rangesOfRun(base + runs[2 * i]!, runs[2 * i + 1]!)) {
            const first = Number(range.offset / pageSize);
            const end = first + Number(range.length / pageSize);
            for (let p = first; p < end; p++) {
              if (!truth.take(range.memory, p, roundStart) && counted) totals.extra++;
            }
            if (counted) totals.reportedCounted += end - first;
          }
        }
        // Writes while the consumer takes the runs: after the queries, so owed to a later round.
        if (!final && chance(0.2)) {
          tick();
          writeSome(1 + below(3));
        }
      },
    }).catch((error: unknown) => {
      if (!(error instanceof ConsumerFailure)) throw error;
      totals.consumerFailures++;
      return undefined;
    });
    counted = false;
    return result;
  };

  for (let round = 0; round < rounds; round++) {
    tick();
    writeSome(below(12));
    const result = await handOver(false);
    if (result) {
      trace(() => `round ${round}: ${result.dirtyPages} pages, failures ${result.failures.map((f) => `${f.tracker} ${f.iova.toString(16)}+${f.length.toString(16)} ${f.error.message}`).join('; ')}`);
      totals.failedQueries += result.failures.length > 0 ? 1 : 0;
    }
    // Between the round and the send: the guest and its devices go on.
    const events = below(4);
    for (let e = 0; e < events; e++) {
      tick();
      const what = below(100);
      trace(() => `kind ${what} live ${live.map((m) => `${m.iova.toString(16)}+${m.size.toString(16)}@${m.memory.address.toString(16)}:${m.memoryOffset.toString(16)}`).join(' ')} attached ${[...attached].join(',')}`);
      if (what < 35) {
        writeSome(1 + below(6));
      } else if (what < 50) {
        const slots = freeSlots();
        if (slots.length) {
          const slot = slots[below(slots.length)]!;
          if (chance(0.15)) {
            kernel.failNext(mapIoctl(), 'EIO');
            const before = space.mappings.length;
            await mapSlot(slot, true).then(
              () => { throw new Error('soak: a map meant to fail succeeded'); },
              (error: unknown) => {
                if (!isKernelError(error, 'EIO')) throw error;
              },
            );
            // Undone whole: nothing of it is mapped (an adjacent pair may have mapped its first half).
            for (const m of [...live]) if (m.iova >= BigInt(slot) * SLOT_STRIDE && m.iova < BigInt(slot + 1) * SLOT_STRIDE) await unmap(m);
            if (space.mappings.length !== live.length) throw new Error(`soak: a failed map left ${space.mappings.length - before} mappings`);
            totals.failedMaps++;
          } else {
            await mapSlot(slot, true);
            totals.maps++;
          }
        }
      } else if (what < 62) {
        if (live.length > 2) {
          const m = live[below(live.length)]!;
          // Writes right before the unmap must survive it: into it, and into a neighbour that
          // shares its device logging page (reading the page for the unmap clears it for both).
          if (attached.size) {
            const device = [...attached][below(attached.size)]!;
            const result = kernel.dmaWrite(device, m.iova, WRITE);
            if (result.written === WRITE) truth.add(m.memory, m.memoryOffset, WRITE, event);
            for (const n of live) {
              if (n === m || n.iova + n.size < m.iova - 64n * KiB || n.iova > m.iova + m.size + 64n * KiB) continue;
              const neighbour = [...attached][below(attached.size)]!;
              const at = n.iova < m.iova ? n.size - WRITE : 0n;
              if (kernel.dmaWrite(neighbour, n.iova + at, WRITE).written === WRITE) truth.add(n.memory, n.memoryOffset + at, WRITE, event);
            }
          }
          if (chance(0.15)) {
            kernel.failNext(unmapIoctl(), 'EIO');
            await unmap(m).then(
              () => { throw new Error('soak: an unmap meant to fail succeeded'); },
              (error: unknown) => {
                if (!isKernelError(error, 'EIO')) throw error;
              },
            );
            totals.failedUnmaps++;
          } else {
            await unmap(m);
            totals.unmaps++;
          }
        }
      } else if (what < 66) {
        // A map the bitmap cannot hold is refused before the kernel sees it.
        const before = kernel.ioctlCount('IOMMU_IOAS_MAP') + kernel.ioctlCount('VFIO_IOMMU_MAP_DMA');
        const memory = kernel.allocateHostMemory(4n << 30n);
        await space.map({ iova: 1n << 40n, size: memory.length, memory }).then(
          () => { throw new Error('soak: a map past the capacity succeeded'); },
          (error: unknown) => {
            if (!(error instanceof InvalidArgumentError)) throw error;
          },
        );
        memory.release();
        if (kernel.ioctlCount('IOMMU_IOAS_MAP') + kernel.ioctlCount('VFIO_IOMMU_MAP_DMA') !== before) throw new Error('soak: a refused map reached the kernel');
        totals.refusedMaps++;
      } else if (what < 74) {
        const candidates = pool.filter((n) => !attached.has(n));
        if (candidates.length) {
          const name = candidates[below(candidates.length)]!;
          const count = space.devices.length;
          try {
            await space.attach(name);
            attached.add(name);
            totals.hotPlugs++;
          } catch (error) {
            // A device nothing can track is refused, and the attach undone.
            if (!(error instanceof MigrationBlockedError) || space.devices.length !== count) throw error;
            totals.refusedPlugs++;
          }
        }
      } else if (what < 82) {
        const names = [...attached];
        if (names.length > 1) {
          const name = names[below(names.length)]!;
          // The leaving device writes just before: its tracker must drain it.
          const m = live[below(live.length)];
          if (m && kernel.dmaWrite(name, m.iova, WRITE).written === WRITE) truth.add(m.memory, m.memoryOffset, WRITE, event);
          await space.detach(name);
          attached.delete(name);
          totals.hotUnplugs++;
        }
      } else if (what < 90) {
        if (chance(0.5)) kernel.failNext('IOMMU_HWPT_GET_DIRTY_BITMAP', 'EIO', { after: below(4) });
        else kernel.failNext('VFIO_DEVICE_FEATURE', 'EIO', { objects: { feature: 'DMA_LOGGING_REPORT' }, after: below(3) });
      } else if (what < 95) {
        // The send of a range failed: the consumer gives it back.
        if (live.length) {
          const m = live[below(live.length)]!;
          await sync.redirty({ memory: m.memory, offset: m.memoryOffset, length: m.size });
          truth.add(m.memory, m.memoryOffset, m.size, event);
          totals.redirtied++;
        }
      } else if (faults) {
        // A worker dies in the middle of the next journaled task (a merge of a scratch bitmap).
        engine.testing.injectFault(below(engine.workers), 0);
        totals.faultsInjected++;
      }
    }
    kernel.clearFaults();
    totals.rounds++;
    onRound?.();
  }
  // Stop and copy: the devices stop; the last round must hand over everything still owed.
  tick();
  await handOver(true);
  totals.lost += truth.size;
  if (DEBUG && truth.size) console.error(`seed ${seed} page ${pageSize}:\n${truth.lostList().slice(0, 15).join('\n')}`);
  await sync.stop();
  await space.close();
  for (const m of live) if (m.own) m.memory.release();
  for (const b of blocks) b.release();
  kernel.assertClean();
}

/** Runs the soak over a few seeds (each its own topology); the counts are the sum. */
export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const totals: SoakResult = {
    rounds: 0, consumerFailures: 0, events: 0, writes: 0, maps: 0, unmaps: 0, refusedMaps: 0, failedMaps: 0, failedUnmaps: 0, failedQueries: 0,
    hotPlugs: 0, refusedPlugs: 0, hotUnplugs: 0, redirtied: 0, faultsInjected: 0, faultsFired: 0, lost: 0, extra: 0, reportedCounted: 0, seeds: 0,
  };
  // Every call goes to the workers (nothing inline), so injected faults land in real tasks.
  const engine = await Engine.create({ workers: 2, minimumShardBytes: 4096, inlineUpToBytes: 0 });
  const faults = options.faults ?? true;
  try {
    const seeds = 6;
    const per = Math.ceil(options.rounds / seeds);
    let done = 0;
    for (let s = 0; s < seeds && totals.rounds < options.rounds; s++) {
      const replacedBefore = engine.testing.workersReplaced();
      await soakSeed(options.seed * 7 + s, Math.min(per, options.rounds - totals.rounds), engine, faults, totals, () => options.onRound?.(++done));
      totals.faultsFired += engine.testing.workersReplaced() - replacedBefore;
      totals.seeds++;
    }
    // A fault injected after the last journaled task of a seed is still pending: it did not fire.
  } finally {
    await engine.close();
  }
  return totals;
}

export function soakLine(r: SoakResult): string {
  return `no-loss soak: ${r.rounds} rounds, ${r.events} events, ${r.faultsFired} worker faults fired, lost ${r.lost}, extra ${r.extra} pages`;
}

function positiveInteger(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new CommanderArgumentError('must be a positive integer');
  return n;
}

async function main(argv: string[]): Promise<number> {
  const program = new Command('soak')
    .description('randomized no-loss soak of DirtySync on the simulated kernel')
    .option('--rounds <n>', 'rounds in all', positiveInteger, 10_000)
    .option('--seed <n>', 'seed', positiveInteger, 1)
    .option('--no-faults', 'do not inject worker faults')
    .option('--json', 'print one JSON document')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  try {
    program.parse(argv, { from: 'user' });
  } catch (error) {
    const code = (error as { exitCode?: number }).exitCode;
    return code === 0 ? 0 : 2;
  }
  const opts = program.opts<{ rounds: number; seed: number; faults: boolean; json?: boolean }>();
  const started = performance.now();
  const tty = process.stderr.isTTY && !opts.json;
  const result = await runSoak({
    rounds: opts.rounds, seed: opts.seed, faults: opts.faults,
    onRound: tty ? (done) => { if (done % 500 === 0) process.stderr.write(`\rround ${done}/${opts.rounds}`); } : undefined,
  });
  if (tty) process.stderr.write('\n');
  const seconds = (performance.now() - started) / 1000;
  const precision = result.reportedCounted ? (result.reportedCounted - result.extra) / result.reportedCounted : 1;
  if (opts.json) {
    process.stdout.write(`${JSON.stringify({ ...result, seconds, precision, line: soakLine(result) })}\n`);
  } else {
    process.stdout.write(
      `${result.seeds} seeds, ${seconds.toFixed(1)} s; ${result.writes} writes, ${result.maps} maps (${result.failedMaps} failed, ${result.refusedMaps} refused), ` +
        `${result.unmaps} unmaps (${result.failedUnmaps} failed), ${result.hotPlugs} hot-plugs (${result.refusedPlugs} refused), ${result.hotUnplugs} hot-unplugs, ` +
        `${result.redirtied} ranges given back, ${result.consumerFailures} failed consumers, ${result.failedQueries} rounds with failed queries, ${result.faultsInjected} worker faults injected; ` +
        `precision ${(precision * 100).toFixed(2)}% of ${result.reportedCounted} pages handed over (type1 seeds excluded)\n`,
    );
    process.stdout.write(`${soakLine(result)}\n`);
  }
  if (result.lost > 0) return 1;
  if (opts.faults && result.faultsFired === 0) return 1;
  return 0;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      process.stderr.write(`soak: ${(error as Error).stack ?? String(error)}\n`);
      process.exit(1);
    },
  );
}
