"""public/io/xs_wire.h: XenStore message types, the ring page layout and protocol limits."""
from __future__ import annotations

import ctypes

XS_CONTROL = 0
XS_DEBUG = XS_CONTROL
XS_DIRECTORY = 1
XS_READ = 2
XS_GET_PERMS = 3
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_INTRODUCE = 8
XS_RELEASE = 9
XS_GET_DOMAIN_PATH = 10
XS_WRITE = 11
XS_MKDIR = 12
XS_RM = 13
XS_SET_PERMS = 14
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_IS_DOMAIN_INTRODUCED = 17
XS_RESUME = 18
XS_SET_TARGET = 19
XS_RESET_WATCHES = 21
XS_DIRECTORY_PART = 22
XS_GET_FEATURE = 23
XS_SET_FEATURE = 24
XS_GET_QUOTA = 25
XS_SET_QUOTA = 26
XS_TYPE_COUNT = 27
XS_INVALID = 0xFFFF
XS_NAMES = {v: k for k, v in globals().items()
            if k.startswith("XS_") and k not in ("XS_NAMES", "XS_DEBUG", "XS_TYPE_COUNT")}


class xsd_sockmsg(ctypes.LittleEndianStructure):
    _fields_ = [("type", ctypes.c_uint32), ("req_id", ctypes.c_uint32), ("tx_id", ctypes.c_uint32),
                ("len", ctypes.c_uint32)]


XSD_SOCKMSG_SIZE = 16
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

XENSTORE_RING_SIZE = 1024
XS_REQ = 0x000
XS_RSP = 0x400
XS_REQ_CONS = 0x800
XS_REQ_PROD = 0x804
XS_RSP_CONS = 0x808
XS_RSP_PROD = 0x80C
XS_SERVER_FEATURES = 0x810
XS_CONNECTION = 0x814
XS_ERROR_FIELD = 0x818

XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1
XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3


class xenstore_domain_interface(ctypes.LittleEndianStructure):
    _fields_ = [("req", ctypes.c_char * XENSTORE_RING_SIZE), ("rsp", ctypes.c_char * XENSTORE_RING_SIZE),
                ("req_cons", ctypes.c_uint32), ("req_prod", ctypes.c_uint32),
                ("rsp_cons", ctypes.c_uint32), ("rsp_prod", ctypes.c_uint32),
                ("server_features", ctypes.c_uint32), ("connection", ctypes.c_uint32),
                ("error", ctypes.c_uint32)]


assert xenstore_domain_interface.error.offset == XS_ERROR_FIELD
