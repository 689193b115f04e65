// drivers/iommu/iommufd/iommufd_test.h (Linux 6.12): the IOMMU_TEST_CMD hooks of a kernel built
// with CONFIG_IOMMUFD_TEST. The real-kernel harness uses the mock devices for dirty tracking.
import { IOMMUFD_CMD_BASE, IOMMUFD_TYPE } from './iommufd.js';
import { _IO, struct } from './layout.js';

export const IOMMU_TEST_CMD = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32);

export const IOMMU_TEST_OP_ADD_RESERVED = 1;
export const IOMMU_TEST_OP_MOCK_DOMAIN = 2;
export const IOMMU_TEST_OP_MD_CHECK_MAP = 3;
export const IOMMU_TEST_OP_MD_CHECK_REFS = 4;
export const IOMMU_TEST_OP_CREATE_ACCESS = 5;
export const IOMMU_TEST_OP_DESTROY_ACCESS_PAGES = 6;
export const IOMMU_TEST_OP_ACCESS_PAGES = 7;
export const IOMMU_TEST_OP_ACCESS_RW = 8;
export const IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT = 9;
export const IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE = 10;
export const IOMMU_TEST_OP_ACCESS_REPLACE_IOAS = 11;
export const IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS = 12;
export const IOMMU_TEST_OP_DIRTY = 13;
export const IOMMU_TEST_OP_MD_CHECK_IOTLB = 14;
export const IOMMU_TEST_OP_TRIGGER_IOPF = 15;

export const MOCK_APERTURE_START = 1n << 24n;
export const MOCK_APERTURE_LAST = (1n << 31n) - 1n;
export const MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0;
export const MOCK_FLAGS_DEVICE_HUGE_IOVA = 1 << 1;
/** The mock IOMMU's page: PAGE_SIZE / 2 (selftest.c MOCK_IO_PAGE_SIZE). */
export const MOCK_IO_PAGE_SIZE = 2048n;
/** The mock's huge page with MOCK_FLAGS_DEVICE_HUGE_IOVA (selftest.c MOCK_HUGE_PAGE_SIZE). */
export const MOCK_HUGE_PAGE_SIZE = 512n * MOCK_IO_PAGE_SIZE;
export const IOMMU_HW_INFO_TYPE_SELFTEST = 0xfeedbeef;
export const IOMMU_HW_INFO_SELFTEST_REGVAL = 0xdeadbeef;

export const iommu_test_cmd = struct('iommu_test_cmd', [
  ['size', 'u32'], ['op', 'u32'], ['id', 'u32'], ['__reserved', 'u32'],
  ['', { union: [
    ['add_reserved', struct('add_reserved', [['start', 'u64'], ['length', 'u64']])],
    ['mock_domain', struct('mock_domain', [['out_stdev_id', 'u32'], ['out_hwpt_id', 'u32'], ['out_idev_id', 'u32']])],
    ['mock_domain_flags', struct('mock_domain_flags', [
      ['out_stdev_id', 'u32'], ['out_hwpt_id', 'u32'], ['out_idev_id', 'u32'], ['dev_flags', 'u32'],
    ])],
    ['mock_domain_replace', struct('mock_domain_replace', [['pt_id', 'u32']])],
    ['check_map', struct('check_map', [['iova', 'u64'], ['length', 'u64'], ['uptr', 'u64']])],
    ['dirty', struct('dirty', [
      ['flags', 'u32'], ['iova', 'u64'], ['length', 'u64'], ['page_size', 'u64'], ['uptr', 'u64'], ['out_nr_dirty', 'u64'],
    ])],
    ['trigger_iopf', struct('trigger_iopf', [
      ['dev_id', 'u32'], ['pasid', 'u32'], ['grpid', 'u32'], ['perm', 'u32'], ['addr', 'u64'],
    ])],
  ] }],
  ['last', 'u32'],
]);
export const iommu_test_hw_info = struct('iommu_test_hw_info', [['flags', 'u32'], ['test_reg', 'u32']]);

export const IOMMUFD_TEST_IOCTLS = { IOMMU_TEST_CMD } as const;
export const IOMMUFD_TEST_STRUCTS = [iommu_test_cmd, iommu_test_hw_info] as const;
