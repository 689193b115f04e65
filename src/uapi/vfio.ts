// include/uapi/linux/vfio.h (Linux 6.12): the group and container ioctls, type1, the device
// ioctls, the cdev bind/attach/detach and the device features for migration and DMA logging.
// Entries added by later kernels carry the version that added them.
import { _IO, struct } from './layout.js';

export const VFIO_TYPE = ';';
export const VFIO_BASE = 100;
const V = (n: number) => _IO(VFIO_TYPE, VFIO_BASE + n);

export const VFIO_API_VERSION = 0;
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_NOIOMMU_IOMMU = 8;
export const VFIO_UNMAP_ALL = 9;
export const VFIO_UPDATE_VADDR = 10;

export const VFIO_GET_API_VERSION = V(0);
export const VFIO_CHECK_EXTENSION = V(1);
export const VFIO_SET_IOMMU = V(2);
export const VFIO_GROUP_GET_STATUS = V(3);
export const VFIO_GROUP_SET_CONTAINER = V(4);
export const VFIO_GROUP_UNSET_CONTAINER = V(5);
export const VFIO_GROUP_GET_DEVICE_FD = V(6);
export const VFIO_DEVICE_GET_INFO = V(7);
export const VFIO_DEVICE_GET_REGION_INFO = V(8);
export const VFIO_DEVICE_GET_IRQ_INFO = V(9);
export const VFIO_DEVICE_SET_IRQS = V(10);
export const VFIO_DEVICE_RESET = V(11);
/** Same number as VFIO_IOMMU_GET_INFO: this one goes to a device fd. */
export const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = V(12);
export const VFIO_DEVICE_PCI_HOT_RESET = V(13);
export const VFIO_DEVICE_QUERY_GFX_PLANE = V(14);
export const VFIO_DEVICE_GET_GFX_DMABUF = V(15);
export const VFIO_DEVICE_IOEVENTFD = V(16);
export const VFIO_IOMMU_GET_INFO = V(12);
export const VFIO_IOMMU_MAP_DMA = V(13);
export const VFIO_IOMMU_UNMAP_DMA = V(14);
export const VFIO_IOMMU_ENABLE = V(15);
export const VFIO_IOMMU_DISABLE = V(16);
/** Same number as VFIO_DEVICE_FEATURE: this one goes to the container fd. */
export const VFIO_IOMMU_DIRTY_PAGES = V(17);
export const VFIO_DEVICE_FEATURE = V(17);
export const VFIO_DEVICE_BIND_IOMMUFD = V(18);
export const VFIO_DEVICE_ATTACH_IOMMUFD_PT = V(19);
export const VFIO_DEVICE_DETACH_IOMMUFD_PT = V(20);
export const VFIO_MIG_GET_PRECOPY_INFO = V(21);

export const VFIO_IOCTLS = {
  VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO_DEVICE_PCI_HOT_RESET, VFIO_DEVICE_QUERY_GFX_PLANE,
  VFIO_DEVICE_GET_GFX_DMABUF, VFIO_DEVICE_IOEVENTFD, VFIO_IOMMU_ENABLE, VFIO_IOMMU_DISABLE,
  VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU, VFIO_GROUP_GET_STATUS, VFIO_GROUP_SET_CONTAINER,
  VFIO_GROUP_UNSET_CONTAINER, VFIO_GROUP_GET_DEVICE_FD, VFIO_DEVICE_GET_INFO, VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_GET_IRQ_INFO, VFIO_DEVICE_SET_IRQS, VFIO_DEVICE_RESET, VFIO_IOMMU_GET_INFO, VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA, VFIO_IOMMU_DIRTY_PAGES, VFIO_DEVICE_FEATURE, VFIO_DEVICE_BIND_IOMMUFD,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT, VFIO_DEVICE_DETACH_IOMMUFD_PT, VFIO_MIG_GET_PRECOPY_INFO,
} as const;

export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2;
export const VFIO_DEVICE_FLAGS_CAPS = 1 << 7;

export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;

// enum of vfio-pci region indexes
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_VGA_REGION_INDEX = 8;
export const VFIO_PCI_NUM_REGIONS = 9;

export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;
export const VFIO_DEVICE_FEATURE_MIGRATION = 1;
export const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8;
export const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;
export const VFIO_MIGRATION_STOP_COPY = 1 << 0;
export const VFIO_MIGRATION_P2P = 1 << 1;
export const VFIO_MIGRATION_PRE_COPY = 1 << 2;

// enum vfio_device_mig_state (migration v2).
export const VFIO_DEVICE_STATE_ERROR = 0;
export const VFIO_DEVICE_STATE_STOP = 1;
export const VFIO_DEVICE_STATE_RUNNING = 2;
export const VFIO_DEVICE_STATE_STOP_COPY = 3;
export const VFIO_DEVICE_STATE_RESUMING = 4;
export const VFIO_DEVICE_STATE_RUNNING_P2P = 5;
export const VFIO_DEVICE_STATE_PRE_COPY = 6;
export const VFIO_DEVICE_STATE_PRE_COPY_P2P = 7;

/** Migration constants the conformance test compiles against the headers (the enum and the flags). */
export const VFIO_MIGRATION_CONSTANTS = {
  VFIO_DEVICE_STATE_ERROR, VFIO_DEVICE_STATE_STOP, VFIO_DEVICE_STATE_RUNNING, VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_DEVICE_STATE_RESUMING, VFIO_DEVICE_STATE_RUNNING_P2P, VFIO_DEVICE_STATE_PRE_COPY, VFIO_DEVICE_STATE_PRE_COPY_P2P,
  VFIO_MIGRATION_STOP_COPY, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY,
  VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
} as const;

/** Added in 6.17: bind carries a VF token. */
export const VFIO_DEVICE_BIND_FLAG_TOKEN = 1 << 0;
/** Added in 6.15: attach/detach a PASID. */
export const VFIO_DEVICE_ATTACH_PASID = 1 << 0;
export const VFIO_DEVICE_DETACH_PASID = 1 << 0;

export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;
export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;
export const VFIO_DMA_MAP_FLAG_VADDR = 1 << 2;
export const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0;
export const VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1;
export const VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2;
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1 << 0;
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1 << 1;
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1 << 2;

export const vfio_info_cap_header = struct('vfio_info_cap_header', [['id', 'u16'], ['version', 'u16'], ['next', 'u32']]);
export const vfio_group_status = struct('vfio_group_status', [['argsz', 'u32'], ['flags', 'u32']]);
export const vfio_device_info = struct('vfio_device_info', [
  ['argsz', 'u32'], ['flags', 'u32'], ['num_regions', 'u32'], ['num_irqs', 'u32'], ['cap_offset', 'u32'], ['pad', 'u32'],
]);
export const vfio_region_info = struct('vfio_region_info', [
  ['argsz', 'u32'], ['flags', 'u32'], ['index', 'u32'], ['cap_offset', 'u32'], ['size', 'u64'], ['offset', 'u64'],
]);
export const vfio_irq_info = struct('vfio_irq_info', [
  ['argsz', 'u32'], ['flags', 'u32'], ['index', 'u32'], ['count', 'u32'],
]);
export const vfio_irq_set = struct('vfio_irq_set', [
  ['argsz', 'u32'], ['flags', 'u32'], ['index', 'u32'], ['start', 'u32'], ['count', 'u32'], ['data', { array: 'u8', count: 0 }],
]);
export const vfio_device_feature = struct('vfio_device_feature', [
  ['argsz', 'u32'], ['flags', 'u32'], ['data', { array: 'u8', count: 0 }],
]);
export const vfio_device_bind_iommufd = struct('vfio_device_bind_iommufd', [
  ['argsz', 'u32'], ['flags', 'u32'], ['iommufd', 's32'], ['out_devid', 'u32'], ['token_uuid_ptr', 'u64', '6.17'],
]);
export const vfio_device_attach_iommufd_pt = struct('vfio_device_attach_iommufd_pt', [
  ['argsz', 'u32'], ['flags', 'u32'], ['pt_id', 'u32'], ['pasid', 'u32', '6.15'],
]);
export const vfio_device_detach_iommufd_pt = struct('vfio_device_detach_iommufd_pt', [
  ['argsz', 'u32'], ['flags', 'u32'], ['pasid', 'u32', '6.15'],
]);
export const vfio_device_feature_migration = struct('vfio_device_feature_migration', [['flags', 'u64']]);
export const vfio_device_feature_mig_state = struct('vfio_device_feature_mig_state', [
  ['device_state', 'u32'], ['data_fd', 's32'],
]);
export const vfio_device_feature_dma_logging_control = struct('vfio_device_feature_dma_logging_control', [
  ['page_size', 'u64'], ['num_ranges', 'u32'], ['__reserved', 'u32'], ['ranges', 'u64'],
]);
/**
 * The most ranges DMA_LOGGING_START takes: LOG_MAX_RANGES in drivers/vfio/vfio_main.c is
 * PAGE_SIZE / sizeof(struct vfio_device_feature_dma_logging_range); more is E2BIG.
 */
export function dmaLoggingMaxRanges(pageSize: bigint | number): number {
  return Number(pageSize) / 16;
}

export const vfio_device_feature_dma_logging_range = struct('vfio_device_feature_dma_logging_range', [
  ['iova', 'u64'], ['length', 'u64'],
]);
export const vfio_device_feature_dma_logging_report = struct('vfio_device_feature_dma_logging_report', [
  ['iova', 'u64'], ['length', 'u64'], ['page_size', 'u64'], ['bitmap', 'u64'],
]);
export const vfio_device_feature_mig_data_size = struct('vfio_device_feature_mig_data_size', [['stop_copy_length', 'u64']]);
/** VFIO_MIG_GET_PRECOPY_INFO's argument, on a migration data fd. */
export const vfio_precopy_info = struct('vfio_precopy_info', [
  ['argsz', 'u32'], ['flags', 'u32'], ['initial_bytes', 'u64'], ['dirty_bytes', 'u64'],
]);
export const vfio_iommu_type1_info = struct('vfio_iommu_type1_info', [
  ['argsz', 'u32'], ['flags', 'u32'], ['iova_pgsizes', 'u64'], ['cap_offset', 'u32'], ['pad', 'u32'],
]);
export const vfio_iova_range = struct('vfio_iova_range', [['start', 'u64'], ['end', 'u64']]);
export const vfio_iommu_type1_info_cap_iova_range = struct('vfio_iommu_type1_info_cap_iova_range', [
  ['header', vfio_info_cap_header], ['nr_iovas', 'u32'], ['reserved', 'u32'],
  ['iova_ranges', { array: vfio_iova_range, count: 0 }],
]);
export const vfio_iommu_type1_info_cap_migration = struct('vfio_iommu_type1_info_cap_migration', [
  ['header', vfio_info_cap_header], ['flags', 'u32'], ['pgsize_bitmap', 'u64'], ['max_dirty_bitmap_size', 'u64'],
]);
export const vfio_iommu_type1_info_dma_avail = struct('vfio_iommu_type1_info_dma_avail', [
  ['header', vfio_info_cap_header], ['avail', 'u32'],
]);
export const vfio_iommu_type1_dma_map = struct('vfio_iommu_type1_dma_map', [
  ['argsz', 'u32'], ['flags', 'u32'], ['vaddr', 'u64'], ['iova', 'u64'], ['size', 'u64'],
]);
export const vfio_bitmap = struct('vfio_bitmap', [['pgsize', 'u64'], ['size', 'u64'], ['data', 'u64']]);
export const vfio_iommu_type1_dma_unmap = struct('vfio_iommu_type1_dma_unmap', [
  ['argsz', 'u32'], ['flags', 'u32'], ['iova', 'u64'], ['size', 'u64'], ['data', { array: 'u8', count: 0 }],
]);
export const vfio_iommu_type1_dirty_bitmap = struct('vfio_iommu_type1_dirty_bitmap', [
  ['argsz', 'u32'], ['flags', 'u32'], ['data', { array: 'u8', count: 0 }],
]);
export const vfio_iommu_type1_dirty_bitmap_get = struct('vfio_iommu_type1_dirty_bitmap_get', [
  ['iova', 'u64'], ['size', 'u64'], ['bitmap', vfio_bitmap],
]);

// PCI hot reset (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO_DEVICE_PCI_HOT_RESET). With a cdev the
// kernel reports dev IDs (FLAG_DEV_ID): a device bound to the same iommufd by its ID, one only
// owned by it (its group has a device in that iommufd) as VFIO_PCI_DEVID_OWNED, any other as
// VFIO_PCI_DEVID_NOT_OWNED; FLAG_DEV_ID_OWNED says all are owned.
export const VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0;
export const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1;
export const VFIO_PCI_DEVID_OWNED = 0;
/** -1 in a __u32. */
export const VFIO_PCI_DEVID_NOT_OWNED = 0xffff_ffff;
// `union { __u32 group_id; __u32 devid; }`: one __u32, a dev ID when FLAG_DEV_ID is set.
export const vfio_pci_dependent_device = struct('vfio_pci_dependent_device', [
  ['group_id', 'u32'], ['segment', 'u16'], ['bus', 'u8'], ['devfn', 'u8'],
]);
export const vfio_pci_hot_reset_info = struct('vfio_pci_hot_reset_info', [
  ['argsz', 'u32'], ['flags', 'u32'], ['count', 'u32'], ['devices', { array: vfio_pci_dependent_device, count: 0 }],
]);
export const vfio_pci_hot_reset = struct('vfio_pci_hot_reset', [
  ['argsz', 'u32'], ['flags', 'u32'], ['count', 'u32'], ['group_fds', { array: 's32', count: 0 }],
]);

export const VFIO_STRUCTS = [
  vfio_info_cap_header, vfio_group_status, vfio_device_info, vfio_region_info, vfio_irq_info, vfio_irq_set,
  vfio_device_feature,
  vfio_device_bind_iommufd, vfio_device_attach_iommufd_pt, vfio_device_detach_iommufd_pt,
  vfio_device_feature_migration, vfio_device_feature_mig_state, vfio_device_feature_dma_logging_control,
  vfio_device_feature_dma_logging_range, vfio_device_feature_dma_logging_report, vfio_device_feature_mig_data_size,
  vfio_precopy_info, vfio_iommu_type1_info, vfio_iova_range, vfio_iommu_type1_info_cap_iova_range, vfio_iommu_type1_info_cap_migration,
  vfio_iommu_type1_info_dma_avail, vfio_iommu_type1_dma_map, vfio_bitmap, vfio_iommu_type1_dma_unmap,
  vfio_iommu_type1_dirty_bitmap, vfio_iommu_type1_dirty_bitmap_get,
  vfio_pci_dependent_device, vfio_pci_hot_reset_info, vfio_pci_hot_reset,
] as const;
