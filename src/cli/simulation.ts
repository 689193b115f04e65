// A live migration of a simulated guest, end to end: the simulated kernel and its devices, the
// address space with its containers, DirtySync with the engine's workers, and a guest workload
// whose ground truth checks every round for lost dirty pages.
import { estimateConvergence, type ConvergenceEstimate } from '../dirty/convergence.js';
import { DirtySync } from '../dirty/dirty-sync.js';
import type { RoundPhases } from '../dirty/dirty-sync.js';
import { EngineInputError } from '../engine/errors.js';
import { InvalidArgumentError } from '../kernel/errors.js';
import { guestWorkload, resolveDeviceSpecs, simulatedKernel, type GuestWorkload, type SimulatedDeviceSpecInput } from '../kernel/sim/index.js';
import type { WorkloadPattern } from '../kernel/sim/index.js';
import { DeviceMigration } from '../migration/index.js';
import { AddressSpace, type Topology } from '../vfio/address-space.js';
import type { DirtyTracker } from '../vfio/device.js';
import { formatBytes, UsageError } from './units.js';

/** The engine's worker pool holds at most this many threads (src/engine/engine.ts). */
export const MAX_ENGINE_WORKERS = 256;
/**
 * Guest page writes the workload generator counts in one round: it draws the pages they hit, not
 * the writes, so only the count's exactness in doubles bounds it (a dirty rate far above the
 * link, or a link so slow a round lasts millennia, is refused).
 */
export const MAX_WRITES_PER_ROUND = Number.MAX_SAFE_INTEGER;

export const DEVICE_WORDS = ['iommu-dirty', 'dma-logging', 'mdev', 'legacy', 'migration'] as const;
export type DeviceWord = (typeof DEVICE_WORDS)[number];
export const WORKLOADS = ['uniform', 'hotset', 'sweep', 'burst'] as const;
export type WorkloadName = (typeof WORKLOADS)[number];

export interface SimulatedDeviceOption {
  readonly name: string;
  readonly words: readonly DeviceWord[];
}

/** `nic0:iommu-dirty`, `gpu0:dma-logging+iommu-dirty`, `old0` (no tracking at all). */
export function parseDeviceOption(text: string): SimulatedDeviceOption {
  const [name, spec, ...rest] = text.split(':');
  if (!name || rest.length || !/^[A-Za-z0-9_.-]+$/.test(name)) {
    throw new UsageError(`--device: ${JSON.stringify(text)} must be NAME or NAME:WORD+WORD (words: ${DEVICE_WORDS.join(', ')})`);
  }
  const words = spec ? spec.split('+') : [];
  for (const word of words) {
    if (!DEVICE_WORDS.includes(word as DeviceWord)) throw new UsageError(`--device ${name}: unknown word ${JSON.stringify(word)} (allowed: ${DEVICE_WORDS.join(', ')})`);
  }
  if (words.includes('mdev') && words.includes('iommu-dirty')) throw new UsageError(`--device ${name}: an mdev has no IOMMU of its own, so no iommu-dirty`);
  if (words.includes('mdev') && words.includes('legacy')) throw new UsageError(`--device ${name}: an mdev is not a legacy (type1) device`);
  return { name, words: words as DeviceWord[] };
}

export function deviceSpec(option: SimulatedDeviceOption, index: number): SimulatedDeviceSpecInput {
  const has = (word: DeviceWord) => option.words.includes(word);
  return {
    name: option.name,
    groupId: 20 + index,
    iommuDirtyTracking: has('iommu-dirty'),
    dmaLogging: has('dma-logging') ? { pageSize: 4096n, maxRanges: 256 } : false,
    mdev: has('mdev'),
    legacyOnly: has('legacy'),
    ...(has('migration') ? { migration: {}, bar0Size: DEVICE_STATE_SIZE } : {}),
  };
}

/** A `migration` device's state (its BAR0 in the simulator), and how much of it the guest's device dirties. */
export const DEVICE_STATE_SIZE = 1n << 20n;
/** Device state dirtied per second, as a share of the guest's dirty rate (the model's assumption). */
const DEVICE_STATE_DIRTY_SHARE = 1 / 64;

const PATTERNS: Record<WorkloadName, WorkloadPattern> = {
  uniform: { kind: 'uniform' },
  hotset: { kind: 'hot-set', hotFraction: 0.05, hotProbability: 0.9 },
  sweep: { kind: 'sequential' },
  burst: { kind: 'bursts', burstPages: 64 },
};

export interface SimulationOptions {
  readonly guestMemory: bigint;
  readonly devices: readonly SimulatedDeviceOption[];
  readonly workload: WorkloadName;
  /** Bytes the guest writes per second. */
  readonly dirtyRate: number;
  /** Link bandwidth, bytes per second. */
  readonly bandwidth: number;
  readonly downtimeMs: number;
  readonly seed: number;
  readonly workers: number;
  readonly maxRounds: number;
  readonly onRound?: (round: SimulatedRound) => void;
}

export interface SimulatedRound {
  readonly round: number;
  readonly kind: 'precopy' | 'stop-and-copy';
  readonly dirtyPages: number;
  readonly newlyDirtyPages: number;
  readonly sentPages: number;
  /** Pages the guest wrote that the round did not report (must be 0). */
  readonly lostPages: number;
  /** Newly dirty bytes per simulated second before this round. */
  readonly dirtyRateBytesPerSecond: number;
  /** Simulated seconds to send this round's pages over the link. */
  readonly sendSeconds: number;
  readonly phases: RoundPhases;
  readonly durationMs: number;
  readonly failures: number;
  readonly estimate: ConvergenceEstimate;
  /** Device state (VFIO migration data) pending before the round, and read and sent in it. */
  readonly deviceStatePendingBytes: number;
  readonly deviceStateSentBytes: number;
}

export interface SimulationResult {
  readonly guestBytes: bigint;
  readonly pageSize: number;
  readonly topology: Topology;
  readonly devices: { name: string; tracker: DirtyTracker }[];
  readonly rounds: SimulatedRound[];
  readonly summary: {
    readonly converged: boolean;
    /** Why not, when it did not. */
    readonly reason: string | null;
    readonly rounds: number;
    /** null when the run did not converge (or converged before any estimate). */
    readonly predictedDowntimeMs: number | null;
    readonly simulatedDowntimeMs: number | null;
    readonly totalSentBytes: number;
    /** Device state sent: precopy passes and the stop-copy stream (in the downtime). */
    readonly deviceStateBytes: number;
    readonly lostPages: number;
  };
}

const PAGE = 4096n;
const GiB = 1n << 30n;

/** Guest RAM as x86 lays it out: below 3 GiB, then the PCI hole, then the rest from 4 GiB. */
export function guestRanges(guestMemory: bigint): { iova: bigint; length: bigint }[] {
  const low = guestMemory < 3n * GiB ? guestMemory : 3n * GiB;
  const ranges = [{ iova: 0n, length: low }];
  if (guestMemory > low) ranges.push({ iova: 4n * GiB, length: guestMemory - low });
  return ranges;
}

export async function simulateMigration(options: SimulationOptions): Promise<SimulationResult> {
  if (options.guestMemory % (2n * 1024n * 1024n) !== 0n) throw new UsageError('--guest-memory must be a multiple of 2MiB');
  if (options.devices.length === 0) throw new UsageError('--device: give at least one device');
  const names = new Set<string>();
  for (const d of options.devices) {
    if (names.has(d.name)) throw new UsageError(`--device ${d.name} is given twice`);
    names.add(d.name);
  }
  const specs = options.devices.map(deviceSpec);
  const ranges = guestRanges(options.guestMemory);
  const lastIova = ranges.at(-1)!.iova + ranges.at(-1)!.length - 1n;
  // The IOMMU translates IOVAs below 2^width only: say so instead of the kernel's EADDRINUSE.
  for (const model of resolveDeviceSpecs(specs)) {
    if (model.iommu && lastIova > model.iommu.apertureLast) {
      const width = (model.iommu.apertureLast + 1n).toString(2).length - 1;
      throw new UsageError(
        `--guest-memory ${formatBytes(options.guestMemory)}: the guest's IOVAs reach 0x${lastIova.toString(16)}, beyond the ${width}-bit address width of ${model.name}'s IOMMU ` +
          `(IOVAs below ${formatBytes(model.iommu.apertureLast + 1n)}, the PCI hole at 3-4 GiB included)`,
      );
    }
  }
  const kernel = simulatedKernel({ devices: specs });
  const space = new AddressSpace(kernel);
  // Untracked devices are simulated, not refused: the run says why it cannot converge.
  const sync = new DirtySync(space, { workers: options.workers, pageSize: PAGE, allowUntrackedDevices: true });
  const rounds: SimulatedRound[] = [];
  let migratable: DeviceMigration[] = [];
  try {
    for (const range of ranges) await space.map({ iova: range.iova, size: range.length });
    for (const device of options.devices) await space.attach(device.name);
    migratable = options.devices.filter((d) => d.words.includes('migration')).map((d) => new DeviceMigration(space.device(d.name).handle));
    for (const device of migratable) device.startPrecopy();
    let deviceStateBytes = 0;
    /** Reads what a device stream has now; the bytes go over the link with the round's pages. */
    const drain = async (stream: AsyncIterable<Uint8Array>) => {
      let bytes = 0;
      for await (const chunk of stream) bytes += chunk.byteLength;
      deviceStateBytes += bytes;
      return bytes;
    };
    const devices = space.devices.map((d) => ({ name: d.name, tracker: d.dirtyTracker }));
    const topology = space.topology();
    try {
      await sync.start();
    } catch (error) {
      // The dirty layer's limits (bitmap index width, the engine's shared memory) bound the guest.
      if (error instanceof EngineInputError || error instanceof InvalidArgumentError) {
        throw new UsageError(`--guest-memory ${formatBytes(options.guestMemory)}: too large for the dirty-page tracker: ${error.message}`);
      }
      throw error;
    }
    const writesPerSecond = options.dirtyRate / Number(PAGE);
    const firstRoundWrites = writesPerSecond * (Number(options.guestMemory) / options.bandwidth);
    if (firstRoundWrites > MAX_WRITES_PER_ROUND) {
      throw new UsageError(
        `--dirty-rate ${formatBytes(options.dirtyRate)}/s with --bandwidth ${formatBytes(options.bandwidth)}/s: the guest would write ${firstRoundWrites.toExponential(2)} pages while ` +
          `the first round of ${formatBytes(options.guestMemory)} is sent; the simulator counts at most 2^53 - 1 writes a round (lower the dirty rate or raise the bandwidth)`,
      );
    }
    const workload = guestWorkload(kernel, {
      ranges, devices: options.devices.map((d) => d.name), pattern: PATTERNS[options.workload], seed: options.seed,
      dirtyRate: options.dirtyRate / Number(PAGE),
    });
    const blockers = devices.filter((d) => d.tracker === 'none').map((d) => `${d.name} has no dirty page tracking (neither its IOMMU nor the device can log DMA)`);
    const type1 = devices.filter((d) => d.tracker === 'type1').map((d) => `${d.name} is tracked by type1, which reports every mapped page dirty`);
    let rate = 0;
    let totalSent = 0;
    let lost = 0;
    let predictedDowntimeMs: number | null = null;
    let simulatedDowntimeMs: number | null = null;
    let converged = false;
    for (let index = 0; index < options.maxRounds; index++) {
      // What the round hands over is ticked off the ground truth as it comes (the workload does
      // not write during a round): what is left of the truth after it was not handed over, lost.
      // The cost is the runs and the truth's chunks, not the guest's size.
      const truth = workload.takeGroundTruth();
      const pieces = truthPieces(sync, workload);
      let cursor = 0;
      const round = await sync.round({
        onRuns: (runs, n, base) => {
          // Runs ascend: a cursor over the pieces, back to the start when a segment starts lower.
          for (let i = 0; i < n; i++) {
            const bit = base + runs[2 * i]!;
            const end = bit + runs[2 * i + 1]!;
            if (cursor >= pieces.length || pieces[cursor]!.bit > bit) cursor = 0;
            while (cursor < pieces.length && pieces[cursor]!.end <= bit) cursor++;
            for (let k = cursor; k < pieces.length && pieces[k]!.bit < end; k++) {
              const piece = pieces[k]!;
              const from = Math.max(bit, piece.bit);
              const to = Math.min(end, piece.end);
              truth.clearRange(piece.page + (from - piece.bit), piece.page + (to - piece.bit));
            }
          }
        },
      });
      const lostPages = truth.count();
      lost += lostPages;
      // RAM and device state together, as QEMU's pending estimate (PRECOPY_INFO while in PRE_COPY).
      const devicePending = migratable.reduce((sum, device) => sum + Number(device.pendingBytes()), 0);
      const pendingBytes = round.dirtyPages * Number(PAGE) + devicePending;
      const estimate = estimateConvergence({ pendingBytes, dirtyRateBytesPerSecond: rate, bandwidthBytesPerSecond: options.bandwidth, downtimeLimitMs: options.downtimeMs });
      // The stop-and-copy round: what is pending fits the downtime, so the guest stops here.
      const final = index > 0 && (pendingBytes / options.bandwidth) * 1000 <= options.downtimeMs;
      let deviceSent = 0;
      if (final) {
        // QEMU's switchover: every device quiesced (P2P) before any enters STOP_COPY.
        for (const device of migratable) device.quiesce();
        for (const device of migratable) deviceSent += await drain(device.stopCopy());
        for (const device of migratable) device.finish();
      } else {
        for (const device of migratable) deviceSent += await drain(device.precopyChunks());
      }
      const sentBytes = round.dirtyPages * Number(PAGE) + deviceSent;
      const sendSeconds = sentBytes / options.bandwidth;
      const row: SimulatedRound = {
        round: index + 1, kind: final ? 'stop-and-copy' : 'precopy', dirtyPages: round.dirtyPages, newlyDirtyPages: round.newlyDirtyPages,
        sentPages: round.dirtyPages, lostPages, dirtyRateBytesPerSecond: rate, sendSeconds, phases: round.phases, durationMs: round.durationMs,
        failures: round.failures.length, estimate, deviceStatePendingBytes: devicePending, deviceStateSentBytes: deviceSent,
      };
      rounds.push(row);
      options.onRound?.(row);
      totalSent += sentBytes;
      if (final) {
        converged = true;
        simulatedDowntimeMs = sendSeconds * 1000 + round.durationMs;
        break;
      }
      predictedDowntimeMs = estimate.converges ? (estimate.expectedDowntimeMs ?? null) : null;
      // The guest runs while this round's pages go over the link (unless no round follows to check it).
      if (index === options.maxRounds - 1) break;
      const newlyDirty = workload.advance(sendSeconds).newlyDirty;
      deviceActivity(migratable, (options.dirtyRate * DEVICE_STATE_DIRTY_SHARE * sendSeconds), options.seed + index);
      rate = sendSeconds > 0 ? (newlyDirty * Number(PAGE)) / sendSeconds : 0;
    }
    await sync.stop();
    const reason = converged
      ? null
      : [...blockers, ...type1, rounds.at(-1)?.estimate.reason, `no round's pending pages fit the ${options.downtimeMs} ms downtime within ${options.maxRounds} rounds`]
          .filter(Boolean)
          .join('; ');
    return {
      guestBytes: options.guestMemory,
      pageSize: Number(PAGE),
      topology,
      devices,
      rounds,
      summary: { converged, reason, rounds: rounds.length, predictedDowntimeMs, simulatedDowntimeMs, totalSentBytes: totalSent, deviceStateBytes, lostPages: lost },
    };
  } finally {
    // A run that failed half-way leaves no migration data fd open.
    for (const device of migratable) device.close();
    if (sync.started) await sync.stop();
    await space.close();
  }
}

/**
 * The migration bitmap's bit-to-IOVA translation as DirtySync gives it (rangesOfRun over each
 * region, split at every mapping edge: the same pieces as rangesOfRun of each run), composed with
 * the guest's page layout: disjoint ascending pieces, bit range -> the truth page of its first
 * bit, looked up per run in doubles without objects per run. The simulated guest maps each page
 * once, on the bitmap's page grid; anything else is refused rather than checked loosely.
 */
function truthPieces(sync: DirtySync, workload: GuestWorkload): { bit: number; end: number; page: number }[] {
  const simple = (what: string) => new Error(`simulate's no-loss check needs ${what}`);
  if (workload.pageSize !== PAGE) throw simple('guest pages of the bitmap\'s page size');
  const page = Number(PAGE);
  const pieces: { bit: number; end: number; page: number }[] = [];
  for (const region of sync.regions) {
    for (const range of sync.rangesOfRun(region.bit, region.pages)) {
      if (range.iovas.length > 1) throw simple('guest memory mapped at one IOVA');
      if (range.iovas.length === 0) continue;
      const bit = region.bit + Number(range.offset / PAGE);
      const iova = Number(range.iovas[0]!);
      for (const inside of workload.pagesIn(iova, Number(range.length))) {
        if ((inside.iova - iova) % page !== 0) throw simple('guest pages on the bitmap\'s page grid');
        const first = bit + (inside.iova - iova) / page;
        pieces.push({ bit: first, end: first + inside.pages, page: inside.page });
      }
    }
  }
  pieces.sort((a, b) => a.bit - b.bit);
  return pieces;
}

/** The guest's devices at work: `bytes` of register writes spread over each migratable device's state. */
function deviceActivity(devices: readonly DeviceMigration[], bytes: number, seed: number): void {
  const size = Number(DEVICE_STATE_SIZE);
  const writes = Math.min(Math.ceil(bytes / 64), size / 64);
  const value = Uint8Array.of(seed & 0xff);
  for (const device of devices) {
    for (let i = 0; i < writes; i++) {
      // A multiplicative hash spreads the writes; the seed keeps runs repeatable.
      const offset = ((seed * 2654435761 + i * 40503) >>> 0) % size;
      device.device.regionWrite(0, BigInt(offset), value);
    }
  }
}
