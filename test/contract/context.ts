// The contract suite's view of a kernel: written once against the seam, run on the simulated
// kernel (test/contract/sim.test.ts, in `npm test`) and on the real kernel in the harness guest
// (test/kernel/contract.test.ts). Tests that only the simulator can run say why in their name,
// `[sim only: <reason>]`, and are skipped (not silently dropped) on the real kernel.
import { afterEach, beforeEach, expect, it } from 'vitest';
import { InvalidArgumentError, KernelError } from '../../src/kernel/errors.js';
import type {
  DeviceHandle,
  GroupHandle,
  HostMemory,
  IommufdHandle,
  IommufdTestOps,
  Kernel,
  KernelOptions,
  LegacyContainerHandle,
} from '../../src/kernel/types.js';
import type { SimulatedKernel } from '../../src/kernel/sim/index.js';

/** What only the simulator has: devices the guest lacks, and DMA. */
export interface SimulatorExtras {
  readonly kernel: SimulatedKernel;
  /** cdev device whose IOMMU tracks dirty IOPTEs (intel-vtd, 4K/2M/1G pages, MSI window reserved). */
  readonly dirtyDevice: string;
  /** cdev device with DMA logging: at most 4 ranges (combined past that), 4 KiB pages. */
  readonly loggingDevice: string;
  /** cdev device with DMA logging that refuses more than 4 ranges (E2BIG), 8 KiB pages. */
  readonly strictLoggingDevice: string;
  /** An mdev. */
  readonly mdevDevice: string;
  readonly mdevGroupId: number;
}

/** Migratable devices: mtty mdevs on the real kernel, simulated mdevs with a migration spec. */
export interface MigrationDevices {
  /** Two devices of one type (source and destination of a migration). */
  readonly source: string;
  readonly destination: string;
  /** A device of the same driver whose state has another layout (mtty-1 against mtty-2). */
  readonly otherType: string;
  /** Puts the device in a non-default state through its BAR (region 0). */
  writeState(device: DeviceHandle): void;
  /** Reads that state back through the BAR (may consume it, as a UART's RX FIFO is). */
  readState(device: DeviceHandle): number[];
  /** What readState gives after writeState. */
  readonly expectedState: readonly number[];
}

export interface ContractEnvironment {
  readonly kernel: Kernel;
  /**
   * A vfio-pci device with a cdev and a group, whose IOMMU has no dirty tracking and no hw_info,
   * and no DMA logging: QEMU's edu (1234:11e8) behind virtio-iommu on the real kernel.
   */
  readonly plainDevice: string;
  readonly plainGroupId: number;
  readonly sim: SimulatorExtras | undefined;
  /** Migratable devices (the real kernel's virtio boot has mtty built in). */
  readonly migration: MigrationDevices | undefined;
  /** Called after every test once everything it opened is closed: throws on leaked kernel state. */
  assertClean(): void;
}

export interface ContractTarget {
  /** 'simulated kernel' or 'real kernel'. */
  readonly name: string;
  readonly simulated: boolean;
  create(): ContractEnvironment;
}

/** Per-test access to a fresh environment, with everything opened closed again after the test. */
export class ContractFixture {
  private current: ContractEnvironment | undefined;
  private closers: (() => void)[] = [];
  private memories: HostMemory[] = [];

  constructor(readonly target: ContractTarget) {
    beforeEach(() => {
      this.current = target.create();
      this.closers = [];
      this.memories = [];
    });
    afterEach(() => {
      const errors: unknown[] = [];
      for (const close of this.closers.reverse()) {
        try {
          close();
        } catch (error) {
          errors.push(error);
        }
      }
      for (const memory of this.memories) {
        try {
          memory.release();
        } catch (error) {
          errors.push(error);
        }
      }
      const environment = this.current;
      this.current = undefined;
      if (errors.length > 0) throw errors[0];
      environment?.assertClean();
    });
  }

  get env(): ContractEnvironment {
    if (!this.current) throw new Error('no contract environment outside a test');
    return this.current;
  }

  get kernel(): Kernel {
    return this.env.kernel;
  }

  get sim(): SimulatorExtras {
    const sim = this.env.sim;
    if (!sim) throw new Error('this test needs the simulated kernel');
    return sim;
  }

  /** Close `handle` after the test (unless the test closed it). */
  track<T extends { close(): void; readonly closed?: boolean }>(handle: T): T {
    this.closers.push(() => {
      if (!handle.closed) handle.close();
    });
    return handle;
  }

  iommufd(options?: KernelOptions): IommufdHandle {
    return this.track(this.kernel.openIommufd(options));
  }

  /** The iommufd's test ops (present on both kernels of the contract). */
  testOps(iommufd: IommufdHandle): IommufdTestOps {
    const ops = iommufd.test;
    if (!ops || !ops.available()) throw new Error('the kernel has no IOMMU_TEST_CMD (CONFIG_IOMMUFD_TEST)');
    return ops;
  }

  mock(iommufd: IommufdHandle, ptId: number, options?: { noDirty?: boolean; hugeIova?: boolean }): DeviceHandle {
    return this.track(this.testOps(iommufd).mockDomain(ptId, options));
  }

  device(location: string, options?: KernelOptions): DeviceHandle {
    return this.track(this.kernel.openDevice(location, options));
  }

  container(options?: KernelOptions): LegacyContainerHandle {
    return this.track(this.kernel.openLegacyContainer(options));
  }

  group(groupId: number, options?: KernelOptions): GroupHandle {
    return this.track(this.kernel.openGroup(groupId, options));
  }

  memory(length: bigint, allocate?: (length: bigint) => HostMemory): HostMemory {
    const memory = allocate ? allocate(length) : this.kernel.allocateHostMemory(length);
    this.memories.push(memory);
    return memory;
  }
}

/**
 * `it` that runs only on the simulated kernel; the name must carry `[sim only: reason]`. On the
 * real kernel it is listed as a todo, visible with its reason (a skip would count as "ran in no
 * boot" in the harness report).
 */
export function simOnly(target: ContractTarget) {
  return (name: string, body: () => void): void => {
    if (!/\[sim only: [^\]]+\]/.test(name)) throw new Error(`a sim-only contract test must say why in its name: ${name}`);
    if (target.simulated) it(name, body);
    else it.todo(name);
  };
}

/** Runs `action`, expecting the kernel to refuse it with `code` from `ioctl`; returns the error. */
export function expectKernelError(action: () => unknown, ioctl: string | undefined, code: string): KernelError {
  let caught: unknown;
  try {
    action();
  } catch (error) {
    caught = error;
  }
  if (!(caught instanceof KernelError)) {
    throw new Error(`expected ${ioctl ?? 'a call'} to fail with ${code}, but it ${caught === undefined ? 'succeeded' : `threw ${String(caught)}`}`);
  }
  expect({ ioctl: caught.ioctl, code: caught.code }).toEqual({ ioctl: ioctl ?? caught.ioctl, code });
  return caught;
}

/** Runs `action`, expecting the library to refuse the argument before any ioctl. */
export function expectInvalidArgument(action: () => unknown, argument?: string | RegExp): InvalidArgumentError {
  let caught: unknown;
  try {
    action();
  } catch (error) {
    caught = error;
  }
  if (!(caught instanceof InvalidArgumentError)) {
    throw new Error(`expected an InvalidArgumentError, but it ${caught === undefined ? 'succeeded' : `threw ${String(caught)}`}`);
  }
  if (argument !== undefined) expect(caught.argument).toMatch(argument);
  return caught;
}

export const KIB = 1024n;
export const MIB = 1024n * KIB;
export const GIB = 1024n * MIB;
export const U64_MAX = (1n << 64n) - 1n;

/** Little-endian bit i of a byte bitmap. */
export function bit(bitmap: Uint8Array, index: number): boolean {
  return ((bitmap[index >>> 3]! >>> (index & 7)) & 1) === 1;
}

export function setBit(bitmap: Uint8Array, index: number): void {
  bitmap[index >>> 3]! |= 1 << (index & 7);
}

/** Indexes of the set bits of a byte bitmap. */
export function setBitIndexes(bitmap: Uint8Array, limit = bitmap.length * 8): number[] {
  const indexes: number[] = [];
  for (let index = 0; index < limit; index++) if (bit(bitmap, index)) indexes.push(index);
  return indexes;
}

export function countSetBits(bitmap: Uint8Array, limit = bitmap.length * 8): number {
  let count = 0;
  for (let index = 0; index < limit; index++) if (bit(bitmap, index)) count++;
  return count;
}
