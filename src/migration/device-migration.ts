// One device's side of a live migration, driven as QEMU's hw/vfio/migration.c drives it: PRE_COPY
// while the guest runs (with PRECOPY_INFO estimates), every P2P device quiesced to *_P2P before
// any goes to STOP_COPY, STOP_COPY read to the end, STOP after; on the destination RESUMING, the
// stream written, RUNNING_P2P, RUNNING. Data moves in bounded chunks through async iterators, so
// a large device state is never held whole. A failed transition recovers as QEMU does.
import { InvalidArgumentError, KernelError } from '../kernel/errors.js';
import type { DeviceHandle, MigrationDataHandle, PrecopyInfo } from '../kernel/types.js';
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
  migrationPath,
  migrationStateName,
  migrationStateSupported,
} from '../uapi/index.js';
import { MigrationTransitionError, type MigrationRecovery } from './errors.js';

/** QEMU's VFIO_MIG_DEFAULT_DATA_BUFFER_SIZE: the largest read buffer. */
export const MIGRATION_MAX_CHUNK = 1 << 20;
/** QEMU assumes this much device state when MIG_DATA_SIZE fails, so that the downtime limit holds. */
export const MIGRATION_UNKNOWN_DATA_SIZE = 100n * (1n << 30n);

export interface DeviceMigrationOptions {
  /** Largest chunk read from the data fd (default min(1 MiB, MIG_DATA_SIZE), at least 4 KiB). */
  readonly chunkSize?: number;
  /** Waits between EAGAIN retries, in ms (default 1). */
  readonly retryDelayMs?: number;
}

/** Running counts, for reports and tests. */
export interface MigrationCounters {
  /** MIG_DEVICE_STATE SETs that succeeded. */
  transitions: number;
  bytesSaved: number;
  bytesLoaded: number;
}

export class DeviceMigration {
  /** VFIO_MIGRATION_* flags the device reports. */
  readonly flags: number;
  readonly counters: MigrationCounters = { transitions: 0, bytesSaved: 0, bytesLoaded: 0 };
  private current: number;
  private data: MigrationDataHandle | undefined;
  private readonly retryDelayMs: number;
  private readonly chunkOption: number | undefined;

  /** Reads the device's migration flags (ENOTTY: no migration) and its state. */
  constructor(
    readonly device: DeviceHandle,
    options: DeviceMigrationOptions = {},
  ) {
    if (options.chunkSize !== undefined && (!Number.isInteger(options.chunkSize) || options.chunkSize < 1 || options.chunkSize > MIGRATION_MAX_CHUNK)) {
      throw new InvalidArgumentError('chunkSize', `must be an integer from 1 to ${MIGRATION_MAX_CHUNK}`);
    }
    this.chunkOption = options.chunkSize;
    this.retryDelayMs = options.retryDelayMs ?? 1;
    this.flags = device.migrationFlags();
    if (!(this.flags & VFIO_MIGRATION_STOP_COPY)) {
      throw new InvalidArgumentError('device', `${device.name} reports migration flags 0x${this.flags.toString(16)} without VFIO_MIGRATION_STOP_COPY: it cannot migrate`);
    }
    this.current = device.getMigrationState();
  }

  get name(): string {
    return this.device.name;
  }

  get p2p(): boolean {
    return (this.flags & VFIO_MIGRATION_P2P) !== 0;
  }

  get preCopy(): boolean {
    return (this.flags & VFIO_MIGRATION_PRE_COPY) !== 0;
  }

  /** The state the library last set or read. */
  get state(): number {
    return this.current;
  }

  supports(state: number): boolean {
    return migrationStateSupported(this.flags, state);
  }

  /** The states the kernel will step through to `target`; undefined when it refuses. */
  pathTo(target: number): number[] | undefined {
    return migrationPath(this.flags, this.current, target);
  }

  /**
   * One MIG_DEVICE_STATE SET. Refuses, before any ioctl, a state the device lacks or an arc the
   * kernel refuses. Reads the state back. On failure: `recovery` (default: the state it was in)
   * is tried, then VFIO_DEVICE_RESET (RUNNING), and a MigrationTransitionError names the arc.
   */
  transition(target: number, recovery: number = this.current): MigrationDataHandle | undefined {
    const from = this.current;
    if (!this.supports(target)) {
      throw new InvalidArgumentError('state', `${this.name} has no ${migrationStateName(target)} (migration flags 0x${this.flags.toString(16)})`);
    }
    if (this.pathTo(target) === undefined) {
      throw new InvalidArgumentError('state', `${this.name}: the kernel refuses ${migrationStateName(from)} -> ${migrationStateName(target)} (vfio_mig_get_next_state)`);
    }
    let data: MigrationDataHandle | undefined;
    try {
      data = this.device.setMigrationState(target);
    } catch (error) {
      if (!(error instanceof KernelError)) throw error;
      throw this.recover(from, target, recovery, error);
    }
    this.counters.transitions++;
    const reached = this.device.getMigrationState();
    this.current = reached;
    if (reached !== target) {
      data?.close();
      throw new MigrationTransitionError(this.name, from, target, reached, 'failed', reached, undefined);
    }
    return data;
  }

  /** QEMU's vfio_migration_set_state error path. */
  private recover(from: number, to: number, recovery: number, cause: KernelError): MigrationTransitionError {
    let reached: number | undefined;
    try {
      reached = this.device.getMigrationState();
    } catch {
      reached = undefined;
    }
    this.closeData();
    let outcome: MigrationRecovery = 'failed';
    let state: number | undefined;
    const canRecover = this.supports(recovery) && reached !== undefined && migrationPath(this.flags, reached, recovery) !== undefined;
    if (canRecover) {
      try {
        this.device.setMigrationState(recovery)?.close();
        outcome = 'recovery-state';
        state = recovery;
      } catch {
        outcome = 'failed';
      }
    }
    if (outcome === 'failed') {
      try {
        this.device.reset();
        outcome = 'reset';
        state = RUNNING;
      } catch {
        state = undefined;
      }
    }
    if (state !== undefined) this.current = state;
    return new MigrationTransitionError(this.name, from, to, reached, outcome, state, cause);
  }

  /** MIG_DATA_SIZE; QEMU's 100 GiB when the driver cannot say. */
  stopCopySize(): bigint {
    try {
      return this.device.migrationDataSize();
    } catch (error) {
      if (error instanceof KernelError) return MIGRATION_UNKNOWN_DATA_SIZE;
      throw error;
    }
  }

  /** PRECOPY_INFO of the PRE_COPY data fd; undefined outside PRE_COPY. */
  precopyInfo(): PrecopyInfo | undefined {
    if (!this.data || (this.current !== PRE_COPY && this.current !== PRE_COPY_P2P)) return undefined;
    return this.data.precopyInfo();
  }

  /**
   * Device state still to send, for the convergence estimate: in PRE_COPY initial + dirty bytes
   * (QEMU's estimate), else the MIG_DATA_SIZE of STOP_COPY.
   */
  pendingBytes(): bigint {
    const info = this.precopyInfo();
    if (info) return info.initialBytes + info.dirtyBytes;
    return this.stopCopySize();
  }

  /** Source, guest running: PRE_COPY (from RUNNING) when the device has it. Returns whether it did. */
  startPrecopy(): boolean {
    if (!this.preCopy) return false;
    if (this.current !== RUNNING) throw new InvalidArgumentError('state', `${this.name} is in ${migrationStateName(this.current)}: PRE_COPY starts from RUNNING`);
    this.data = this.transition(PRE_COPY, RUNNING);
    return true;
  }

  /** Source, guest running: what the PRE_COPY data fd has now, in chunks, until it has no more for now. */
  async *precopyChunks(): AsyncGenerator<Uint8Array> {
    if (!this.data || (this.current !== PRE_COPY && this.current !== PRE_COPY_P2P)) return;
    yield* this.readAvailable(this.data);
  }

  /** Switchover, first step for every device: P2P quiescing (PRE_COPY_P2P or RUNNING_P2P); STOP without P2P. */
  quiesce(): void {
    if (this.p2p) this.transition(this.current === PRE_COPY ? PRE_COPY_P2P : RUNNING_P2P, this.current);
  }

  /**
   * Switchover, second step: STOP_COPY and read the stream to its end. PRE_COPY -> STOP_COPY may
   * return no new fd: the PRE_COPY fd goes on. The device stays in STOP_COPY until finish().
   */
  async *stopCopy(): AsyncGenerator<Uint8Array> {
    const fresh = this.transition(STOP_COPY, this.p2p ? RUNNING_P2P : RUNNING);
    if (fresh) {
      this.data?.close();
      this.data = fresh;
    }
    if (!this.data) throw new InvalidArgumentError('state', `${this.name}: STOP_COPY gave no data fd`);
    yield* this.readAvailable(this.data);
    this.closeData();
  }

  /** After the stream is sent: STOP_COPY -> STOP (QEMU does it once the migration completed, outside the downtime). */
  finish(): void {
    this.closeData();
    if (this.current === STOP_COPY) this.transition(STOP, STOP);
  }

  /** The whole source side for one device: precopy pass (if any), quiesce, stop-copy, STOP. */
  async *save(): AsyncGenerator<Uint8Array> {
    if (this.startPrecopy()) yield* this.precopyChunks();
    this.quiesce();
    yield* this.stopCopy();
    this.finish();
  }

  /**
   * Destination: RESUMING (through STOP), write every chunk (short writes and EAGAIN retried),
   * then RUNNING_P2P (with P2P) and RUNNING. A failure closes the data fd and leaves the device
   * as recovery left it.
   */
  async load(stream: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<void> {
    if (this.current !== RUNNING && this.current !== STOP) {
      throw new InvalidArgumentError('state', `${this.name} is in ${migrationStateName(this.current)}: loading starts from RUNNING or STOP`);
    }
    if (this.current === RUNNING) this.transition(STOP, RUNNING);
    const data = this.transition(RESUMING, STOP);
    if (!data) throw new InvalidArgumentError('state', `${this.name}: RESUMING gave no data fd`);
    this.data = data;
    try {
      for await (const chunk of stream) await this.writeAll(data, chunk);
    } catch (error) {
      this.closeData();
      // The stream was refused: leave RESUMING as QEMU does, through its recovery.
      try {
        this.transition(STOP, STOP);
      } catch {
        // recovery already ran inside transition()
      }
      throw error;
    }
    this.closeData();
    if (this.p2p) this.transition(RUNNING_P2P, STOP);
    this.transition(RUNNING, this.p2p ? RUNNING_P2P : STOP);
  }

  /** Back to RUNNING from wherever the device is (a cancelled migration). */
  cancel(): void {
    this.closeData();
    if (this.current !== RUNNING) this.transition(RUNNING, RUNNING);
  }

  /** Closes the data fd, if one is open. */
  close(): void {
    this.closeData();
  }

  private closeData(): void {
    const data = this.data;
    this.data = undefined;
    if (data && !data.closed) data.close();
  }

  private chunkSize(): number {
    if (this.chunkOption !== undefined) return this.chunkOption;
    const size = this.stopCopySize();
    return Number(size < 4096n ? 4096n : size > BigInt(MIGRATION_MAX_CHUNK) ? BigInt(MIGRATION_MAX_CHUNK) : size);
  }

  private async *readAvailable(data: MigrationDataHandle): AsyncGenerator<Uint8Array> {
    const size = this.chunkSize();
    for (;;) {
      // A fresh buffer per read: a yielded chunk is the consumer's until it lets go.
      const buffer = new Uint8Array(size);
      const n = data.read(buffer);
      if (n === null) {
        await delay(this.retryDelayMs);
        continue;
      }
      if (n === 0) return;
      this.counters.bytesSaved += n;
      yield buffer.subarray(0, n);
    }
  }

  private async writeAll(data: MigrationDataHandle, chunk: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < chunk.byteLength) {
      const n = data.write(chunk.subarray(offset));
      if (n === null) {
        await delay(this.retryDelayMs);
        continue;
      }
      if (n === 0) throw new InvalidArgumentError('stream', `${this.name}: the data fd took no bytes at offset ${offset}`);
      offset += n;
      this.counters.bytesLoaded += n;
    }
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One chunk of a multi-device save, tagged with its device. */
export interface DeviceChunk {
  readonly device: DeviceMigration;
  readonly phase: 'precopy' | 'stop-copy';
  readonly bytes: Uint8Array;
}

/**
 * The source side for several devices in QEMU's order: each into PRE_COPY and one precopy pass,
 * then every device quiesced (P2P) before any enters STOP_COPY, then each device's stop-copy
 * stream, then STOP for all. QEMU refuses to migrate more than one device without P2P: so does this.
 */
export async function* saveDevices(devices: readonly DeviceMigration[]): AsyncGenerator<DeviceChunk> {
  if (devices.length > 1 && devices.some((device) => !device.p2p)) {
    throw new InvalidArgumentError('devices', `more than one device and ${devices.filter((d) => !d.p2p).map((d) => d.name).join(', ')} without VFIO_MIGRATION_P2P: QEMU blocks such a migration`);
  }
  for (const device of devices) {
    if (device.startPrecopy()) for await (const bytes of device.precopyChunks()) yield { device, phase: 'precopy', bytes };
  }
  for (const device of devices) device.quiesce();
  for (const device of devices) for await (const bytes of device.stopCopy()) yield { device, phase: 'stop-copy', bytes };
  for (const device of devices) device.finish();
}
