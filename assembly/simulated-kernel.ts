// The simulated kernel's read-and-clear (src/kernel/sim/kernel-memory.ts): its dirty words and
// the caller's bitmap in one shared memory, ORed 64 bytes a turn, as the kernel's iova_bitmap
// sets the caller's bits with the IOMMU's dirty bits read out. A module of its own, without
// data or globals in the memory: it is instantiated on memory the engine's arena manages, and
// may touch only the bytes it is handed.

// dst[i] |= src[i] for `bytes` bytes (a multiple of 4); src[i] = 0 after when `clear`.
export function orWords(dst: usize, src: usize, bytes: usize, clear: bool): void {
  let i: usize = 0;
  const end64 = bytes & ~(<usize>63);
  const zero = i64x2.splat(0);
  if (clear) {
    for (; i < end64; i += 64) {
      const p = dst + i;
      const q = src + i;
      const a = v128.load(q);
      const b = v128.load(q, 16);
      const c = v128.load(q, 32);
      const d = v128.load(q, 48);
      v128.store(p, v128.or(v128.load(p), a));
      v128.store(p, v128.or(v128.load(p, 16), b), 16);
      v128.store(p, v128.or(v128.load(p, 32), c), 32);
      v128.store(p, v128.or(v128.load(p, 48), d), 48);
      v128.store(q, zero);
      v128.store(q, zero, 16);
      v128.store(q, zero, 32);
      v128.store(q, zero, 48);
    }
    for (; i < bytes; i += 4) {
      store<u32>(dst + i, load<u32>(dst + i) | load<u32>(src + i));
      store<u32>(src + i, 0);
    }
    return;
  }
  for (; i < end64; i += 64) {
    const p = dst + i;
    const q = src + i;
    v128.store(p, v128.or(v128.load(p), v128.load(q)));
    v128.store(p, v128.or(v128.load(p, 16), v128.load(q, 16)), 16);
    v128.store(p, v128.or(v128.load(p, 32), v128.load(q, 32)), 32);
    v128.store(p, v128.or(v128.load(p, 48), v128.load(q, 48)), 48);
  }
  for (; i < bytes; i += 4) store<u32>(dst + i, load<u32>(dst + i) | load<u32>(src + i));
}
