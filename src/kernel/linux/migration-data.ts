// A VFIO migration data fd (the anon-inode file a MIG_DEVICE_STATE SET returns): read(2) and
// write(2) of caller-sized buffers, and VFIO_MIG_GET_PRECOPY_INFO. The fd is switched to
// O_NONBLOCK so that a driver that honours it never blocks the Node thread (mtty ignores it and
// answers at once); EAGAIN comes back as null, ENOMSG (no data for now in PRE_COPY) as 0.
import * as uapi from '../../uapi/index.js';
import { InvalidArgumentError, KernelError } from '../errors.js';
import { ERRNO } from '../errno.js';
import type { MigrationDataHandle, PrecopyInfo } from '../types.js';
import { IoctlIssuer, structBytes } from './ioctl.js';
import { F_GETFL, F_SETFL, O_NONBLOCK, type Syscalls } from './libc.js';

const { vfio_precopy_info } = uapi;

export class LinuxMigrationData implements MigrationDataHandle {
  private isClosed = false;
  private readonly io: IoctlIssuer;

  constructor(
    private readonly sys: Syscalls,
    readonly fd: number,
    /** The device it came from, for error messages. */
    private readonly device: string,
  ) {
    this.io = new IoctlIssuer(sys);
    const flags = sys.fcntl(fd, F_GETFL, 0);
    // Not fatal: a data fd that refuses O_NONBLOCK is read in blocking mode, as QEMU reads it.
    if (flags >= 0) sys.fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  read(buffer: Uint8Array): number | null {
    this.checkOpen();
    const n = this.sys.read(this.fd, buffer);
    if (n >= 0) return n;
    const errno = this.sys.errno();
    if (errno === ERRNO.EAGAIN) return null;
    if (errno === ERRNO.ENOMSG) return 0;
    throw new KernelError('read', errno, { device: this.device, data_fd: this.fd, length: buffer.byteLength });
  }

  write(data: Uint8Array): number | null {
    this.checkOpen();
    const n = this.sys.write(this.fd, data);
    if (n >= 0) return n;
    const errno = this.sys.errno();
    if (errno === ERRNO.EAGAIN) return null;
    throw new KernelError('write', errno, { device: this.device, data_fd: this.fd, length: data.byteLength });
  }

  precopyInfo(): PrecopyInfo {
    this.checkOpen();
    const s = structBytes(vfio_precopy_info.size);
    vfio_precopy_info.write(s, { argsz: vfio_precopy_info.size });
    this.io.call(this.fd, 'VFIO_MIG_GET_PRECOPY_INFO', uapi.VFIO_MIG_GET_PRECOPY_INFO, s, { device: this.device, data_fd: this.fd });
    return { initialBytes: vfio_precopy_info.readBigint(s, 'initial_bytes'), dirtyBytes: vfio_precopy_info.readBigint(s, 'dirty_bytes') };
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.io.check(this.sys.close(this.fd), 'close', { device: this.device, data_fd: this.fd });
  }

  private checkOpen(): void {
    if (this.isClosed) throw new InvalidArgumentError('dataFd', `the migration data fd ${this.fd} of ${this.device} is closed`);
  }
}
