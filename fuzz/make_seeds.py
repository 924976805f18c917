#!/usr/bin/env python3
"""Writes the starting corpus, fuzz/seeds/<target>/<name>, one small file per
interesting case. The files are committed; this script documents how they
were made and re-makes them (`python3 fuzz/make_seeds.py`).

The byte layouts follow the decoders in fuzz/src/harness.rs (`Input`: u8,
little-endian u32/u64, length-prefixed text).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def u8(v):
    return struct.pack("<B", v & 0xFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def text(b):
    if isinstance(b, str):
        b = b.encode()
    return u8(len(b)) + b


# -- btf_parse -----------------------------------------------------------------

def btf(types, strings):
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


class Strings:
    def __init__(self):
        self.buf = b"\0"

    def off(self, s):
        o = len(self.buf)
        self.buf += s.encode() + b"\0"
        return o


def btf_sample():
    s = Strings()
    t = b""
    # 1: int long (kind 1)
    t += struct.pack("<III", s.off("long"), 1 << 24, 8) + u32(64)
    # 2: ptr -> 1 (kind 2)
    t += struct.pack("<III", 0, 2 << 24, 1)
    # 3: func_proto (kind 13), 4 params
    params = ["start", "nr_pages", "gup_flags", "pages"]
    t += struct.pack("<III", 0, (13 << 24) | len(params), 1)
    for p in params:
        t += struct.pack("<II", s.off(p), 1)
    # 4: func pin_user_pages_fast (kind 12) -> 3
    t += struct.pack("<III", s.off("pin_user_pages_fast"), (12 << 24) | 1, 3)
    # 5: func unpin_user_pages -> 3
    t += struct.pack("<III", s.off("unpin_user_pages"), (12 << 24) | 1, 3)
    # 6: enum (kind 6), 2 values
    t += struct.pack("<III", s.off("gup_flags"), (6 << 24) | 2, 4)
    t += struct.pack("<Ii", s.off("FOLL_PIN"), 1 << 18) + struct.pack("<Ii", s.off("FOLL_LONGTERM"), 1 << 8)
    # 7: anonymous union (kind 5) with compound_head at bit 64
    t += struct.pack("<III", 0, (5 << 24) | 1, 16) + struct.pack("<III", s.off("compound_head"), 1, 64)
    # 8: struct page (kind 4) size 64: flags, then the anonymous union
    t += struct.pack("<III", s.off("page"), (4 << 24) | 2, 64)
    t += struct.pack("<III", s.off("flags"), 1, 0) + struct.pack("<III", 0, 7, 0)
    # 9: enum64 (kind 19)
    t += struct.pack("<III", s.off("big"), (19 << 24) | 1, 8) + struct.pack("<III", s.off("BIG_ONE"), 1, 1)
    # 10: decl_tag (kind 17)
    t += struct.pack("<III", s.off("tag"), 17 << 24, 4) + u32(0xFFFFFFFF)
    return btf(t, s.buf)


put("btf_parse", "sample", btf_sample())
put("btf_parse", "header_only", btf(b"", b"\0"))
put("btf_parse", "bad_magic", b"\x9f\xeb" + b"\0" * 22)
put("btf_parse", "truncated", btf_sample()[:40])

# -- kallsyms --------------------------------------------------------------------

KALLSYMS = """ffffffff815eef90 t gup_put_folio
ffffffff815ef9f0 T unpin_user_pages
ffffffff815efd00 T memfd_pin_folios
ffffffff815f3de0 T pin_user_pages_fast
ffffffff815f3e60 T pin_user_pages_remote
ffffffff815f4020 T pin_user_pages_unlocked
ffffffff81200110 t class_preempt_notrace_destructor.isra.0
ffffffff81400000 t __gup_longterm_locked.constprop.0
ffffffffc0201000 t i915_gem_userptr_get_pages\t[i915]
ffffffffc0201100 t i915_gem_object_userptr_submit_init\t[i915]
0000000000000000 T hidden_by_kptr_restrict
ffffffff81000000 D not_text
garbage
"""
put("kallsyms", "proc", u64(0xFFFFFFFF815F3DE8) + u64(0xFFFFFFFFC0201050) + u64(0) + u64(0xFFFFFFFFFFFFFFFF) + KALLSYMS.encode())
put("kallsyms", "empty", b"\0" * 32)

# -- vmstat_parse ----------------------------------------------------------------

VM = "nr_free_pages 1000\nnr_foll_pin_acquired {}\nnr_foll_pin_released {}\nthp_fault_alloc 3\n"
put("vmstat_parse", "two_readings", VM.format(2000, 1500) + "\n---\n" + VM.format(1000, 900))
put("vmstat_parse", "backwards", VM.format(10, 10) + "\n---\n" + VM.format(20, 20))
put("vmstat_parse", "missing", "nr_free_pages 1\n")
put("vmstat_parse", "duplicate", VM.format(1, 1) + "nr_foll_pin_acquired 2\n")
put("vmstat_parse", "malformed", "nr_foll_pin_acquired -1\nnr_foll_pin_released 18446744073709551616\n")

# -- map_records -------------------------------------------------------------------

def api_stats(calls, pages):
    # ApiStats: 16 u64 counters then 40 latency buckets.
    fields = [calls, pages, pages, 0, 0, 0, 0, 0, 0, 1000, pages // 2, pages // 2, 0, 0, 0, 0]
    return b"".join(u64(f) for f in fields) + b"".join(u64(1 if i == 10 else 0) for i in range(40))


def comm(name):
    b = name.encode()[:16]
    return b + b"\0" * (16 - len(b))


def snapshot(apis, attrib):
    out = u8(1)  # ncpu - 1 -> 2 CPUs
    out += u8(len(apis))
    for api, calls, pages in apis:
        out += u8(api) + api_stats(calls, pages) + api_stats(calls, pages)
    out += b"".join(u8(0) for _ in range(9))  # diag
    out += u8(1) + u32((1 << 16) | 14) + u64(3)  # errnos: api 1, EFAULT
    out += u8(len(attrib))
    for tgid, api, stack, name in attrib:
        out += u32(tgid) + u32(api) + u64(stack)
        out += u64(1) + u64(256) + u64(0) + u64(256) + u64(0) + u64(0) + u64(7) + comm(name)
    return out


def pin_owner(tgid, count, first, stack, name):
    return u32(tgid) + u32(count) + u64(first) + u64(stack) + u32(1) + u32(1) + comm(name)


rec = snapshot([(0, 1, 1)], []) + snapshot([(0, 5, 512), (9, 2, 512)], [(100, 0, 0, "fio"), (101, 9, 1, "qemu\xff\"vm\"")])
rec += u8(2) + u64(0xFFFFFFFF815F3DE8) + u64(0xFFFFFFFF81400010)  # stack 0
rec += u8(0) + u8(0)
rec += u8(2)
rec += u64(0x1000) + pin_owner(100, 256, 10, 0, "fio") + pin_owner(0, 0, 0, 0, "")
rec += u64(0x2000) + pin_owner(200, 1, 5, 1, "gone") + pin_owner(100, 3, 7, 0, "fio")
rec += u8(1) + u32(200) + u64(6)  # exited
rec += u8(1) + u64(3) + u64(12)  # unbalanced
rec += u8(0b1010) + u64(10 ** 10) + u8(0) + u8(1) + u64(512) + u64(0)
rec += u32(300) + u8(2)
put("map_records", "busy", rec)
put("map_records", "all_ones", b"\xff" * 2048)
put("map_records", "empty", b"")

# -- cli_values ---------------------------------------------------------------------

for i, v in enumerate(["1", "0.5", "0.05", "3600", "3600.0000001", "inf", "-inf", "NaN", "1e30", "-0", " 2 ", "0x10", "1_000", ""]):
    put("cli_values", f"v{i:02}", v)

# -- config_toml --------------------------------------------------------------------

put("config_toml", "full", 'listen = "127.0.0.1:10483"\ntop_processes = 10\nlong_held = 300\ntrack_capacity = 65536\nlog_format = "json"\nlog_level = "gupwatch=debug,info"\n')
put("config_toml", "bad_key", "top_procesess = 3\n")
put("config_toml", "big", "long_held = 9223372036854775807\ntop_processes = 9223372036854775807\ntrack_capacity = 4294967295\n")
put("config_toml", "weird_filter", 'log_level = "[{a=\\"b\\"}]=trace"\n')

# -- metrics_exposition ---------------------------------------------------------------

def scrape(kernel, comms, snapshot_on=True, top=4, openmetrics=False):
    out = text(kernel)
    out += u32(0xFFFFFFFF)  # every hook attached
    out += u8((1 if snapshot_on else 0) | 2 | (4 if openmetrics else 0))
    if snapshot_on:
        out += snapshot([(0, 3, 300), (2, 1, 1), (9, 4, 200)], [])
    out += u64(5000) + u64(4000)
    out += u8(len(comms))
    for i, c in enumerate(comms):
        if isinstance(c, bytes) and len(c) == 16:
            out += u8(0) + c
        else:
            out += u8(1) + text(c)
        out += u8([1, 7, 12, 18][i % 4])  # a pin, a get, an unpin, the slow-path marker
        out += u32(1000 + i) + u64(1) + text("caller\"\n\\fn") + u8(i) + u32(1) + u32(100 * (i + 1)) + u8(0) + u32(0) + u32(0) + u32(0)
    out += u8(top)
    return out


ADVERSARIAL = {
    "quotes": ['qemu "vm"', '"', '""'],
    "backslashes": ["a\\b", "\\", "\\n not a newline"],
    "newlines": ["two\nlines", "\n", "cr\r\nlf"],
    "invalid_utf8": [b"bad\xff\xfeutf8\0\0\0\0\0\0\0\0", b"\xc3\x28" + b"\0" * 14, b"\xe2\x82" + b"x" * 14],
    "empty": ["", b"\0" * 16],
    "other": ["other", "Other", "other "],
    "controls": ["tab\there", "\x01\x02\x7f", "} 1\nfake_metric 2"],
    "unicode": ["ü", "进程", "\U0001F600"],
}
for name, comms in ADVERSARIAL.items():
    put("metrics_exposition", name, scrape("6.12.0-\"test\"\n", comms))
    put("metrics_exposition", name + "_openmetrics", scrape("6.12.0-\"test\"\n", comms, openmetrics=True))
put("metrics_exposition", "reduced_mode", scrape("6.1.0", [], snapshot_on=False))
put("metrics_exposition", "top_zero", scrape("6.1.0", ["a", "b", "c"], top=0))

# -- web_config ---------------------------------------------------------------------

put("web_config", "full", """tls_server_config:
  cert_file: tls.crt
  key_file: tls.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS12
  max_version: TLS13
  prefer_server_cipher_suites: true
http_server_config:
  http2: true
  headers:
    Strict-Transport-Security: max-age=31536000
    X-Frame-Options: deny
basic_auth_users:
  prometheus: $2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi
""")
put("web_config", "inline_pem", "tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n    x\n    -----END CERTIFICATE-----\n  key: k\n")
put("web_config", "alias_bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\nbasic_auth_users: *d\n")
put("web_config", "deep", "[" * 200 + "]" * 200 + "\n")
put("web_config", "auth_header", "Basic cHJvbWV0aGV1czpzM2NyZXQ=")
put("web_config", "tags", "!!binary tls_server_config: !!str x\n")

# -- http_request ---------------------------------------------------------------------

put("http_request", "get", "GET /metrics?x=1 HTTP/1.1\r\nHost: h\r\nAccept: application/openmetrics-text;version=1.0.0;q=0.9,text/plain;q=0.1\r\nAuthorization: Basic cHJvbWV0aGV1czpzM2NyZXQ=")
put("http_request", "absolute", "GET http://h:1/abs HTTP/1.0\nHost: h")
put("http_request", "folded", "GET / HTTP/1.1\r\n folded: x")
put("http_request", "binary", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
