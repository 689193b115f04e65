import { InvalidArgumentError, KernelError, type KernelObjects } from '../errors.js';
import type { IoctlArgument, Syscalls } from './libc.js';

/** Zeroed bytes in an ArrayBuffer of their own (off the V8 heap: their address cannot move). */
export function structBytes(size: number): Uint8Array {
  return new Uint8Array(new ArrayBuffer(size));
}

/**
 * Issues ioctls and turns a failure into a KernelError naming the ioctl, the errno and the
 * object IDs. Pointers into a struct are taken through `pointer()`, which records the view so
 * that it is handed to the ioctl call and held until the call returns.
 */
export class IoctlIssuer {
  constructor(readonly sys: Syscalls) {}

  /** Starts one call: collect the buffers whose addresses go into the struct. */
  pointers(): PointerSet {
    return new PointerSet(this.sys);
  }

  call(
    fd: number,
    name: string,
    request: number,
    arg: IoctlArgument,
    objects: KernelObjects,
    pointers?: PointerSet,
  ): number {
    const held = pointers?.held ?? [];
    const rc = this.sys.ioctl(fd, request, arg, held);
    if (rc < 0) throw new KernelError(name, this.sys.errno(), objects);
    return rc;
  }

  /** A plain system call (open, close, pread, ...) that failed. */
  check(rc: number, name: string, objects: KernelObjects): number {
    if (rc < 0) throw new KernelError(name, this.sys.errno(), objects);
    return rc;
  }
}

export class PointerSet {
  readonly held: Uint8Array[] = [];
  constructor(private readonly sys: Syscalls) {}

  /** The address of `view` for a u64 pointer field; `view` is held until the ioctl returns. */
  pointer(view: Uint8Array | undefined): bigint {
    if (!view || view.byteLength === 0) return 0n;
    this.held.push(view);
    return this.sys.address(view);
  }

  /**
   * The address of a dirty bitmap (`__u64 *` in the uAPI): refused unless it is on a u64 word,
   * whatever its byteOffset says (the common checks see only the offset into the buffer).
   */
  wordPointer(argument: string, view: Uint8Array): bigint {
    const address = this.pointer(view);
    if (address % 8n !== 0n) {
      this.held.pop();
      throw new InvalidArgumentError(argument, `is at 0x${address.toString(16)}, not on a u64 word (8 bytes)`);
    }
    return address;
  }
}
