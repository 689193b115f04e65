// The real-hardware kernel: /dev/iommu, VFIO cdevs, the legacy container and groups, through
// libc ioctls (koffi). Struct layouts and numbers come from src/uapi.
import { readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { KernelAnswerError } from './errors.js';
import type { DeviceHandle, DeviceLocation, GroupHandle, HostMemory, IommufdHandle, Kernel, KernelOptions, LegacyContainerHandle } from '../types.js';
import { LinuxDevice } from './device.js';
import { IoctlIssuer } from './ioctl.js';
import { LinuxIommufd } from './iommufd.js';
import { LinuxGroup, LinuxLegacyContainer } from './legacy.js';
import { libcSyscalls, O_CLOEXEC, O_RDWR, type Syscalls } from './libc.js';
import { MmapMemory } from './memory.js';
import { listVfioDevices, locateDevice, type SysfsRoots } from './sysfs.js';

export { LinuxDevice } from './device.js';
export { KernelAnswerError } from './errors.js';
export { LinuxIommufd, encodeIovaRanges, decodeIovaRanges } from './iommufd.js';
export { LinuxGroup, LinuxLegacyContainer, parseType1Info } from './legacy.js';
export { MmapMemory } from './memory.js';
export { MockDevice } from './mock-device.js';
export { locateDevice, listVfioDevices } from './sysfs.js';
export type { Syscalls } from './libc.js';

export interface LinuxKernelOptions {
  /** Replaces libc (tests record ioctls with it). */
  readonly syscalls?: Syscalls;
  readonly sysfs?: SysfsRoots;
  /** `/dev/iommu` by default. */
  readonly iommuPath?: string;
}

export class LinuxKernel implements Kernel {
  readonly name = 'linux' as const;
  private readonly sys: Syscalls;

  constructor(private readonly options: LinuxKernelOptions = {}) {
    this.sys = options.syscalls ?? libcSyscalls();
  }

  openIommufd(options?: KernelOptions): IommufdHandle {
    return new LinuxIommufd(this.sys, options, this.options.iommuPath);
  }

  adoptIommufd(fd: number, options?: KernelOptions): IommufdHandle {
    checkFd(fd);
    // Its device number must be /dev/iommu's (a misc device): anything else is not an iommufd.
    const path = this.options.iommuPath ?? '/dev/iommu';
    const expected = deviceNumberOfPath(path);
    const actual = this.sys.deviceNumber(fd);
    if (expected !== undefined && actual !== expected) {
      throw new KernelAnswerError('fstat', `fd ${fd} is ${actual === undefined ? 'not open' : `character device ${actual}`}, not ${path} (${expected})`);
    }
    return new LinuxIommufd(this.sys, options, path, fd);
  }

  adoptDeviceFd(location: string, fd: number, options?: KernelOptions): DeviceHandle {
    checkFd(fd);
    const found = this.locateDevice(location);
    if (!found.cdevPath) throw new InvalidArgumentError('fd', `${found.name} has no VFIO cdev, so fd ${fd} cannot be its cdev`);
    this.checkCdev(found, fd);
    return new LinuxDevice(this.sys, found.name, 'cdev', fd, options);
  }

  locateDevice(location: string): DeviceLocation {
    return locateDevice(location, this.options.sysfs);
  }

  listDevices(): DeviceLocation[] {
    return listVfioDevices(this.options.sysfs);
  }

  openDevice(location: string, options?: KernelOptions): DeviceHandle {
    const found = this.locateDevice(location);
    if (!found.cdevPath) {
      throw new InvalidArgumentError('device', `${found.name} has no VFIO cdev (driver ${found.driver ?? 'none'}): bind it to vfio-pci on a kernel with CONFIG_VFIO_DEVICE_CDEV, or use the legacy group`);
    }
    const fd = new IoctlIssuer(this.sys).check(this.sys.open(found.cdevPath, O_RDWR | O_CLOEXEC), 'open', { path: found.cdevPath });
    try {
      this.checkCdev(found, fd);
    } catch (error) {
      this.sys.close(fd);
      throw error;
    }
    return new LinuxDevice(this.sys, found.name, 'cdev', fd, options);
  }

  /**
   * The node opened must be the device's cdev: its major:minor must be the one in
   * `<device>/vfio-dev/vfioN/dev` (QEMU's open_cdev does the same). A stale /dev node or one
   * reused by another device would otherwise bind the wrong device.
   */
  private checkCdev(found: DeviceLocation, fd: number): void {
    if (!found.sysfsPath || !found.cdevPath) return;
    const devFile = join(found.sysfsPath, 'vfio-dev', basename(found.cdevPath), 'dev');
    let expected: string;
    try {
      expected = readFileSync(devFile, 'utf8').trim();
    } catch {
      throw new KernelAnswerError('open', `${found.cdevPath}: ${devFile} cannot be read, so the cdev cannot be checked`);
    }
    const actual = this.sys.deviceNumber(fd);
    if (actual !== expected) {
      throw new KernelAnswerError('open', `${found.cdevPath} is character device ${actual ?? '(fstat failed)'}, but ${found.name}'s VFIO cdev is ${expected} (${devFile})`);
    }
  }

  openLegacyContainer(options?: KernelOptions): LegacyContainerHandle {
    return new LinuxLegacyContainer(this.sys, options);
  }

  openGroup(groupId: number, options?: KernelOptions): GroupHandle {
    return new LinuxGroup(this.sys, groupId, options);
  }

  allocateHostMemory(length: bigint): HostMemory {
    return new MmapMemory(this.sys, length);
  }
}

function checkFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fff_ffff) throw new InvalidArgumentError('fd', `must be an open file descriptor number, got ${String(fd)}`);
}

function deviceNumberOfPath(path: string): string | undefined {
  try {
    const rdev = statSync(path, { bigint: true }).rdev;
    return `${((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)}:${(rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)}`;
  } catch {
    return undefined;
  }
}

/** The real kernel. */
export function linuxKernel(options?: LinuxKernelOptions): LinuxKernel {
  return new LinuxKernel(options);
}
