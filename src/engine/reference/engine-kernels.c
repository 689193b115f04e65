/*
 * The engine's kernels in C, for the benchmark's native reference: the same
 * algorithms as the AssemblyScript kernels in assembly/, written as plain C so that the compiler is free
 * to vectorize them for the target it is given (-march=native or
 * -march=x86-64-v2). Built and run by `vfio-iommufd bench engine` when gcc is
 * present.
 *
 *   engine-bench KERNEL SIZE_BYTES TIME_MS SOURCE_A SOURCE_B
 *     (KERNEL: merge, merge-count, popcount, scan-indices, scan-runs,
 *      scan-runs-per-bit, merge-count-scan, resample)
 *   engine-bench bandwidth SIZE_BYTES TIME_MS - -
 *
 * prints one JSON line: {"kernel":..., "medianNs":..., "samples":..., "check":...}
 * where check is a result (a count) the caller compares with the WASM one.
 * SOURCE_A and SOURCE_B are files holding the bitmaps the TypeScript side
 * generated, so both sides work on the same bits.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __BMI__
#include <immintrin.h>
#endif

typedef uint64_t u64;
typedef uint32_t u32;

/* Trailing zeros, 64 for 0 (as WASM's i64.ctz): tzcnt where the target has BMI, so the run
 * scan's unconditional stores stay branch-free (gcc turns the portable form into branches). */
static inline u32 tz64(u64 x) {
#ifdef __BMI__
  return (u32)_tzcnt_u64(x);
#else
  return x ? (u32)__builtin_ctzll(x) : 64;
#endif
}

#define BLOCK_WORDS 512
#define INDEX_SLACK 72
#define OUTPUT_ENTRIES (1u << 20)

static unsigned char positions[256][8];
static u64 expand16[16];

static void build_tables(void) {
  for (int b = 0; b < 256; b++) {
    int k = 0;
    memset(positions[b], 0, 8);
    for (int i = 0; i < 8; i++)
      if (b >> i & 1) positions[b][k++] = (unsigned char)i;
  }
  for (int b = 0; b < 16; b++) {
    u64 v = 0;
    for (int i = 0; i < 4; i++)
      if (b >> i & 1) v |= 0xffffULL << (16 * i);
    expand16[b] = v;
  }
}

/* ---- merge ---- */

static void merge2(u64 *restrict d, const u64 *restrict a, const u64 *restrict b, size_t words) {
  for (size_t i = 0; i < words; i++) d[i] |= a[i] | b[i];
}

static u64 merge2_count(u64 *restrict d, const u64 *restrict a, const u64 *restrict b, size_t words) {
  u64 c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  size_t i = 0;
  for (; i + 4 <= words; i += 4) {
    u64 o0 = d[i], o1 = d[i + 1], o2 = d[i + 2], o3 = d[i + 3];
    u64 s0 = a[i] | b[i], s1 = a[i + 1] | b[i + 1], s2 = a[i + 2] | b[i + 2], s3 = a[i + 3] | b[i + 3];
    d[i] = o0 | s0; d[i + 1] = o1 | s1; d[i + 2] = o2 | s2; d[i + 3] = o3 | s3;
    c0 += __builtin_popcountll(s0 & ~o0);
    c1 += __builtin_popcountll(s1 & ~o1);
    c2 += __builtin_popcountll(s2 & ~o2);
    c3 += __builtin_popcountll(s3 & ~o3);
  }
  for (; i < words; i++) {
    u64 o = d[i], s = a[i] | b[i];
    d[i] = o | s;
    c0 += __builtin_popcountll(s & ~o);
  }
  return c0 + c1 + c2 + c3;
}

static u64 merge1_count(u64 *restrict d, const u64 *restrict a, size_t words) {
  u64 c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  size_t i = 0;
  for (; i + 4 <= words; i += 4) {
    u64 o0 = d[i], o1 = d[i + 1], o2 = d[i + 2], o3 = d[i + 3];
    u64 s0 = a[i], s1 = a[i + 1], s2 = a[i + 2], s3 = a[i + 3];
    d[i] = o0 | s0; d[i + 1] = o1 | s1; d[i + 2] = o2 | s2; d[i + 3] = o3 | s3;
    c0 += __builtin_popcountll(s0 & ~o0);
    c1 += __builtin_popcountll(s1 & ~o1);
    c2 += __builtin_popcountll(s2 & ~o2);
    c3 += __builtin_popcountll(s3 & ~o3);
  }
  for (; i < words; i++) {
    u64 o = d[i], s = a[i];
    d[i] = o | s;
    c0 += __builtin_popcountll(s & ~o);
  }
  return c0 + c1 + c2 + c3;
}

static u64 popcount_words(const u64 *p, size_t words) {
  u64 c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  size_t i = 0;
  for (; i + 4 <= words; i += 4) {
    c0 += __builtin_popcountll(p[i]);
    c1 += __builtin_popcountll(p[i + 1]);
    c2 += __builtin_popcountll(p[i + 2]);
    c3 += __builtin_popcountll(p[i + 3]);
  }
  for (; i < words; i++) c0 += __builtin_popcountll(p[i]);
  return c0 + c1 + c2 + c3;
}

/* ---- scan to indices: 4 or 8 unconditional stores, or the byte table ---- */

static inline u32 emit_word(u64 x, u32 base, u32 *out, u32 n) {
  u32 count = (u32)__builtin_popcountll(x);
  u32 *p = out + n;
  if (count <= 4) {
    for (int k = 0; k < 4; k++) { p[k] = base + tz64(x); x &= x - 1; }
  } else if (count <= 8) {
    for (int k = 0; k < 8; k++) { p[k] = base + tz64(x); x &= x - 1; }
  } else {
    for (int i = 0; i < 8; i++) {
      unsigned byte = (unsigned)(x >> (8 * i)) & 255;
      for (int k = 0; k < 8; k++) p[k] = base + 8 * i + positions[byte][k];
      p += __builtin_popcount(byte);
    }
  }
  return n + count;
}

/* Indices of set bits in words [0, words), resumable at word `*cursor`. */
static u32 scan_indices(const u64 *bm, size_t words, size_t *cursor, u32 *out, u32 capacity) {
  u32 n = 0;
  size_t w = *cursor;
  while (w < words) {
    size_t block = words - w < 64 ? words - w : 64;
    u64 nonzero = 0;
    for (size_t i = 0; i < block; i++) nonzero |= (u64)(bm[w + i] != 0) << i;
    while (nonzero) {
      unsigned j = (unsigned)__builtin_ctzll(nonzero);
      if (capacity - n < INDEX_SLACK) { *cursor = w + j; return n; }
      n = emit_word(bm[w + j], (u32)((w + j) << 6), out, n);
      nonzero &= nonzero - 1;
    }
    w += block;
  }
  *cursor = words;
  return n;
}

/* ---- scan to runs ---- */

struct runs { int open; u32 start; u32 count; u32 capacity; u32 *out; u32 stop; };

static inline int emit_run(struct runs *r, u32 start, u32 end) {
  if (r->count >= r->capacity) return 0;
  r->out[2 * r->count] = start;
  r->out[2 * r->count + 1] = end - start;
  r->count++;
  return 1;
}

static inline int runs_word(struct runs *r, u64 x, u32 base) {
  if (r->open) {
    if (x == ~0ULL) return 1;
    unsigned z = (unsigned)__builtin_ctzll(~x);
    r->open = 0;
    if (!emit_run(r, r->start, base + z)) { r->stop = r->start; return 0; }
    x &= ~0ULL << z;
  }
  while (x) {
    unsigned s = (unsigned)__builtin_ctzll(x);
    u64 rest = ~x & (~0ULL << s);
    if (!rest) { r->open = 1; r->start = base + s; break; }
    unsigned e = (unsigned)__builtin_ctzll(rest);
    if (!emit_run(r, base + s, base + e)) { r->stop = base + s; return 0; }
    x &= ~0ULL << e;
  }
  return 1;
}

static inline int close_run(struct runs *r, size_t previous) {
  if (!r->open) return 1;
  r->open = 0;
  if (!emit_run(r, r->start, (u32)((previous + 1) << 6))) { r->stop = r->start; return 0; }
  return 1;
}

/* Runs in words [first, last_excl), the first word masked (peeled off); the
 * others by blocks of 64 with a mask of their nonzero words, as the index scan.
 * Word by word, as assembly/scan.ts: with c the last bit of the previous word,
 * starts are x & ~(x << 1 | c) and ends (one past) ~x & (x << 1 | c), written
 * with ctz loops whose first four stores are unconditional; an end writes the
 * length of the oldest open run from the start already in its slot. Near the
 * end of the output (fewer than RUN_SLACK free) the run-by-run path takes over. */
#define RUN_SLACK 34

static int runs_in_words(struct runs *r, const u64 *bm, size_t first, size_t last_excl, u64 head_mask) {
  if (first >= last_excl) return 1;
  if (!runs_word(r, bm[first] & head_mask, (u32)(first << 6))) return 0;
  size_t previous = first;
  u32 *out = r->out;
  for (size_t w = first + 1; w < last_excl; w += 64) {
    size_t block = last_excl - w < 64 ? last_excl - w : 64;
    u64 nonzero = 0;
    for (size_t i = 0; i < block; i++) nonzero |= (u64)(bm[w + i] != 0) << i;
    if (nonzero && r->capacity - r->count >= RUN_SLACK) {
      u32 m = r->count, n = m;
      u64 carry = 0;
      if (r->open) {
        if (w != previous + 1) {
          emit_run(r, r->start, (u32)((previous + 1) << 6));
          r->open = 0;
          m = n = r->count;
        } else {
          out[2 * m] = r->start;
          n = m + 1;
          carry = 1;
        }
      }
      while (nonzero && r->capacity - n >= RUN_SLACK) {
        size_t word = w + (size_t)__builtin_ctzll(nonzero);
        if (word != previous + 1 && carry) {
          out[2 * m + 1] = (u32)((previous + 1) << 6) - out[2 * m];
          m++;
          carry = 0;
        }
        u64 x = bm[word];
        u64 before = x << 1 | carry;
        u64 starts = x & ~before, ends = ~x & before;
        u32 base = (u32)(word << 6);
        carry = x >> 63;
        u32 start_count = (u32)__builtin_popcountll(starts), end_count = (u32)__builtin_popcountll(ends);
        u32 *p = out + 2 * n;
        for (int k = 0; k < 4; k++) { p[2 * k] = base + tz64(starts); starts &= starts - 1; }
        for (int k = 4; starts; k++) { p[2 * k] = base + (u32)__builtin_ctzll(starts); starts &= starts - 1; }
        n += start_count;
        u32 *q = out + 2 * m;
        for (int k = 0; k < 4; k++) { q[2 * k + 1] = base + tz64(ends) - q[2 * k]; ends &= ends - 1; }
        for (int k = 4; ends; k++) { q[2 * k + 1] = base + (u32)__builtin_ctzll(ends) - q[2 * k]; ends &= ends - 1; }
        m += end_count;
        previous = word;
        nonzero &= nonzero - 1;
      }
      r->count = m;
      r->open = n > m;
      if (r->open) r->start = out[2 * m];
    }
    while (nonzero) {
      size_t word = w + (size_t)__builtin_ctzll(nonzero);
      if (word != previous + 1 && !close_run(r, previous)) return 0;
      if (!runs_word(r, bm[word], (u32)(word << 6))) return 0;
      previous = word;
      nonzero &= nonzero - 1;
    }
  }
  if (last_excl != previous + 1 && !close_run(r, previous)) return 0;
  return 1;
}

/* The peer reference: runs found bit by bit, skipping zero words, the class of
 * QEMU's find_next_bit / find_next_zero_bit loop and cloud-hypervisor's
 * from_dirty_bitmap. Not resumable: the output holds every run of the bench. */
static u32 scan_runs_per_bit(const u64 *bm, size_t words, u32 *out, u32 capacity) {
  u32 count = 0;
  size_t bits = words << 6;
  size_t i = 0;
  while (i < bits) {
    if (bm[i >> 6] == 0) { i = (i | 63) + 1; continue; }
    if (!(bm[i >> 6] >> (i & 63) & 1)) { i++; continue; }
    size_t start = i;
    while (i < bits && (bm[i >> 6] >> (i & 63) & 1)) i++;
    /* The output wraps (capacity is a power of two): every run is stored, as the other scans do. */
    u32 slot = count & (capacity - 1);
    out[2 * slot] = (u32)start;
    out[2 * slot + 1] = (u32)(i - start);
    count++;
  }
  return count;
}

/* Runs from bit `*cursor` (a run start, or 0) to the end; resumable. */
static u32 scan_runs(const u64 *bm, size_t words, u32 *cursor, u32 *out, u32 capacity) {
  struct runs r = { 0, 0, 0, capacity, out, 0 };
  u32 end = (u32)(words << 6);
  if (!runs_in_words(&r, bm, *cursor >> 6, words, ~0ULL << (*cursor & 63))) { *cursor = r.stop; return r.count; }
  if (r.open && !emit_run(&r, r.start, end)) { *cursor = r.start; return r.count; }
  *cursor = end;
  return r.count;
}

/* ---- fused merge + count + scan to runs (one source), per block ---- */

static u64 merge_count_scan(u64 *d, const u64 *a, size_t words, u32 *out, u32 capacity, u32 *runs_written, u32 *cursor) {
  struct runs r = { 0, 0, 0, capacity, out, 0 };
  int scanning = 1;
  u64 count = 0;
  for (size_t w = 0; w < words; w += BLOCK_WORDS) {
    size_t n = words - w < BLOCK_WORDS ? words - w : BLOCK_WORDS;
    count += merge1_count(d + w, a + w, n);
    if (scanning) scanning = runs_in_words(&r, d, w, w + n, ~0ULL);
  }
  if (scanning && r.open && !emit_run(&r, r.start, (u32)(words << 6))) {
    scanning = 0;
    r.stop = r.start;
  }
  *runs_written = r.count;
  *cursor = scanning ? (u32)(words << 6) : r.stop;
  return count;
}

/* ---- resample: a coarse source (r = 16) sets the fine pages it covers ---- */

static inline u64 fetch_bits(const u64 *src, int64_t pos, int64_t start, int64_t end) {
  if (pos >= end || pos + 64 <= start) return 0;
  u64 mask = ~0ULL;
  if (pos < start) mask = ~0ULL << (start - pos);
  if (pos + 64 > end) mask &= (end - pos) >= 64 ? ~0ULL : ((1ULL << (end - pos)) - 1);
  u64 v;
  if (pos >= 0) {
    size_t w = (size_t)(pos >> 6);
    unsigned sh = (unsigned)(pos & 63);
    v = src[w] >> sh;
    if (sh && (int64_t)((w + 1) << 6) < end) v |= src[w + 1] << (64 - sh);
  } else {
    v = src[0] << (-pos);
  }
  return v & mask;
}

static u64 resample16(u64 *dst, size_t dst_words, const u64 *src, int64_t src_bits, int64_t delta) {
  u64 count = 0;
  /* The phase is the same for every destination word; the source advances 4
   * bits a word. The 5 bits a word needs index a table built for the phase. */
  int64_t s = (0 - delta) >> 4;
  unsigned phase = (unsigned)((0 - delta) & 15);
  u64 carry = phase ? ~0ULL << (64 - phase) : 0;
  u64 table[32];
  for (unsigned i = 0; i < 32; i++) table[i] = (expand16[i & 15] >> phase) | (i & 16 ? carry : 0);
  for (size_t j = 0; j < dst_words; j++, s += 4) {
    /* Inside the source, one unaligned load covers the 5 bits needed. */
    u64 g;
    if (s >= 0 && s + 64 <= src_bits) memcpy(&g, (const char *)src + (s >> 3), 8), g >>= (s & 7);
    else g = fetch_bits(src, s, 0, src_bits);
    /* As the engine does: a zero load (at least 57 source bits) leaves 56 / 4 words untouched. */
    if (!g) {
      size_t n = 56 / 4 - 1;
      if (n > dst_words - j - 1) n = dst_words - j - 1;
      j += n;
      s += 4 * (int64_t)n;
      continue;
    }
    u64 m = table[g & 31];
    if (!m) continue;
    u64 old = dst[j];
    dst[j] = old | m;
    count += __builtin_popcountll(m & ~old);
  }
  return count;
}

static void load(const char *path, void *into, size_t bytes) {
  FILE *f = fopen(path, "rb");
  if (!f || fread(into, 1, bytes, f) != bytes) {
    fprintf(stderr, "cannot read %zu bytes from %s\n", bytes, path);
    exit(2);
  }
  fclose(f);
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static int compare_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void *alloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 64)) { perror("posix_memalign"); exit(2); }
  memset(p, 0, bytes);
  return p;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s KERNEL SIZE_BYTES TIME_MS SOURCE_A SOURCE_B\n", argv[0]);
    return 2;
  }
  const char *kernel = argv[1];
  size_t bytes = strtoull(argv[2], NULL, 10);
  double budget = atof(argv[3]) * 1e6;
  size_t words = bytes / 8;
  build_tables();

  u64 *d = alloc(bytes), *a = alloc(bytes), *b = alloc(bytes);
  u32 *out = alloc((size_t)OUTPUT_ENTRIES * 8);
  volatile u64 sink = 0;
  u64 check = 0;
  int bandwidth = strcmp(kernel, "bandwidth") == 0;
  if (!bandwidth) {
    load(argv[4], a, bytes);
    load(argv[5], b, bytes);
  } else {
    memset(a, 1, bytes);
    memset(d, 1, bytes);
  }

  double samples[100000];
  int count = 0;
  double total = 0;
  double read_ns = 0, rmw_ns = 0;
  /* One untimed run first: page faults and caches, as the WASM side warms up. */
  for (int warm = 1; count < 100000 && (warm || total < budget || count < 5); warm = 0) {
    double t0 = now_ns();
    if (bandwidth) {
      /* read: sum all words; rmw: XOR a constant into every word. */
      u64 s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (size_t i = 0; i + 4 <= words; i += 4) { s0 += a[i]; s1 += a[i + 1]; s2 += a[i + 2]; s3 += a[i + 3]; }
      sink += s0 + s1 + s2 + s3;
      double t1 = now_ns();
      for (size_t i = 0; i < words; i++) d[i] ^= 0x5555555555555555ULL;
      double t2 = now_ns();
      if (!warm) { read_ns += t1 - t0; rmw_ns += t2 - t1; }
    } else if (!strcmp(kernel, "merge")) {
      merge2(d, a, b, words);
    } else if (!strcmp(kernel, "merge-count")) {
      sink += merge2_count(d, a, b, words);
    } else if (!strcmp(kernel, "popcount")) {
      check = popcount_words(a, words);
    } else if (!strcmp(kernel, "scan-indices")) {
      size_t cursor = 0;
      check = 0;
      while (cursor < words) check += scan_indices(a, words, &cursor, out, OUTPUT_ENTRIES * 2);
      sink += out[0];
    } else if (!strcmp(kernel, "scan-runs")) {
      u32 cursor = 0, end = (u32)(words << 6);
      check = 0;
      do check += scan_runs(a, words, &cursor, out, OUTPUT_ENTRIES); while (cursor < end);
      sink += out[0];
    } else if (!strcmp(kernel, "scan-runs-per-bit")) {
      check = scan_runs_per_bit(a, words, out, OUTPUT_ENTRIES);
      sink += out[0];
    } else if (!strcmp(kernel, "merge-count-scan")) {
      u32 runs = 0, cursor = 0, end = (u32)(words << 6);
      sink += merge_count_scan(d, a, words, out, OUTPUT_ENTRIES, &runs, &cursor);
      check = runs;
      while (cursor < end) check += scan_runs(d, words, &cursor, out, OUTPUT_ENTRIES);
      sink += out[0];
    } else if (!strcmp(kernel, "resample")) {
      /* Source: 64 KiB pages (one bit per 16 destination bits), starting 3 fine pages in. */
      sink += resample16(d, words, a, (int64_t)(words * 64 / 16), 3);
    } else {
      fprintf(stderr, "unknown kernel %s\n", kernel);
      return 2;
    }
    double t = now_ns() - t0;
    if (!warm) {
      samples[count++] = t;
      total += t;
    }
  }
  /* Kernels that write the destination report its final popcount: the same for both sides. */
  if (!strcmp(kernel, "merge") || !strcmp(kernel, "merge-count") || !strcmp(kernel, "resample"))
    check = popcount_words(d, words);
  qsort(samples, count, sizeof(double), compare_double);
  if (bandwidth) {
    printf("{\"kernel\":\"bandwidth\",\"readGBps\":%.3f,\"rmwGBps\":%.3f,\"samples\":%d}\n",
           bytes * (double)count / read_ns, bytes * (double)count / rmw_ns, count);
  } else {
    printf("{\"kernel\":\"%s\",\"medianNs\":%.1f,\"meanNs\":%.1f,\"samples\":%d,\"check\":%llu,\"sink\":%llu}\n", kernel,
           samples[count / 2], total / count, count, (unsigned long long)check, (unsigned long long)(sink & 1));
  }
  free(d); free(a); free(b); free(out);
  return 0;
}
