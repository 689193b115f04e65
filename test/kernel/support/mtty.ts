// The mtty mdevs the harness creates in the virtio boot (guest-init.sh): two mtty-2 (source and
// destination of a migration) and one mtty-1 (a destination of the wrong type), and how the
// tests set and read a serial port's state through BAR0, port 0's 8 UART registers
// (samples/vfio-mdev/mtty.c: handle_bar_write / handle_bar_read).
import type { DeviceHandle } from '../../../src/kernel/types.js';
import type { MigrationDevices } from '../../contract/context.js';

export const mtty = {
  /** mdev UUIDs, empty outside the guest or when the boot made none. */
  source: process.env.VFIO_IOMMUFD_MTTY_SOURCE ?? '',
  destination: process.env.VFIO_IOMMUFD_MTTY_DESTINATION ?? '',
  otherType: process.env.VFIO_IOMMUFD_MTTY_OTHER ?? '',
};
export const hasMtty = mtty.source !== '' && mtty.destination !== '' && mtty.otherType !== '';

// include/uapi/linux/serial_reg.h offsets.
const UART_RX = 0; // read: RX FIFO; write: TX, which mtty loops back into the RX FIFO
const UART_IER = 1;
const UART_LCR = 3;
const UART_SCR = 7;
const MAX_FIFO_SIZE = 16;

const write = (device: DeviceHandle, offset: number, value: number) => device.regionWrite(0, BigInt(offset), Uint8Array.of(value));
const read = (device: DeviceHandle, offset: number) => device.regionRead(0, BigInt(offset), 1)[0]!;

/** IER 0x08 (modem status interrupt only: no THRI/RDI, which would raise an interrupt), LCR 8N1 even parity, scratch 0x5a, "mt" in the FIFO. */
export const MTTY_STATE: readonly number[] = [0x08, 0x1b, 0x5a, 0x6d, 0x74];

export const mttyMigration: MigrationDevices = {
  ...mtty,
  writeState(device) {
    // An empty RX FIFO first, so that the bytes written are the ones read back.
    for (let i = 0; i < MAX_FIFO_SIZE; i++) read(device, UART_RX);
    write(device, UART_IER, 0x08);
    write(device, UART_LCR, 0x1b);
    write(device, UART_SCR, 0x5a);
    write(device, UART_RX, 0x6d);
    write(device, UART_RX, 0x74);
  },
  // IER reads back masked with 0x0f; RX pops the FIFO.
  readState: (device) => [read(device, UART_IER), read(device, UART_LCR), read(device, UART_SCR), read(device, UART_RX), read(device, UART_RX)],
  expectedState: MTTY_STATE,
};
