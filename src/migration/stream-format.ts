// The migration stream, version 1.0. Little-endian throughout.
//
// Source -> destination:
//   header: "VFIOMIG\0" | u16 major (1) | u16 minor (0) | u32 page size | u32 regions | u32 devices
//           | per region: u64 length | per device: u16 name length, name (UTF-8) | u32 crc32 of all before
//   records: u8 type | u8[3] 0 | u32 payload length | payload | u32 crc32 of type..payload
//     RAM           payload: u32 region | u32 flags (1 = ZERO: every page zero, no data) | u64 offset
//                            | u32 pages | pages * page size bytes (none when ZERO)
//     DEVICE_STATE  payload: u32 device | u32 phase (1 precopy, 2 stop-copy) | bytes
//     END_ROUND     payload: u32 round | u32 pages sent
//     END           payload: u32 rounds
// Destination -> source (same record framing):
//     ACCEPT (empty), REFUSE (UTF-8 reason), RESUMED (u64 microseconds the destination took from END
//     to running), MEMORY (u32 region | u64 offset | bytes: the destination's memory, sent back after
//     RESUMED for a byte-for-byte check), VERIFIED (empty: all memory sent back).
import { crc32 } from 'node:zlib';

export const MAGIC = Buffer.from('VFIOMIG\0', 'latin1');
export const VERSION_MAJOR = 1;
export const VERSION_MINOR = 0;

export const RecordType = {
  RAM: 0x10,
  DEVICE_STATE: 0x20,
  END_ROUND: 0x30,
  END: 0x40,
  ACCEPT: 0x81,
  REFUSE: 0x82,
  RESUMED: 0x83,
  MEMORY: 0x84,
  VERIFIED: 0x85,
} as const;
export type RecordTypeValue = (typeof RecordType)[keyof typeof RecordType];

export const RAM_FLAG_ZERO = 1;
export const DevicePhase = { PRECOPY: 1, STOP_COPY: 2 } as const;
/** Largest record payload a reader accepts: bounds what a corrupt length can make it allocate. */
export const MAXIMUM_PAYLOAD = 64 * 1024 * 1024;

export interface StreamHeader {
  readonly versionMajor: number;
  readonly versionMinor: number;
  readonly pageSize: number;
  readonly regions: readonly bigint[];
  readonly devices: readonly string[];
}

/** The stream broke a rule: bad magic, version, checksum, length or order. */
export class StreamFormatError extends Error {
  constructor(message: string) {
    super(`migration stream: ${message}`);
    this.name = 'StreamFormatError';
  }
}

export function encodeHeader(header: StreamHeader): Buffer {
  const names = header.devices.map((d) => Buffer.from(d, 'utf8'));
  const size = 8 + 4 + 12 + header.regions.length * 8 + names.reduce((n, b) => n + 2 + b.length, 0) + 4;
  const out = Buffer.alloc(size);
  MAGIC.copy(out, 0);
  out.writeUInt16LE(header.versionMajor, 8);
  out.writeUInt16LE(header.versionMinor, 10);
  out.writeUInt32LE(header.pageSize, 12);
  out.writeUInt32LE(header.regions.length, 16);
  out.writeUInt32LE(header.devices.length, 20);
  let at = 24;
  for (const length of header.regions) {
    out.writeBigUInt64LE(length, at);
    at += 8;
  }
  for (const name of names) {
    out.writeUInt16LE(name.length, at);
    name.copy(out, at + 2);
    at += 2 + name.length;
  }
  out.writeUInt32LE(crc32(out.subarray(0, at)), at);
  return out;
}

/** Frames a record: type, length, payload parts, checksum. */
export function encodeRecord(type: RecordTypeValue, ...parts: Uint8Array[]): Buffer[] {
  const length = parts.reduce((n, p) => n + p.byteLength, 0);
  const head = Buffer.alloc(8);
  head.writeUInt8(type, 0);
  head.writeUInt32LE(length, 4);
  let crc = crc32(head);
  for (const p of parts) crc = crc32(p, crc);
  const tail = Buffer.alloc(4);
  tail.writeUInt32LE(crc, 0);
  return [head, ...parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength)), tail];
}

export function ramPayloadHead(region: number, flags: number, offset: bigint, pages: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32LE(region, 0);
  b.writeUInt32LE(flags, 4);
  b.writeBigUInt64LE(offset, 8);
  b.writeUInt32LE(pages, 16);
  return b;
}

export function u32s(...values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeUInt32LE(v, i * 4));
  return b;
}

/** Reads exact byte counts from a Node readable stream, in order; fails on end or error. */
export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiting: (() => void) | undefined;
  private ended = false;
  private failure: Error | undefined;

  constructor(readonly stream: NodeJS.ReadableStream) {
    stream.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      this.wake();
    });
    stream.on('end', () => {
      this.ended = true;
      this.wake();
    });
    stream.on('close', () => {
      this.ended = true;
      this.wake();
    });
    stream.on('error', (error: Error) => {
      this.failure = error;
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.();
  }

  async read(n: number): Promise<Buffer> {
    while (this.buffered < n) {
      if (this.failure) throw this.failure;
      if (this.ended) throw new StreamFormatError(`the connection ended ${this.buffered === 0 ? 'between records' : `in the middle of a record (${this.buffered} of ${n} bytes)`}`);
      await new Promise<void>((resolve) => (this.waiting = resolve));
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const head = this.chunks[0]!;
      const take = Math.min(head.length, n - at);
      head.copy(out, at, 0, take);
      at += take;
      if (take === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(take);
    }
    this.buffered -= n;
    return out;
  }

  async readHeader(): Promise<StreamHeader> {
    const fixed = await this.read(24);
    if (!fixed.subarray(0, 8).equals(MAGIC)) throw new StreamFormatError('not a vfio-iommufd migration stream (bad magic)');
    const regions = fixed.readUInt32LE(16);
    const devices = fixed.readUInt32LE(20);
    if (regions > 65536 || devices > 4096) throw new StreamFormatError(`implausible header: ${regions} regions, ${devices} devices`);
    const regionBytes = await this.read(regions * 8);
    const parts: Buffer[] = [fixed, regionBytes];
    const names: string[] = [];
    for (let i = 0; i < devices; i++) {
      const len = await this.read(2);
      const name = await this.read(len.readUInt16LE(0));
      parts.push(len, name);
      names.push(name.toString('utf8'));
    }
    const crc = (await this.read(4)).readUInt32LE(0);
    if (crc32(Buffer.concat(parts)) !== crc) throw new StreamFormatError('header checksum mismatch');
    return {
      versionMajor: fixed.readUInt16LE(8), versionMinor: fixed.readUInt16LE(10), pageSize: fixed.readUInt32LE(12),
      regions: Array.from({ length: regions }, (_, i) => regionBytes.readBigUInt64LE(i * 8)), devices: names,
    };
  }

  async readRecord(): Promise<{ type: number; payload: Buffer }> {
    const head = await this.read(8);
    const length = head.readUInt32LE(4);
    if (length > MAXIMUM_PAYLOAD) throw new StreamFormatError(`record of ${length} bytes is longer than the ${MAXIMUM_PAYLOAD} allowed`);
    const payload = await this.read(length);
    const crc = (await this.read(4)).readUInt32LE(0);
    if (crc32(payload, crc32(head)) !== crc) throw new StreamFormatError(`checksum mismatch in a record of type 0x${head[0]!.toString(16)}`);
    return { type: head[0]!, payload };
  }
}

/** Writes with backpressure and an optional bandwidth limit; counts bytes and time. */
export class ByteWriter {
  bytes = 0;
  /** Milliseconds spent waiting for the stream to drain or for the bandwidth limit. */
  waitedMs = 0;
  private readonly started = performance.now();

  constructor(readonly stream: NodeJS.WritableStream, private readonly bandwidthBytesPerSecond: number | undefined) {}

  async write(parts: Buffer[]): Promise<void> {
    for (const part of parts) {
      this.bytes += part.length;
      if (!this.stream.write(part)) {
        const t = performance.now();
        await new Promise<void>((resolve, reject) => {
          const done = () => {
            this.stream.off('drain', done);
            this.stream.off('error', fail);
            this.stream.off('close', closed);
            resolve();
          };
          const fail = (error: Error) => reject(error);
          const closed = () => reject(new Error('the connection closed'));
          this.stream.once('drain', done);
          this.stream.once('error', fail);
          this.stream.once('close', closed);
        });
        this.waitedMs += performance.now() - t;
      }
    }
    if (this.bandwidthBytesPerSecond) {
      // Never ahead of the limit: sleep until the bytes written so far fit it.
      const due = (this.bytes / this.bandwidthBytesPerSecond) * 1000 - (performance.now() - this.started);
      if (due > 1) {
        this.waitedMs += due;
        await new Promise((resolve) => setTimeout(resolve, due));
      }
    }
  }
}
