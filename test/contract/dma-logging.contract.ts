// Device DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START/STOP/REPORT, vfio_main.c, as mlx5 and
// pds implement log_ops). The guest has no device with log_ops, so these run on the simulator
// only; the ENOTTY path of a device without logging runs on both (device.contract.ts).
import { describe, expect } from 'vitest';
import {
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
} from '../../src/uapi/index.js';
import type { DeviceHandle, DmaLoggingRange } from '../../src/kernel/types.js';
import { ContractFixture, KIB, MIB, U64_MAX, expectInvalidArgument, expectKernelError, setBit, setBitIndexes, simOnly, type ContractTarget } from './context.js';

const REASON = '[sim only: no device with DMA logging in the guest]';

export function defineDmaLoggingContract(target: ContractTarget): void {
  describe('device DMA logging', () => {
    const t = new ContractFixture(target);
    const simIt = simOnly(target);

    /** The logging device, bound and attached to an IOAS mapping [0, 16 MiB). */
    function logging(name = t.sim.loggingDevice, options?: { validateArguments?: boolean }): DeviceHandle {
      const iommufd = t.iommufd(options);
      const ioas = iommufd.ioasAlloc();
      const device = t.device(name, options);
      device.bindIommufd(iommufd);
      device.attachPt(ioas);
      iommufd.ioasMap({ ioasId: ioas, memory: t.memory(16n * MIB), length: 16n * MIB, iova: 0n });
      return device;
    }

    simIt(`PROBE reports START, STOP and REPORT ${REASON}`, () => {
      const device = logging();
      for (const feature of [VFIO_DEVICE_FEATURE_DMA_LOGGING_START, VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT]) {
        expect(device.featureProbe(feature)).toBe(true);
      }
    });

    simIt(`the device logs its writes in the tracked ranges; REPORT sets bits only and clears the log ${REASON}`, () => {
      const device = logging();
      expect(device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: MIB }])).toBe(4n * KIB);
      const sim = t.sim.kernel;
      sim.dmaWrite(device, 8n * KIB, 4n * KIB);
      sim.dmaWrite(device, 20n * KIB + 100n, 10n); // part of page 5
      sim.dmaWrite(device, 2n * MIB, 4n * KIB); // outside the tracked range
      const bitmap = new Uint8Array(32);
      setBit(bitmap, 200);
      device.dmaLoggingReport({ iova: 0n, length: MIB, pageSize: 4n * KIB, bitmap });
      expect(setBitIndexes(bitmap)).toEqual([2, 5, 200]);
      bitmap.fill(0);
      device.dmaLoggingReport({ iova: 0n, length: MIB, pageSize: 4n * KIB, bitmap });
      expect(setBitIndexes(bitmap)).toEqual([]);
      device.dmaLoggingStop();
    });

    simIt(`one START before STOP: a second START fails with EINVAL; STOP twice and START again work ${REASON}`, () => {
      const device = logging();
      device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: MIB }]);
      expectKernelError(() => device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: MIB }]), 'VFIO_DEVICE_FEATURE', 'EINVAL');
      device.dmaLoggingStop();
      device.dmaLoggingStop();
      expectKernelError(
        () => device.dmaLoggingReport({ iova: 0n, length: MIB, pageSize: 4n * KIB, bitmap: new Uint8Array(32) }),
        'VFIO_DEVICE_FEATURE',
        'EINVAL',
      );
      device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: MIB }]);
      device.dmaLoggingStop();
    });

    simIt(`the VFIO core refuses more than 256 ranges (E2BIG); a device refusing more than its own limit too ${REASON}`, () => {
      const device = logging(undefined, { validateArguments: false });
      const ranges = (count: number): DmaLoggingRange[] => Array.from({ length: count }, (_, index) => ({ iova: BigInt(index) * 64n * KIB, length: 4n * KIB }));
      expectKernelError(() => device.dmaLoggingStart(4n * KIB, ranges(257)), 'VFIO_DEVICE_FEATURE', 'E2BIG');
      const strict = logging(t.sim.strictLoggingDevice);
      expectKernelError(() => strict.dmaLoggingStart(8n * KIB, ranges(5).map((r) => ({ iova: r.iova, length: 8n * KIB }))), 'VFIO_DEVICE_FEATURE', 'E2BIG');
      strict.dmaLoggingStart(8n * KIB, ranges(4).map((r) => ({ iova: r.iova, length: 8n * KIB })));
      strict.dmaLoggingStop();
    });

    simIt(`past its own limit a combining device merges the ranges closest together, so nothing written is missed ${REASON}`, () => {
      const device = logging();
      // Six ranges, four allowed: the two smallest gaps (pages 200-204, then 0-8) are merged.
      const starts = [0n, 8n, 100n, 200n, 204n, 400n].map((page) => page * 4n * KIB);
      device.dmaLoggingStart(4n * KIB, starts.map((iova) => ({ iova, length: 4n * KIB })));
      // Page 4 lies between the first two ranges: tracked once they are combined.
      t.sim.kernel.dmaWrite(device, 4n * 4n * KIB, 4n * KIB);
      t.sim.kernel.dmaWrite(device, 100n * 4n * KIB, 4n * KIB);
      const bitmap = new Uint8Array(64);
      device.dmaLoggingReport({ iova: 0n, length: 2n * MIB, pageSize: 4n * KIB, bitmap });
      expect(setBitIndexes(bitmap)).toEqual([4, 100]);
      device.dmaLoggingStop();
    });

    simIt(`START checks: no range, a range not aligned to the page size, overlapping ranges are EINVAL; past 2^64 EOVERFLOW ${REASON}`, () => {
      const device = logging(undefined, { validateArguments: false });
      expectKernelError(() => device.dmaLoggingStart(4n * KIB, []), 'VFIO_DEVICE_FEATURE', 'EINVAL');
      expectKernelError(() => device.dmaLoggingStart(4n * KIB, [{ iova: 2n * KIB, length: 4n * KIB }]), 'VFIO_DEVICE_FEATURE', 'EINVAL');
      expectKernelError(
        () => device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: 8n * KIB }, { iova: 4n * KIB, length: 8n * KIB }]),
        'VFIO_DEVICE_FEATURE',
        'EINVAL',
      );
      expectKernelError(() => device.dmaLoggingStart(4n * KIB, [{ iova: U64_MAX - 4n * KIB + 1n, length: 4n * KIB }]), 'VFIO_DEVICE_FEATURE', 'EOVERFLOW');
      expectKernelError(() => device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: U64_MAX - 4n * KIB + 1n }, { iova: U64_MAX - 4n * KIB + 1n, length: 8n * KIB }]), 'VFIO_DEVICE_FEATURE', 'EOVERFLOW');
    });

    simIt(`the device chooses the page size: a hint below its 8 KiB is raised, REPORT at 4 KiB sets two bits per logged page ${REASON}`, () => {
      const device = logging(t.sim.strictLoggingDevice);
      expect(device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: MIB }])).toBe(8n * KIB);
      t.sim.kernel.dmaWrite(device, 24n * KIB, 100n);
      const bitmap = new Uint8Array(32);
      device.dmaLoggingReport({ iova: 0n, length: MIB, pageSize: 4n * KIB, bitmap });
      expect(setBitIndexes(bitmap)).toEqual([6, 7]);
      device.dmaLoggingStop();
    });

    simIt(`REPORT with a page size below 4 KiB or not a power of two is EINVAL, past 2^64 EOVERFLOW ${REASON}`, () => {
      const device = logging(undefined, { validateArguments: false });
      device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: MIB }]);
      const bitmap = new Uint8Array(256);
      expectKernelError(() => device.dmaLoggingReport({ iova: 0n, length: MIB, pageSize: 2n * KIB, bitmap }), 'VFIO_DEVICE_FEATURE', 'EINVAL');
      expectKernelError(() => device.dmaLoggingReport({ iova: 0n, length: MIB, pageSize: 12n * KIB, bitmap }), 'VFIO_DEVICE_FEATURE', 'EINVAL');
      expectKernelError(() => device.dmaLoggingReport({ iova: U64_MAX - 4n * KIB + 1n, length: 8n * KIB, pageSize: 4n * KIB, bitmap }), 'VFIO_DEVICE_FEATURE', 'EOVERFLOW');
      device.dmaLoggingStop();
    });

    simIt(`REPORT refuses a bitmap ending mid-u64 or off a u64 word, and a zero length, before the ioctl, with or without argument checks; the log keeps its pages ${REASON}`, () => {
      for (const validateArguments of [true, false]) {
        const device = logging(undefined, { validateArguments });
        device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: MIB }]);
        t.sim.kernel.dmaWrite(device, 0n, 4n * KIB);
        t.sim.kernel.dmaWrite(device, 255n * 4n * KIB, 4n * KIB);
        // 256 pages: DIV_ROUND_UP(256, 64) = 4 u64 words, 32 bytes.
        const room = new ArrayBuffer(64);
        const report = (bitmap: Uint8Array, length = MIB) => () => device.dmaLoggingReport({ iova: 0n, length, pageSize: 4n * KIB, bitmap });
        for (const bitmap of [new Uint8Array(room, 0, 31), new Uint8Array(room, 1, 32), new Uint8Array(room, 4, 32)]) expectInvalidArgument(report(bitmap), /bitmap/);
        // iova_bitmap over a zero length spans all of IOVA, and the VFIO core does not refuse it.
        expectInvalidArgument(report(new Uint8Array(room, 0, 32), 0n), /length/);
        expect(new Uint8Array(room).every((byte) => byte === 0)).toBe(true);
        const bitmap = new Uint8Array(room, 0, 32);
        report(bitmap)();
        expect(setBitIndexes(bitmap)).toEqual([0, 255]);
        device.dmaLoggingStop();
        device.close();
      }
    });

    simIt(`closing the device stops its DMA log ${REASON}`, () => {
      const device = logging();
      device.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: MIB }]);
      device.close();
      const again = logging();
      again.dmaLoggingStart(4n * KIB, [{ iova: 0n, length: MIB }]);
      again.dmaLoggingStop();
    });
  });
}
