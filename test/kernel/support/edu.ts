// Driving QEMU's edu device (hw/misc/edu.c) through a VFIO DeviceHandle: its DMA engine is
// programmed through BAR0 (region 0) and copies between IOVAs and a 4 KiB buffer inside the
// device at device address 0x40000. Bus mastering is switched on in PCI config space (region 7).
import { KernelError } from '../../../src/kernel/errors.js';
import type { DeviceHandle } from '../../../src/kernel/types.js';
import * as uapi from '../../../src/uapi/index.js';

/** BAR0 registers of the DMA engine (64-bit fields, little-endian). */
export const EDU_DMA_SRC = 0x80n;
export const EDU_DMA_DST = 0x88n;
export const EDU_DMA_COUNT = 0x90n;
export const EDU_DMA_CMD = 0x98n;
/** EDU_DMA_RUN: set to start, cleared by the device when done. */
export const EDU_DMA_RUN = 1n;
/** EDU_DMA_DIR bit: 0 = RAM to edu (EDU_DMA_FROM_PCI), 1 = edu to RAM (EDU_DMA_TO_PCI). */
export const EDU_DMA_TO_RAM = 2n;
/** Device address of edu's 4 KiB DMA buffer. */
export const EDU_BUFFER = 0x40000n;
/**
 * How much of it a transfer may use. QEMU 7.2's edu_check_range() tests the transfer's end
 * with `end < buffer end` (fixed later to `<=`), so a transfer reaching the last byte of the
 * buffer fails the check, and that check is a hw_error(): QEMU aborts. Stay clear of the end.
 */
export const EDU_BUFFER_SIZE = 2048;
/** edu's default dma_mask is 28 bits: IOVAs must lie below 256 MiB. */
export const EDU_DMA_LIMIT = 1n << 28n;

const PCI_COMMAND = 4n;
const PCI_COMMAND_MEMORY = 0x2;
const PCI_COMMAND_MASTER = 0x4;

/** Which access width BAR0 took for the 64-bit registers (8, or 4 when 8-byte accesses fail). */
export interface EduDriver {
  readonly device: DeviceHandle;
  width: 4 | 8;
}

export function eduDriver(device: DeviceHandle): EduDriver {
  return { device, width: 8 };
}

/** Sets memory decoding and bus mastering in the command register; returns the register after. */
export function enableBusMaster(device: DeviceHandle): number {
  const config = uapi.VFIO_PCI_CONFIG_REGION_INDEX;
  const read = () => new DataView(device.regionRead(config, PCI_COMMAND, 2).buffer).getUint16(0, true);
  const value = read() | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
  const bytes = new Uint8Array(2);
  new DataView(bytes.buffer).setUint16(0, value, true);
  device.regionWrite(config, PCI_COMMAND, bytes);
  return read();
}

export function writeRegister(edu: EduDriver, offset: bigint, value: bigint): void {
  if (edu.width === 8) {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, value, true);
    try {
      edu.device.regionWrite(0, offset, bytes);
      return;
    } catch (error) {
      if (!(error instanceof KernelError)) throw error;
      edu.width = 4; // vfio-pci without 8-byte MMIO: the low half is all edu needs below 4 GiB
    }
  }
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, Number(value & 0xffff_ffffn), true);
  edu.device.regionWrite(0, offset, bytes);
}

export function readRegister(edu: EduDriver, offset: bigint): bigint {
  if (edu.width === 8) {
    try {
      return new DataView(edu.device.regionRead(0, offset, 8).buffer).getBigUint64(0, true);
    } catch (error) {
      if (!(error instanceof KernelError)) throw error;
      edu.width = 4;
    }
  }
  return BigInt(new DataView(edu.device.regionRead(0, offset, 4).buffer).getUint32(0, true));
}

/**
 * One DMA: program source, destination and count, start it, and poll the command register
 * until the device clears EDU_DMA_RUN (edu runs it from a 100 ms virtual-clock timer).
 */
export async function eduDma(edu: EduDriver, request: { src: bigint; dst: bigint; count: number; toRam: boolean }): Promise<number> {
  const begin = performance.now();
  writeRegister(edu, EDU_DMA_SRC, request.src);
  writeRegister(edu, EDU_DMA_DST, request.dst);
  writeRegister(edu, EDU_DMA_COUNT, BigInt(request.count));
  writeRegister(edu, EDU_DMA_CMD, EDU_DMA_RUN | (request.toRam ? EDU_DMA_TO_RAM : 0n));
  for (;;) {
    if ((readRegister(edu, EDU_DMA_CMD) & EDU_DMA_RUN) === 0n) return performance.now() - begin;
    if (performance.now() - begin > 20_000) throw new Error('edu DMA did not finish in 20 s');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** RAM (at `from`) to edu's buffer, then edu's buffer to RAM (at `to`). */
export async function eduCopy(edu: EduDriver, from: bigint, to: bigint, count = EDU_BUFFER_SIZE): Promise<void> {
  await eduDma(edu, { src: from, dst: EDU_BUFFER, count, toRam: false });
  await eduDma(edu, { src: EDU_BUFFER, dst: to, count, toRam: true });
}

/** A recognisable byte pattern seeded by `seed`. */
export function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    bytes[i] = x & 0xff;
  }
  return bytes;
}
