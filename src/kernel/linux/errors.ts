/**
 * The kernel (or the filesystem in front of it) answered something the library cannot use: a
 * corrupt capability chain, a short read or write of a device region, a cdev whose device
 * number is not the one sysfs names. Not the caller's argument (InvalidArgumentError) and not a
 * refused call (KernelError): the call succeeded, its answer is wrong. `call` names what was
 * issued, as the kernel spells it.
 */
export class KernelAnswerError extends Error {
  override readonly name = 'KernelAnswerError';
  constructor(readonly call: string, message: string) {
    super(`${call}: ${message}`);
  }
}
