// Live migration over one Node duplex stream: the source side (Migration) runs QEMU's migration
// thread loop on top of DirtySync; the destination (MigrationTarget) loads what it receives.
import type { Duplex } from 'node:stream';
import type { DirtySync } from '../dirty/index.js';
import { InvalidArgumentError } from '../kernel/errors.js';
import type { HostMemory } from '../kernel/types.js';
import {
  ByteReader, ByteWriter, DevicePhase, RAM_FLAG_ZERO, RecordType, StreamFormatError, VERSION_MAJOR, VERSION_MINOR,
  encodeHeader, encodeRecord, ramPayloadHead, u32s, type StreamHeader,
} from './stream-format.js';

/**
 * A device's migration state on the source (VFIO migration v2, or anything with the same shape):
 * precopy data while running, every device quiesced before any stop-copy, then its final state.
 */
export interface DeviceStateSource {
  readonly name: string;
  /** Bytes of state still to send now (precopy initial + dirty bytes, or the stop-copy size). */
  pendingBytes(): Promise<number>;
  /** Precopy data available now; may yield nothing. */
  precopy(): AsyncIterable<Uint8Array>;
  /** To a state with no DMA and no new state (RUNNING_P2P / PRE_COPY_P2P): all devices before any stopCopy. */
  quiesce(): Promise<void>;
  /** The final state (STOP_COPY), in chunks. */
  stopCopy(): AsyncIterable<Uint8Array>;
  /** Back to RUNNING: the migration failed. */
  resume(): Promise<void>;
}

/** A device's migration state on the destination. */
export interface DeviceStateSink {
  readonly name: string;
  /** To RESUMING. */
  begin(): Promise<void>;
  write(chunk: Uint8Array): Promise<void>;
  /** All state loaded: to RUNNING_P2P (every device first), then RUNNING. */
  quiesced(): Promise<void>;
  run(): Promise<void>;
  /** The migration failed: leave the device stopped (it never ran this state). */
  abort(): Promise<void>;
}

export interface MigrationRound {
  readonly round: number;
  readonly kind: 'bulk' | 'precopy' | 'stop-and-copy';
  readonly dirtyPages: number;
  readonly zeroPages: number;
  readonly ramBytes: number;
  readonly deviceStateBytes: number;
  readonly streamBytes: number;
  readonly seconds: number;
  /** Bytes per second the stream took this round (what the switchover estimate uses). */
  readonly throughputBytesPerSecond: number;
  readonly dirtyRateBytesPerSecond: number;
  /** Downtime the round predicts if the switchover came next, ms. */
  readonly predictedDowntimeMs: number;
}

export interface MigrationOptions {
  readonly stream: Duplex;
  /** The guest's RAM regions, in the order both sides agree on; their bytes are what is sent. */
  readonly memories: readonly HostMemory[];
  readonly devices?: readonly DeviceStateSource[];
  readonly downtimeLimitMs: number;
  readonly maxRounds: number;
  readonly bandwidthBytesPerSecond?: number;
  /** Stops the guest (vCPUs and device DMA) for the stop-and-copy. */
  readonly stopGuest: () => void | Promise<void>;
  /** Runs the guest again after a failed migration. */
  readonly resumeGuest: () => void | Promise<void>;
  /** Between precopy rounds: the guest runs while the round's pages went over the link. */
  readonly guestRan?: (seconds: number) => void | Promise<void>;
  readonly onRound?: (round: MigrationRound) => void;
}

export interface MigrationSummary {
  readonly verified: boolean;
  readonly mismatchedPages: number;
  readonly ramBytesCompared: number;
  readonly ramBytesSent: number;
  readonly zeroPages: number;
  readonly deviceStateBytes: number;
  readonly streamBytes: number;
  readonly downtimeMs: number;
  readonly predictedDowntimeMs: number | null;
  readonly rounds: number;
  readonly converged: boolean;
  /** Why the migration stopped precopy without the estimate fitting the downtime. */
  readonly reason: string | null;
  readonly throughputBytesPerSecond: number;
  readonly destinationResumeMs: number;
}

/** The destination refused the stream, or the source refused the destination. */
export class MigrationRefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MigrationRefusedError';
  }
}

/** The migration failed; the source guest is running again. */
export class MigrationFailedError extends Error {
  constructor(readonly step: string, override readonly cause: unknown) {
    super(`migration failed during ${step}: ${(cause as Error)?.message ?? String(cause)}; the source guest is running again`);
    this.name = 'MigrationFailedError';
  }
}

/** Largest run in one RAM record, pages. */
const RECORD_PAGES = 256;

function isZero(bytes: Uint8Array, start: number, length: number): boolean {
  // Word-wise where aligned: pages are.
  if ((bytes.byteOffset + start) % 8 === 0 && length % 8 === 0) {
    const words = new BigUint64Array(bytes.buffer, bytes.byteOffset + start, length / 8);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
    return true;
  }
  for (let i = start; i < start + length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/**
 * The source: bulk round, precopy rounds until the pending RAM and device state fit the downtime
 * at the throughput measured on the stream (or the round limit), then stop the guest, quiesce
 * every device, stop-copy, final sync, and wait for the destination to run. Any failure resumes
 * the guest and its devices and throws MigrationFailedError.
 */
export class Migration {
  private readonly regionOf = new Map<HostMemory, number>();
  private readonly writer: ByteWriter;
  private readonly reader: ByteReader;
  private readonly pageSize: number;

  constructor(readonly sync: DirtySync, private readonly options: MigrationOptions) {
    if (!sync.started) throw new InvalidArgumentError('sync', 'DirtySync must be started before the migration');
    if (!options.memories.length) throw new InvalidArgumentError('memories', 'give the guest\'s RAM regions');
    for (const [i, m] of options.memories.entries()) {
      if (!m.bytes) throw new InvalidArgumentError('memories', `region ${i} has no bytes the library can read`);
      this.regionOf.set(m, i);
    }
    if (!(options.downtimeLimitMs > 0)) throw new InvalidArgumentError('downtimeLimitMs', 'must be positive');
    if (!Number.isInteger(options.maxRounds) || options.maxRounds < 2) throw new InvalidArgumentError('maxRounds', 'must be an integer of at least 2');
    this.pageSize = Number(sync.bitmap.pageSize);
    this.writer = new ByteWriter(options.stream, options.bandwidthBytesPerSecond);
    this.reader = new ByteReader(options.stream);
  }

  async run(): Promise<MigrationSummary> {
    const devices = this.options.devices ?? [];
    let step = 'the handshake';
    let guestStopped = false;
    try {
      const header: StreamHeader = {
        versionMajor: VERSION_MAJOR, versionMinor: VERSION_MINOR, pageSize: this.pageSize,
        regions: this.options.memories.map((m) => m.length), devices: devices.map((d) => d.name),
      };
      await this.writer.write([encodeHeader(header)]);
      const answer = await this.reader.readRecord();
      if (answer.type === RecordType.REFUSE) throw new MigrationRefusedError(`the destination refused: ${answer.payload.toString('utf8')}`);
      if (answer.type !== RecordType.ACCEPT) throw new StreamFormatError(`expected ACCEPT, got type 0x${answer.type.toString(16)}`);

      let totals = { ram: 0, zero: 0, device: 0 };
      let predicted: number | null = null;
      let converged = false;
      let reason: string | null = null;
      let throughput = 0;
      let rate = 0;
      let rounds = 0;
      /** How long the guest ran while the previous round was sent: what this round's pages took to dirty. */
      let ranSeconds = 0;
      for (let index = 0; ; index++) {
        step = `precopy round ${index + 1}`;
        const last = index + 1 >= this.options.maxRounds;
        const t0 = performance.now();
        const bytes0 = this.writer.bytes;
        const { sent, deviceBytes } = await this.sendRound(index, DevicePhase.PRECOPY, (device) => device.precopy());
        const seconds = (performance.now() - t0) / 1000;
        const streamBytes = this.writer.bytes - bytes0;
        throughput = seconds > 0 ? streamBytes / seconds : throughput;
        totals = { ram: totals.ram + sent.ramBytes, zero: totals.zero + sent.zeroPages, device: totals.device + deviceBytes };
        rounds++;
        // This round's pages were dirtied while the previous one was sent.
        if (index > 0 && ranSeconds > 0) rate = (sent.pages * this.pageSize) / ranSeconds;
        // The guest ran while this round went over the link: what it dirtied is the next round.
        await this.options.guestRan?.(seconds);
        ranSeconds = seconds;
        let pendingDevice = 0;
        for (const device of devices) pendingDevice += await device.pendingBytes();
        // What the stop-and-copy would send now: what the guest dirtied during this round's send, and device state.
        const pending = rate * seconds + pendingDevice;
        predicted = throughput > 0 ? (pending / throughput) * 1000 : Infinity;
        this.options.onRound?.({
          round: index + 1, kind: index === 0 ? 'bulk' : 'precopy', dirtyPages: sent.pages, zeroPages: sent.zeroPages, ramBytes: sent.ramBytes,
          deviceStateBytes: deviceBytes, streamBytes, seconds, throughputBytesPerSecond: throughput, dirtyRateBytesPerSecond: rate, predictedDowntimeMs: predicted,
        });
        if (index > 0 && predicted <= this.options.downtimeLimitMs) {
          converged = true;
          break;
        }
        if (last) {
          reason = `precopy did not converge within ${this.options.maxRounds} rounds: ${(rate / 2 ** 20).toFixed(1)} MiB/s dirtied against ${(throughput / 2 ** 20).toFixed(1)} MiB/s sent predicts ${predicted.toFixed(0)} ms of downtime, over the ${this.options.downtimeLimitMs} ms limit; switching over anyway`;
          break;
        }
      }

      // Switchover: stop the guest, every device to P2P, then stop-copy, the final sync and the rest.
      step = 'the stop-and-copy';
      const stopped = performance.now();
      await this.options.stopGuest();
      guestStopped = true;
      for (const device of devices) await device.quiesce();
      const t0 = performance.now();
      const bytes0 = this.writer.bytes;
      const { sent: final, deviceBytes } = await this.sendRound(rounds, DevicePhase.STOP_COPY, (device) => device.stopCopy());
      rounds++;
      await this.writer.write(encodeRecord(RecordType.END, u32s(rounds)));
      totals = { ram: totals.ram + final.ramBytes, zero: totals.zero + final.zeroPages, device: totals.device + deviceBytes };
      const seconds = (performance.now() - t0) / 1000;
      this.options.onRound?.({
        round: rounds, kind: 'stop-and-copy', dirtyPages: final.pages, zeroPages: final.zeroPages, ramBytes: final.ramBytes, deviceStateBytes: deviceBytes,
        streamBytes: this.writer.bytes - bytes0, seconds, throughputBytesPerSecond: throughput, dirtyRateBytesPerSecond: rate, predictedDowntimeMs: predicted ?? 0,
      });
      step = 'the destination\'s resume';
      const resumed = await this.reader.readRecord();
      if (resumed.type === RecordType.REFUSE) throw new MigrationRefusedError(`the destination could not resume: ${resumed.payload.toString('utf8')}`);
      if (resumed.type !== RecordType.RESUMED) throw new StreamFormatError(`expected RESUMED, got type 0x${resumed.type.toString(16)}`);
      const downtimeMs = performance.now() - stopped;
      const destinationResumeMs = Number(resumed.payload.readBigUInt64LE(0)) / 1000;

      // Byte for byte: the destination sends its memory back; the source guest stays stopped, so
      // its memory is what the destination must hold.
      step = 'the verification';
      const verification = await this.verify();
      return {
        verified: verification.mismatchedPages === 0 && verification.compared === this.totalBytes(),
        mismatchedPages: verification.mismatchedPages, ramBytesCompared: verification.compared, ramBytesSent: totals.ram, zeroPages: totals.zero,
        deviceStateBytes: totals.device, streamBytes: this.writer.bytes, downtimeMs, predictedDowntimeMs: predicted === Infinity ? null : predicted,
        rounds, converged, reason, throughputBytesPerSecond: throughput, destinationResumeMs,
      };
    } catch (error) {
      // Leave the source running with its devices back in RUNNING, and say why.
      for (const device of devices) await device.resume().catch(() => undefined);
      if (guestStopped) await Promise.resolve(this.options.resumeGuest()).catch(() => undefined);
      this.options.stream.destroy();
      if (error instanceof MigrationRefusedError) throw error;
      throw new MigrationFailedError(step, error);
    }
  }

  private totalBytes(): number {
    return this.options.memories.reduce((n, m) => n + Number(m.length), 0);
  }

  /** One round on the stream: its RAM, then each device's chunks of `phase`, then END_ROUND. */
  private async sendRound(
    index: number, phase: number, chunksOf: (device: DeviceStateSource) => AsyncIterable<Uint8Array>,
  ): Promise<{ sent: { pages: number; zeroPages: number; ramBytes: number }; deviceBytes: number }> {
    const sent = await this.sendRam();
    let deviceBytes = 0;
    for (const [d, device] of (this.options.devices ?? []).entries()) {
      for await (const chunk of chunksOf(device)) deviceBytes += await this.sendDeviceState(d, phase, chunk);
    }
    await this.writer.write(encodeRecord(RecordType.END_ROUND, u32s(index, sent.pages)));
    return { sent, deviceBytes };
  }

  /** One sync round: the dirty runs go onto the stream as RAM records (zero runs without data). */
  private async sendRam(): Promise<{ pages: number; zeroPages: number; ramBytes: number }> {
    const runs: { region: number; offset: bigint; length: bigint }[] = [];
    const round = await this.sync.round({
      onRuns: (chunk, count, base) => {
        for (let i = 0; i < count; i++) {
          for (const range of this.sync.rangesOfRun(base + chunk[2 * i]!, chunk[2 * i + 1]!)) {
            const region = this.regionOf.get(range.memory);
            if (region === undefined) throw new InvalidArgumentError('memories', `memory at 0x${range.memory.address.toString(16)} is mapped for DMA but is not one of the guest's RAM regions`);
            runs.push({ region, offset: range.offset, length: range.length });
          }
        }
      },
    });
    let zeroPages = 0;
    let ramBytes = 0;
    const ps = this.pageSize;
    try {
      for (const run of runs) {
        const bytes = this.options.memories[run.region]!.bytes!;
        const first = Number(run.offset) / ps;
        const pages = Number(run.length) / ps;
        // Split the run into records of at most RECORD_PAGES, zero stretches apart.
        let p = 0;
        while (p < pages) {
          const zero = isZero(bytes, (first + p) * ps, ps);
          let q = p + 1;
          while (q < pages && q - p < RECORD_PAGES && isZero(bytes, (first + q) * ps, ps) === zero) q++;
          const offset = BigInt((first + p) * ps);
          if (zero) {
            await this.writer.write(encodeRecord(RecordType.RAM, ramPayloadHead(run.region, RAM_FLAG_ZERO, offset, q - p)));
            zeroPages += q - p;
          } else {
            const data = bytes.subarray((first + p) * ps, (first + q) * ps);
            await this.writer.write(encodeRecord(RecordType.RAM, ramPayloadHead(run.region, 0, offset, q - p), data));
            ramBytes += data.length;
          }
          p = q;
        }
      }
    } catch (error) {
      // Not sent: give the pages back so that nothing handed over is lost if the caller goes on.
      for (const run of runs) await this.sync.redirty({ memory: this.options.memories[run.region]!, offset: run.offset, length: run.length }).catch(() => undefined);
      throw error;
    }
    return { pages: round.dirtyPages, zeroPages, ramBytes };
  }

  private async sendDeviceState(device: number, phase: number, chunk: Uint8Array): Promise<number> {
    await this.writer.write(encodeRecord(RecordType.DEVICE_STATE, u32s(device, phase), chunk));
    return chunk.byteLength;
  }

  private async verify(): Promise<{ mismatchedPages: number; compared: number }> {
    const ps = this.pageSize;
    let mismatched = 0;
    let compared = 0;
    for (;;) {
      const record = await this.reader.readRecord();
      if (record.type === RecordType.VERIFIED) break;
      if (record.type !== RecordType.MEMORY) throw new StreamFormatError(`expected MEMORY, got type 0x${record.type.toString(16)}`);
      const region = record.payload.readUInt32LE(0);
      const offset = Number(record.payload.readBigUInt64LE(4));
      const data = record.payload.subarray(12);
      const memory = this.options.memories[region];
      if (!memory || offset + data.length > Number(memory.length)) throw new StreamFormatError(`MEMORY record outside region ${region}`);
      const mine = memory.bytes!;
      for (let at = 0; at < data.length; at += ps) {
        const end = Math.min(at + ps, data.length);
        if (Buffer.compare(data.subarray(at, end), mine.subarray(offset + at, offset + end)) !== 0) mismatched++;
      }
      compared += data.length;
    }
    return { mismatchedPages: mismatched, compared };
  }
}

export interface MigrationTargetOptions {
  readonly stream: Duplex;
  /** This side's RAM regions: they must match the source's in number and length. */
  readonly memories: readonly HostMemory[];
  readonly pageSize: number;
  readonly devices?: readonly DeviceStateSink[];
  /** Runs the destination guest once everything is loaded. */
  readonly runGuest?: () => void | Promise<void>;
}

export interface MigrationTargetSummary {
  readonly rounds: number;
  readonly ramBytes: number;
  readonly zeroPages: number;
  readonly deviceStateBytes: number;
  readonly resumeMs: number;
}

/**
 * The destination: checks the header against its own memory, page size and devices (refusing a
 * mismatch before it changes anything), loads RAM records and device state, resumes the devices
 * (every one to RUNNING_P2P, then RUNNING) and runs the guest, then sends its memory back.
 */
export class MigrationTarget {
  private readonly reader: ByteReader;
  private readonly writer: ByteWriter;

  constructor(private readonly options: MigrationTargetOptions) {
    for (const [i, m] of options.memories.entries()) if (!m.bytes) throw new InvalidArgumentError('memories', `region ${i} has no bytes`);
    this.reader = new ByteReader(options.stream);
    this.writer = new ByteWriter(options.stream, undefined);
  }

  async run(): Promise<MigrationTargetSummary> {
    const devices = this.options.devices ?? [];
    const header = await this.reader.readHeader();
    const refusal = this.check(header);
    if (refusal) {
      await this.writer.write(encodeRecord(RecordType.REFUSE, Buffer.from(refusal, 'utf8'))).catch(() => undefined);
      this.options.stream.end();
      throw new MigrationRefusedError(`refused the source: ${refusal}`);
    }
    let began = false;
    try {
      for (const device of devices) await device.begin();
      began = true;
      await this.writer.write(encodeRecord(RecordType.ACCEPT));
      const ps = this.options.pageSize;
      let ramBytes = 0;
      let zeroPages = 0;
      let deviceBytes = 0;
      let rounds = 0;
      for (;;) {
        const { type, payload } = await this.reader.readRecord();
        if (type === RecordType.RAM) {
          const region = payload.readUInt32LE(0);
          const flags = payload.readUInt32LE(4);
          const offset = Number(payload.readBigUInt64LE(8));
          const pages = payload.readUInt32LE(16);
          const memory = this.options.memories[region];
          if (!memory || offset % ps !== 0 || offset + pages * ps > Number(memory.length)) throw new StreamFormatError(`RAM record outside region ${region}: offset ${offset}, ${pages} pages`);
          const bytes = memory.bytes!;
          if (flags & RAM_FLAG_ZERO) {
            if (payload.length !== 20) throw new StreamFormatError('a ZERO RAM record carries data');
            bytes.fill(0, offset, offset + pages * ps);
            zeroPages += pages;
          } else {
            if (payload.length !== 20 + pages * ps) throw new StreamFormatError(`RAM record of ${pages} pages carries ${payload.length - 20} bytes`);
            bytes.set(payload.subarray(20), offset);
            ramBytes += pages * ps;
          }
        } else if (type === RecordType.DEVICE_STATE) {
          const device = devices[payload.readUInt32LE(0)];
          if (!device) throw new StreamFormatError(`DEVICE_STATE for device ${payload.readUInt32LE(0)} of ${devices.length}`);
          await device.write(payload.subarray(8));
          deviceBytes += payload.length - 8;
        } else if (type === RecordType.END_ROUND) {
          rounds++;
        } else if (type === RecordType.END) {
          break;
        } else {
          throw new StreamFormatError(`unexpected record type 0x${type.toString(16)}`);
        }
      }
      const t0 = performance.now();
      for (const device of devices) await device.quiesced();
      for (const device of devices) await device.run();
      await this.options.runGuest?.();
      const resumeMs = performance.now() - t0;
      const micros = Buffer.alloc(8);
      micros.writeBigUInt64LE(BigInt(Math.round(resumeMs * 1000)), 0);
      await this.writer.write(encodeRecord(RecordType.RESUMED, micros));
      // Send the memory back for the source's byte-for-byte check.
      const chunk = 1 << 20;
      for (const [region, memory] of this.options.memories.entries()) {
        const bytes = memory.bytes!;
        for (let at = 0; at < bytes.length; at += chunk) {
          const head = Buffer.alloc(12);
          head.writeUInt32LE(region, 0);
          head.writeBigUInt64LE(BigInt(at), 4);
          await this.writer.write(encodeRecord(RecordType.MEMORY, head, bytes.subarray(at, Math.min(at + chunk, bytes.length))));
        }
      }
      await this.writer.write(encodeRecord(RecordType.VERIFIED));
      this.options.stream.end();
      return { rounds, ramBytes, zeroPages, deviceStateBytes: deviceBytes, resumeMs };
    } catch (error) {
      if (began) for (const device of devices) await device.abort().catch(() => undefined);
      this.options.stream.destroy();
      throw error;
    }
  }

  private check(header: StreamHeader): string | undefined {
    if (header.versionMajor !== VERSION_MAJOR) return `stream version ${header.versionMajor}.${header.versionMinor}; this destination reads ${VERSION_MAJOR}.x`;
    if (header.pageSize !== this.options.pageSize) return `page size ${header.pageSize}; this destination's is ${this.options.pageSize}`;
    const mine = this.options.memories.map((m) => m.length);
    if (header.regions.length !== mine.length || header.regions.some((l, i) => l !== mine[i])) {
      return `RAM regions ${header.regions.map((l) => `0x${l.toString(16)}`).join(', ')}; this destination has ${mine.map((l) => `0x${l.toString(16)}`).join(', ')}`;
    }
    const names = (this.options.devices ?? []).map((d) => d.name);
    if (header.devices.length !== names.length || header.devices.some((n, i) => n !== names[i])) {
      return `devices with migration state [${header.devices.join(', ')}]; this destination has [${names.join(', ')}]`;
    }
    return undefined;
  }
}
