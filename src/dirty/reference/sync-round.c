// The C reference for `vfio-iommufd bench sync`: the same work as one DirtySync round, in C at
// -O3 -march=native. Count the migration bitmap's set bits; per source, the kernel's
// read-and-clear straight into the migration bitmap (OR the dirty words in, zero them in the
// kernel's state: HWPT dirty bitmaps and DMA logging reports only set bits, so the kernel's OR
// is the merge); then scan the migration bitmap into runs in a reused chunk, counting its pages,
// and clear what the runs covered (the hand-over),
// word by word with the engine's algorithm.
// Newly dirty pages are the count after less the count before.
// Usage: sync-round PAGES DENSITY SOURCES ITERATIONS SEED -> one JSON line of medians.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h> // tzcnt, blsr: the build is -march=native (BMI on every x86-64 since 2013)

typedef uint64_t u64;
typedef uint32_t u32;

static u64 state;
static u64 next(void) { // splitmix64
  u64 z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void *alloc(size_t bytes) {
  void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) { perror("aligned_alloc"); exit(2); }
  memset(p, 0, bytes); // touch every page before timing
  return p;
}

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, n, sizeof *v, compare);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/** "name":[v0,v1,...], as one JSON member followed by a comma. */
static void print_samples(const char *name, const double *v, int n) {
  printf("\"%s\":[", name);
  for (int i = 0; i < n; i++) printf("%s%.4f", i ? "," : "", v[i]);
  printf("],");
}

#define CHUNK (1u << 20)

int main(int argc, char **argv) {
  if (argc != 6) { fprintf(stderr, "usage: %s PAGES DENSITY SOURCES ITERATIONS SEED\n", argv[0]); return 2; }
  u64 pages = strtoull(argv[1], 0, 10);
  double density = atof(argv[2]);
  int sources = atoi(argv[3]), iterations = atoi(argv[4]);
  state = strtoull(argv[5], 0, 10);
  size_t words = (pages + 63) / 64;
  u64 **pristine = calloc(sources, sizeof *pristine), **kernel = calloc(sources, sizeof *kernel);
  for (int s = 0; s < sources; s++) {
    pristine[s] = alloc(words * 8);
    kernel[s] = alloc(words * 8);
    u64 dirty = (u64)(pages * density);
    for (u64 i = 0; i < dirty; i++) { u64 p = next() % pages; pristine[s][p / 64] |= 1ULL << (p % 64); }
  }
  u64 *migration = alloc(words * 8);
  u32 *out = alloc((size_t)CHUNK * 8);
  double *round = calloc(iterations, sizeof(double)), *query = calloc(iterations, sizeof(double));
  double *merge = calloc(iterations, sizeof(double)), *scan = calloc(iterations, sizeof(double));
  u64 newly = 0, runs = 0;
  for (int it = 0; it < iterations; it++) {
    for (int s = 0; s < sources; s++) memcpy(kernel[s], pristine[s], words * 8); // the guest dirtied its pages
    memset(migration, 0, words * 8); // the consumer sent the last round
    double t0 = now_ms();
    u64 before = 0;
    for (size_t i = 0; i < words; i++) before += __builtin_popcountll(migration[i]);
    // Branch-free, so gcc vectorizes it: a test per word mispredicts at migration densities
    // (on a 2-vCPU EPYC, 23-25 ms with the test against 13-15 without, at 1 TiB and 1 %).
    for (int s = 0; s < sources; s++) {
      u64 *restrict d = migration, *restrict k = kernel[s];
      for (size_t i = 0; i < words; i++) { d[i] |= k[i]; k[i] = 0; }
    }
    double t1 = now_ms();
    double t2 = t1; // no merge pass: the kernel's OR was it
    runs = 0;
    u64 after = 0;
    // Word by word, as the engine's scan (assembly/scan.ts): blocks of 64 words with a mask of
    // their nonzero words; with c the last bit of the previous word, starts are w & ~(w << 1 | c)
    // and ends (one past) ~w & (w << 1 | c), each written with tzcnt, the first four stores
    // unconditional (tzcnt of 0 is 64), so a word costs no branch per run. A zero word after a
    // run ends it. The chunk wraps as a consumer taking full chunks would see it; an end writes
    // the length of the oldest open run from the start already in its slot. The pages are the
    // set bits of the nonzero words.
    const u64 mask = CHUNK - 1;
    u64 n = 0, m = 0, carry = 0, first = UINT64_MAX;
    size_t previous = 0;
    for (size_t w = 0; w < words; w += 64) {
      size_t block = words - w < 64 ? words - w : 64;
      u64 nonzero = 0;
      for (size_t k = 0; k < block; k++) nonzero |= (u64)(migration[w + k] != 0) << k;
      while (nonzero) {
        size_t i = w + (size_t)_tzcnt_u64(nonzero);
        nonzero = _blsr_u64(nonzero);
        if (carry && i != previous + 1) {
          u32 *slot = out + 2 * (m & mask);
          slot[1] = (u32)((previous + 1) * 64) - slot[0];
          m++;
          carry = 0;
        }
        u64 x = migration[i];
        after += (u64)__builtin_popcountll(x);
        if (first == UINT64_MAX) first = i * 64 + _tzcnt_u64(x); // the first run's start
        u64 before = x << 1 | carry;
        u64 starts = x & ~before, ends = ~x & before;
        carry = x >> 63;
        u32 base = (u32)(i * 64);
        u32 start_count = (u32)__builtin_popcountll(starts), end_count = (u32)__builtin_popcountll(ends);
        for (u64 k = 0; k < 4; k++) { out[2 * ((n + k) & mask)] = base + (u32)_tzcnt_u64(starts); starts = _blsr_u64(starts); }
        for (u64 k = 4; starts; k++) { out[2 * ((n + k) & mask)] = base + (u32)_tzcnt_u64(starts); starts = _blsr_u64(starts); }
        n += start_count;
        for (u64 k = 0; k < 4; k++) { u32 *slot = out + 2 * ((m + k) & mask); slot[1] = base + (u32)_tzcnt_u64(ends) - slot[0]; ends = _blsr_u64(ends); }
        for (u64 k = 4; ends; k++) { u32 *slot = out + 2 * ((m + k) & mask); slot[1] = base + (u32)_tzcnt_u64(ends) - slot[0]; ends = _blsr_u64(ends); }
        m += end_count;
        previous = i;
      }
    }
    if (carry) {
      u32 *slot = out + 2 * (m & mask);
      slot[1] = (u32)((previous + 1) * 64) - slot[0];
      m++;
    }
    runs = m;
    newly = after - before;
    // Hand-over, as the library's round does it: clear what the runs covered once they are
    // taken (here, one span from the first run's start to the last run's end).
    if (m > 0) {
      u64 last = (u64)out[2 * ((m - 1) & (CHUNK - 1))] + out[2 * ((m - 1) & (CHUNK - 1)) + 1];
      u64 w0 = first / 64, w1 = (last - 1) / 64;
      u64 head = ~0ULL << (first % 64), tail = ~0ULL >> (63 - (last - 1) % 64);
      if (w0 == w1) migration[w0] &= ~(head & tail);
      else {
        migration[w0] &= ~head;
        migration[w1] &= ~tail;
        memset(migration + w0 + 1, 0, (w1 - w0 - 1) * 8);
      }
    }
    double t3 = now_ms();
    round[it] = t3 - t0; query[it] = t1 - t0; merge[it] = t2 - t1; scan[it] = t3 - t2;
  }
  // The memory bandwidth in the same run, over bitmaps of the same size (one thread, one stream):
  // read sums the words, write stores them; the bench's physical limit is computed from these.
  double *reads = calloc(iterations, sizeof(double)), *writes = calloc(iterations, sizeof(double));
  volatile u64 sink = 0;
  for (int it = 0; it < iterations; it++) {
    double t0 = now_ms();
    u64 s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    const u64 *p = pristine[0];
    size_t i = 0;
    for (; i + 4 <= words; i += 4) { s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3]; }
    for (; i < words; i++) s0 += p[i];
    sink += s0 + s1 + s2 + s3;
    double t1 = now_ms();
    for (i = 0; i < words; i++) migration[i] = (u64)it;
    double t2 = now_ms();
    reads[it] = t1 - t0;
    writes[it] = t2 - t1;
  }
  double bytes = (double)words * 8;
  // Every sample (before median() sorts them), so runs before and after ours combine.
  printf("{");
  print_samples("roundSamplesMs", round, iterations);
  print_samples("querySamplesMs", query, iterations);
  print_samples("scanSamplesMs", scan, iterations);
  printf("\"roundMs\":%.4f,\"phases\":{\"queryMs\":%.4f,\"mergeMs\":%.4f,\"scanMs\":%.4f},\"newlyDirtyPages\":%llu,\"runs\":%llu,\"samples\":%d,"
         "\"readGBps\":%.3f,\"writeGBps\":%.3f,\"sink\":%llu}\n",
         median(round, iterations), median(query, iterations), median(merge, iterations), median(scan, iterations),
         (unsigned long long)newly, (unsigned long long)runs, iterations,
         bytes / (median(reads, iterations) * 1e6), bytes / (median(writes, iterations) * 1e6), (unsigned long long)(sink & 1));
  return 0;
}
