// The contract suite: every rule of the simulated kernel, checked against the seam, on whichever
// kernel `target` gives. See context.ts for the target and the `[sim only: ...]` convention.
import type { ContractTarget } from './context.js';
import { defineDeviceDmaContract } from './device-dma.contract.js';
import { defineDeviceContract } from './device.contract.js';
import { defineDirtyContract } from './dirty.contract.js';
import { defineDmaLoggingContract } from './dma-logging.contract.js';
import { defineHwptContract } from './hwpt.contract.js';
import { defineIoasContract } from './ioas.contract.js';
import { defineMigrationContract } from './migration.contract.js';
import { defineObjectsContract } from './objects.contract.js';
import { defineType1Contract } from './type1.contract.js';

export type { ContractEnvironment, ContractTarget, MigrationDevices, SimulatorExtras } from './context.js';

export function defineContract(target: ContractTarget): void {
  defineObjectsContract(target);
  defineIoasContract(target);
  defineHwptContract(target);
  defineDirtyContract(target);
  defineDeviceContract(target);
  defineDmaLoggingContract(target);
  defineType1Contract(target);
  defineDeviceDmaContract(target);
  defineMigrationContract(target);
}
