// The library's system calls through koffi (src/engine/affinity.ts is the only other user, for worker CPUs): libc's open/close/ioctl/mmap/munmap/pread/pwrite/read/write/fcntl, with
// errno read right after each call. Everything else in linux/ goes through `Syscalls`, so the
// encoding logic can be unit-tested with recorded fixtures and no kernel.
import { fstatSync } from 'node:fs';
import koffi from 'koffi';

export const O_RDWR = 0o2;
export const O_CLOEXEC = 0o2000000;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_FAILED = (1n << 64n) - 1n;
export const MADV_DONTFORK = 10;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const O_NONBLOCK = 0o4000;

/** An ioctl argument: a struct's bytes, an integer (passed as unsigned long), a string, or none. */
export type IoctlArgument = Uint8Array | number | string | undefined;

export interface Syscalls {
  open(path: string, flags: number): number;
  close(fd: number): number;
  /**
   * `held` lists every buffer whose address was written into `arg`. Passing them as an argument
   * keeps them referenced until the ioctl returns: the kernel never sees an address of memory
   * the library no longer holds.
   */
  ioctl(fd: number, request: number, arg: IoctlArgument, held: readonly Uint8Array[]): number;
  /** errno of the last failed call on this thread. */
  errno(): number;
  /** The address of a view's first byte (its byteOffset included). */
  address(view: Uint8Array): bigint;
  mmap(length: bigint, prot: number, flags: number, fd: number, offset: bigint): bigint;
  munmap(address: bigint, length: bigint): number;
  /** A view of process memory at `address` (for mmap'd memory). */
  view(address: bigint, length: number): Uint8Array;
  pread(fd: number, buffer: Uint8Array, offset: bigint): number;
  pwrite(fd: number, buffer: Uint8Array, offset: bigint): number;
  madvise(address: bigint, length: bigint, advice: number): number;
  /** sysconf(_SC_PAGESIZE). */
  pageSize(): number;
  /** fstat(fd).st_rdev as "major:minor" (the form of sysfs `dev` files); undefined when fstat fails. */
  deviceNumber(fd: number): string | undefined;
  /** read(2)/write(2) of the whole view (stream fds: migration data). */
  read(fd: number, buffer: Uint8Array): number;
  write(fd: number, buffer: Uint8Array): number;
  /** fcntl(2) with an int argument (F_GETFL, F_SETFL). */
  fcntl(fd: number, command: number, argument: number): number;
}

/**
 * Where ioctl() parks the buffers a struct points into for the length of the call. A store to
 * a module variable is visible outside the function, so no engine can drop it (a comparison
 * that is always false, like `held.length < 0`, could be folded away with the reference).
 */
let heldDuringCall: readonly Uint8Array[] | undefined;

/** For tests: the buffers held by the ioctl in progress (undefined between calls). */
export function buffersHeldDuringCall(): readonly Uint8Array[] | undefined {
  return heldDuringCall;
}

let cached: Syscalls | undefined;

/** libc through koffi, loaded once. */
export function libcSyscalls(): Syscalls {
  if (cached) return cached;
  const libc = koffi.load('libc.so.6');
  const open = libc.func('int open(const char *path, int flags, ...)');
  const close = libc.func('int close(int fd)');
  const ioctl = libc.func('int ioctl(int fd, unsigned long request, ...)');
  const mmap = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)');
  const munmap = libc.func('int munmap(void *addr, size_t length)');
  const pread = libc.func('long pread(int fd, void *buf, size_t count, int64_t offset)');
  const pwrite = libc.func('long pwrite(int fd, const void *buf, size_t count, int64_t offset)');
  const madvise = libc.func('int madvise(void *addr, size_t length, int advice)');
  const getpagesize = libc.func('int getpagesize(void)');
  const pageSize = getpagesize() as number;
  const read = libc.func('long read(int fd, void *buf, size_t count)');
  const write = libc.func('long write(int fd, const void *buf, size_t count)');
  const fcntl = libc.func('int fcntl(int fd, int cmd, ...)');
  cached = {
    open: (path, flags) => open(path, flags, 'int', 0) as number,
    close: (fd) => close(fd) as number,
    ioctl: (fd, request, arg, held) => {
      heldDuringCall = held;
      try {
        if (arg === undefined) return ioctl(fd, request) as number;
        if (typeof arg === 'number') return ioctl(fd, request, 'unsigned long', arg) as number;
        if (typeof arg === 'string') return ioctl(fd, request, 'const char *', arg) as number;
        return ioctl(fd, request, 'void *', arg) as number;
      } finally {
        heldDuringCall = undefined;
      }
    },
    errno: () => koffi.errno(),
    address: (view) => {
      // Touching .buffer moves a small on-heap typed array off the heap, where it cannot move.
      void view.buffer;
      return koffi.address(view);
    },
    mmap: (length, prot, flags, fd, offset) => {
      const result = mmap(null, length, prot, flags, fd, offset) as bigint | null;
      return result === null ? MAP_FAILED : BigInt(result);
    },
    munmap: (address, length) => munmap(address, length) as number,
    view: (address, length) => new Uint8Array(koffi.view(address, length)),
    pread: (fd, buffer, offset) => Number(pread(fd, buffer, buffer.byteLength, offset)),
    pwrite: (fd, buffer, offset) => Number(pwrite(fd, buffer, buffer.byteLength, offset)),
    madvise: (address, length, advice) => madvise(address, length, advice) as number,
    pageSize: () => pageSize,
    deviceNumber: (fd) => {
      let rdev: bigint;
      try {
        rdev = fstatSync(fd, { bigint: true }).rdev;
      } catch {
        return undefined;
      }
      // glibc's gnu_dev_major / gnu_dev_minor.
      const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
      const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
      return `${major}:${minor}`;
    },
    read: (fd, buffer) => Number(read(fd, buffer, buffer.byteLength)),
    write: (fd, buffer) => Number(write(fd, buffer, buffer.byteLength)),
    fcntl: (fd, command, argument) => fcntl(fd, command, 'int', argument) as number,
  };
  return cached;
}
