// Where the simulated kernel keeps the dirty words its ioctls copy out (IOMMU dirty bits, device
// DMA logs). By default in its own typed arrays. When the process shares the memory its bitmaps
// live in (Kernel.shareProcessMemory: DirtySync shares the engine's), new chunks are placed in
// pages of that memory, so a read-and-clear into a caller's bitmap there is one WASM pass over
// one memory (assembly/simulated-kernel.ts), at the speed the real kernel's pass over physical
// memory has; a JS loop between two memories is about three times slower. When the memory goes
// away its chunks are copied back into the kernel's own arrays first: nothing is lost either way.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ProcessMemory, ProcessMemoryBlock } from '../types.js';

type OrWords = (dst: number, src: number, bytes: number, clear: number) => void;

/** Something holding chunks in a shared region, to be moved out when the region goes. */
export interface ChunkOwner {
  evict(region: SharedRegion): void;
}

/** One shared process memory, as the kernel uses it. */
export class SharedRegion {
  /** Bitmaps holding chunks here. */
  readonly owners = new Set<ChunkOwner>();
  /** Chunks placed here over the region's life, and those still here (for inspection and tests). */
  chunksPlaced = 0;
  liveChunks = 0;
  /** Read-and-clear passes done in WASM over this memory (for inspection and tests). */
  wasmPasses = 0;
  released = false;

  /** @internal KernelMemory.share makes them. */
  constructor(readonly process: ProcessMemory, private readonly orWordsExport: OrWords) {}

  /** True when `view` is a view of this memory as it is now (a view from before a grow is not). */
  holds(view: ArrayBufferView): boolean {
    return !this.released && view.buffer === this.process.memory.buffer;
  }

  /** dst[i] |= src[i] over `bytes` (a multiple of 4), clearing src when `clear`; byte offsets in the memory. */
  orWords(dst: number, src: number, bytes: number, clear: boolean): void {
    this.wasmPasses++;
    this.orWordsExport(dst, src, bytes, clear ? 1 : 0);
  }
}

/** A chunk placed in a shared region: its words and the block to give back. */
export interface SharedChunk {
  readonly region: SharedRegion;
  readonly block: ProcessMemoryBlock;
  readonly words: Uint32Array;
}

let compiled: WebAssembly.Module | undefined;

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${import.meta.url}`);
    dir = parent;
  }
}

function kernelModule(): WebAssembly.Module {
  if (compiled) return compiled;
  const path = join(packageRoot(), 'build', 'simulated-kernel.wasm');
  if (!existsSync(path)) throw new Error(`the simulated kernel's WASM module is missing at ${path}: run \`npm run build:wasm\``);
  compiled = new WebAssembly.Module(readFileSync(path));
  return compiled;
}

export class KernelMemory {
  /** Shared regions, the newest last: new chunks go to the newest. */
  private readonly regions: SharedRegion[] = [];

  /** The region new chunks go to, if any. */
  get current(): SharedRegion | undefined {
    return this.regions[this.regions.length - 1];
  }

  share(process: ProcessMemory): () => void {
    const instance = new WebAssembly.Instance(kernelModule(), { env: { memory: process.memory, abort: () => undefined } });
    const region = new SharedRegion(process, instance.exports['orWords'] as unknown as OrWords);
    this.regions.push(region);
    return () => this.release(region);
  }

  /** Moves every chunk out of the region, then forgets it. Idempotent. */
  private release(region: SharedRegion): void {
    const index = this.regions.indexOf(region);
    if (index < 0) return;
    for (const owner of [...region.owners]) owner.evict(region);
    region.owners.clear();
    region.released = true;
    this.regions.splice(index, 1);
  }

  /** A zeroed chunk of `words` u32 words in the newest region, or undefined (then the owner uses its own array). */
  allocate(owner: ChunkOwner, words: number): SharedChunk | undefined {
    const region = this.current;
    if (!region) return undefined;
    const bytes = words * 4;
    let given: ProcessMemoryBlock | undefined;
    try {
      given = region.process.allocate(bytes);
    } catch {
      // The lender's failure is not the DMA's: the chunk is kept in the kernel's own array.
      return undefined;
    }
    if (!given) return undefined;
    const offset: unknown = given.offset;
    if (typeof offset !== 'number' || !Number.isInteger(offset) || offset % 4 !== 0 || offset < 0 || offset + bytes > region.process.memory.buffer.byteLength) {
      // Not a block of the memory: never written to, and given back.
      try {
        given.free();
      } catch {
        // Nothing more to do with a lender that fails twice.
      }
      return undefined;
    }
    region.owners.add(owner);
    region.chunksPlaced++;
    region.liveChunks++;
    let freed = false;
    const block: ProcessMemoryBlock = {
      offset: given.offset,
      free: () => {
        if (freed) return;
        freed = true;
        region.liveChunks--;
        given.free();
      },
    };
    return { region, block, words: new Uint32Array(region.process.memory.buffer, block.offset, words) };
  }
}
