import * as uapi from '../../uapi/index.js';
import { InvalidArgumentError } from '../errors.js';
import { KernelAnswerError } from './errors.js';
import type { DeviceHandle, DirtyBitmapRequest, GroupHandle, IovaRange, KernelOptions, LegacyContainerHandle, Type1Info, Type1MapRequest } from '../types.js';
import { checkBitmapHeld, checkBitmapRequest, checkRange, kernelBitmapBytes, checkU32, checkU64 } from '../validate.js';
import { LinuxDevice } from './device.js';
import { IoctlIssuer, structBytes } from './ioctl.js';
import { O_CLOEXEC, O_RDWR, type Syscalls } from './libc.js';
import { checkMemoryRange, MappingReferences } from './memory.js';

const {
  vfio_iommu_type1_info, vfio_info_cap_header, vfio_iommu_type1_info_cap_iova_range, vfio_iova_range,
  vfio_iommu_type1_info_cap_migration, vfio_iommu_type1_info_dma_avail, vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap, vfio_bitmap, vfio_iommu_type1_dirty_bitmap, vfio_iommu_type1_dirty_bitmap_get,
  vfio_group_status,
} = uapi;

/** Most capabilities a chain may hold before it is taken as corrupt (a loop). */
const MAX_CAPABILITIES = 64;

/**
 * Decodes VFIO_IOMMU_GET_INFO's answer and walks its capability chain: each header is
 * {id, version, next}, `next` an offset from the start of the info struct, 0 ending the chain.
 */
export function parseType1Info(bytes: Uint8Array): Type1Info {
  const flags = vfio_iommu_type1_info.readNumber(bytes, 'flags');
  let iovaRanges: IovaRange[] | undefined;
  let migration: Type1Info['migration'];
  let dmaAvailable: number | undefined;
  let offset = flags & uapi.VFIO_IOMMU_INFO_CAPS ? vfio_iommu_type1_info.readNumber(bytes, 'cap_offset') : 0;
  for (let count = 0; offset !== 0; count++) {
    if (count >= MAX_CAPABILITIES || offset < vfio_iommu_type1_info.size || offset + vfio_info_cap_header.size > bytes.byteLength) {
      throw new KernelAnswerError('VFIO_IOMMU_GET_INFO', `capability chain is corrupt at offset ${offset}`);
    }
    const id = vfio_info_cap_header.readNumber(bytes, 'id', offset);
    if (id === uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
      const count = vfio_iommu_type1_info_cap_iova_range.readNumber(bytes, 'nr_iovas', offset);
      const first = offset + vfio_iommu_type1_info_cap_iova_range.offsetOf('iova_ranges');
      if (first + count * vfio_iova_range.size > bytes.byteLength) {
        throw new KernelAnswerError('VFIO_IOMMU_GET_INFO', `IOVA range capability lists ${count} ranges past the end`);
      }
      iovaRanges = [];
      for (let index = 0; index < count; index++) {
        const base = first + index * vfio_iova_range.size;
        iovaRanges.push({ start: vfio_iova_range.readBigint(bytes, 'start', base), last: vfio_iova_range.readBigint(bytes, 'end', base) });
      }
    } else if (id === uapi.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION) {
      migration = {
        flags: vfio_iommu_type1_info_cap_migration.readNumber(bytes, 'flags', offset),
        pageSizeBitmap: vfio_iommu_type1_info_cap_migration.readBigint(bytes, 'pgsize_bitmap', offset),
        maxDirtyBitmapSize: vfio_iommu_type1_info_cap_migration.readBigint(bytes, 'max_dirty_bitmap_size', offset),
      };
    } else if (id === uapi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) {
      dmaAvailable = vfio_iommu_type1_info_dma_avail.readNumber(bytes, 'avail', offset);
    }
    offset = vfio_info_cap_header.readNumber(bytes, 'next', offset);
  }
  return { flags, iovaPageSizes: vfio_iommu_type1_info.readBigint(bytes, 'iova_pgsizes'), iovaRanges, migration, dmaAvailable };
}

/** `/dev/vfio/vfio`: the legacy container with the type1 IOMMU. */
export class LinuxLegacyContainer implements LegacyContainerHandle {
  readonly fd: number;
  private readonly io: IoctlIssuer;
  private readonly validate: boolean;
  private readonly mappings = new MappingReferences();
  private isClosed = false;

  constructor(sys: Syscalls, options: KernelOptions = {}, path = '/dev/vfio/vfio') {
    this.io = new IoctlIssuer(sys);
    this.validate = options.validateArguments ?? true;
    this.fd = this.io.check(sys.open(path, O_RDWR | O_CLOEXEC), 'open', { path });
  }

  get closed(): boolean {
    return this.isClosed;
  }

  getApiVersion(): number {
    return this.call('VFIO_GET_API_VERSION', uapi.VFIO_GET_API_VERSION, undefined, {});
  }

  checkExtension(extension: number): number {
    if (this.validate) checkU32('extension', extension);
    return this.call('VFIO_CHECK_EXTENSION', uapi.VFIO_CHECK_EXTENSION, extension, { extension });
  }

  setIommu(type: number): void {
    if (this.validate) checkU32('type', type);
    this.call('VFIO_SET_IOMMU', uapi.VFIO_SET_IOMMU, type, { type });
  }

  getIommuInfo(): Type1Info {
    // Ask with the bare struct; when capabilities do not fit, the kernel says the size it needs.
    let size = vfio_iommu_type1_info.size;
    for (let attempt = 0; attempt < 4; attempt++) {
      const s = vfio_iommu_type1_info.encode({ argsz: size }, size);
      this.call('VFIO_IOMMU_GET_INFO', uapi.VFIO_IOMMU_GET_INFO, s, {});
      const needed = vfio_iommu_type1_info.readNumber(s, 'argsz');
      if (needed <= size) return parseType1Info(s);
      size = needed;
    }
    throw new KernelAnswerError('VFIO_IOMMU_GET_INFO', 'the capability chain kept growing');
  }

  mapDma(request: Type1MapRequest): void {
    const offset = request.memoryOffset ?? 0n;
    let vaddr = request.memory.address + offset;
    if (this.validate) {
      checkRange('map', request.iova, request.size);
      checkU64('memoryOffset', offset);
      vaddr = checkMemoryRange(request.memory, offset, request.size);
    }
    let flags = 0;
    if (request.readable ?? true) flags |= uapi.VFIO_DMA_MAP_FLAG_READ;
    if (request.writeable ?? true) flags |= uapi.VFIO_DMA_MAP_FLAG_WRITE;
    const s = vfio_iommu_type1_dma_map.encode({ argsz: vfio_iommu_type1_dma_map.size, flags, vaddr, iova: request.iova, size: request.size });
    this.call('VFIO_IOMMU_MAP_DMA', uapi.VFIO_IOMMU_MAP_DMA, s, { iova: request.iova, size: request.size });
    this.mappings.add(0, request.iova, request.size, request.memory);
  }

  unmapDma(iova: bigint, size: bigint, dirtyBitmap?: { pageSize: bigint; bitmap: Uint8Array }): bigint {
    if (this.validate) {
      checkRange('unmap', iova, size);
      if (dirtyBitmap) checkBitmapRequest('unmap dirty bitmap', { iova, length: size, ...dirtyBitmap });
    }
    // verify_bitmap_size refuses a zero size or page size (told as a zero bitmap size) first.
    if (dirtyBitmap) checkBitmapHeld('unmap dirty bitmap', { length: size, ...dirtyBitmap }, true);
    const header = vfio_iommu_type1_dma_unmap.size;
    const s = structBytes(header + (dirtyBitmap ? vfio_bitmap.size : 0));
    const pointers = this.io.pointers();
    vfio_iommu_type1_dma_unmap.write(s, {
      argsz: s.byteLength, flags: dirtyBitmap ? uapi.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP : 0, iova, size,
    });
    if (dirtyBitmap) {
      vfio_bitmap.write(s, {
        pgsize: dirtyBitmap.pageSize, size: kernelBitmapBytes(size, dirtyBitmap.pageSize),
        data: pointers.wordPointer('unmap dirty bitmap.bitmap', dirtyBitmap.bitmap),
      }, header);
    }
    this.call('VFIO_IOMMU_UNMAP_DMA', uapi.VFIO_IOMMU_UNMAP_DMA, s, { iova, size }, pointers);
    this.mappings.remove(0, iova, size);
    return vfio_iommu_type1_dma_unmap.readBigint(s, 'size');
  }

  unmapAll(): bigint {
    const s = vfio_iommu_type1_dma_unmap.encode({ argsz: vfio_iommu_type1_dma_unmap.size, flags: uapi.VFIO_DMA_UNMAP_FLAG_ALL });
    this.call('VFIO_IOMMU_UNMAP_DMA', uapi.VFIO_IOMMU_UNMAP_DMA, s, { flags: 'VFIO_DMA_UNMAP_FLAG_ALL' });
    this.mappings.removeAll(0);
    return vfio_iommu_type1_dma_unmap.readBigint(s, 'size');
  }

  dirtyPagesStart(): void {
    this.dirtyPagesFlag(uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_START, 'VFIO_IOMMU_DIRTY_PAGES_FLAG_START');
  }

  dirtyPagesStop(): void {
    this.dirtyPagesFlag(uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, 'VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP');
  }

  dirtyPagesGetBitmap(request: DirtyBitmapRequest): void {
    if (this.validate) checkBitmapRequest('dirty pages', request);
    checkBitmapHeld('dirty pages', request, true);
    const header = vfio_iommu_type1_dirty_bitmap.size;
    const s = structBytes(header + vfio_iommu_type1_dirty_bitmap_get.size);
    const pointers = this.io.pointers();
    vfio_iommu_type1_dirty_bitmap.write(s, { argsz: s.byteLength, flags: uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP });
    vfio_iommu_type1_dirty_bitmap_get.write(s, {
      iova: request.iova, size: request.length, 'bitmap.pgsize': request.pageSize,
      'bitmap.size': kernelBitmapBytes(request.length, request.pageSize),
      'bitmap.data': pointers.wordPointer('dirty pages.bitmap', request.bitmap),
    }, header);
    this.call('VFIO_IOMMU_DIRTY_PAGES', uapi.VFIO_IOMMU_DIRTY_PAGES, s, {
      flags: 'VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP', iova: request.iova, size: request.length, pgsize: request.pageSize,
    }, pointers);
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.mappings.clear();
    this.io.check(this.io.sys.close(this.fd), 'close', { fd: this.fd });
  }

  private dirtyPagesFlag(flag: number, name: string): void {
    const s = vfio_iommu_type1_dirty_bitmap.encode({ argsz: vfio_iommu_type1_dirty_bitmap.size, flags: flag });
    this.call('VFIO_IOMMU_DIRTY_PAGES', uapi.VFIO_IOMMU_DIRTY_PAGES, s, { flags: name });
  }

  private call(name: string, request: number, arg: Uint8Array | number | undefined, objects: Record<string, number | bigint | string>, pointers?: ReturnType<IoctlIssuer['pointers']>): number {
    if (this.isClosed) throw new InvalidArgumentError('container', 'is closed');
    return this.io.call(this.fd, name, request, arg, objects, pointers);
  }
}

/** `/dev/vfio/GROUP`. */
export class LinuxGroup implements GroupHandle {
  readonly fd: number;
  private readonly io: IoctlIssuer;
  private isClosed = false;

  constructor(private readonly sys: Syscalls, readonly groupId: number, private readonly options: KernelOptions = {}) {
    checkU32('groupId', groupId);
    this.io = new IoctlIssuer(sys);
    const path = `/dev/vfio/${groupId}`;
    this.fd = this.io.check(sys.open(path, O_RDWR | O_CLOEXEC), 'open', { path });
  }

  get closed(): boolean {
    return this.isClosed;
  }

  getStatus(): { viable: boolean; containerSet: boolean } {
    const s = vfio_group_status.encode({ argsz: vfio_group_status.size });
    this.call('VFIO_GROUP_GET_STATUS', uapi.VFIO_GROUP_GET_STATUS, s, {});
    const flags = vfio_group_status.readNumber(s, 'flags');
    return { viable: (flags & uapi.VFIO_GROUP_FLAGS_VIABLE) !== 0, containerSet: (flags & uapi.VFIO_GROUP_FLAGS_CONTAINER_SET) !== 0 };
  }

  setContainer(container: LegacyContainerHandle): void {
    const fd = structBytes(4);
    new DataView(fd.buffer).setInt32(0, container.fd, true);
    this.call('VFIO_GROUP_SET_CONTAINER', uapi.VFIO_GROUP_SET_CONTAINER, fd, { container_fd: container.fd });
  }

  unsetContainer(): void {
    this.call('VFIO_GROUP_UNSET_CONTAINER', uapi.VFIO_GROUP_UNSET_CONTAINER, undefined, {});
  }

  openDevice(name: string): DeviceHandle {
    if (typeof name !== 'string' || name.length === 0) throw new InvalidArgumentError('name', 'must be the device name, e.g. 0000:00:03.0');
    const fd = this.call('VFIO_GROUP_GET_DEVICE_FD', uapi.VFIO_GROUP_GET_DEVICE_FD, name, { name });
    return new LinuxDevice(this.sys, name, 'group', fd, this.options);
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.io.check(this.sys.close(this.fd), 'close', { fd: this.fd });
  }

  private call(name: string, request: number, arg: Uint8Array | string | undefined, objects: Record<string, number | bigint | string>): number {
    if (this.isClosed) throw new InvalidArgumentError('group', `${this.groupId} is closed`);
    return this.io.call(this.fd, name, request, arg, { group: this.groupId, ...objects });
  }
}
