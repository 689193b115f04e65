import * as uapi from '../../uapi/index.js';
import { InvalidArgumentError, isKernelError } from '../errors.js';
import type {
  DirtyBitmapRequest,
  HwInfo,
  HwptAllocRequest,
  HwptDirtyBitmapRequest,
  IoasCopyRequest,
  IoasMapRequest,
  IommufdHandle,
  IommufdTestOps,
  IovaRange,
  KernelOptions,
} from '../types.js';
import { checkBitmapHeld, checkBitmapRequest, checkLength, checkRange, checkU32, checkU64, U64_MAX } from '../validate.js';
import { IoctlIssuer, structBytes } from './ioctl.js';
import { O_CLOEXEC, O_RDWR, type Syscalls } from './libc.js';
import { checkMemoryRange, MappingReferences } from './memory.js';
import { MockDevice } from './mock-device.js';

const {
  iommu_destroy, iommu_ioas_alloc, iommu_ioas_map, iommu_ioas_copy, iommu_ioas_unmap, iommu_ioas_iova_ranges,
  iommu_ioas_allow_iovas, iommu_iova_range, iommu_option, iommu_hwpt_alloc, iommu_hw_info,
  iommu_hwpt_set_dirty_tracking, iommu_hwpt_get_dirty_bitmap, iommu_test_cmd,
} = uapi;

/** Vendor data larger than any iommu_hw_info_* the kernel knows today. */
const HW_INFO_DATA_BYTES = 256;
/** Retries of IOMMU_IOAS_IOVA_RANGES when the ranges change between the EMSGSIZE and the retry. */
const IOVA_RANGES_RETRIES = 8;

export function encodeIovaRanges(ranges: readonly IovaRange[]): Uint8Array {
  const array = structBytes(Math.max(1, ranges.length) * iommu_iova_range.size);
  ranges.forEach((range, index) => iommu_iova_range.write(array, { start: range.start, last: range.last }, index * iommu_iova_range.size));
  return array;
}

export function decodeIovaRanges(array: Uint8Array, count: number): IovaRange[] {
  const ranges: IovaRange[] = [];
  for (let index = 0; index < count; index++) {
    const base = index * iommu_iova_range.size;
    ranges.push({ start: iommu_iova_range.readBigint(array, 'start', base), last: iommu_iova_range.readBigint(array, 'last', base) });
  }
  return ranges;
}

/** An open `/dev/iommu` driven through real ioctls. */
export class LinuxIommufd implements IommufdHandle {
  readonly fd: number;
  readonly test: IommufdTestOps;
  private readonly io: IoctlIssuer;
  private readonly validate: boolean;
  private readonly mappings = new MappingReferences();
  private isClosed = false;

  /** Opens `path`, or with `existingFd` takes that already open iommufd (closed by close()). */
  constructor(sys: Syscalls, options: KernelOptions = {}, path = '/dev/iommu', existingFd?: number) {
    this.io = new IoctlIssuer(sys);
    this.validate = options.validateArguments ?? true;
    this.fd = existingFd ?? this.io.check(sys.open(path, O_RDWR | O_CLOEXEC), 'open', { path });
    this.test = new LinuxIommufdTestOps(this, this.io);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** @internal for the test ops: ioctls on this fd. */
  issue(name: string, request: number, arg: Uint8Array, objects: Record<string, number | bigint | string>, pointers?: ReturnType<IoctlIssuer['pointers']>): void {
    this.assertOpen();
    this.io.call(this.fd, name, request, arg, objects, pointers);
  }

  ioasAlloc(): number {
    const s = iommu_ioas_alloc.encodeSlice({ size: iommu_ioas_alloc.size });
    this.issue('IOMMU_IOAS_ALLOC', uapi.IOMMU_IOAS_ALLOC, s, {});
    return iommu_ioas_alloc.readNumber(s, 'out_ioas_id');
  }

  destroy(id: number): void {
    if (this.validate) checkU32('id', id);
    this.issue('IOMMU_DESTROY', uapi.IOMMU_DESTROY, iommu_destroy.encodeSlice({ size: iommu_destroy.size, id }), { id });
    // Destroying an IOAS drops its mappings: the memory they held is free to go.
    this.mappings.removeAll(id);
  }

  ioasMap(request: IoasMapRequest): bigint {
    const offset = request.memoryOffset ?? 0n;
    let userVa: bigint;
    if (this.validate) {
      checkU32('ioasId', request.ioasId);
      checkLength('length', request.length);
      checkU64('memoryOffset', offset);
      if (request.iova !== undefined) checkRange('map', request.iova, request.length);
      userVa = checkMemoryRange(request.memory, offset, request.length);
    } else {
      userVa = request.memory.address + offset;
    }
    let flags = 0;
    if (request.iova !== undefined) flags |= uapi.IOMMU_IOAS_MAP_FIXED_IOVA;
    if (request.readable ?? true) flags |= uapi.IOMMU_IOAS_MAP_READABLE;
    if (request.writeable ?? true) flags |= uapi.IOMMU_IOAS_MAP_WRITEABLE;
    const s = iommu_ioas_map.encodeSlice({
      size: iommu_ioas_map.size, flags, ioas_id: request.ioasId, user_va: userVa, length: request.length, iova: request.iova ?? 0n,
    });
    this.issue('IOMMU_IOAS_MAP', uapi.IOMMU_IOAS_MAP, s, { ioas_id: request.ioasId, iova: request.iova ?? 0n, length: request.length });
    const iova = iommu_ioas_map.readBigint(s, 'iova');
    this.mappings.add(request.ioasId, iova, request.length, request.memory);
    return iova;
  }

  ioasCopy(request: IoasCopyRequest): bigint {
    if (this.validate) {
      checkU32('dstIoasId', request.dstIoasId);
      checkU32('srcIoasId', request.srcIoasId);
      checkRange('copy source', request.srcIova, request.length);
      if (request.dstIova !== undefined) checkRange('copy destination', request.dstIova, request.length);
    }
    let flags = 0;
    if (request.dstIova !== undefined) flags |= uapi.IOMMU_IOAS_MAP_FIXED_IOVA;
    if (request.readable ?? true) flags |= uapi.IOMMU_IOAS_MAP_READABLE;
    if (request.writeable ?? true) flags |= uapi.IOMMU_IOAS_MAP_WRITEABLE;
    const s = iommu_ioas_copy.encodeSlice({
      size: iommu_ioas_copy.size, flags, dst_ioas_id: request.dstIoasId, src_ioas_id: request.srcIoasId,
      length: request.length, dst_iova: request.dstIova ?? 0n, src_iova: request.srcIova,
    });
    this.issue('IOMMU_IOAS_COPY', uapi.IOMMU_IOAS_COPY, s, {
      dst_ioas_id: request.dstIoasId, src_ioas_id: request.srcIoasId, src_iova: request.srcIova, length: request.length,
    });
    const iova = iommu_ioas_copy.readBigint(s, 'dst_iova');
    const memory = this.mappings.memoryAt(request.srcIoasId, request.srcIova);
    if (memory) this.mappings.add(request.dstIoasId, iova, request.length, memory);
    return iova;
  }

  ioasUnmap(ioasId: number, iova: bigint, length: bigint): bigint {
    if (this.validate) {
      checkU32('ioasId', ioasId);
      checkRange('unmap', iova, length);
    }
    const s = iommu_ioas_unmap.encodeSlice({ size: iommu_ioas_unmap.size, ioas_id: ioasId, iova, length });
    this.issue('IOMMU_IOAS_UNMAP', uapi.IOMMU_IOAS_UNMAP, s, { ioas_id: ioasId, iova, length });
    this.mappings.remove(ioasId, iova, length);
    return iommu_ioas_unmap.readBigint(s, 'length');
  }

  ioasUnmapAll(ioasId: number): bigint {
    if (this.validate) checkU32('ioasId', ioasId);
    const s = iommu_ioas_unmap.encodeSlice({ size: iommu_ioas_unmap.size, ioas_id: ioasId, iova: 0n, length: U64_MAX });
    this.issue('IOMMU_IOAS_UNMAP', uapi.IOMMU_IOAS_UNMAP, s, { ioas_id: ioasId, iova: 0n, length: U64_MAX });
    this.mappings.removeAll(ioasId);
    return iommu_ioas_unmap.readBigint(s, 'length');
  }

  ioasIovaRanges(ioasId: number, fixedCapacity?: number): { ranges: IovaRange[]; alignment: bigint } {
    if (this.validate) {
      checkU32('ioasId', ioasId);
      if (fixedCapacity !== undefined) checkU32('capacity', fixedCapacity);
    }
    let capacity = fixedCapacity ?? 4;
    for (let attempt = 0; ; attempt++) {
      const array = iommu_iova_range.encodeSlice({}, capacity * iommu_iova_range.size);
      const pointers = this.io.pointers();
      const s = iommu_ioas_iova_ranges.encodeSlice({
        size: iommu_ioas_iova_ranges.size, ioas_id: ioasId, num_iovas: capacity, allowed_iovas: pointers.pointer(array),
      });
      try {
        this.issue('IOMMU_IOAS_IOVA_RANGES', uapi.IOMMU_IOAS_IOVA_RANGES, s, { ioas_id: ioasId }, pointers);
      } catch (error) {
        // EMSGSIZE: the kernel wrote how many ranges there are; grow the array and ask again.
        if (fixedCapacity === undefined && isKernelError(error, 'EMSGSIZE') && attempt < IOVA_RANGES_RETRIES) {
          capacity = Math.max(capacity + 1, iommu_ioas_iova_ranges.readNumber(s, 'num_iovas'));
          continue;
        }
        throw error;
      }
      return {
        ranges: decodeIovaRanges(array, iommu_ioas_iova_ranges.readNumber(s, 'num_iovas')),
        alignment: iommu_ioas_iova_ranges.readBigint(s, 'out_iova_alignment'),
      };
    }
  }

  ioasAllowIovas(ioasId: number, ranges: readonly IovaRange[]): void {
    if (this.validate) {
      checkU32('ioasId', ioasId);
      ranges.forEach((range, index) => {
        checkU64(`ranges[${index}].start`, range.start);
        checkU64(`ranges[${index}].last`, range.last);
        if (range.last <= range.start) throw new InvalidArgumentError(`ranges[${index}]`, 'last must be above start (the kernel takes no single-byte range)');
      });
    }
    const array = encodeIovaRanges(ranges);
    const pointers = this.io.pointers();
    const s = iommu_ioas_allow_iovas.encodeSlice({
      size: iommu_ioas_allow_iovas.size, ioas_id: ioasId, num_iovas: ranges.length,
      allowed_iovas: ranges.length ? pointers.pointer(array) : 0n,
    });
    this.issue('IOMMU_IOAS_ALLOW_IOVAS', uapi.IOMMU_IOAS_ALLOW_IOVAS, s, { ioas_id: ioasId, num_iovas: ranges.length }, pointers);
  }

  optionGet(optionId: number, objectId: number): bigint {
    const s = iommu_option.encodeSlice({ size: iommu_option.size, option_id: optionId, op: uapi.IOMMU_OPTION_OP_GET, object_id: objectId });
    this.issue('IOMMU_OPTION', uapi.IOMMU_OPTION, s, { option_id: optionId, object_id: objectId });
    return iommu_option.readBigint(s, 'val64');
  }

  optionSet(optionId: number, objectId: number, value: bigint): void {
    if (this.validate) checkU64('value', value);
    const s = iommu_option.encodeSlice({
      size: iommu_option.size, option_id: optionId, op: uapi.IOMMU_OPTION_OP_SET, object_id: objectId, val64: value,
    });
    this.issue('IOMMU_OPTION', uapi.IOMMU_OPTION, s, { option_id: optionId, object_id: objectId, val64: value });
  }

  hwptAlloc(request: HwptAllocRequest): number {
    if (this.validate) {
      checkU32('devId', request.devId);
      checkU32('ptId', request.ptId);
      checkU32('flags', request.flags ?? 0);
    }
    const pointers = this.io.pointers();
    const s = iommu_hwpt_alloc.encodeSlice({
      size: iommu_hwpt_alloc.size, flags: request.flags ?? 0, dev_id: request.devId, pt_id: request.ptId,
      data_type: request.dataType ?? uapi.IOMMU_HWPT_DATA_NONE, data_len: request.data?.byteLength ?? 0,
      data_uptr: pointers.pointer(request.data),
    });
    this.issue('IOMMU_HWPT_ALLOC', uapi.IOMMU_HWPT_ALLOC, s, { dev_id: request.devId, pt_id: request.ptId, flags: request.flags ?? 0 }, pointers);
    return iommu_hwpt_alloc.readNumber(s, 'out_hwpt_id');
  }

  getHwInfo(devId: number): HwInfo {
    if (this.validate) checkU32('devId', devId);
    const data = structBytes(HW_INFO_DATA_BYTES);
    const pointers = this.io.pointers();
    const s = iommu_hw_info.encodeSlice({ size: iommu_hw_info.size, dev_id: devId, data_len: data.byteLength, data_uptr: pointers.pointer(data) });
    this.issue('IOMMU_GET_HW_INFO', uapi.IOMMU_GET_HW_INFO, s, { dev_id: devId }, pointers);
    const length = Math.min(iommu_hw_info.readNumber(s, 'data_len'), data.byteLength);
    return {
      type: iommu_hw_info.readNumber(s, 'out_data_type'),
      capabilities: iommu_hw_info.readBigint(s, 'out_capabilities'),
      maxPasidLog2: iommu_hw_info.readNumber(s, 'out_max_pasid_log2'),
      data: data.slice(0, length),
    };
  }

  hwptSetDirtyTracking(hwptId: number, enable: boolean): void {
    if (this.validate) checkU32('hwptId', hwptId);
    const s = iommu_hwpt_set_dirty_tracking.encodeSlice({
      size: iommu_hwpt_set_dirty_tracking.size, flags: enable ? uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE : 0, hwpt_id: hwptId,
    });
    this.issue('IOMMU_HWPT_SET_DIRTY_TRACKING', uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, s, { hwpt_id: hwptId, enable: enable ? 1 : 0 });
  }

  hwptGetDirtyBitmap(request: HwptDirtyBitmapRequest): void {
    if (this.validate) {
      checkU32('hwptId', request.hwptId);
      checkBitmapRequest('dirty bitmap', request);
    }
    // iommufd_check_iova_range refuses a zero length or page size before the bitmap is touched.
    checkBitmapHeld('dirty bitmap', request, true);
    const pointers = this.io.pointers();
    const s = iommu_hwpt_get_dirty_bitmap.encodeSlice({
      size: iommu_hwpt_get_dirty_bitmap.size, hwpt_id: request.hwptId,
      flags: request.noClear ? uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR : 0,
      iova: request.iova, length: request.length, page_size: request.pageSize, data: pointers.wordPointer('dirty bitmap.bitmap', request.bitmap),
    });
    this.issue('IOMMU_HWPT_GET_DIRTY_BITMAP', uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, s, {
      hwpt_id: request.hwptId, iova: request.iova, length: request.length, page_size: request.pageSize,
    }, pointers);
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.mappings.clear();
    this.io.check(this.io.sys.close(this.fd), 'close', { fd: this.fd });
  }

  private assertOpen(): void {
    if (this.isClosed) throw new InvalidArgumentError('iommufd', 'is closed');
  }
}

/** IOMMU_TEST_CMD on a kernel built with CONFIG_IOMMUFD_TEST. */
class LinuxIommufdTestOps implements IommufdTestOps {
  private probed: boolean | undefined;

  constructor(private readonly iommufd: LinuxIommufd, private readonly io: IoctlIssuer) {}

  available(): boolean {
    if (this.probed === undefined) {
      // An unknown op answers EOPNOTSUPP when the test command exists, ENOTTY when it does not.
      try {
        this.command(0xffff, 0, () => {}, 'unknown op');
        this.probed = true;
      } catch (error) {
        this.probed = !isKernelError(error, 'ENOTTY');
      }
    }
    return this.probed;
  }

  mockDomain(ptId: number, options: { noDirty?: boolean; hugeIova?: boolean } = {}): MockDevice {
    checkU32('ptId', ptId);
    let devFlags = 0;
    if (options.noDirty) devFlags |= uapi.MOCK_FLAGS_DEVICE_NO_DIRTY;
    if (options.hugeIova) devFlags |= uapi.MOCK_FLAGS_DEVICE_HUGE_IOVA;
    const op = devFlags ? uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS : uapi.IOMMU_TEST_OP_MOCK_DOMAIN;
    const s = this.command(op, ptId, (b) => devFlags && iommu_test_cmd.write(b, { 'mock_domain_flags.dev_flags': devFlags }), devFlags ? 'IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS' : 'IOMMU_TEST_OP_MOCK_DOMAIN');
    return new MockDevice(this.iommufd, {
      stdevId: iommu_test_cmd.readNumber(s, 'mock_domain.out_stdev_id'),
      hwptId: iommu_test_cmd.readNumber(s, 'mock_domain.out_hwpt_id'),
      idevId: iommu_test_cmd.readNumber(s, 'mock_domain.out_idev_id'),
      replace: (stdevId, newPtId) => {
        const r = this.command(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdevId, (b) => iommu_test_cmd.write(b, { 'mock_domain_replace.pt_id': newPtId }), 'IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE', { pt_id: newPtId });
        return iommu_test_cmd.readNumber(r, 'mock_domain_replace.pt_id');
      },
    });
  }

  markDirty(hwptId: number, request: DirtyBitmapRequest): bigint {
    checkU32('hwptId', hwptId);
    checkBitmapRequest('dirty', request, true); // the mock only reads the bitmap, as bytes
    const pointers = this.io.pointers();
    const uptr = pointers.pointer(request.bitmap);
    const s = this.command(uapi.IOMMU_TEST_OP_DIRTY, hwptId, (b) => iommu_test_cmd.write(b, {
      'dirty.iova': request.iova, 'dirty.length': request.length, 'dirty.page_size': request.pageSize, 'dirty.uptr': uptr,
    }), 'IOMMU_TEST_OP_DIRTY', { iova: request.iova, length: request.length }, pointers);
    return iommu_test_cmd.readBigint(s, 'dirty.out_nr_dirty');
  }

  /** One IOMMU_TEST_CMD; errors name the op (`IOMMU_TEST_CMD(op IOMMU_TEST_OP_DIRTY, id 5, ...)`). */
  private command(
    op: number,
    id: number,
    fill: (bytes: Uint8Array) => unknown,
    opName: string,
    extra: Record<string, number | bigint | string> = {},
    pointers?: ReturnType<IoctlIssuer['pointers']>,
  ): Uint8Array {
    const s = iommu_test_cmd.encodeSlice({ size: iommu_test_cmd.size, op, id });
    fill(s);
    this.iommufd.issue('IOMMU_TEST_CMD', uapi.IOMMU_TEST_CMD, s, { op: opName, id, ...extra }, pointers);
    return s;
  }
}
