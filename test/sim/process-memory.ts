// A process memory as the simulated kernel sees one (Kernel.shareProcessMemory): a shared
// WebAssembly memory with a bump allocator that counts the blocks still out.
export function processMemory(bytes = 64 << 20) {
  const pages = bytes >>> 16;
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  let next = 1 << 16;
  const live = new Set<number>();
  return {
    memory,
    live,
    allocate(size: number) {
      const offset = next;
      if (offset + size > memory.buffer.byteLength) return undefined;
      next = Math.ceil((offset + size) / 64) * 64;
      live.add(offset);
      return { offset, free: () => void live.delete(offset) };
    },
    /** A zeroed byte view of `size` bytes in the memory (a caller's bitmap). */
    bytes(size: number): Uint8Array {
      const block = this.allocate(size)!;
      return new Uint8Array(memory.buffer, block.offset, size);
    },
  };
}
