// Byte lookup tables, built at init into an area the host reserved: kernels
// keep no static data because many instances share one memory.
import { setTables, tables } from "./state";

export const TABLE_BYTES: u32 = 8192;
// Positions of the set bits of each byte value, 8 bytes per value (scan).
export const POSITIONS: usize = 0;
// Each bit of a byte widened to 2, 4 or 8 bits; of a nibble to 16; of two bits to 32 (resample).
export const EXPAND_2: usize = 2048; // 256 x u16
export const EXPAND_4: usize = 2560; // 256 x u32
export const EXPAND_8: usize = 3584; // 256 x u64
export const EXPAND_16: usize = 5632; // 16 x u64
export const EXPAND_32: usize = 5760; // 4 x u64

function widen(value: u32, bits: u32, width: u32): u64 {
  let result: u64 = 0;
  const fill: u64 = width >= 64 ? <u64>-1 : (<u64>1 << <u64>width) - 1;
  for (let i: u32 = 0; i < bits; i++) {
    if ((value >>> i) & 1) result |= fill << <u64>(i * width);
  }
  return result;
}

export function buildTables(base: usize): void {
  for (let b: u32 = 0; b < 256; b++) {
    let k: u32 = 0;
    for (let i: u32 = 0; i < 8; i++) store<u8>(base + POSITIONS + (<usize>b << 3) + i, 0);
    for (let i: u32 = 0; i < 8; i++) {
      if ((b >>> i) & 1) {
        store<u8>(base + POSITIONS + (<usize>b << 3) + k, <u8>i);
        k++;
      }
    }
    store<u16>(base + EXPAND_2 + (<usize>b << 1), <u16>widen(b, 8, 2));
    store<u32>(base + EXPAND_4 + (<usize>b << 2), <u32>widen(b, 8, 4));
    store<u64>(base + EXPAND_8 + (<usize>b << 3), widen(b, 8, 8));
  }
  for (let b: u32 = 0; b < 16; b++) store<u64>(base + EXPAND_16 + (<usize>b << 3), widen(b, 4, 16));
  for (let b: u32 = 0; b < 4; b++) store<u64>(base + EXPAND_32 + (<usize>b << 3), widen(b, 2, 32));
  setTables(base);
}

export function tableBytes(): u32 {
  return TABLE_BYTES;
}

// Each bit of the low (64 >> log2Ratio) bits of g widened to 2^log2Ratio bits.
@inline export function expandBits(g: u64, log2Ratio: u32): u64 {
  const t = tables;
  if (log2Ratio == 1) {
    return <u64>load<u16>(t + EXPAND_2 + (<usize>(g & 255) << 1))
      | (<u64>load<u16>(t + EXPAND_2 + (<usize>((g >>> 8) & 255) << 1)) << 16)
      | (<u64>load<u16>(t + EXPAND_2 + (<usize>((g >>> 16) & 255) << 1)) << 32)
      | (<u64>load<u16>(t + EXPAND_2 + (<usize>((g >>> 24) & 255) << 1)) << 48);
  }
  if (log2Ratio == 2) {
    return <u64>load<u32>(t + EXPAND_4 + (<usize>(g & 255) << 2))
      | (<u64>load<u32>(t + EXPAND_4 + (<usize>((g >>> 8) & 255) << 2)) << 32);
  }
  if (log2Ratio == 3) return load<u64>(t + EXPAND_8 + (<usize>(g & 255) << 3));
  if (log2Ratio == 4) return load<u64>(t + EXPAND_16 + (<usize>(g & 15) << 3));
  if (log2Ratio == 5) return load<u64>(t + EXPAND_32 + (<usize>(g & 3) << 3));
  return g;
}
