import { readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { InvalidArgumentError, KernelError } from '../errors.js';
import type { DeviceLocation } from '../types.js';

const PCI_ADDRESS = /^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface SysfsRoots {
  /** `/sys` (tests point it at a fixture tree). */
  readonly sys: string;
}

const WHAT_IS_ALLOWED =
  'give a PCI address (0000:00:03.0), a sysfs device path (/sys/bus/pci/devices/...), a VFIO cdev (/dev/vfio/devices/vfioN) or an mdev UUID';

/** Finds a device's sysfs node, VFIO cdev, IOMMU group and driver from any of the names users have for it. */
export function locateDevice(location: string, roots: SysfsRoots = { sys: '/sys' }): DeviceLocation {
  if (typeof location !== 'string' || location.length === 0) throw new InvalidArgumentError('device', `is empty: ${WHAT_IS_ALLOWED}`);
  const sysfsPath = sysfsPathOf(location, roots);
  if (!sysfsPath) throw new InvalidArgumentError('device', `${JSON.stringify(location)} was not found: ${WHAT_IS_ALLOWED}`);
  const name = basename(sysfsPath);
  const mdev = exists(join(sysfsPath, 'mdev_type'));
  let cdevPath: string | undefined;
  try {
    const entries = readdirSync(join(sysfsPath, 'vfio-dev')).filter((entry) => entry.startsWith('vfio'));
    if (entries[0]) cdevPath = `/dev/vfio/devices/${entries[0]}`;
  } catch (error) {
    absent(error, 'readdir', join(sysfsPath, 'vfio-dev')); // no VFIO cdev: not bound to a VFIO driver, or a kernel without VFIO_DEVICE_CDEV
  }
  return {
    name,
    sysfsPath,
    pciAddress: PCI_ADDRESS.test(name) ? name.toLowerCase() : undefined,
    cdevPath,
    groupId: linkNumber(join(sysfsPath, 'iommu_group')),
    mdev,
    driver: linkName(join(sysfsPath, 'driver')),
  };
}

/** Devices bound to a VFIO driver (with a cdev or a group), and mdevs. */
export function listVfioDevices(roots: SysfsRoots = { sys: '/sys' }): DeviceLocation[] {
  const found: DeviceLocation[] = [];
  for (const bus of ['pci', 'mdev']) {
    let names: string[] = [];
    try {
      names = readdirSync(join(roots.sys, 'bus', bus, 'devices'));
    } catch {
      continue;
    }
    for (const name of names) {
      const location = locateDevice(join(roots.sys, 'bus', bus, 'devices', name), roots);
      if (location.cdevPath || location.mdev || location.driver?.startsWith('vfio')) found.push(location);
    }
  }
  return found;
}

function sysfsPathOf(location: string, roots: SysfsRoots): string | undefined {
  const pci = PCI_ADDRESS.exec(location);
  if (pci) return resolve(join(roots.sys, 'bus/pci/devices', `${pci[1] ?? '0000'}:${pci[2]}:${pci[3]}.${pci[4]}`.toLowerCase()));
  if (UUID.test(location)) return resolve(join(roots.sys, 'bus/mdev/devices', location.toLowerCase()));
  const cdev = /^\/dev\/vfio\/devices\/(vfio\d+)$/.exec(location);
  if (cdev) return resolve(join(roots.sys, 'class/vfio-dev', cdev[1]!, 'device'));
  if (location.startsWith(roots.sys + '/') || location.startsWith('/sys/')) return resolve(location);
  return undefined;
}

/**
 * Only "no such file" means absent. Anything else (ENOMEM, EIO, EACCES) is the kernel refusing
 * the lookup: a KernelError, never a device reported missing.
 */
function absent(error: unknown, call: string, path: string): undefined {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EINVAL') return undefined; // EINVAL: readlink of a non-link
  const errno = Math.abs((error as NodeJS.ErrnoException | undefined)?.errno ?? 0);
  if (errno > 0) throw new KernelError(call, errno, { path });
  throw error;
}

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch (error) {
    return absent(error, 'stat', path) ?? false;
  }
}

function resolve(path: string): string | undefined {
  try {
    return realpathSync(path);
  } catch (error) {
    return absent(error, 'realpath', path);
  }
}

function linkName(path: string): string | undefined {
  try {
    return basename(readlinkSync(path));
  } catch (error) {
    return absent(error, 'readlink', path);
  }
}

function linkNumber(path: string): number | undefined {
  const name = linkName(path);
  return name !== undefined && /^\d+$/.test(name) ? Number(name) : undefined;
}
