// DeviceMigration (VFIO migration v2) as the migration stream's device source and sink.
import type { DeviceMigration } from './device-migration.js';
import type { DeviceStateSink, DeviceStateSource } from './migration.js';

/**
 * The source side of one device: PRE_COPY from the first precopy call, then QEMU's switchover.
 * `name` is the device's name in the stream (its role in the guest, as QEMU's device id): both
 * sides must give the same one. It defaults to the host's device name.
 */
export class DeviceMigrationSource implements DeviceStateSource {
  private started = false;
  readonly name: string;

  constructor(readonly device: DeviceMigration, name?: string) {
    this.name = name ?? device.name;
  }

  async pendingBytes(): Promise<number> {
    return Number(this.device.pendingBytes());
  }

  async *precopy(): AsyncIterable<Uint8Array> {
    if (!this.started) {
      this.started = true;
      if (!this.device.startPrecopy()) return;
    }
    yield* this.device.precopyChunks();
  }

  async quiesce(): Promise<void> {
    this.device.quiesce();
  }

  async *stopCopy(): AsyncIterable<Uint8Array> {
    yield* this.device.stopCopy();
    this.device.finish();
  }

  async resume(): Promise<void> {
    this.device.cancel();
  }
}

/**
 * The destination side of one device: RESUMING at begin, chunks written as they come, and the
 * rest of load() (RUNNING_P2P, RUNNING) once the stream's end says all state is there.
 */
export class DeviceMigrationSink implements DeviceStateSink {
  private queue: Uint8Array[] = [];
  private wake: (() => void) | undefined;
  private ended = false;
  private failure: Error | undefined;
  private loading: Promise<void> | undefined;

  readonly name: string;

  /** `name`: the device's name in the stream, as the source gives it (default: the host's device name). */
  constructor(readonly device: DeviceMigration, name?: string) {
    this.name = name ?? device.name;
  }

  async begin(): Promise<void> {
    const chunks = async function* (this: DeviceMigrationSink): AsyncGenerator<Uint8Array> {
      for (;;) {
        if (this.failure) throw this.failure;
        const next = this.queue.shift();
        if (next) yield next;
        else if (this.ended) return;
        else await new Promise<void>((resolve) => (this.wake = resolve));
      }
    }.call(this);
    this.loading = this.device.load(chunks);
    this.loading.catch(() => undefined);
  }

  async write(chunk: Uint8Array): Promise<void> {
    this.queue.push(Uint8Array.from(chunk));
    this.poke();
  }

  async quiesced(): Promise<void> {
    this.ended = true;
    this.poke();
    await this.loading;
  }

  async run(): Promise<void> {}

  async abort(): Promise<void> {
    this.failure = new Error('the migration was abandoned');
    this.poke();
    await this.loading?.catch(() => undefined);
  }

  private poke(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}
