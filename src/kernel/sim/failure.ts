// An errno raised inside the simulated kernel. Kernel code paths throw it where the real kernel
// returns -errno; the ioctl entry point turns it into a KernelError that names the ioctl and the
// objects involved, exactly as the linux shim reports a failed ioctl.
import { ERRNO, type ErrnoCode } from '../errno.js';

export class SimulatedErrno extends Error {
  constructor(readonly errno: number) {
    super(`errno ${errno}`);
  }
}

/** Return -errno, in kernel terms. */
export function fail(code: ErrnoCode): never {
  throw new SimulatedErrno(ERRNO[code]);
}

export function isSimulatedErrno(error: unknown, code?: ErrnoCode): error is SimulatedErrno {
  return error instanceof SimulatedErrno && (code === undefined || error.errno === ERRNO[code]);
}
