// The simulated /dev/iommu handle: every IommufdHandle call is one "ioctl" that validates its
// arguments (unless validateArguments is false), passes through fault injection, then runs the
// kernel's checks in the kernel's order (see iommufd-objects.ts, io-pagetable.ts).
import {
  IOMMU_HW_INFO_SELFTEST_REGVAL,
  IOMMU_HW_INFO_TYPE_SELFTEST,
  IOMMU_HWPT_DATA_NONE,
  IOMMU_HWPT_FAULT_ID_VALID,
  IOMMU_OPTION_HUGE_PAGES,
  IOMMU_OPTION_RLIMIT_MODE,
  MOCK_APERTURE_LAST,
  MOCK_APERTURE_START,
  MOCK_FLAGS_DEVICE_HUGE_IOVA,
  MOCK_FLAGS_DEVICE_NO_DIRTY,
  MOCK_HUGE_PAGE_SIZE,
  MOCK_IO_PAGE_SIZE,
  iommu_test_hw_info,
} from '../../uapi/index.js';
import { ERRNO } from '../errno.js';
import { MockDeviceBase } from '../mock-device.js';
import { InvalidArgumentError, KernelError, type KernelObjects } from '../errors.js';
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
import { setBits } from './bitmap.js';
import { SimulatedErrno, fail } from './failure.js';
import { PAGE_SIZE, SimulatedHostMemory } from './host-memory.js';
import { lowestBit, maxBig, minBig, type IovaInterval } from './io-pagetable.js';
import {
  IoasObject,
  IommufdContext,
  SelftestObject,
  type DeviceObject,
  type HwptObject,
  type IommuDevice,
} from './iommufd-objects.js';
import type { KernelServices } from './services.js';

/**
 * The linux shim's checks on host memory (checkMemoryRange), plus one only the simulator needs:
 * the memory must come from this kernel's allocateHostMemory().
 */
export function checkHostMemory(identity: object, memory: unknown, offset: bigint, length: bigint): void {
  if (!(memory instanceof SimulatedHostMemory) || memory.owner !== identity) {
    throw new InvalidArgumentError('memory', 'must come from this kernel\'s allocateHostMemory()');
  }
  if (memory.released) throw new InvalidArgumentError('memory', 'has been released and cannot be mapped');
  if (offset < 0n || offset + length > memory.length) {
    throw new InvalidArgumentError(
      'memoryOffset',
      `offset 0x${offset.toString(16)} + length 0x${length.toString(16)} does not fit the memory's 0x${memory.length.toString(16)} bytes`,
    );
  }
}

/** The kernel-wide parts a handle needs beyond KernelServices. */
export interface IommufdHost {
  readonly services: KernelServices;
  /** Identity of the kernel: host memory from another kernel is not this process's memory. */
  readonly identity: object;
  readonly testOpsEnabled: boolean;
  /** IDA of mock devices (iommufd_mockN). */
  createMockDevice(flags: number): IommuDevice;
  destroyMockDevice(device: IommuDevice): void;
  registerMock(handle: SimulatedMockDevice): void;
  contextReleased(context: IommufdContext): void;
}

/** Runs one simulated ioctl: EBADF on a closed fd, fault injection, errno to KernelError. */
export function runIoctl<T>(
  services: KernelServices,
  fd: number,
  closed: readonly [argument: string, message: string] | undefined,
  ioctl: string,
  objects: KernelObjects,
  body: () => T,
): T {
  // A closed handle is the library's error (as in the linux shim), not an ioctl on a stale fd.
  if (closed) throw new InvalidArgumentError(closed[0], closed[1]);
  services.enterIoctl(ioctl, objects, fd);
  try {
    const result = body();
    services.leaveIoctl(0);
    return result;
  } catch (error) {
    if (error instanceof SimulatedErrno) {
      services.leaveIoctl(error.errno);
      throw new KernelError(ioctl, error.errno, objects);
    }
    services.leaveIoctl(-1);
    throw error;
  }
}

function bool(value: unknown, fallback: boolean): boolean {
  return value === undefined ? fallback : Boolean(value);
}

export class SimulatedIommufd implements IommufdHandle {
  readonly fd: number;
  readonly context: IommufdContext;
  readonly test: IommufdTestOps | undefined;
  private readonly validate: boolean;

  constructor(
    readonly host: IommufdHost,
    options: KernelOptions | undefined,
  ) {
    this.fd = host.services.allocateFd();
    this.context = new IommufdContext(this.fd, host.services, (context) => host.contextReleased(context));
    this.validate = options?.validateArguments !== false;
    this.test = host.testOpsEnabled ? new SimulatedIommufdTest(this) : undefined;
  }

  get closed(): boolean {
    return this.context.fdClosed;
  }

  /** One ioctl on this fd. */
  ioctl<T>(ioctl: string, objects: KernelObjects, body: () => T): T {
    return runIoctl(this.host.services, this.fd, this.closed ? ['iommufd', 'is closed'] : undefined, ioctl, objects, body);
  }

  get validating(): boolean {
    return this.validate;
  }

  ioasAlloc(): number {
    return this.ioctl('IOMMU_IOAS_ALLOC', {}, () => {
      const id = this.context.reserveId();
      this.context.finalize(new IoasObject(id));
      return id;
    });
  }

  destroy(id: number): void {
    if (this.validate) checkU32('id', id);
    this.ioctl('IOMMU_DESTROY', { id }, () => this.context.destroy(id));
  }

  ioasMap(request: IoasMapRequest): bigint {
    const memoryOffset = request.memoryOffset ?? 0n;
    const readable = bool(request.readable, true);
    const writeable = bool(request.writeable, true);
    if (this.validate) {
      checkU32('ioasId', request.ioasId);
      checkLength('length', request.length);
      checkU64('memoryOffset', memoryOffset);
      if (request.iova !== undefined) checkRange('map', request.iova, request.length);
      this.checkMemory(request.memory, memoryOffset, request.length);
    }
    const objects: KernelObjects = { ioas_id: request.ioasId, iova: request.iova ?? 0n, length: request.length };
    return this.ioctl('IOMMU_IOAS_MAP', objects, () => {
      const iova = request.iova ?? 0n;
      const length = request.length;
      if (iova >= U64_MAX || length >= U64_MAX) fail('EOVERFLOW');
      if (!readable && !writeable) fail('EINVAL');
      const ioas = this.context.get<IoasObject>(request.ioasId, 'ioas');
      // iopt_alloc_pages
      if (length > U64_MAX - PAGE_SIZE || length === 0n) fail('EINVAL');
      const memory = this.ownMemory(request.memory);
      const uptr = request.memory.address + memoryOffset;
      if (uptr + length > U64_MAX) fail('EOVERFLOW');
      return ioas.iopt.mapPages(
        [{ memory, offset: memoryOffset, length, pagesWritable: writeable }],
        length,
        request.iova,
        { read: readable, write: writeable },
      );
    });
  }

  /**
   * Memory this process holds; anything else faults when the kernel pins it. (The real kernel
   * pins lazily when no domain is attached; the simulator refuses such memory at once.)
   */
  private ownMemory(memory: unknown): SimulatedHostMemory {
    if (!(memory instanceof SimulatedHostMemory) || memory.owner !== this.host.identity || memory.released) fail('EFAULT');
    return memory;
  }

  checkMemory(memory: unknown, offset: bigint, length: bigint): void {
    checkHostMemory(this.host.identity, memory, offset, length);
  }

  ioasCopy(request: IoasCopyRequest): bigint {
    const readable = bool(request.readable, true);
    const writeable = bool(request.writeable, true);
    if (this.validate) {
      checkU32('dstIoasId', request.dstIoasId);
      checkU32('srcIoasId', request.srcIoasId);
      checkRange('copy source', request.srcIova, request.length);
      if (request.dstIova !== undefined) checkRange('copy destination', request.dstIova, request.length);
    }
    const objects: KernelObjects = {
      dst_ioas_id: request.dstIoasId, src_ioas_id: request.srcIoasId, src_iova: request.srcIova, length: request.length,
    };
    return this.ioctl('IOMMU_IOAS_COPY', objects, () => {
      const dstIova = request.dstIova ?? 0n;
      if (request.length >= U64_MAX || request.srcIova >= U64_MAX || dstIova >= U64_MAX) fail('EOVERFLOW');
      if (!readable && !writeable) fail('EINVAL');
      const source = this.context.get<IoasObject>(request.srcIoasId, 'ioas');
      const slices = source.iopt.getPages(request.srcIova, request.length);
      const destination = this.context.get<IoasObject>(request.dstIoasId, 'ioas');
      return destination.iopt.mapPages(slices, request.length, request.dstIova, { read: readable, write: writeable });
    });
  }

  ioasUnmap(ioasId: number, iova: bigint, length: bigint): bigint {
    if (this.validate) {
      checkU32('ioasId', ioasId);
      checkRange('unmap', iova, length);
    }
    return this.unmap(ioasId, iova, length);
  }

  private unmap(ioasId: number, iova: bigint, length: bigint): bigint {
    return this.ioctl('IOMMU_IOAS_UNMAP', { ioas_id: ioasId, iova, length }, () => {
      const ioas = this.context.get<IoasObject>(ioasId, 'ioas');
      if (iova === 0n && length === U64_MAX) return ioas.iopt.unmapRange(0n, U64_MAX).unmapped;
      if (iova >= U64_MAX || length >= U64_MAX) fail('EOVERFLOW');
      // iopt_unmap_iova
      if (length === 0n) fail('EINVAL');
      if (iova + length - 1n > U64_MAX) fail('EOVERFLOW');
      const { unmapped, errno } = ioas.iopt.unmapRange(iova, iova + length - 1n);
      if (errno) fail(errno);
      if (unmapped === 0n) fail('ENOENT');
      return unmapped;
    });
  }

  ioasUnmapAll(ioasId: number): bigint {
    if (this.validate) checkU32('ioasId', ioasId);
    return this.unmap(ioasId, 0n, U64_MAX);
  }

  /**
   * IOMMU_IOAS_IOVA_RANGES, as the linux shim issues it: an array of 4, grown and asked again on
   * EMSGSIZE. With `capacity` (a simulator extension, see the note on the seam) it is one ioctl
   * with an array of that many entries, failing with EMSGSIZE when more ranges exist.
   */
  ioasIovaRanges(ioasId: number, capacity?: number): { ranges: IovaRange[]; alignment: bigint } {
    if (this.validate) {
      checkU32('ioasId', ioasId);
      if (capacity !== undefined) checkU32('capacity', capacity);
    }
    if (capacity !== undefined) return this.iovaRanges(ioasId, capacity).result;
    let size = 4;
    for (let attempt = 0; ; attempt++) {
      try {
        return this.iovaRanges(ioasId, size).result;
      } catch (error) {
        if (!(error instanceof KernelError) || error.errno !== ERRNO.EMSGSIZE || attempt >= 8) throw error;
        size = Math.max(size + 1, this.lastRangeCount);
      }
    }
  }

  /** num_iovas the kernel wrote back on the last IOMMU_IOAS_IOVA_RANGES. */
  private lastRangeCount = 0;

  private iovaRanges(ioasId: number, capacity: number): { result: { ranges: IovaRange[]; alignment: bigint } } {
    return this.ioctl('IOMMU_IOAS_IOVA_RANGES', { ioas_id: ioasId }, () => {
      const ioas = this.context.get<IoasObject>(ioasId, 'ioas');
      const ranges = ioas.iopt.iovaRanges().map((range) => ({ start: range.start, last: range.last }));
      this.lastRangeCount = ranges.length;
      if (ranges.length > capacity) fail('EMSGSIZE');
      return { result: { ranges, alignment: ioas.iopt.iovaAlignment } };
    });
  }

  ioasAllowIovas(ioasId: number, ranges: readonly IovaRange[]): void {
    if (this.validate) {
      checkU32('ioasId', ioasId);
      if (!Array.isArray(ranges)) throw new InvalidArgumentError('ranges', 'must be an array of { start, last }');
      ranges.forEach((range, index) => {
        checkU64(`ranges[${index}].start`, range.start);
        checkU64(`ranges[${index}].last`, range.last);
        if (range.last <= range.start) throw new InvalidArgumentError(`ranges[${index}]`, 'last must be above start (the kernel takes no single-byte range)');
      });
    }
    this.ioctl('IOMMU_IOAS_ALLOW_IOVAS', { ioas_id: ioasId, num_iovas: ranges.length }, () => {
      const ioas = this.context.get<IoasObject>(ioasId, 'ioas');
      // iommufd_ioas_load_iovas
      const loaded: IovaInterval[] = [];
      for (const range of ranges) {
        if (range.start >= range.last) fail('EINVAL');
        if (loaded.some((other) => other.start <= range.last && other.last >= range.start)) fail('EINVAL');
        loaded.push({ start: range.start, last: range.last });
      }
      ioas.iopt.setAllowed(loaded);
    });
  }

  optionGet(optionId: number, objectId: number): bigint {
    return this.ioctl('IOMMU_OPTION', { option_id: optionId, object_id: objectId }, () => this.option(optionId, objectId, undefined));
  }

  optionSet(optionId: number, objectId: number, value: bigint): void {
    if (this.validate) checkU64('value', value);
    this.ioctl('IOMMU_OPTION', { option_id: optionId, object_id: objectId, val64: value }, () => {
      this.option(optionId, objectId, value);
    });
  }

  private option(optionId: number, objectId: number, value: bigint | undefined): bigint {
    switch (optionId) {
      case IOMMU_OPTION_RLIMIT_MODE:
        if (objectId !== 0) fail('EOPNOTSUPP');
        if (value === undefined) return BigInt(this.context.accountMode);
        if (this.context.objectCount > 0) fail('EBUSY');
        if (value !== 0n && value !== 1n) fail('EINVAL');
        this.context.accountMode = Number(value);
        return value;
      case IOMMU_OPTION_HUGE_PAGES: {
        const ioas = this.context.get<IoasObject>(objectId, 'ioas');
        if (value === undefined) return ioas.iopt.disableLargePages ? 0n : 1n;
        if (value === 0n) ioas.iopt.disableLarge();
        else if (value === 1n) ioas.iopt.enableLarge();
        else fail('EINVAL');
        return value;
      }
      default:
        return fail('EOPNOTSUPP');
    }
  }

  hwptAlloc(request: HwptAllocRequest): number {
    const flags = request.flags ?? 0;
    const dataType = request.dataType ?? IOMMU_HWPT_DATA_NONE;
    const dataLength = request.data?.byteLength ?? 0;
    if (this.validate) {
      checkU32('devId', request.devId);
      checkU32('ptId', request.ptId);
      checkU32('flags', flags);
    }
    return this.ioctl('IOMMU_HWPT_ALLOC', { dev_id: request.devId, pt_id: request.ptId, flags }, () => {
      if ((dataType === IOMMU_HWPT_DATA_NONE && dataLength) || (dataType !== IOMMU_HWPT_DATA_NONE && !dataLength)) fail('EINVAL');
      const idev = this.context.get<DeviceObject>(request.devId, 'device');
      const pt = this.context.getAny(request.ptId);
      if (!pt) fail('EINVAL');
      if (pt.type === 'ioas') {
        const hwpt = this.context.hwptPagingAlloc(pt, idev, flags, false, dataLength ? request.data : undefined);
        this.context.finalize(hwpt);
        return hwpt.id;
      }
      if (pt.type === 'hwpt_paging') {
        // iommufd_hwpt_nested_alloc: the simulated IOMMUs have no nested (stage-1) domains.
        if ((flags & ~IOMMU_HWPT_FAULT_ID_VALID) || !dataLength || !idev.device.iommu.domainAllocUser) fail('EOPNOTSUPP');
        if (pt.autoDomain || !pt.nestParent || pt.domain.owner !== idev.device.iommu.type) fail('EINVAL');
        return fail('EOPNOTSUPP');
      }
      return fail('EINVAL');
    });
  }

  getHwInfo(devId: number): HwInfo {
    if (this.validate) checkU32('devId', devId);
    return this.ioctl('IOMMU_GET_HW_INFO', { dev_id: devId }, () => {
      const idev = this.context.get<DeviceObject>(devId, 'device');
      const info = idev.device.iommu.hwInfo;
      return {
        type: info?.type ?? 0,
        capabilities: info?.capabilities ?? 0n,
        maxPasidLog2: 0,
        data: info ? info.data.slice() : new Uint8Array(0),
      };
    });
  }

  hwptSetDirtyTracking(hwptId: number, enable: boolean): void {
    if (this.validate) checkU32('hwptId', hwptId);
    this.ioctl('IOMMU_HWPT_SET_DIRTY_TRACKING', { hwpt_id: hwptId, enable: enable ? 1 : 0 }, () => {
      const hwpt = this.context.get<HwptObject>(hwptId, 'hwpt_paging');
      const domain = hwpt.domain;
      if (!domain.dirtyOps) fail('EOPNOTSUPP');
      // iopt_set_dirty_tracking: enabling clears stale dirty bits first, even when already enabled.
      if (enable) domain.clearDirty();
      domain.trackingEnabled = enable;
    });
  }

  hwptGetDirtyBitmap(request: HwptDirtyBitmapRequest): void {
    if (this.validate) {
      checkU32('hwptId', request.hwptId);
      checkBitmapRequest('dirty bitmap', request);
    }
    // As the linux shim: the bitmap must hold what the kernel would write, whatever validates.
    checkBitmapHeld('dirty bitmap', request, true);
    const objects: KernelObjects = { hwpt_id: request.hwptId, iova: request.iova, length: request.length, page_size: request.pageSize };
    this.ioctl('IOMMU_HWPT_GET_DIRTY_BITMAP', objects, () => {
      const hwpt = this.context.get<HwptObject>(request.hwptId, 'hwpt_paging');
      const iopt = hwpt.ioas.iopt;
      const { iova, length, pageSize } = request;
      // iommufd_check_iova_range
      if (length === 0n) fail('EINVAL');
      const last = iova + length - 1n;
      if (last > U64_MAX) fail('EOVERFLOW');
      const end = (last + 1n) & U64_MAX;
      const alignmentMask = iopt.iovaAlignment - 1n;
      if ((iova & alignmentMask) || (end & alignmentMask)) fail('EINVAL');
      if (pageSize === 0n) fail('EINVAL');
      if ((iova & (pageSize - 1n)) || (end & (pageSize - 1n))) fail('EINVAL');
      // iommu_read_and_clear_dirty
      if (!hwpt.domain.dirtyOps) fail('EOPNOTSUPP');
      readDirty(hwpt, iova, length, lowestBit(pageSize), request.bitmap, request.noClear === true);
    });
  }

  close(): void {
    if (this.closed) return;
    this.host.services.releaseFd(this.fd);
    this.context.closeFd();
  }
}

/**
 * iova_bitmap over __iommu_read_and_clear_dirty: walk the contiguous areas from `iova`, read and
 * clear each one's IOPTE dirty bits, set the caller's bits at `pageSize`. As Linux 6.12.118 has it
 * (iova_bitmap_for_each returns the walk's error): a domain whose tracking is off fails the first
 * area's read_and_clear_dirty with EINVAL (every driver: `!tracking && dirty->bitmap`), and a hole
 * fails the call with EINVAL after the areas before it were read and cleared.
 */
function readDirty(hwpt: HwptObject, iova: bigint, length: bigint, pageSize: bigint, bitmap: Uint8Array, noClear: boolean): void {
  const bits = length / pageSize;
  if (BigInt(bitmap.byteLength) * 8n < bits) fail('EFAULT');
  const domain = hwpt.domain;
  const granule = domain.granule;
  const last = iova + length - 1n;
  const run = hwpt.ioas.iopt.contiguousAreas(iova, last);
  if (run.areas.length > 0 && !domain.trackingEnabled) fail('EINVAL');
  for (const area of run.areas) {
    const mapping = domain.mapping(area);
    if (!mapping) continue;
    const start = maxBig(iova, area.iova);
    const end = minBig(last, area.last) + 1n;
    const from = Number((start - area.iova) / granule);
    const to = Number((end - area.iova + granule - 1n) / granule);
    // Granule k of the area is granule (base + k) of the request.
    const base = Number((area.iova - iova) / granule);
    if (pageSize === granule && mapping.readAndClearInto(from, to, noClear, bitmap, base + from)) continue;
    if (pageSize >= granule) {
      const ratio = Number(pageSize / granule);
      mapping.readAndClear(from, to, noClear, (first, after) => {
        setBits(bitmap, Math.floor((base + first) / ratio), Math.ceil((base + after) / ratio));
      });
    } else {
      const ratio = Number(granule / pageSize);
      mapping.readAndClear(from, to, noClear, (first, after) => {
        setBits(bitmap, (base + first) * ratio, (base + after) * ratio);
      });
    }
  }
  // !iopt_area_contig_done: the walk ended at a hole before the range did.
  if (!run.done) fail('EINVAL');
}

/** The kernel's IOMMU_TEST_CMD ops (drivers/iommu/iommufd/selftest.c) on this iommufd. */
export class SimulatedIommufdTest implements IommufdTestOps {
  constructor(private readonly iommufd: SimulatedIommufd) {}

  available(): boolean {
    return true;
  }

  mockDomain(ptId: number, options?: { noDirty?: boolean; hugeIova?: boolean }): SimulatedMockDevice {
    checkU32('ptId', ptId);
    const flags = (options?.noDirty ? MOCK_FLAGS_DEVICE_NO_DIRTY : 0) | (options?.hugeIova ? MOCK_FLAGS_DEVICE_HUGE_IOVA : 0);
    const op = flags ? 'IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS' : 'IOMMU_TEST_OP_MOCK_DOMAIN';
    const context = this.iommufd.context;
    const host = this.iommufd.host;
    return this.iommufd.ioctl('IOMMU_TEST_CMD', { op, id: ptId }, () => {
      const selftestId = context.reserveId();
      const mock = host.createMockDevice(flags);
      let idev: DeviceObject;
      try {
        idev = context.bindDevice(mock, false);
      } catch (error) {
        host.destroyMockDevice(mock);
        context.abortId(selftestId);
        throw error;
      }
      let hwptId: number;
      try {
        hwptId = context.attach(idev, ptId);
      } catch (error) {
        context.unbindDevice(idev);
        host.destroyMockDevice(mock);
        context.abortId(selftestId);
        throw error;
      }
      const selftest = new SelftestObject(selftestId, mock, idev, () => host.destroyMockDevice(mock));
      context.finalize(selftest);
      const handle = new SimulatedMockDevice(this.iommufd, selftest, hwptId);
      host.registerMock(handle);
      return handle;
    });
  }

  markDirty(hwptId: number, request: DirtyBitmapRequest): bigint {
    checkU32('hwptId', hwptId);
    checkBitmapRequest('dirty', request, true); // the mock only reads the bitmap, as bytes
    const objects: KernelObjects = { op: 'IOMMU_TEST_OP_DIRTY', id: hwptId, iova: request.iova, length: request.length };
    return this.iommufd.ioctl('IOMMU_TEST_CMD', objects, () => {
      const { iova, length, pageSize, bitmap } = request;
      if (!pageSize || !length || iova % pageSize || length % pageSize) fail('EINVAL');
      const max = length / pageSize;
      if (max > 16n * 1024n * 1024n * 8n) fail('EOVERFLOW');
      const hwpt = this.iommufd.context.get<HwptObject>(hwptId, 'hwpt_paging');
      if (!hwpt.domain.mock) fail('EINVAL');
      if (!hwpt.domain.trackingEnabled) fail('EINVAL');
      const bits = Number(max);
      if (bitmap.byteLength < Math.ceil(bits / 8)) fail('EFAULT');
      const iopt = hwpt.ioas.iopt;
      let count = 0n;
      for (let byte = 0; byte < Math.ceil(bits / 8); byte++) {
        const value = bitmap[byte]!;
        if (value === 0) continue;
        for (let bit = 0; bit < 8; bit++) {
          const index = byte * 8 + bit;
          if (index >= bits || !((value >>> bit) & 1)) continue;
          // The mock looks the page up at index cur / page_size of its MOCK_IO_PAGE_SIZE-indexed
          // xarray, so for another page size it marks IOVA (cur / page_size) * MOCK_IO_PAGE_SIZE.
          const current = iova + BigInt(index) * pageSize;
          const target = (current / pageSize) * MOCK_IO_PAGE_SIZE;
          const area = iopt.areaAt(target);
          const mapping = area && hwpt.domain.mapping(area);
          if (!area || !mapping) continue;
          const granule = Number((target - area.iova) / hwpt.domain.granule);
          mapping.markDirty(granule, granule + 1);
          count++;
        }
      }
      return count;
    });
  }
}

/** A mock device's IommuDevice (mock_dev_create with its flags). */
export function mockIommuDevice(index: number, flags: number): IommuDevice {
  const dirty = (flags & MOCK_FLAGS_DEVICE_NO_DIRTY) === 0;
  return {
    name: `iommufd_mock${index}`,
    groupKey: `mock:${index}`,
    mock: true,
    iommu: {
      type: 'selftest',
      dirtyTracking: dirty,
      pageSizes: flags & MOCK_FLAGS_DEVICE_HUGE_IOVA ? [MOCK_IO_PAGE_SIZE, MOCK_HUGE_PAGE_SIZE] : [MOCK_IO_PAGE_SIZE],
      apertureStart: MOCK_APERTURE_START,
      apertureLast: MOCK_APERTURE_LAST,
      reservedRegions: [],
      hwInfo: {
        type: IOMMU_HW_INFO_TYPE_SELFTEST,
        data: iommu_test_hw_info.encode({ flags: 0, test_reg: IOMMU_HW_INFO_SELFTEST_REGVAL }),
        capabilities: dirty ? 1n : 0n,
      },
      domainAllocUser: true,
    },
  };
}

/** A mock device from IOMMU_TEST_OP_MOCK_DOMAIN: bound at creation, attached with MOCK_DOMAIN_REPLACE. */
export class SimulatedMockDevice extends MockDeviceBase {
  constructor(
    override readonly iommufd: SimulatedIommufd,
    readonly selftest: SelftestObject,
    hwptId: number,
  ) {
    super(iommufd, selftest.id, hwptId);
  }

  get devId(): number {
    return this.selftest.idev.id;
  }

  /** The device object it translates through (for the simulator's DMA), while it exists. */
  get deviceObject(): DeviceObject | undefined {
    return this.iommufd.context.released || this.iommufd.context.getAny(this.stdevId) !== this.selftest ? undefined : this.selftest.idev;
  }

  protected replace(ptId: number): number {
    const objects: KernelObjects = { op: 'IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE', id: this.stdevId, pt_id: ptId };
    return this.iommufd.ioctl('IOMMU_TEST_CMD', objects, () => {
      const object = this.iommufd.context.getAny(this.stdevId);
      if (!object || object.type !== 'selftest') fail('ENOENT');
      return this.iommufd.context.replace(object.idev, ptId);
    });
  }
}
