/**
 * A device or container that cannot be set up for a reason of the host's configuration, not of
 * the call's arguments nor a failed ioctl (a group that is not viable, no type1v2 support, ...).
 * The message says what to change.
 */
export class VfioSetupError extends Error {
  override readonly name = 'VfioSetupError';
}
