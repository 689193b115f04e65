import { errnoCode, errnoMessage } from './errno.js';

/** Object IDs and other values an ioctl was issued with, printed in the message in this order. */
export type KernelObjects = Readonly<Record<string, number | bigint | string>>;

function formatValue(value: number | bigint | string): string {
  return typeof value === 'bigint' ? `0x${value.toString(16)}` : String(value);
}

/**
 * A system call the kernel refused. The message reads like QEMU's:
 * `IOMMU_HWPT_ALLOC(dev_id 2, pt_id 1) failed: Operation not supported`.
 * `ioctl` is spelled as in the kernel headers so that it can be grepped for there.
 */
export class KernelError extends Error {
  override readonly name = 'KernelError';
  readonly ioctl: string;
  readonly errno: number;
  readonly code: string;
  readonly objects: KernelObjects;

  constructor(ioctl: string, errno: number, objects: KernelObjects = {}, options?: { cause?: unknown }) {
    const args = Object.entries(objects)
      .map(([key, value]) => `${key} ${formatValue(value)}`)
      .join(', ');
    super(`${ioctl}(${args}) failed: ${errnoMessage(errno)}`, options);
    this.ioctl = ioctl;
    this.errno = errno;
    this.code = errnoCode(errno);
    this.objects = objects;
  }
}

/**
 * An argument the library refused before issuing any system call: nothing changed in the
 * kernel. The message says what was wrong and what is allowed.
 */
export class InvalidArgumentError extends RangeError {
  override readonly name = 'InvalidArgumentError';
  readonly argument: string;

  constructor(argument: string, message: string) {
    super(`${argument}: ${message}`);
    this.argument = argument;
  }
}

/** True when `error` is a KernelError carrying errno `code` (e.g. `'EINVAL'`). */
export function isKernelError(error: unknown, code?: string): error is KernelError {
  return error instanceof KernelError && (code === undefined || error.code === code);
}
