//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! gupwatch needs three things from BTF, and only these: whether a function
//! exists, the names of its parameters (their positions moved between kernel
//! versions), and the values of enumerators such as `FOLL_PIN` (which became
//! an enum in 6.3). aya's own BTF type is built for relocation, not lookup by
//! name, so this module parses the format directly.
//!
//! Format: `include/uapi/linux/btf.h` and Documentation/bpf/btf.rst.

use std::{collections::HashMap, path::Path};

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read BTF from {path}: {source}. The kernel needs CONFIG_DEBUG_INFO_BTF=y for fentry/fexit programs; without it gupwatch can still use kprobes")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The data is not BTF or is cut short.
    #[error("malformed BTF: {0}")]
    Malformed(String),
}

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// A function's prototype as BTF describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncProto {
    /// Parameter names, in order (empty strings where BTF has none).
    pub params: Vec<String>,
}

impl FuncProto {
    /// Position of the first parameter whose name is one of `names`.
    pub fn param_index(&self, names: &[&str]) -> Option<usize> {
        self.params.iter().position(|p| names.contains(&p.as_str()))
    }
}

/// A struct or union member. Names are offsets into the string table:
/// a distribution kernel's BTF has some 100,000 members and as many
/// prototype parameters, and a `String` each made parsing peak at ~45 MiB.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

/// What gupwatch keeps of each type: enough to walk struct members.
#[derive(Clone, Debug, Default)]
struct TypeInfo {
    kind: u32,
    /// Size for structs/unions, referenced type for typedefs and modifiers.
    size_or_type: u32,
    members: Box<[Member]>,
}

/// The parts of a kernel's BTF that gupwatch looks up by name.
#[derive(Clone, Debug, Default)]
pub struct KernelBtf {
    /// The string section, which names point into.
    strings: Box<[u8]>,
    /// Function name -> its parameters' name offsets.
    funcs: HashMap<String, Box<[u32]>>,
    enumerators: HashMap<String, i128>,
    /// Indexed by type id (0 = void).
    types: Vec<TypeInfo>,
    structs: HashMap<String, u32>,
}

impl KernelBtf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<KernelBtf, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    /// Reads BTF from a file (a raw `.BTF` section, as sysfs exposes it).
    pub fn from_file(path: &Path) -> Result<KernelBtf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses raw BTF bytes (little-endian, as on x86-64).
    pub fn parse(data: &[u8]) -> Result<KernelBtf, BtfError> {
        let r = Reader { data };
        if r.u16(0)? != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (big-endian or not BTF)".into()));
        }
        let hdr_len = r.u32(4)? as usize;
        let type_off = r.u32(8)? as usize;
        let type_len = r.u32(12)? as usize;
        let str_off = r.u32(16)? as usize;
        let str_len = r.u32(20)? as usize;
        let types = r.slice(hdr_len + type_off, type_len)?;
        let strings = r.slice(hdr_len + str_off, str_len)?;
        let name = |off: u32| -> Result<String, BtfError> {
            let s = strings
                .get(off as usize..)
                .ok_or_else(|| BtfError::Malformed(format!("string offset {off} out of range")))?;
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            Ok(String::from_utf8_lossy(&s[..end]).into_owned())
        };
        let check_name = |off: u32| -> Result<(), BtfError> {
            if (off as usize) < strings.len() || off == 0 {
                Ok(())
            } else {
                Err(BtfError::Malformed(format!("string offset {off} out of range")))
            }
        };

        let t = Reader { data: types };
        // Type ids start at 1; id 0 is void.
        let mut protos: HashMap<u32, Box<[u32]>> = HashMap::new();
        let mut funcs: Vec<(String, u32)> = Vec::new();
        let mut enumerators = HashMap::new();
        let mut all_types = vec![TypeInfo::default()];
        let mut structs = HashMap::new();
        let mut off = 0usize;
        let mut id = 1u32;
        while off < types.len() {
            let name_off = t.u32(off)?;
            let info = t.u32(off + 4)?;
            let size_or_type = t.u32(off + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let body = off + 12;
            let body_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_ENUM64 => 12 * vlen,
                0..=19 => 0,
                other => return Err(BtfError::Malformed(format!("unknown kind {other} at type {id}"))),
            };
            let mut info_entry = TypeInfo { kind, size_or_type, members: Box::default() };
            if let KIND_STRUCT | KIND_UNION = kind {
                let bitfields = info >> 31 == 1;
                let mut members = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let m = body + 12 * i;
                    let raw = t.u32(m + 8)?;
                    let name_at = t.u32(m)?;
                    // Checked now so that lookups can trust every offset.
                    check_name(name_at)?;
                    members.push(Member {
                        name: name_at,
                        type_id: t.u32(m + 4)?,
                        bit_offset: if bitfields { raw & 0xff_ffff } else { raw },
                    });
                }
                info_entry.members = members.into_boxed_slice();
                if kind == KIND_STRUCT {
                    let n = name(name_off)?;
                    if !n.is_empty() {
                        structs.entry(n).or_insert(id);
                    }
                }
            }
            match kind {
                KIND_FUNC => funcs.push((name(name_off)?, size_or_type)),
                KIND_FUNC_PROTO => {
                    let mut params = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let at = t.u32(body + 8 * i)?;
                        check_name(at)?;
                        params.push(at);
                    }
                    protos.insert(id, params.into_boxed_slice());
                }
                KIND_ENUM => {
                    let signed = info >> 31 == 1;
                    for i in 0..vlen {
                        let raw = t.u32(body + 8 * i + 4)?;
                        let v = if signed { raw as i32 as i128 } else { raw as i128 };
                        enumerators.insert(name(t.u32(body + 8 * i)?)?, v);
                    }
                }
                KIND_ENUM64 => {
                    for i in 0..vlen {
                        let lo = t.u32(body + 12 * i + 4)? as u64;
                        let hi = t.u32(body + 12 * i + 8)? as u64;
                        enumerators.insert(name(t.u32(body + 12 * i)?)?, ((hi << 32) | lo) as i128);
                    }
                }
                _ => {}
            }
            all_types.push(info_entry);
            off = body + body_len;
            id += 1;
        }
        let funcs = funcs
            .into_iter()
            .filter_map(|(n, proto)| protos.get(&proto).map(|p| (n, p.clone())))
            .collect();
        drop(protos);
        Ok(KernelBtf { strings: strings.into(), funcs, enumerators, types: all_types, structs })
    }

    /// The string at `off` (checked at parse time to lie in the table).
    fn str_at(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        self.structs.get(name).and_then(|id| self.types.get(*id as usize)).map(|t| t.size_or_type)
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions (as C does: `page->compound_head` lives in one).
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let id = *self.structs.get(name)?;
        self.find_member(id, member, 0, 0).map(|bits| bits / 8)
    }

    fn find_member(&self, id: u32, member: &str, base_bits: u32, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let t = self.types.get(id as usize)?;
        for m in t.members.iter() {
            if self.str_at(m.name) == member.as_bytes() {
                return base_bits.checked_add(m.bit_offset);
            }
        }
        for m in t.members.iter().filter(|m| self.str_at(m.name).is_empty()) {
            let inner = self.strip_modifiers(m.type_id);
            // Offsets past u32 come only from malformed BTF (found by the
            // btf_parse fuzz target): no such member, rather than overflow.
            let Some(base) = base_bits.checked_add(m.bit_offset) else { continue };
            if let Some(found) = self.find_member(inner, member, base, depth + 1) {
                return Some(found);
            }
        }
        None
    }

    /// Follows typedefs and const/volatile/restrict/type-tag to the type.
    fn strip_modifiers(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.types.get(id as usize) {
                Some(t) if matches!(t.kind, 8..=11 | 18) => id = t.size_or_type,
                _ => break,
            }
        }
        id
    }

    /// The prototype of a function, if BTF describes it.
    pub fn func(&self, name: &str) -> Option<FuncProto> {
        let params = self.funcs.get(name)?;
        Some(FuncProto {
            params: params.iter().map(|&at| String::from_utf8_lossy(self.str_at(at)).into_owned()).collect(),
        })
    }

    /// The value of an enumerator (any enum), if BTF has it.
    pub fn enumerator(&self, name: &str) -> Option<i128> {
        self.enumerators.get(name).copied()
    }
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn slice(&self, off: usize, len: usize) -> Result<&'a [u8], BtfError> {
        self.data
            .get(off..off.saturating_add(len))
            .ok_or_else(|| BtfError::Malformed(format!("section {off}+{len} past the end ({})", self.data.len())))
    }
    fn u16(&self, off: usize) -> Result<u16, BtfError> {
        let b = self.slice(off, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, off: usize) -> Result<u32, BtfError> {
        let b = self.slice(off, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF bytes from (name, info, size_or_type, body words) entries.
    pub(crate) struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Builder { types: vec![], strings: vec![0], next_id: 1 }
        }
        fn str(&mut self, s: &str) -> u32 {
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn ty(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32, body: &[u32]) -> u32 {
            let n = if name.is_empty() { 0 } else { self.str(name) };
            for w in [n, (kind << 24) | vlen, size_or_type].iter().chain(body) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }
        pub(crate) fn int(&mut self) -> u32 {
            self.ty("long", KIND_INT, 0, 8, &[64])
        }
        pub(crate) fn func(&mut self, name: &str, params: &[&str], ret: u32) -> u32 {
            let mut body = vec![];
            for p in params {
                let o = self.str(p);
                body.extend([o, ret]);
            }
            let proto = self.ty("", KIND_FUNC_PROTO, params.len() as u32, ret, &body);
            self.ty(name, KIND_FUNC, 1, proto, &[])
        }
        pub(crate) fn enumeration(&mut self, values: &[(&str, u32)]) -> u32 {
            let mut body = vec![];
            for (n, v) in values {
                let o = self.str(n);
                body.extend([o, *v]);
            }
            self.ty("", KIND_ENUM, values.len() as u32, 4, &body)
        }
        /// A struct (or union with `union = true`) of (name, type, byte offset) members.
        pub(crate) fn composite(&mut self, name: &str, union: bool, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let mut body = vec![];
            for (n, ty, off) in members {
                let o = if n.is_empty() { 0 } else { self.str(n) };
                body.extend([o, *ty, off * 8]);
            }
            self.ty(name, if union { KIND_UNION } else { KIND_STRUCT }, members.len() as u32, size, &body)
        }
        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = vec![];
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [24u32, 0, self.types.len() as u32, self.types.len() as u32, self.strings.len() as u32] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    #[test]
    fn finds_functions_params_and_enumerators() {
        let mut b = Builder::new();
        let long = b.int();
        b.func("pin_user_pages_unlocked", &["start", "nr_pages", "pages", "gup_flags"], long);
        b.enumeration(&[("FOLL_PIN", 1 << 19), ("FOLL_LONGTERM", 1 << 8)]);
        let btf = KernelBtf::parse(&b.build()).expect("valid BTF");
        let f = btf.func("pin_user_pages_unlocked").expect("present");
        assert_eq!(f.params, ["start", "nr_pages", "pages", "gup_flags"]);
        assert_eq!(f.param_index(&["gup_flags"]), Some(3));
        assert_eq!(f.param_index(&["npages", "nr_pages"]), Some(1));
        assert_eq!(btf.enumerator("FOLL_PIN"), Some(1 << 19));
        assert!(btf.func("pin_user_pages_fast_only").is_none());
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let mut b = Builder::new();
        let long = b.int();
        let inner = b.composite("", false, 40, &[("lru", long, 0), ("compound_head", long, 0)]);
        let u = b.composite("", true, 40, &[("", inner, 0)]);
        b.composite("page", false, 64, &[("flags", long, 0), ("", u, 8), ("_refcount", long, 52)]);
        let btf = KernelBtf::parse(&b.build()).expect("valid");
        assert_eq!(btf.struct_size("page"), Some(64));
        assert_eq!(btf.member_offset("page", "compound_head"), Some(8));
        assert_eq!(btf.member_offset("page", "_refcount"), Some(52));
        assert_eq!(btf.member_offset("page", "nope"), None);
        assert_eq!(btf.member_offset("folio", "flags"), None);
    }

    /// The btf_parse fuzz target's crash: member offsets summing past u32
    /// (only in malformed BTF) overflowed; now such a member is not found.
    #[test]
    fn member_offsets_past_u32_are_not_found() {
        let mut b = Builder::new();
        let long = b.int();
        let inner = b.composite("", false, 16, &[("lru", long, 0), ("compound_head", long, 1)]);
        b.composite("page", false, 64, &[("", inner, 0x1fff_ffff)]);
        let btf = KernelBtf::parse(&b.build()).expect("parses");
        assert_eq!(btf.member_offset("page", "lru"), Some(0x1fff_ffff));
        assert_eq!(btf.member_offset("page", "compound_head"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(KernelBtf::parse(b"nope"), Err(BtfError::Malformed(_))));
        assert!(matches!(KernelBtf::parse(&[0x9f, 0xeb, 1, 0, 24, 0]), Err(BtfError::Malformed(_))));
        let mut b = Builder::new();
        b.int();
        let mut data = b.build();
        data.truncate(data.len() - 3);
        // Truncated string section: an error, never a panic.
        assert!(KernelBtf::parse(&data).is_err());
    }
}
