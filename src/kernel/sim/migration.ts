// A simulated device's VFIO migration v2 driver, modelled on samples/vfio-mdev/mtty.c (the one
// in-tree driver that needs no hardware) with PRE_COPY data that grows while the device runs:
// the set_state loop over vfio_mig_get_next_state, one saving file that PRE_COPY and STOP_COPY
// share, a resuming file that validates the stream's header (EFAULT) and bounds (ENOMEM), and
// the errnos of the data fd (EINVAL for PRECOPY_INFO outside PRE_COPY, ENODEV once disabled).
//
// The device state is BAR0 (its register file): device activity is a BAR0 write, which marks
// the 256-byte chunks it touches dirty. The stream is a 24-byte header (u64 magic, u32 version 1,
// u32 flags 0, u64 state size) and records (u32 offset, u32 length, bytes): PRE_COPY gives the
// whole state first (initial_bytes), then a record per chunk dirtied since (dirty_bytes);
// STOP_COPY adds chunk 0 (the live registers) and the chunks dirtied since, or from STOP the whole state.
import { z } from 'zod';
import {
  VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P as PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING as RESUMING,
  VFIO_DEVICE_STATE_RUNNING as RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP as STOP,
  VFIO_DEVICE_STATE_STOP_COPY as STOP_COPY,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
  nextMigrationState,
} from '../../uapi/index.js';
import { InvalidArgumentError } from '../errors.js';
import type { MigrationDataHandle, PrecopyInfo } from '../types.js';
import { fail } from './failure.js';
import { runIoctl } from './iommufd.js';
import type { KernelServices } from './services.js';

export const SIM_MIGRATION_MAGIC = 0x5349_4d56_4649_4f31n; // "SIMVFIO1"
export const SIM_MIGRATION_HEADER_SIZE = 24;
export const SIM_MIGRATION_RECORD_HEADER_SIZE = 8;
/** Granule of the device's state dirty tracking. */
export const SIM_MIGRATION_CHUNK = 256;

export const MigrationSpec = z
  .object({
    /** VFIO_MIGRATION_P2P: RUNNING_P2P (and PRE_COPY_P2P with preCopy). */
    p2p: z.boolean().default(true),
    /** VFIO_MIGRATION_PRE_COPY: PRE_COPY states and VFIO_MIG_GET_PRECOPY_INFO. */
    preCopy: z.boolean().default(true),
  })
  .strict();

export interface MigrationModel {
  /** VFIO_MIGRATION_* flags. */
  readonly flags: number;
}

export function migrationModel(spec: z.output<typeof MigrationSpec>): MigrationModel {
  return {
    flags: VFIO_MIGRATION_STOP_COPY | (spec.p2p ? VFIO_MIGRATION_P2P : 0) | (spec.preCopy ? VFIO_MIGRATION_PRE_COPY : 0),
  };
}

/** What the driver needs of its device: the state bytes (BAR0), created on demand. */
export interface MigratableState {
  readonly name: string;
  stateBytes(): Uint8Array;
}

/** One device's migration driver state (mdev_state's state, saving_migf and resuming_migf). */
export class SimulatedMigration {
  state = RUNNING;
  private saving: SavingFile | undefined;
  private resuming: ResumingFile | undefined;
  /** Chunks written since the saving file last queued them. */
  private readonly dirty = new Set<number>();

  constructor(
    readonly model: MigrationModel,
    private readonly device: MigratableState,
    private readonly services: KernelServices,
  ) {}

  get stateSize(): number {
    return this.device.stateBytes().byteLength;
  }

  /** Device activity: a write of `length` bytes at `offset` of the state (a BAR0 write). */
  touched(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / SIM_MIGRATION_CHUNK);
    const last = Math.floor((offset + length - 1) / SIM_MIGRATION_CHUNK);
    for (let chunk = first; chunk <= last; chunk++) this.dirty.add(chunk);
  }

  /** mtty_get_data_size: the STOP_COPY stream from STOP, or what the saving file still has to give. */
  dataSize(): bigint {
    if (this.saving && !this.saving.disabled) {
      const live = this.dirty.has(0) ? 0 : SIM_MIGRATION_RECORD_HEADER_SIZE + this.chunkLength(0);
      return BigInt(this.saving.pendingBytes() + this.dirtyBytes() + (this.state === STOP_COPY ? 0 : live));
    }
    return BigInt(SIM_MIGRATION_HEADER_SIZE + SIM_MIGRATION_RECORD_HEADER_SIZE + this.stateSize);
  }

  dirtyBytes(): number {
    let bytes = 0;
    for (const chunk of this.dirty) bytes += SIM_MIGRATION_RECORD_HEADER_SIZE + this.chunkLength(chunk);
    return bytes;
  }

  /** mtty_set_state: step arc by arc; a failed step leaves the device in the last state reached. */
  setState(target: number): SimulatedMigrationFile | undefined {
    let file: SimulatedMigrationFile | undefined;
    while (this.state !== target) {
      const next = nextMigrationState(this.model.flags, this.state, target);
      if (next === undefined) fail('EINVAL');
      file = this.step(next);
      this.state = next;
    }
    return file;
  }

  /** VFIO_DEVICE_RESET: back to RUNNING, data fds disabled (mtty_reset's deferred reset). */
  reset(): void {
    this.state = RUNNING;
    this.disableFiles();
  }

  /** close_device: the data fds are disabled; the state stays (mtty_close). */
  deviceClosed(): void {
    this.disableFiles();
  }

  private step(next: number): SimulatedMigrationFile | undefined {
    const current = this.state;
    const arc = (from: number, to: number) => current === from && next === to;
    if (arc(RESUMING, STOP)) {
      this.resuming!.load(this.device.stateBytes());
      this.disableFiles();
      return undefined;
    }
    if (arc(PRE_COPY, RUNNING) || arc(PRE_COPY_P2P, RUNNING_P2P) || arc(STOP_COPY, STOP)) {
      this.disableFiles();
      return undefined;
    }
    if (arc(RUNNING, PRE_COPY) || arc(RUNNING_P2P, PRE_COPY_P2P) || arc(STOP, STOP_COPY) || arc(PRE_COPY_P2P, STOP_COPY)) {
      if (this.saving) {
        // PRE_COPY_P2P -> STOP_COPY: the PRE_COPY file carries on, no new fd (mtty_save_device_data).
        if (next === STOP_COPY) this.queueStopCopy();
        return undefined;
      }
      this.saving = new SavingFile(this, this.services);
      this.saving.queue(header(this.stateSize));
      this.saving.queue(record(0, this.device.stateBytes()));
      this.saving.initialRemaining = SIM_MIGRATION_HEADER_SIZE + SIM_MIGRATION_RECORD_HEADER_SIZE + this.stateSize;
      this.dirty.clear();
      return this.saving;
    }
    if (arc(STOP, RESUMING)) {
      this.resuming = new ResumingFile(this, this.services, this.stateSize);
      return this.resuming;
    }
    // RUNNING <-> RUNNING_P2P, RUNNING_P2P -> STOP, STOP -> RUNNING_P2P, PRE_COPY <-> PRE_COPY_P2P,
    // and without P2P RUNNING <-> STOP: nothing to do for a device without DMA to quiesce.
    return undefined;
  }

  /** STOP_COPY: the live registers (chunk 0, only consistent once stopped) and every chunk dirtied since. */
  private queueStopCopy(): void {
    this.dirty.add(0);
    this.queueDirty();
  }

  /** The chunks dirtied since the last queue, as records on the saving file. */
  queueDirty(): void {
    if (!this.saving) return;
    const bytes = this.device.stateBytes();
    for (const chunk of [...this.dirty].sort((a, b) => a - b)) {
      const start = chunk * SIM_MIGRATION_CHUNK;
      this.saving.queue(record(start, bytes.subarray(start, start + this.chunkLength(chunk))));
    }
    this.dirty.clear();
  }

  private chunkLength(chunk: number): number {
    return Math.min(SIM_MIGRATION_CHUNK, this.stateSize - chunk * SIM_MIGRATION_CHUNK);
  }

  private disableFiles(): void {
    this.saving?.disable();
    this.resuming?.disable();
    this.saving = undefined;
    this.resuming = undefined;
  }

  get precopy(): boolean {
    return this.state === PRE_COPY || this.state === PRE_COPY_P2P;
  }
}

function header(stateSize: number): Uint8Array {
  const bytes = new Uint8Array(SIM_MIGRATION_HEADER_SIZE);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, SIM_MIGRATION_MAGIC, true);
  view.setUint32(8, 1, true);
  view.setUint32(12, 0, true);
  view.setBigUint64(16, BigInt(stateSize), true);
  return bytes;
}

function record(offset: number, data: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(SIM_MIGRATION_RECORD_HEADER_SIZE + data.byteLength);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, offset, true);
  view.setUint32(4, data.byteLength, true);
  bytes.set(data, SIM_MIGRATION_RECORD_HEADER_SIZE);
  return bytes;
}

/** A migration data fd of the simulated kernel. */
export abstract class SimulatedMigrationFile implements MigrationDataHandle {
  readonly fd: number;
  disabled = false;
  private isClosed = false;

  constructor(
    protected readonly migration: SimulatedMigration,
    protected readonly services: KernelServices,
  ) {
    this.fd = services.allocateFd();
  }

  get closed(): boolean {
    return this.isClosed;
  }

  read(_buffer: Uint8Array): number | null {
    return this.syscall('read', () => fail('EBADF'));
  }

  write(_data: Uint8Array): number | null {
    return this.syscall('write', () => fail('EBADF'));
  }

  precopyInfo(): PrecopyInfo {
    return this.syscall('VFIO_MIG_GET_PRECOPY_INFO', () => fail('ENOTTY'));
  }

  disable(): void {
    this.disabled = true;
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.disabled = true;
    this.services.releaseFd(this.fd);
  }

  protected syscall<T>(name: string, body: () => T, objects: Record<string, number> = {}): T {
    const closed = this.isClosed ? (['dataFd', `the migration data fd ${this.fd} is closed`] as const) : undefined;
    return runIoctl(this.services, this.fd, closed, name, { data_fd: this.fd, ...objects }, body);
  }
}

/** The saving file (O_RDONLY): PRE_COPY then STOP_COPY data, read sequentially. */
class SavingFile extends SimulatedMigrationFile {
  private readonly chunks: Uint8Array[] = [];
  /** Bytes of the initial data (header and full state) not read yet. */
  initialRemaining = 0;

  queue(bytes: Uint8Array): void {
    this.chunks.push(bytes);
  }

  pendingBytes(): number {
    return this.chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0);
  }

  override read(buffer: Uint8Array): number | null {
    return this.syscall('read', () => {
      if (this.disabled) fail('ENODEV');
      // Nothing queued: in PRE_COPY hand out what the device dirtied since; else the stream is over.
      if (this.chunks.length === 0 && this.migration.precopy) this.migration.queueDirty();
      let copied = 0;
      while (copied < buffer.byteLength && this.chunks.length > 0) {
        const chunk = this.chunks[0]!;
        const n = Math.min(chunk.byteLength, buffer.byteLength - copied);
        buffer.set(chunk.subarray(0, n), copied);
        copied += n;
        if (n === chunk.byteLength) this.chunks.shift();
        else this.chunks[0] = chunk.subarray(n);
      }
      this.initialRemaining = Math.max(0, this.initialRemaining - copied);
      return copied;
    }, { length: buffer.byteLength });
  }

  override precopyInfo(): PrecopyInfo {
    return this.syscall('VFIO_MIG_GET_PRECOPY_INFO', () => {
      if (!this.migration.precopy) fail('EINVAL');
      if (this.disabled) fail('ENODEV');
      const initial = this.initialRemaining;
      // Queued dirty records not read yet count as dirty, as do chunks dirtied since.
      const dirty = this.pendingBytes() - initial + this.migration.dirtyBytes();
      return { initialBytes: BigInt(initial), dirtyBytes: BigInt(dirty) };
    });
  }
}

/** The resuming file (O_WRONLY): the stream is parsed as it comes, applied on RESUMING -> STOP. */
class ResumingFile extends SimulatedMigrationFile {
  private readonly staged: Uint8Array;
  private readonly covered: Uint8Array;
  private pending = new Uint8Array(0);
  private headerSeen = false;
  private received = 0;
  private readonly limit: number;

  constructor(migration: SimulatedMigration, services: KernelServices, private readonly stateSize: number) {
    super(migration, services);
    this.staged = new Uint8Array(stateSize);
    this.covered = new Uint8Array(stateSize);
    // Room for the whole state and each chunk once more (a PRE_COPY pass, then the dirty chunks).
    const chunks = Math.ceil(stateSize / SIM_MIGRATION_CHUNK);
    this.limit = SIM_MIGRATION_HEADER_SIZE + 2 * (SIM_MIGRATION_RECORD_HEADER_SIZE + stateSize) + chunks * SIM_MIGRATION_RECORD_HEADER_SIZE * 64;
  }

  override write(data: Uint8Array): number | null {
    return this.syscall('write', () => {
      if (this.received + data.byteLength > this.limit) fail('ENOMEM');
      if (this.disabled) fail('ENODEV');
      this.received += data.byteLength;
      const joined = new Uint8Array(this.pending.byteLength + data.byteLength);
      joined.set(this.pending);
      joined.set(data, this.pending.byteLength);
      this.pending = joined;
      this.parse();
      return data.byteLength;
    }, { length: data.byteLength });
  }

  private parse(): void {
    const view = () => new DataView(this.pending.buffer, this.pending.byteOffset, this.pending.byteLength);
    if (!this.headerSeen) {
      if (this.pending.byteLength < SIM_MIGRATION_HEADER_SIZE) return;
      const v = view();
      // mtty_resume_write: a header that does not match this device is EFAULT.
      if (v.getBigUint64(0, true) !== SIM_MIGRATION_MAGIC || v.getUint32(8, true) !== 1 || v.getUint32(12, true) !== 0 ||
          v.getBigUint64(16, true) !== BigInt(this.stateSize)) {
        this.pending = new Uint8Array(0);
        fail('EFAULT');
      }
      this.headerSeen = true;
      this.pending = this.pending.subarray(SIM_MIGRATION_HEADER_SIZE);
    }
    while (this.pending.byteLength >= SIM_MIGRATION_RECORD_HEADER_SIZE) {
      const v = view();
      const offset = v.getUint32(0, true);
      const length = v.getUint32(4, true);
      if (offset + length > this.stateSize) fail('EFAULT');
      if (this.pending.byteLength < SIM_MIGRATION_RECORD_HEADER_SIZE + length) return;
      const data = this.pending.subarray(SIM_MIGRATION_RECORD_HEADER_SIZE, SIM_MIGRATION_RECORD_HEADER_SIZE + length);
      this.staged.set(data, offset);
      this.covered.fill(1, offset, offset + length);
      this.pending = this.pending.subarray(SIM_MIGRATION_RECORD_HEADER_SIZE + length);
    }
  }

  /** mtty_load_state: EINVAL unless the whole state arrived. */
  load(into: Uint8Array): void {
    if (!this.headerSeen || this.pending.byteLength > 0 || this.covered.includes(0)) fail('EINVAL');
    into.set(this.staged);
  }
}

export function checkMigrationState(state: number): void {
  if (!Number.isInteger(state) || state < STOP || state > PRE_COPY_P2P) {
    throw new InvalidArgumentError('state', `${state} is not a migration state a device can be set to (VFIO_DEVICE_STATE_STOP 1 to PRE_COPY_P2P 7)`);
  }
}
