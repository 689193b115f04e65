#!/usr/bin/env bash
# Write the guest kernel's .config (everything built in, no modules needed by the harness; lean:
# only what a serial-console 9p guest with the vIOMMUs, edu, the mocks and mtty needs).
#   kernel-config.sh SOURCE_DIR OUT_DIR     -> OUT_DIR/.config (an out-of-tree `make O=OUT_DIR` dir)
# Same source + same script = byte-identical .config, so its hash is the build cache key.
# VFIO_IOMMUFD_KERNEL_CONFIG_EXTRA="-e FOO -d BAR": extra scripts/config arguments (changes the key).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ $# = 2 ] || die $EXIT_USAGE "usage: kernel-config.sh SOURCE_DIR OUT_DIR"
src=$1 out=$2
mkdir -p "$out"
mk() { make -s -C "$src" O="$out" "$@"; }
mk x86_64_defconfig >/dev/null
mk kvm_guest.config >/dev/null
S() { "$src/scripts/config" --file "$out/.config" "$@"; }
# iommufd and its selftest hook; IOMMUFD_TEST needs DEBUG_KERNEL, FAULT_INJECTION, RUNTIME_TESTING_MENU
S -e DEBUG_KERNEL -e RUNTIME_TESTING_MENU -e FAULT_INJECTION -e FAULT_INJECTION_DEBUG_FS -e FAILSLAB -e DEBUG_FS
S -e IOMMUFD -e IOMMUFD_TEST
# VFIO: cdev (/dev/vfio/devices/vfioN) and the legacy group/container (/dev/vfio/vfio, type1)
S -e VFIO -e VFIO_GROUP -e VFIO_CONTAINER -e VFIO_IOMMU_TYPE1 -e VFIO_DEVICE_CDEV -e VFIO_PCI_CORE -e VFIO_PCI
# IOMMUFD_VFIO_CONTAINER depends on !VFIO_CONTAINER: keep the real legacy container instead
S -d IOMMUFD_VFIO_CONTAINER
# emulated VT-d (QEMU intel-iommu) with interrupt remapping
S -e IOMMU_SUPPORT -e INTEL_IOMMU -e INTEL_IOMMU_DEFAULT_ON -d INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF -e IRQ_REMAP -e X86_X2APIC
# virtio-iommu (ACPI VIOT): mock devices still bind while VFIO has a real vIOMMU
S -e VIRTIO_IOMMU -e ACPI_VIOT
# root = host / over 9p; tmpfs; devtmpfs
S -e NET_9P -e NET_9P_VIRTIO -e 9P_FS -e 9P_FS_POSIX_ACL -e VIRTIO_PCI -e VIRTIO -e TMPFS -e DEVTMPFS -e DEVTMPFS_MOUNT
# hugetlbfs for the selftest's MAP_HUGETLB buffers
S -e HUGETLBFS
# PVH entry (direct -kernel boot), sysrq power-off
S -e PVH -e MAGIC_SYSRQ
# mtty: the kernel's mdev sample with VFIO migration v2 (a migratable device with no hardware)
S -e SAMPLES -e SAMPLE_VFIO_MDEV_MTTY -e VFIO_MDEV
# Lean: the guest has a serial console, a 9p root and no NIC, disk, USB or display, so drop what
# x86_64_defconfig builds for real machines (most of the build time: DRM/i915, sound, USB, Wi-Fi).
S -d DRM -d FB -d SOUND -d USB_SUPPORT -d WIRELESS -d CFG80211 -d WLAN -d NETDEVICES -d NFS_FS \
  -d AGP -d HID -d MEDIA_SUPPORT -d ATA -d INPUT_JOYSTICK -d INPUT_TABLET -d INPUT_TOUCHSCREEN \
  -d INPUT_MOUSE -d NETFILTER -d WATCHDOG -d HWMON -d THERMAL -d RFKILL -d BT -d MACINTOSH_DRIVERS
if [ -n "${VFIO_IOMMUFD_KERNEL_CONFIG_EXTRA:-}" ]; then
  # shellcheck disable=SC2086
  S $VFIO_IOMMUFD_KERNEL_CONFIG_EXTRA
fi
mk olddefconfig >/dev/null
bad=()
for o in IOMMUFD IOMMUFD_TEST VFIO VFIO_GROUP VFIO_CONTAINER VFIO_IOMMU_TYPE1 VFIO_DEVICE_CDEV VFIO_PCI \
         INTEL_IOMMU IRQ_REMAP VIRTIO_IOMMU ACPI_VIOT FAULT_INJECTION FAULT_INJECTION_DEBUG_FS FAILSLAB DEBUG_FS \
         NET_9P_VIRTIO 9P_FS VIRTIO_PCI TMPFS DEVTMPFS HUGETLBFS PVH MAGIC_SYSRQ VFIO_MDEV SAMPLE_VFIO_MDEV_MTTY; do
  grep -qx "CONFIG_$o=y" "$out/.config" || bad+=("$o")
done
grep -qx 'CONFIG_IOMMUFD_VFIO_CONTAINER=y' "$out/.config" && bad+=("IOMMUFD_VFIO_CONTAINER(should be off)")
for o in DRM SOUND USB_SUPPORT; do grep -qx "CONFIG_$o=y" "$out/.config" && bad+=("$o(should be off)"); done
[ ${#bad[@]} = 0 ] || die $EXIT_SETUP "kernel config: not as required: ${bad[*]}"
