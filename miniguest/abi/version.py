"""public/version.h and public/features.h."""
from __future__ import annotations

XENVER_version = 0
XENVER_extraversion = 1
XENVER_compile_info = 2
XENVER_capabilities = 3
XENVER_changeset = 4
XENVER_platform_parameters = 5
XENVER_get_features = 6
XENVER_pagesize = 7
XENVER_guest_handle = 8
XENVER_commandline = 9
XENVER_build_id = 10

XEN_EXTRAVERSION_LEN = 16
XEN_CAPABILITIES_INFO_LEN = 1024
XEN_CHANGESET_INFO_LEN = 64
XEN_COMMANDLINE_LEN = 1024
# compile_info: compiler[64], compile_by[16], compile_domain[32], compile_date[32].
COMPILE_INFO_FIELDS = (("compiler", 64), ("compile_by", 16), ("compile_domain", 32), ("compile_date", 32))

XENFEAT_writable_page_tables = 0
XENFEAT_writable_descriptor_tables = 1
XENFEAT_auto_translated_physmap = 2
XENFEAT_supervisor_mode_kernel = 3
XENFEAT_pae_pgdir_above_4gb = 4
XENFEAT_mmu_pt_update_preserve_ad = 5
XENFEAT_highmem_assist = 6
XENFEAT_gnttab_map_avail_bits = 7
XENFEAT_hvm_callback_vector = 8
XENFEAT_hvm_safe_pvclock = 9
XENFEAT_hvm_pirqs = 10
XENFEAT_dom0 = 11
XENFEAT_NR_SUBMAPS = 1
