// The C reference for `vfio-iommufd bench ioctl`: one iommufd ioctl in a tight loop on an fd the
// bench passes down (the same open /dev/iommu, so the same objects), one thread, -O3. Each call
// fills its struct afresh, as the library does. The first call is untimed: it warms the caches
// and reports what the kernel answered (the option's value, the number of ranges, the dirty bits
// found), so the bench can check the loop worked on the objects it set up.
// Usage: ioctl-loop FD CALLS BATCHES option
//        ioctl-loop FD CALLS BATCHES iova-ranges IOAS_ID CAPACITY
//        ioctl-loop FD CALLS BATCHES dirty-bitmap HWPT_ID IOVA LENGTH PAGE_SIZE
// -> one JSON line: {"op":..., "calls":..., "batches":..., "batchNs":[...], "first":...}
//
// The structs and numbers are those of Linux 6.12 include/uapi/linux/iommufd.h (the iommufd uAPI
// is stable), copied here so the loop builds with any libc headers: Debian 12's linux-libc-dev
// is 6.1, older than iommufd's dirty tracking. With -DIOCTL_LOOP_CHECK_HEADERS and the kernel's
// installed headers on the include path, the copies are checked against <linux/iommufd.h>.
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef u64 aligned_u64 __attribute__((aligned(8)));

#define LOOP_IOMMUFD_TYPE ';'
#define LOOP_IOMMU_IOAS_IOVA_RANGES _IO(LOOP_IOMMUFD_TYPE, 0x84)
#define LOOP_IOMMU_OPTION _IO(LOOP_IOMMUFD_TYPE, 0x87)
#define LOOP_IOMMU_HWPT_GET_DIRTY_BITMAP _IO(LOOP_IOMMUFD_TYPE, 0x8c)
#define LOOP_IOMMU_OPTION_RLIMIT_MODE 0
#define LOOP_IOMMU_OPTION_OP_GET 1

struct loop_iommu_option {
  u32 size;
  u32 option_id;
  u16 op;
  u16 reserved;
  u32 object_id;
  aligned_u64 val64;
};

struct loop_iommu_iova_range {
  aligned_u64 start;
  aligned_u64 last;
};

struct loop_iommu_ioas_iova_ranges {
  u32 size;
  u32 ioas_id;
  u32 num_iovas;
  u32 reserved;
  aligned_u64 allowed_iovas;
  aligned_u64 out_iova_alignment;
};

struct loop_iommu_hwpt_get_dirty_bitmap {
  u32 size;
  u32 hwpt_id;
  u32 flags;
  u32 reserved;
  aligned_u64 iova;
  aligned_u64 length;
  aligned_u64 page_size;
  aligned_u64 data;
};

#ifdef IOCTL_LOOP_CHECK_HEADERS
#include <linux/iommufd.h>
#define SAME(ours, theirs) _Static_assert((ours) == (theirs), #ours " != " #theirs)
#define SAME_FIELD(s, f, g) SAME(offsetof(struct loop_##s, f), offsetof(struct s, g))
SAME(LOOP_IOMMU_IOAS_IOVA_RANGES, IOMMU_IOAS_IOVA_RANGES);
SAME(LOOP_IOMMU_OPTION, IOMMU_OPTION);
SAME(LOOP_IOMMU_HWPT_GET_DIRTY_BITMAP, IOMMU_HWPT_GET_DIRTY_BITMAP);
SAME(LOOP_IOMMU_OPTION_RLIMIT_MODE, IOMMU_OPTION_RLIMIT_MODE);
SAME(LOOP_IOMMU_OPTION_OP_GET, IOMMU_OPTION_OP_GET);
SAME(sizeof(struct loop_iommu_option), sizeof(struct iommu_option));
SAME_FIELD(iommu_option, option_id, option_id);
SAME_FIELD(iommu_option, op, op);
SAME_FIELD(iommu_option, object_id, object_id);
SAME_FIELD(iommu_option, val64, val64);
SAME(sizeof(struct loop_iommu_iova_range), sizeof(struct iommu_iova_range));
SAME_FIELD(iommu_iova_range, last, last);
SAME(sizeof(struct loop_iommu_ioas_iova_ranges), sizeof(struct iommu_ioas_iova_ranges));
SAME_FIELD(iommu_ioas_iova_ranges, ioas_id, ioas_id);
SAME_FIELD(iommu_ioas_iova_ranges, num_iovas, num_iovas);
SAME_FIELD(iommu_ioas_iova_ranges, allowed_iovas, allowed_iovas);
SAME_FIELD(iommu_ioas_iova_ranges, out_iova_alignment, out_iova_alignment);
SAME(sizeof(struct loop_iommu_hwpt_get_dirty_bitmap), sizeof(struct iommu_hwpt_get_dirty_bitmap));
SAME_FIELD(iommu_hwpt_get_dirty_bitmap, hwpt_id, hwpt_id);
SAME_FIELD(iommu_hwpt_get_dirty_bitmap, flags, flags);
SAME_FIELD(iommu_hwpt_get_dirty_bitmap, iova, iova);
SAME_FIELD(iommu_hwpt_get_dirty_bitmap, length, length);
SAME_FIELD(iommu_hwpt_get_dirty_bitmap, page_size, page_size);
SAME_FIELD(iommu_hwpt_get_dirty_bitmap, data, data);
#endif

static u64 now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (u64)t.tv_sec * 1000000000u + (u64)t.tv_nsec;
}

static int fd;
static const char *op;
static struct loop_iommu_iova_range *ranges;
static u32 ioas_id, capacity, hwpt_id;
static u64 iova, length, page_size, bitmap_bytes;
static u64 *bitmap;

/** One call of the op; returns what the kernel answered (see the header). Exits on a failure. */
static u64 call(void) {
  int rc;
  u64 answer = 0;
  if (op[0] == 'o') {
    struct loop_iommu_option s = {
      .size = sizeof s, .option_id = LOOP_IOMMU_OPTION_RLIMIT_MODE, .op = LOOP_IOMMU_OPTION_OP_GET, .object_id = 0,
    };
    rc = ioctl(fd, LOOP_IOMMU_OPTION, &s);
    answer = s.val64;
  } else if (op[0] == 'i') {
    struct loop_iommu_ioas_iova_ranges s = {
      .size = sizeof s, .ioas_id = ioas_id, .num_iovas = capacity, .allowed_iovas = (u64)(uintptr_t)ranges,
    };
    rc = ioctl(fd, LOOP_IOMMU_IOAS_IOVA_RANGES, &s);
    answer = s.num_iovas;
  } else {
    struct loop_iommu_hwpt_get_dirty_bitmap s = {
      .size = sizeof s, .hwpt_id = hwpt_id, .flags = 0, .iova = iova, .length = length, .page_size = page_size,
      .data = (u64)(uintptr_t)bitmap,
    };
    rc = ioctl(fd, LOOP_IOMMU_HWPT_GET_DIRTY_BITMAP, &s);
  }
  if (rc < 0) {
    fprintf(stderr, "ioctl-loop: %s failed: %s (errno %d)\n", op, strerror(errno), errno);
    exit(1);
  }
  return answer;
}

static u64 popcount(void) {
  u64 n = 0;
  for (u64 i = 0; i < bitmap_bytes / 8; i++) n += (u64)__builtin_popcountll(bitmap[i]);
  return n;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s FD CALLS BATCHES option | iova-ranges IOAS_ID CAPACITY | dirty-bitmap HWPT_ID IOVA LENGTH PAGE_SIZE\n", argv[0]);
    return 2;
  }
  fd = atoi(argv[1]);
  long calls = atol(argv[2]), batches = atol(argv[3]);
  op = argv[4];
  if (calls < 1 || batches < 1) { fprintf(stderr, "ioctl-loop: CALLS and BATCHES must be at least 1\n"); return 2; }
  if (!strcmp(op, "option") && argc == 5) {
  } else if (!strcmp(op, "iova-ranges") && argc == 7) {
    ioas_id = (u32)strtoul(argv[5], 0, 10);
    capacity = (u32)strtoul(argv[6], 0, 10);
    ranges = calloc(capacity ? capacity : 1, sizeof *ranges);
  } else if (!strcmp(op, "dirty-bitmap") && argc == 9) {
    hwpt_id = (u32)strtoul(argv[5], 0, 10);
    iova = strtoull(argv[6], 0, 10);
    length = strtoull(argv[7], 0, 10);
    page_size = strtoull(argv[8], 0, 10);
    if (!page_size) { fprintf(stderr, "ioctl-loop: PAGE_SIZE must not be 0\n"); return 2; }
    bitmap_bytes = (length / page_size + 63) / 64 * 8;
    bitmap = calloc(bitmap_bytes / 8, 8); // touched by calloc's zeroing or the kernel's first call
  } else {
    fprintf(stderr, "ioctl-loop: bad arguments for %s\n", op);
    return 2;
  }
  if ((ranges == 0 && op[0] == 'i') || (bitmap == 0 && op[0] == 'd')) { perror("calloc"); return 2; }

  u64 first = call();
  if (op[0] == 'd') first = popcount();
  u64 *batch_ns = calloc((size_t)batches, sizeof *batch_ns);
  for (long b = 0; b < batches; b++) {
    u64 t0 = now_ns();
    for (long c = 0; c < calls; c++) call();
    batch_ns[b] = now_ns() - t0;
  }
  printf("{\"op\":\"%s\",\"calls\":%ld,\"batches\":%ld,\"first\":%llu,\"batchNs\":[", op, calls, batches, (unsigned long long)first);
  for (long b = 0; b < batches; b++) printf("%s%llu", b ? "," : "", (unsigned long long)batch_ns[b]);
  printf("]}\n");
  return 0;
}
