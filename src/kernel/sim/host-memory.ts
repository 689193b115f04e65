// Host memory on the simulated kernel: addresses from a simulated address space, never real
// allocations, so a 1 TiB guest costs nothing. A mapping holds the memory (release() refuses
// while any IOAS area or type1 mapping uses it), as the real kernel pins the pages.
import type { HostMemory } from '../types.js';
import { InvalidArgumentError } from '../errors.js';
import { checkView } from '../validate.js';

/** The kernel's PAGE_SIZE (x86-64). */
export const PAGE_SIZE = 4096n;
const KIB = 1024n;
const MIB = 1024n * KIB;
const GIB = 1024n * MIB;

/** Backing page sizes a simulated host memory can have: small pages, or hugetlbfs-like 2 MiB and 1 GiB pages. */
export const HOST_PAGE_SIZES = [4n * KIB, 2n * MIB, 1n * GIB] as const;

export class SimulatedHostMemory implements HostMemory {
  /** The memory's content, when it was allocated with content (what a DMA write stores into). */
  private readonly content: Uint8Array | undefined;
  private releasedFlag = false;
  /** Live mappings (IOAS areas, type1 DMA mappings) using this memory. */
  mappings = 0;

  constructor(
    readonly owner: object,
    readonly address: bigint,
    readonly length: bigint,
    /** Physically contiguous run size: the largest IOPTE the IOMMU can use for this memory. */
    readonly backingPageSize: bigint,
    private readonly onRelease: (memory: SimulatedHostMemory) => void,
    content = false,
  ) {
    this.content = content ? new Uint8Array(Number(length)) : undefined;
  }

  /** Undefined once released, as on the Linux kernel (whose views are gone with the munmap). */
  get bytes(): Uint8Array | undefined {
    return this.releasedFlag ? undefined : this.content;
  }

  view(offset = 0n, length?: bigint): Uint8Array {
    const { start, size } = checkView(this, offset, length);
    if (!this.content) throw new InvalidArgumentError('memory', 'has no bytes: it was allocated without content');
    return this.content.subarray(Number(start), Number(start + size));
  }

  get released(): boolean {
    return this.releasedFlag;
  }

  release(): void {
    if (this.releasedFlag) return;
    if (this.mappings > 0) {
      throw new InvalidArgumentError(
        'memory',
        `0x${this.address.toString(16)} (+0x${this.length.toString(16)}) is still used by ${this.mappings} mapping(s); unmap it first`,
      );
    }
    this.releasedFlag = true;
    this.onRelease(this);
  }

  /** True when [offset, offset + length) lies inside this live memory. */
  covers(offset: bigint, length: bigint): boolean {
    return !this.releasedFlag && offset >= 0n && length >= 0n && offset + length <= this.length;
  }
}

/**
 * A bump allocator over a simulated address space starting at 64 GiB. Each allocation is aligned
 * to its backing page size and at least 2 MiB (as a THP-friendly mmap would be), and never reuses
 * addresses, so a stale address is always detectable.
 */
export class HostAddressSpace {
  private next = 64n * GIB;
  private readonly live = new Set<SimulatedHostMemory>();

  constructor(private readonly owner: object) {}

  allocate(length: bigint, backingPageSize: bigint, content = false): SimulatedHostMemory {
    const alignment = backingPageSize > 2n * MIB ? backingPageSize : 2n * MIB;
    const address = (this.next + alignment - 1n) & ~(alignment - 1n);
    const rounded = (length + backingPageSize - 1n) & ~(backingPageSize - 1n);
    this.next = address + rounded + 2n * MIB; // a guard gap: adjacent allocations are never contiguous
    const memory = new SimulatedHostMemory(this.owner, address, length, backingPageSize, (released) => this.live.delete(released), content);
    this.live.add(memory);
    return memory;
  }

  /** Memory not yet released. */
  get held(): readonly SimulatedHostMemory[] {
    return [...this.live];
  }
}
