// Linux errno numbers (asm-generic/errno-base.h, errno.h) with glibc's strerror text, so that
// the simulated and the real kernel report failures in exactly the same words.
export const ERRNO = {
  EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, ENXIO: 6, E2BIG: 7, EBADF: 9, EAGAIN: 11,
  ENOMEM: 12, EACCES: 13, EFAULT: 14, EBUSY: 16, EEXIST: 17, ENODEV: 19, EINVAL: 22,
  ENFILE: 23, EMFILE: 24, ENOTTY: 25, EFBIG: 27, ENOSPC: 28, ESPIPE: 29, EROFS: 30, ERANGE: 34,
  EDEADLK: 35, ENOSYS: 38, ENOMSG: 42, ENODATA: 61, EOVERFLOW: 75, EMSGSIZE: 90, EOPNOTSUPP: 95,
  EADDRINUSE: 98, ENOTSUP: 95, ETIMEDOUT: 110, EALREADY: 114,
} as const;

export type ErrnoCode = keyof typeof ERRNO;

const MESSAGES: Record<number, [code: string, message: string]> = {
  1: ['EPERM', 'Operation not permitted'],
  2: ['ENOENT', 'No such file or directory'],
  3: ['ESRCH', 'No such process'],
  4: ['EINTR', 'Interrupted system call'],
  5: ['EIO', 'Input/output error'],
  6: ['ENXIO', 'No such device or address'],
  7: ['E2BIG', 'Argument list too long'],
  9: ['EBADF', 'Bad file descriptor'],
  11: ['EAGAIN', 'Resource temporarily unavailable'],
  12: ['ENOMEM', 'Cannot allocate memory'],
  13: ['EACCES', 'Permission denied'],
  14: ['EFAULT', 'Bad address'],
  16: ['EBUSY', 'Device or resource busy'],
  17: ['EEXIST', 'File exists'],
  19: ['ENODEV', 'No such device'],
  22: ['EINVAL', 'Invalid argument'],
  23: ['ENFILE', 'Too many open files in system'],
  24: ['EMFILE', 'Too many open files'],
  25: ['ENOTTY', 'Inappropriate ioctl for device'],
  27: ['EFBIG', 'File too large'],
  28: ['ENOSPC', 'No space left on device'],
  29: ['ESPIPE', 'Illegal seek'],
  30: ['EROFS', 'Read-only file system'],
  34: ['ERANGE', 'Numerical result out of range'],
  35: ['EDEADLK', 'Resource deadlock avoided'],
  38: ['ENOSYS', 'Function not implemented'],
  42: ['ENOMSG', 'No message of desired type'],
  61: ['ENODATA', 'No data available'],
  75: ['EOVERFLOW', 'Value too large for defined data type'],
  90: ['EMSGSIZE', 'Message too long'],
  95: ['EOPNOTSUPP', 'Operation not supported'],
  98: ['EADDRINUSE', 'Address already in use'],
  110: ['ETIMEDOUT', 'Connection timed out'],
  114: ['EALREADY', 'Operation already in progress'],
};

/** The errno's symbolic name (`EINVAL`), or `E<number>` for one not in the table. */
export function errnoCode(errno: number): string {
  return MESSAGES[errno]?.[0] ?? `E${errno}`;
}

/** glibc's strerror() text for the errno. */
export function errnoMessage(errno: number): string {
  return MESSAGES[errno]?.[1] ?? `Unknown error ${errno}`;
}
