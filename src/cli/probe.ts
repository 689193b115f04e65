// `vfio-iommufd probe`: what this host has for VFIO and iommufd, read from sysfs and, where
// permitted, ioctls; for anything missing, why and what to do.
import { accessSync, constants, existsSync, readdirSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { gunzipSync } from 'node:zlib';
import { isKernelError } from '../kernel/errors.js';
import { simulatedKernel, type SimulatedDeviceSpecInput } from '../kernel/sim/index.js';
import type { DeviceLocation, Kernel } from '../kernel/types.js';
import * as uapi from '../uapi/index.js';
import { HostIommuInfo } from '../vfio/host-iommu-info.js';
import { deviceSpec, parseDeviceOption } from './simulation.js';

/** One device of each IOMMU kind the simulated kernel models, for `probe --simulated` without --device. */
const SIMULATED_DEVICES: SimulatedDeviceSpecInput[] = [
  { name: 'nic0', iommuType: 'intel-vtd', iommuDirtyTracking: true },
  { name: 'gpu0', iommuType: 'intel-vtd', dmaLogging: { pageSize: 4096n, maxRanges: 256 } },
  { name: 'smmu0', iommuType: 'arm-smmuv3', iommuDirtyTracking: true },
  { name: 'amd0', iommuType: 'amd' },
  { name: 'virtio0', iommuType: 'none' },
  { name: 'mdev0', mdev: true },
  { name: 'legacy0', legacyOnly: true },
];

/** The simulated kernel `probe --simulated` looks at: the given `name:spec` devices, or one of each kind. */
export function simulatedProbeKernel(devices: readonly string[] = []): Kernel {
  return simulatedKernel({ devices: devices.length ? devices.map(parseDeviceOption).map(deviceSpec) : SIMULATED_DEVICES });
}

export interface ProbeOptions {
  readonly kernel: Kernel;
  /** Roots to read (tests point them at fixtures). */
  readonly sys?: string;
  readonly dev?: string;
  readonly proc?: string;
}

export interface ProbedDevice {
  readonly name: string;
  readonly driver: string | undefined;
  readonly group: number | undefined;
  readonly cdev: string | undefined;
  readonly mdev: boolean;
  readonly iommu: ReturnType<HostIommuInfo['toJSON']> | undefined;
  /** The IOMMU type (`intel-vtd`, `arm-smmuv3`, `amd`, `none` for virtio-iommu and others without vendor data). */
  readonly iommuType: string | undefined;
  /** IOVA bits the host IOMMU translates, from its registers (VT-d MGAW, AMD HATS); undefined when it has none to read. */
  readonly addressWidth: number | undefined;
  readonly iommuDirtyTracking: boolean | undefined;
  readonly dmaLogging: boolean | undefined;
  readonly problems: string[];
}

export interface ProbeReport {
  readonly kernel: string;
  readonly vfio: boolean;
  readonly iommufd: { readonly present: boolean; readonly accessible: boolean; readonly problem: string | undefined };
  readonly legacyContainer: { readonly present: boolean; readonly accessible: boolean; readonly problem: string | undefined };
  readonly iommuGroups: number;
  readonly kernelConfig: Record<string, string | undefined>;
  readonly devices: ProbedDevice[];
  readonly advice: string[];
}

const CONFIG_OPTIONS = ['IOMMUFD', 'VFIO', 'VFIO_DEVICE_CDEV', 'VFIO_CONTAINER', 'VFIO_IOMMU_TYPE1', 'VFIO_PCI', 'IOMMUFD_TEST', 'INTEL_IOMMU', 'AMD_IOMMU', 'ARM_SMMU_V3'];

function readKernelConfig(proc: string): Record<string, string | undefined> {
  let text: string | undefined;
  try {
    text = gunzipSync(readFileSync(`${proc}/config.gz`)).toString('utf8');
  } catch {
    try {
      text = readFileSync(`/boot/config-${release()}`, 'utf8');
    } catch {
      return {};
    }
  }
  const config: Record<string, string | undefined> = {};
  for (const option of CONFIG_OPTIONS) {
    const match = new RegExp(`^CONFIG_${option}=(.*)$`, 'm').exec(text);
    config[option] = match?.[1] ?? 'not set';
  }
  return config;
}

function access(path: string): { present: boolean; accessible: boolean; problem: string | undefined } {
  if (!existsSync(path)) return { present: false, accessible: false, problem: `${path} does not exist` };
  try {
    accessSync(path, constants.R_OK | constants.W_OK);
    return { present: true, accessible: true, problem: undefined };
  } catch {
    return { present: true, accessible: false, problem: `${path} is not readable and writable by this user: run as root or grant access (udev rule or group)` };
  }
}

function countDir(path: string): number {
  try {
    return readdirSync(path).length;
  } catch {
    return 0;
  }
}

/** Binds a device to a private iommufd just long enough to read its IOMMU and features. */
type Inspected = Pick<ProbedDevice, 'iommu' | 'iommuType' | 'addressWidth' | 'iommuDirtyTracking' | 'dmaLogging' | 'problems'>;

function unknown(problems: string[]): Inspected {
  return { iommu: undefined, iommuType: undefined, addressWidth: undefined, iommuDirtyTracking: undefined, dmaLogging: undefined, problems };
}

function inspect(kernel: Kernel, location: DeviceLocation, iommufdUsable: boolean): Inspected {
  const problems: string[] = [];
  if (!location.cdevPath) {
    problems.push(location.driver?.startsWith('vfio') || kernel.name === 'simulated' ? 'no VFIO cdev: the kernel lacks CONFIG_VFIO_DEVICE_CDEV; the legacy group still works' : `bound to ${location.driver ?? 'no driver'}: bind it to vfio-pci to use it`);
    return unknown(problems);
  }
  if (!iommufdUsable) {
    problems.push('cannot read its IOMMU without /dev/iommu');
    return unknown(problems);
  }
  let iommufd;
  let device;
  try {
    iommufd = kernel.openIommufd();
    device = kernel.openDevice(location.sysfsPath ?? location.name);
    // A cdev answers nothing but BIND_IOMMUFD until it is bound (the kernel's
    // vfio_device_fops_cdev_open leaves access_granted false): bind first, then probe features.
    const devId = device.bindIommufd(iommufd);
    const info = location.mdev ? undefined : new HostIommuInfo(iommufd.getHwInfo(devId));
    const dmaLogging = device.featureProbe(uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START);
    if (info && !info.dirtyTracking) problems.push('its IOMMU has no dirty tracking: use device DMA logging, or every round is all dirty');
    if (!dmaLogging) problems.push('no DMA logging: the driver does not implement VFIO_DEVICE_FEATURE_DMA_LOGGING');
    return {
      iommu: info?.toJSON(), iommuType: location.mdev ? 'mdev (none of its own)' : info?.type, addressWidth: info?.addressWidth,
      iommuDirtyTracking: info?.dirtyTracking, dmaLogging, problems,
    };
  } catch (error) {
    if (isKernelError(error, 'EBUSY')) problems.push('in use by another process (EBUSY): probe it while it is free');
    else if (isKernelError(error, 'EPERM')) problems.push('bind refused (EPERM): without interrupt remapping pass iommufd.allow_unsafe_interrupts=1');
    else problems.push((error as Error).message);
    return unknown(problems);
  } finally {
    device?.close();
    iommufd?.close();
  }
}

export function probe(options: ProbeOptions): ProbeReport {
  const sys = options.sys ?? '/sys';
  const dev = options.dev ?? '/dev';
  // The simulated kernel has /dev/iommu and /dev/vfio/vfio in process; the host's files and
  // config say nothing about it.
  const simulated = options.kernel.name === 'simulated';
  const inProcess = { present: true, accessible: true, problem: undefined };
  const iommufd = simulated ? inProcess : access(`${dev}/iommu`);
  const legacyContainer = simulated ? inProcess : access(`${dev}/vfio/vfio`);
  const kernelConfig = simulated ? {} : readKernelConfig(options.proc ?? '/proc');
  let locations: DeviceLocation[] = [];
  try {
    locations = options.kernel.listDevices();
  } catch {
    locations = [];
  }
  const iommuGroups = simulated ? new Set(locations.map((l) => l.groupId)).size : countDir(`${sys}/kernel/iommu_groups`);
  const devices = locations.map((location) => ({
    name: location.name,
    driver: location.driver,
    group: location.groupId,
    cdev: location.cdevPath,
    mdev: location.mdev,
    ...inspect(options.kernel, location, iommufd.accessible),
  }));
  const advice: string[] = [];
  if (!iommufd.present) {
    advice.push(kernelConfig.IOMMUFD === 'not set' ? 'this kernel is built without CONFIG_IOMMUFD: use a kernel with it (6.6 or later) for iommufd and IOMMU dirty tracking' : 'no /dev/iommu: load the iommufd module (modprobe iommufd)');
  }
  if (!legacyContainer.present) advice.push('no /dev/vfio/vfio: load vfio (modprobe vfio vfio_iommu_type1 vfio-pci) for the legacy container');
  if (iommuGroups === 0) advice.push('no IOMMU groups: enable the IOMMU in firmware and on the kernel command line (intel_iommu=on or amd_iommu=on)');
  if (devices.length === 0) advice.push('no device is bound to a VFIO driver: echo VENDOR DEVICE > /sys/bus/pci/drivers/vfio-pci/new_id');
  return {
    kernel: simulated ? 'simulated' : release(),
    vfio: iommufd.present || legacyContainer.present || devices.length > 0,
    iommufd,
    legacyContainer,
    iommuGroups,
    kernelConfig,
    devices,
    advice,
  };
}
