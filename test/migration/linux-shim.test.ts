// The linux shim's migration calls on recorded syscalls: the VFIO_DEVICE_FEATURE structs it
// sends (laid out from the header layouts), the data fd it wraps, and how read/write results and
// errnos (short reads, EAGAIN, ENOMSG, ENODEV) come back. No kernel: each test scripts the bytes.
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, KernelError } from '../../src/kernel/errors.js';
import { LinuxDevice } from '../../src/kernel/linux/device.js';
import { F_SETFL, O_NONBLOCK } from '../../src/kernel/linux/libc.js';
import * as uapi from '../../src/uapi/index.js';
import { RecordingSyscalls } from '../linux/recording-syscalls.js';

const HEADER = uapi.vfio_device_feature.size;

function device(sys: RecordingSyscalls): LinuxDevice {
  return new LinuxDevice(sys, 'mtty0', 'cdev', 7);
}

describe('linux shim: migration v2', () => {
  it('MIG_DEVICE_STATE SET sends argsz, SET|MIG_DEVICE_STATE and the state, and wraps the data fd the kernel returns (non-blocking)', () => {
    const sys = new RecordingSyscalls();
    sys.handlers.set(uapi.VFIO_DEVICE_FEATURE, (arg) => {
      const bytes = arg as Uint8Array;
      uapi.vfio_device_feature_mig_state.write(bytes, { data_fd: 42 }, HEADER);
      return 0;
    });
    const data = device(sys).setMigrationState(uapi.VFIO_DEVICE_STATE_STOP_COPY)!;
    const sent = sys.ioctls[0]!.sent as Uint8Array;
    expect(uapi.vfio_device_feature.decode(sent)).toEqual({ argsz: HEADER + 8, flags: uapi.VFIO_DEVICE_FEATURE_SET | uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE });
    expect(uapi.vfio_device_feature_mig_state.decode(sent, HEADER)).toEqual({ device_state: uapi.VFIO_DEVICE_STATE_STOP_COPY, data_fd: -1 });
    expect(data.fd).toBe(42);
    expect(sys.fcntls.find((call) => call.command === F_SETFL)).toEqual({ fd: 42, command: F_SETFL, argument: 0o2 | O_NONBLOCK });
    data.close();
    expect(sys.closed).toEqual([42]);
  });

  it('a SET that opens no data fd (data_fd -1) returns undefined; GET returns device_state', () => {
    const sys = new RecordingSyscalls();
    sys.handlers.set(uapi.VFIO_DEVICE_FEATURE, (arg) => {
      const bytes = arg as Uint8Array;
      if (uapi.vfio_device_feature.readNumber(bytes, 'flags') & uapi.VFIO_DEVICE_FEATURE_GET) {
        uapi.vfio_device_feature_mig_state.write(bytes, { device_state: uapi.VFIO_DEVICE_STATE_RUNNING_P2P }, HEADER);
      }
      return 0;
    });
    expect(device(sys).setMigrationState(uapi.VFIO_DEVICE_STATE_RUNNING_P2P)).toBeUndefined();
    expect(device(sys).getMigrationState()).toBe(uapi.VFIO_DEVICE_STATE_RUNNING_P2P);
  });

  it('MIGRATION and MIG_DATA_SIZE GET decode their u64s; ENOTTY is a KernelError naming VFIO_DEVICE_FEATURE and the feature', () => {
    const sys = new RecordingSyscalls();
    sys.handlers.set(uapi.VFIO_DEVICE_FEATURE, (arg) => {
      const bytes = arg as Uint8Array;
      const feature = uapi.vfio_device_feature.readNumber(bytes, 'flags') & uapi.VFIO_DEVICE_FEATURE_MASK;
      if (feature === uapi.VFIO_DEVICE_FEATURE_MIGRATION) uapi.vfio_device_feature_migration.write(bytes, { flags: 7n }, HEADER);
      else if (feature === uapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE) uapi.vfio_device_feature_mig_data_size.write(bytes, { stop_copy_length: 96n }, HEADER);
      else return { errno: 25 };
      return 0;
    });
    expect(device(sys).migrationFlags()).toBe(7);
    expect(device(sys).migrationDataSize()).toBe(96n);
    sys.handlers.clear();
    const error = (() => {
      try {
        device(sys).migrationFlags();
      } catch (caught) {
        return caught;
      }
    })() as KernelError;
    expect(error).toBeInstanceOf(KernelError);
    expect([error.ioctl, error.code, error.objects.feature]).toEqual(['VFIO_DEVICE_FEATURE', 'ENOTTY', 'MIGRATION']);
  });

  it('refuses ERROR and states past PRE_COPY_P2P before any ioctl', () => {
    const sys = new RecordingSyscalls();
    for (const state of [uapi.VFIO_DEVICE_STATE_ERROR, 8, -1]) expect(() => device(sys).setMigrationState(state)).toThrow(InvalidArgumentError);
    expect(sys.ioctls).toEqual([]);
  });

  it('data fd reads: short reads as they come, 0 and ENOMSG as nothing more, EAGAIN as null, ENODEV as a KernelError naming read', () => {
    const sys = new RecordingSyscalls();
    sys.handlers.set(uapi.VFIO_DEVICE_FEATURE, (arg) => {
      uapi.vfio_device_feature_mig_state.write(arg as Uint8Array, { data_fd: 9 }, HEADER);
      return 0;
    });
    const data = device(sys).setMigrationState(uapi.VFIO_DEVICE_STATE_PRE_COPY)!;
    sys.reads.set(9, [new Uint8Array([1, 2, 3]), { errno: 11 }, { errno: 42 }, { errno: 19 }]);
    const buffer = new Uint8Array(16);
    expect(data.read(buffer)).toBe(3);
    expect([...buffer.subarray(0, 3)]).toEqual([1, 2, 3]);
    expect(data.read(buffer)).toBeNull();
    expect(data.read(buffer)).toBe(0);
    expect(() => data.read(buffer)).toThrow(/read\(device mtty0, data_fd 9, length 16\) failed: No such device/);
    expect(data.read(buffer)).toBe(0);
    data.close();
    expect(() => data.read(buffer)).toThrow(InvalidArgumentError);
  });

  it('data fd writes return what the kernel took (short writes), EAGAIN as null; PRECOPY_INFO sends argsz and decodes both estimates', () => {
    const sys = new RecordingSyscalls();
    sys.handlers.set(uapi.VFIO_DEVICE_FEATURE, (arg) => {
      uapi.vfio_device_feature_mig_state.write(arg as Uint8Array, { data_fd: 9 }, HEADER);
      return 0;
    });
    sys.handlers.set(uapi.VFIO_MIG_GET_PRECOPY_INFO, (arg) => {
      const bytes = arg as Uint8Array;
      expect(uapi.vfio_precopy_info.readNumber(bytes, 'argsz')).toBe(uapi.vfio_precopy_info.size);
      uapi.vfio_precopy_info.write(bytes, { initial_bytes: 24n, dirty_bytes: 5n });
      return 0;
    });
    const data = device(sys).setMigrationState(uapi.VFIO_DEVICE_STATE_RESUMING)!;
    sys.writeAnswers.push(2, { errno: 11 });
    expect(data.write(new Uint8Array([1, 2, 3, 4]))).toBe(2);
    expect(data.write(new Uint8Array([3, 4]))).toBeNull();
    expect(data.write(new Uint8Array([3, 4]))).toBe(2);
    expect(sys.writes.map((w) => [...w.data])).toEqual([[1, 2], [3, 4]]);
    expect(data.precopyInfo()).toEqual({ initialBytes: 24n, dirtyBytes: 5n });
    expect(sys.ioctls.at(-1)!.fd).toBe(9);
  });
});
