// A Syscalls that records every call and answers ioctls from handlers: used to test the shim's
// encoding, decoding and retries on byte fixtures built from the header layouts. It is not a
// kernel: each test scripts exactly the bytes a kernel would write for one call.
import type { IoctlArgument, Syscalls } from '../../src/kernel/linux/libc.js';

export interface RecordedIoctl {
  readonly fd: number;
  readonly request: number;
  /** The struct bytes as they were when the ioctl was issued. */
  readonly sent: Uint8Array | number | string | undefined;
  readonly held: readonly Uint8Array[];
}

export type IoctlHandler = (arg: IoctlArgument, call: { resolve: (address: bigint) => Uint8Array; held: readonly Uint8Array[] }) => number | { errno: number };

export class RecordingSyscalls implements Syscalls {
  readonly ioctls: RecordedIoctl[] = [];
  readonly opened: string[] = [];
  readonly closed: number[] = [];
  handlers = new Map<number, IoctlHandler>();
  private lastErrno = 0;
  private nextFd = 100;
  private nextAddress = 0x7f00_0000_0000n;
  private readonly views = new Map<bigint, Uint8Array>();
  private readonly bases = new WeakMap<ArrayBufferLike, bigint>();

  open(path: string): number {
    this.opened.push(path);
    return this.nextFd++;
  }

  close(fd: number): number {
    this.closed.push(fd);
    return 0;
  }

  ioctl(fd: number, request: number, arg: IoctlArgument, held: readonly Uint8Array[]): number {
    this.ioctls.push({ fd, request, sent: arg instanceof Uint8Array ? arg.slice() : arg, held: [...held] });
    const handler = this.handlers.get(request);
    if (!handler) {
      this.lastErrno = 25; // ENOTTY, as the kernel answers an ioctl it does not know
      return -1;
    }
    const result = handler(arg, { resolve: (address) => this.resolve(address, held), held });
    if (typeof result === 'number') return result;
    this.lastErrno = result.errno;
    return -1;
  }

  errno(): number {
    return this.lastErrno;
  }

  /** As V8 places them: each ArrayBuffer's store on a page of its own, a view at its byteOffset in it. */
  address(view: Uint8Array): bigint {
    for (const [address, known] of this.views) if (known === view) return address;
    let base = this.bases.get(view.buffer);
    if (base === undefined) {
      base = this.nextAddress;
      this.nextAddress += ((BigInt(view.buffer.byteLength) + 4095n) / 4096n + 1n) * 4096n;
      this.bases.set(view.buffer, base);
    }
    const address = base + BigInt(view.byteOffset);
    this.views.set(address, view);
    return address;
  }

  /** The view behind an address, only if the call holds it (as the real call keeps it alive). */
  resolve(address: bigint, held: readonly Uint8Array[]): Uint8Array {
    const view = this.views.get(address);
    if (!view || !held.includes(view)) throw new Error(`address 0x${address.toString(16)} is not held by this call`);
    return view;
  }

  mmap(length: bigint): bigint {
    const address = this.nextAddress;
    this.nextAddress += length + 4096n;
    return address;
  }

  readonly unmapped: bigint[] = [];

  munmap(address: bigint): number {
    this.unmapped.push(address);
    return 0;
  }

  view(): Uint8Array {
    throw new Error('no memory behind recorded mmap');
  }

  pread(): number {
    return -1;
  }

  pwrite(): number {
    return -1;
  }

  readonly madvised: { address: bigint; length: bigint; advice: number }[] = [];
  /** The next madvise fails with this errno (once). */
  madviseErrno: number | undefined;

  madvise(address: bigint, length: bigint, advice: number): number {
    if (this.madviseErrno !== undefined) {
      this.lastErrno = this.madviseErrno;
      this.madviseErrno = undefined;
      return -1;
    }
    this.madvised.push({ address, length, advice });
    return 0;
  }

  /** The page size the recorded host has (4 KiB unless a test sets another). */
  hostPageSize = 4096;

  pageSize(): number {
    return this.hostPageSize;
  }

  /** major:minor fstat reports per fd (a test sets what the opened node is). */
  readonly deviceNumbers = new Map<number, string>();

  deviceNumber(fd: number): string | undefined {
    return this.deviceNumbers.get(fd);
  }

  /** Scripted read(2) answers per fd: bytes, or an errno. */
  readonly reads = new Map<number, (Uint8Array | { errno: number })[]>();
  readonly writes: { fd: number; data: Uint8Array }[] = [];
  /** Scripted write(2) answers: how many bytes to take, or an errno (default: all). */
  readonly writeAnswers: (number | { errno: number })[] = [];
  readonly fcntls: { fd: number; command: number; argument: number }[] = [];

  read(fd: number, buffer: Uint8Array): number {
    const next = this.reads.get(fd)?.shift();
    if (!next) return 0;
    if (!(next instanceof Uint8Array)) {
      this.lastErrno = next.errno;
      return -1;
    }
    const n = Math.min(next.byteLength, buffer.byteLength);
    buffer.set(next.subarray(0, n));
    if (n < next.byteLength) this.reads.get(fd)!.unshift(next.subarray(n));
    return n;
  }

  write(fd: number, buffer: Uint8Array): number {
    const answer = this.writeAnswers.shift() ?? buffer.byteLength;
    if (typeof answer !== 'number') {
      this.lastErrno = answer.errno;
      return -1;
    }
    const n = Math.min(answer, buffer.byteLength);
    this.writes.push({ fd, data: buffer.slice(0, n) });
    return n;
  }

  fcntl(fd: number, command: number, argument: number): number {
    this.fcntls.push({ fd, command, argument });
    return command === 3 ? 0o2 : 0; // F_GETFL: O_RDWR
  }
}
