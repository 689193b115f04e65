// include/uapi/linux/iommufd.h (Linux 6.12, Debian linux-source-6.12). Entries added by later
// kernels carry the version that added them; the kernel accepts the shorter 6.12 size.
import { _IO, struct } from './layout.js';

export const IOMMUFD_TYPE = ';';
export const IOMMUFD_CMD_BASE = 0x80;

export const IOMMU_DESTROY = _IO(IOMMUFD_TYPE, 0x80);
export const IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, 0x81);
export const IOMMU_IOAS_ALLOW_IOVAS = _IO(IOMMUFD_TYPE, 0x82);
export const IOMMU_IOAS_COPY = _IO(IOMMUFD_TYPE, 0x83);
export const IOMMU_IOAS_IOVA_RANGES = _IO(IOMMUFD_TYPE, 0x84);
export const IOMMU_IOAS_MAP = _IO(IOMMUFD_TYPE, 0x85);
export const IOMMU_IOAS_UNMAP = _IO(IOMMUFD_TYPE, 0x86);
export const IOMMU_OPTION = _IO(IOMMUFD_TYPE, 0x87);
export const IOMMU_VFIO_IOAS = _IO(IOMMUFD_TYPE, 0x88);
export const IOMMU_HWPT_ALLOC = _IO(IOMMUFD_TYPE, 0x89);
export const IOMMU_GET_HW_INFO = _IO(IOMMUFD_TYPE, 0x8a);
export const IOMMU_HWPT_SET_DIRTY_TRACKING = _IO(IOMMUFD_TYPE, 0x8b);
export const IOMMU_HWPT_GET_DIRTY_BITMAP = _IO(IOMMUFD_TYPE, 0x8c);
export const IOMMU_HWPT_INVALIDATE = _IO(IOMMUFD_TYPE, 0x8d);
export const IOMMU_FAULT_QUEUE_ALLOC = _IO(IOMMUFD_TYPE, 0x8e);
/** Added in 6.13. */
export const IOMMU_IOAS_MAP_FILE = _IO(IOMMUFD_TYPE, 0x8f);

export const IOMMUFD_IOCTLS = {
  IOMMU_DESTROY, IOMMU_IOAS_ALLOC, IOMMU_IOAS_ALLOW_IOVAS, IOMMU_IOAS_COPY, IOMMU_IOAS_IOVA_RANGES,
  IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP, IOMMU_OPTION, IOMMU_VFIO_IOAS, IOMMU_HWPT_ALLOC, IOMMU_GET_HW_INFO,
  IOMMU_HWPT_SET_DIRTY_TRACKING, IOMMU_HWPT_GET_DIRTY_BITMAP, IOMMU_HWPT_INVALIDATE, IOMMU_FAULT_QUEUE_ALLOC,
  IOMMU_IOAS_MAP_FILE,
} as const;

// enum iommufd_ioas_map_flags
export const IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0;
export const IOMMU_IOAS_MAP_WRITEABLE = 1 << 1;
export const IOMMU_IOAS_MAP_READABLE = 1 << 2;
// enum iommufd_option, enum iommufd_option_ops
export const IOMMU_OPTION_RLIMIT_MODE = 0;
export const IOMMU_OPTION_HUGE_PAGES = 1;
export const IOMMU_OPTION_OP_SET = 0;
export const IOMMU_OPTION_OP_GET = 1;
// enum iommufd_vfio_ioas_op
export const IOMMU_VFIO_IOAS_GET = 0;
export const IOMMU_VFIO_IOAS_SET = 1;
export const IOMMU_VFIO_IOAS_CLEAR = 2;
// enum iommufd_hwpt_alloc_flags
export const IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0;
export const IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1;
export const IOMMU_HWPT_FAULT_ID_VALID = 1 << 2;
// enum iommu_hwpt_data_type
export const IOMMU_HWPT_DATA_NONE = 0;
export const IOMMU_HWPT_DATA_VTD_S1 = 1;
// enum iommu_hw_info_type
export const IOMMU_HW_INFO_TYPE_NONE = 0;
export const IOMMU_HW_INFO_TYPE_INTEL_VTD = 1;
/** Added in 6.14. */
export const IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2;
/** Added in 6.16. */
export const IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = 3;
/** Added in 6.17. */
export const IOMMU_HW_INFO_TYPE_AMD = 4;
// enum iommufd_hw_capabilities
export const IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0;
export const IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1;
export const IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2;
// enum iommu_hw_info_vtd_flags
export const IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0;
// enum iommufd_hwpt_set_dirty_tracking_flags, enum iommufd_hwpt_get_dirty_bitmap_flags
export const IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1;
export const IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1;

export const iommu_destroy = struct('iommu_destroy', [['size', 'u32'], ['id', 'u32']]);
export const iommu_ioas_alloc = struct('iommu_ioas_alloc', [['size', 'u32'], ['flags', 'u32'], ['out_ioas_id', 'u32']]);
export const iommu_iova_range = struct('iommu_iova_range', [['start', 'u64'], ['last', 'u64']]);
export const iommu_ioas_iova_ranges = struct('iommu_ioas_iova_ranges', [
  ['size', 'u32'], ['ioas_id', 'u32'], ['num_iovas', 'u32'], ['__reserved', 'u32'],
  ['allowed_iovas', 'u64'], ['out_iova_alignment', 'u64'],
]);
export const iommu_ioas_allow_iovas = struct('iommu_ioas_allow_iovas', [
  ['size', 'u32'], ['ioas_id', 'u32'], ['num_iovas', 'u32'], ['__reserved', 'u32'], ['allowed_iovas', 'u64'],
]);
export const iommu_ioas_map = struct('iommu_ioas_map', [
  ['size', 'u32'], ['flags', 'u32'], ['ioas_id', 'u32'], ['__reserved', 'u32'],
  ['user_va', 'u64'], ['length', 'u64'], ['iova', 'u64'],
]);
export const iommu_ioas_map_file = struct('iommu_ioas_map_file', [
  ['size', 'u32'], ['flags', 'u32'], ['ioas_id', 'u32'], ['fd', 's32'],
  ['start', 'u64'], ['length', 'u64'], ['iova', 'u64'],
], '6.13');
export const iommu_ioas_copy = struct('iommu_ioas_copy', [
  ['size', 'u32'], ['flags', 'u32'], ['dst_ioas_id', 'u32'], ['src_ioas_id', 'u32'],
  ['length', 'u64'], ['dst_iova', 'u64'], ['src_iova', 'u64'],
]);
export const iommu_ioas_unmap = struct('iommu_ioas_unmap', [
  ['size', 'u32'], ['ioas_id', 'u32'], ['iova', 'u64'], ['length', 'u64'],
]);
export const iommu_option = struct('iommu_option', [
  ['size', 'u32'], ['option_id', 'u32'], ['op', 'u16'], ['__reserved', 'u16'], ['object_id', 'u32'], ['val64', 'u64'],
]);
export const iommu_vfio_ioas = struct('iommu_vfio_ioas', [
  ['size', 'u32'], ['ioas_id', 'u32'], ['op', 'u16'], ['__reserved', 'u16'],
]);
export const iommu_hwpt_vtd_s1 = struct('iommu_hwpt_vtd_s1', [
  ['flags', 'u64'], ['pgtbl_addr', 'u64'], ['addr_width', 'u32'], ['__reserved', 'u32'],
]);
export const iommu_hwpt_alloc = struct('iommu_hwpt_alloc', [
  ['size', 'u32'], ['flags', 'u32'], ['dev_id', 'u32'], ['pt_id', 'u32'], ['out_hwpt_id', 'u32'], ['__reserved', 'u32'],
  ['data_type', 'u32'], ['data_len', 'u32'], ['data_uptr', 'u64'], ['fault_id', 'u32'], ['__reserved2', 'u32'],
]);
export const iommu_hw_info_vtd = struct('iommu_hw_info_vtd', [
  ['flags', 'u32'], ['__reserved', 'u32'], ['cap_reg', 'u64'], ['ecap_reg', 'u64'],
]);
export const iommu_hw_info_arm_smmuv3 = struct('iommu_hw_info_arm_smmuv3', [
  ['flags', 'u32'], ['__reserved', 'u32'], ['idr', { array: 'u32', count: 6 }], ['iidr', 'u32'], ['aidr', 'u32'],
], '6.14');
export const iommu_hw_info_amd = struct('iommu_hw_info_amd', [
  ['efr', 'u64'], ['efr2', 'u64'],
], '6.17');
export const iommu_hw_info = struct('iommu_hw_info', [
  ['size', 'u32'], ['flags', 'u32'], ['dev_id', 'u32'], ['data_len', 'u32'], ['data_uptr', 'u64'],
  ['out_data_type', 'u32'], ['out_max_pasid_log2', 'u8'], ['__reserved', { array: 'u8', count: 3 }],
  ['out_capabilities', 'u64'],
]);
export const iommu_hwpt_set_dirty_tracking = struct('iommu_hwpt_set_dirty_tracking', [
  ['size', 'u32'], ['flags', 'u32'], ['hwpt_id', 'u32'], ['__reserved', 'u32'],
]);
export const iommu_hwpt_get_dirty_bitmap = struct('iommu_hwpt_get_dirty_bitmap', [
  ['size', 'u32'], ['hwpt_id', 'u32'], ['flags', 'u32'], ['__reserved', 'u32'],
  ['iova', 'u64'], ['length', 'u64'], ['page_size', 'u64'], ['data', 'u64'],
]);
export const iommu_hwpt_invalidate = struct('iommu_hwpt_invalidate', [
  ['size', 'u32'], ['hwpt_id', 'u32'], ['data_uptr', 'u64'], ['data_type', 'u32'], ['entry_len', 'u32'],
  ['entry_num', 'u32'], ['__reserved', 'u32'],
]);
export const iommu_fault_alloc = struct('iommu_fault_alloc', [
  ['size', 'u32'], ['flags', 'u32'], ['out_fault_id', 'u32'], ['out_fault_fd', 'u32'],
]);

export const IOMMUFD_STRUCTS = [
  iommu_destroy, iommu_ioas_alloc, iommu_iova_range, iommu_ioas_iova_ranges, iommu_ioas_allow_iovas, iommu_ioas_map,
  iommu_ioas_map_file, iommu_ioas_copy, iommu_ioas_unmap, iommu_option, iommu_vfio_ioas, iommu_hwpt_vtd_s1,
  iommu_hwpt_alloc, iommu_hw_info_vtd, iommu_hw_info_arm_smmuv3, iommu_hw_info_amd, iommu_hw_info,
  iommu_hwpt_set_dirty_tracking, iommu_hwpt_get_dirty_bitmap, iommu_hwpt_invalidate, iommu_fault_alloc,
] as const;
