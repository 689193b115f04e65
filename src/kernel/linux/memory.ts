import { InvalidArgumentError, KernelError } from '../errors.js';
import type { HostMemory } from '../types.js';
import { checkLength, checkView, MAXIMUM_VIEW_BYTES } from '../validate.js';
import { IoctlIssuer } from './ioctl.js';
import { MADV_DONTFORK, MAP_ANONYMOUS, MAP_FAILED, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE, type Syscalls } from './libc.js';

/**
 * Anonymous memory from mmap, for DMA mappings. Mappings take a reference (`retain`) and give
 * it back when unmapped; release() refuses while any mapping holds it, so the kernel never
 * keeps an address of memory the library has given back.
 */
export class MmapMemory implements HostMemory {
  readonly address: bigint;
  readonly length: bigint;
  private whole: Uint8Array | undefined;
  private references = 0;
  private freed = false;

  constructor(private readonly sys: Syscalls, length: bigint) {
    this.length = checkLength('length', length);
    const address = sys.mmap(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0n);
    if (address === MAP_FAILED) new IoctlIssuer(sys).check(-1, 'mmap', { length });
    // DMA memory must not be copy-on-write in a child: after fork() the parent's next write
    // would land in a new page while the device still writes the pinned old one (QEMU does
    // the same for VFIO RAM, qemu_madvise(QEMU_MADV_DONTFORK)).
    if (sys.madvise(address, length, MADV_DONTFORK) < 0) {
      const errno = sys.errno();
      sys.munmap(address, length);
      throw new KernelError('madvise', errno, { advice: 'MADV_DONTFORK', length });
    }
    this.address = address;
  }

  get bytes(): Uint8Array | undefined {
    if (this.freed) return undefined;
    // A view is only possible below 2 GiB (the largest typed array Node 20 makes).
    if (!this.whole && this.length <= MAXIMUM_VIEW_BYTES) this.whole = this.sys.view(this.address, Number(this.length));
    return this.whole;
  }

  /**
   * koffi's views are external ArrayBuffers that Node 20 will not detach (structuredClone and
   * postMessage with a transfer list copy them instead), so release() cannot make an old view
   * throw: this is checked on each call instead, and a view is valid until release().
   */
  view(offset = 0n, length?: bigint): Uint8Array {
    const { start, size } = checkView(this, offset, length);
    const whole = this.bytes;
    return whole ? whole.subarray(Number(start), Number(start + size)) : this.sys.view(this.address + start, Number(size));
  }

  get released(): boolean {
    return this.freed;
  }

  get mappingCount(): number {
    return this.references;
  }

  /** Called by a handle when a mapping starts using this memory. */
  retain(): void {
    if (this.freed) throw new InvalidArgumentError('memory', 'has been released and cannot be mapped');
    this.references += 1;
  }

  /** Called by a handle when a mapping that used this memory is gone. */
  drop(): void {
    this.references = Math.max(0, this.references - 1);
  }

  release(): void {
    if (this.freed) return;
    if (this.references > 0) {
      throw new InvalidArgumentError('memory', `is still mapped by ${this.references} mapping(s); unmap them first`);
    }
    this.whole = undefined;
    new IoctlIssuer(this.sys).check(this.sys.munmap(this.address, this.length), 'munmap', { address: this.address });
    this.freed = true;
  }
}

/** Tracks which memory each mapping of an IOAS or container holds, by IOVA. */
export class MappingReferences {
  private readonly byOwner = new Map<number, { iova: bigint; length: bigint; memory: HostMemory }[]>();

  add(owner: number, iova: bigint, length: bigint, memory: HostMemory): void {
    if (memory instanceof MmapMemory) memory.retain();
    let list = this.byOwner.get(owner);
    if (!list) this.byOwner.set(owner, (list = []));
    list.push({ iova, length, memory });
  }

  /** Drops the mappings that lie inside [iova, iova + length). */
  remove(owner: number, iova: bigint, length: bigint): void {
    const list = this.byOwner.get(owner);
    if (!list) return;
    const end = iova + length;
    const kept = list.filter((m) => {
      const inside = m.iova >= iova && m.iova + m.length <= end;
      if (inside && m.memory instanceof MmapMemory) m.memory.drop();
      return !inside;
    });
    this.byOwner.set(owner, kept);
  }

  removeAll(owner: number): void {
    for (const m of this.byOwner.get(owner) ?? []) if (m.memory instanceof MmapMemory) m.memory.drop();
    this.byOwner.delete(owner);
  }

  memoryAt(owner: number, iova: bigint): HostMemory | undefined {
    return this.byOwner.get(owner)?.find((m) => iova >= m.iova && iova < m.iova + m.length)?.memory;
  }

  clear(): void {
    for (const owner of [...this.byOwner.keys()]) this.removeAll(owner);
  }
}

export function checkMemoryRange(memory: HostMemory, offset: bigint, length: bigint): bigint {
  if (memory.released) throw new InvalidArgumentError('memory', 'has been released and cannot be mapped');
  if (offset < 0n || offset + length > memory.length) {
    throw new InvalidArgumentError(
      'memoryOffset',
      `offset 0x${offset.toString(16)} + length 0x${length.toString(16)} does not fit the memory's 0x${memory.length.toString(16)} bytes`,
    );
  }
  return memory.address + offset;
}
