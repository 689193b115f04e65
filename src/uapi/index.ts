// The uAPI as data: every ioctl number, flag and struct layout the library uses, spelled as in
// the kernel headers. `UAPI_TABLE` lets tools and users check layouts against their kernel.
import { IOMMUFD_IOCTLS, IOMMUFD_STRUCTS } from './iommufd.js';
import { IOMMUFD_TEST_IOCTLS, IOMMUFD_TEST_STRUCTS } from './iommufd-test.js';
import type { StructLayout } from './layout.js';
import { VFIO_IOCTLS, VFIO_STRUCTS } from './vfio.js';

export * from './iommufd.js';
export * from './iommufd-test.js';
export * from './layout.js';
export * from './vfio.js';
export * from './vfio-migration.js';

export interface UapiTable {
  readonly ioctls: Readonly<Record<string, number>>;
  readonly structs: Readonly<Record<string, { readonly size: number; readonly offsets: Readonly<Record<string, number>> }>>;
  /** Entries newer than Linux 6.12, with the kernel version that added them (`struct.field` or a name). */
  readonly since: Readonly<Record<string, string>>;
}

export const ALL_STRUCTS: readonly StructLayout[] = [...IOMMUFD_STRUCTS, ...VFIO_STRUCTS, ...IOMMUFD_TEST_STRUCTS];

/** Where each ioctl comes from: the header that defines it. */
export const IOCTL_HEADERS: Readonly<Record<string, 'linux/iommufd.h' | 'linux/vfio.h' | 'iommufd_test.h'>> = {
  ...Object.fromEntries(Object.keys(IOMMUFD_IOCTLS).map((name) => [name, 'linux/iommufd.h' as const])),
  ...Object.fromEntries(Object.keys(VFIO_IOCTLS).map((name) => [name, 'linux/vfio.h' as const])),
  ...Object.fromEntries(Object.keys(IOMMUFD_TEST_IOCTLS).map((name) => [name, 'iommufd_test.h' as const])),
};

function buildTable(): UapiTable {
  const ioctls: Record<string, number> = { ...IOMMUFD_IOCTLS, ...VFIO_IOCTLS, ...IOMMUFD_TEST_IOCTLS };
  const structs: Record<string, { size: number; offsets: Record<string, number> }> = {};
  const since: Record<string, string> = { IOMMU_IOAS_MAP_FILE: '6.13' };
  for (const layout of ALL_STRUCTS) {
    const offsets: Record<string, number> = {};
    for (const [name, field] of layout.fields) {
      offsets[name] = field.offset;
      if (field.since && !layout.since) since[`${layout.name}.${name}`] = field.since;
    }
    structs[layout.name] = { size: layout.size, offsets };
    if (layout.since) since[layout.name] = layout.since;
  }
  return { ioctls, structs, since };
}

export const UAPI_TABLE: UapiTable = buildTable();
