//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! gupwatch needs three things from BTF, and only these: whether a function
//! exists, the names of its parameters (their positions moved between kernel
//! versions), and the values of enumerators such as `FOLL_PIN` (which became
//! an enum in 6.3). aya's own BTF type is built for relocation, not lookup by
//! name, so this module parses the format directly.
//!
//! Format: `include/uapi/linux/btf.h` and Documentation/bpf/btf.rst.

use std::path::Path;

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

/// The parts of a kernel's BTF that gupwatch looks up by name.
///
/// Lean on purpose: it keeps the raw BTF (what the kernel hands out, about
/// 5 MiB on a distribution kernel) and small sorted indexes into it, and
/// decodes a type only when a lookup reaches it. A decoded copy of every
/// type, member and name (a `HashMap<String, _>` per kind) took several
/// times the file's size, and this parse is the start-up's largest
/// allocation (docs/architecture.md, "Where the daemon's memory goes").
#[derive(Clone, Debug, Default)]
pub struct KernelBtf {
    /// The whole BTF blob, header included.
    data: Box<[u8]>,
    /// Where the type section starts in `data`.
    types_at: usize,
    /// Where the string section starts in `data`, and its length.
    strings_at: usize,
    strings_len: usize,
    /// Offset of each type's record in the type section, by type id
    /// (index 0 stands for void, which has no record).
    offsets: Box<[u32]>,
    /// Functions: (name, prototype id, own id), sorted by name; of two
    /// functions of one name, the first one (as aya and libbpf pick it
    /// for an fentry program's `attach_btf_id`).
    funcs: Box<[(u32, u32, u32)]>,
    /// Enumerators: (name, enum type id, index in it), sorted by name; of
    /// two of one name, the later one.
    enumerators: Box<[(u32, u32, u32)]>,
    /// Named structs: (name, type id), sorted by name; of two of one name,
    /// the first one.
    structs: Box<[(u32, u32)]>,
}

/// One type record's fixed part.
#[derive(Clone, Copy, Debug)]
struct Record {
    name: u32,
    kind: u32,
    vlen: usize,
    /// `kind_flag`: bitfield offsets in structs, signedness in enums.
    flag: bool,
    /// Size for structs/unions, referenced type for typedefs and modifiers.
    size_or_type: u32,
    /// Where its variable part starts in the type section.
    body: usize,
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
        Self::from_bytes(data.into_boxed_slice())
    }

    /// Parses raw BTF bytes (little-endian, as on x86-64).
    pub fn parse(data: &[u8]) -> Result<KernelBtf, BtfError> {
        Self::from_bytes(data.into())
    }

    /// Indexes raw BTF bytes, keeping them. Every record is checked here
    /// (bounds, kind, the name offsets lookups follow), so that lookups
    /// can trust what they read.
    fn from_bytes(data: Box<[u8]>) -> Result<KernelBtf, BtfError> {
        let r = Reader { data: &data };
        if r.u16(0)? != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (big-endian or not BTF)".into()));
        }
        let hdr_len = r.u32(4)? as usize;
        let type_off = r.u32(8)? as usize;
        let type_len = r.u32(12)? as usize;
        let str_off = r.u32(16)? as usize;
        let str_len = r.u32(20)? as usize;
        let types_at = hdr_len.saturating_add(type_off);
        let strings_at = hdr_len.saturating_add(str_off);
        r.slice(types_at, type_len)?;
        r.slice(strings_at, str_len)?;
        let mut btf = KernelBtf { types_at, strings_at, strings_len: str_len, ..KernelBtf::default() };
        let (offsets, mut funcs, mut enumerators, mut structs) = {
            let types = r.slice(types_at, type_len)?;
            Self::index(types, str_len)?
        };
        btf.data = data;
        // Stable sorts: equal names stay in id order, so "the later one"
        // and "the first one" above are the last and first of each run.
        funcs.sort_by(|a, b| btf.str_at(a.0).cmp(btf.str_at(b.0)));
        funcs.dedup_by(|later, first| btf.str_at(later.0) == btf.str_at(first.0));
        enumerators.sort_by(|a, b| btf.str_at(a.0).cmp(btf.str_at(b.0)));
        keep_last(&mut enumerators, |a, b| btf.str_at(a.0) == btf.str_at(b.0));
        structs.sort_by(|a, b| btf.str_at(a.0).cmp(btf.str_at(b.0)));
        structs.dedup_by(|later, first| btf.str_at(later.0) == btf.str_at(first.0));
        btf.offsets = offsets.into_boxed_slice();
        btf.funcs = funcs.into_boxed_slice();
        btf.enumerators = enumerators.into_boxed_slice();
        btf.structs = structs.into_boxed_slice();
        Ok(btf)
    }

    /// One pass over the type section: each record's offset, and the
    /// functions, enumerators and structs to sort.
    #[allow(clippy::type_complexity)]
    fn index(
        types: &[u8],
        str_len: usize,
    ) -> Result<(Vec<u32>, Vec<(u32, u32, u32)>, Vec<(u32, u32, u32)>, Vec<(u32, u32)>), BtfError> {
        // A name that is looked up by: must lie in the table (its end
        // reads as the empty string).
        let check_lookup_name = |off: u32| -> Result<(), BtfError> {
            if off as usize <= str_len {
                Ok(())
            } else {
                Err(BtfError::Malformed(format!("string offset {off} out of range")))
            }
        };
        // A member or parameter name, compared while walking.
        let check_name = |off: u32| -> Result<(), BtfError> {
            if (off as usize) < str_len || off == 0 {
                Ok(())
            } else {
                Err(BtfError::Malformed(format!("string offset {off} out of range")))
            }
        };
        let t = Reader { data: types };
        let mut offsets = vec![u32::MAX];
        let (mut funcs, mut enumerators, mut structs) = (Vec::new(), Vec::new(), Vec::new());
        let mut off = 0usize;
        let mut id = 1u32;
        while off < types.len() {
            let rec = record(&t, off)?;
            let body_len = match rec.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC => 12 * rec.vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * rec.vlen,
                KIND_ENUM64 => 12 * rec.vlen,
                0..=19 => 0,
                other => return Err(BtfError::Malformed(format!("unknown kind {other} at type {id}"))),
            };
            let at = u32::try_from(off).map_err(|_| BtfError::Malformed("type section past 4 GiB".into()))?;
            offsets.push(at);
            match rec.kind {
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..rec.vlen {
                        let m = rec.body + 12 * i;
                        check_name(t.u32(m)?)?;
                        t.u32(m + 8)?;
                    }
                    if rec.kind == KIND_STRUCT && rec.name != 0 {
                        check_lookup_name(rec.name)?;
                        structs.push((rec.name, id));
                    }
                }
                KIND_FUNC => {
                    check_lookup_name(rec.name)?;
                    funcs.push((rec.name, rec.size_or_type, id));
                }
                KIND_FUNC_PROTO => {
                    for i in 0..rec.vlen {
                        check_name(t.u32(rec.body + 8 * i)?)?;
                    }
                }
                KIND_ENUM | KIND_ENUM64 => {
                    let size = if rec.kind == KIND_ENUM { 8 } else { 12 };
                    for i in 0..rec.vlen {
                        let e = rec.body + size * i;
                        check_lookup_name(t.u32(e)?)?;
                        t.u32(e + size - 4)?;
                        enumerators.push((t.u32(e)?, id, i as u32));
                    }
                }
                _ => {}
            }
            off = rec.body + body_len;
            id = id.checked_add(1).ok_or_else(|| BtfError::Malformed("too many types".into()))?;
        }
        // Functions whose prototype is no prototype have no parameters to
        // give: left out, as if BTF did not describe them.
        funcs.retain(|&(_, proto, _)| {
            let at = offsets.get(proto as usize).filter(|&&o| o != u32::MAX);
            at.is_some_and(|&o| record(&t, o as usize).is_ok_and(|r| r.kind == KIND_FUNC_PROTO))
        });
        Ok((offsets, funcs, enumerators, structs))
    }

    fn types(&self) -> Reader<'_> {
        Reader { data: self.data.get(self.types_at..).unwrap_or_default() }
    }

    /// The record of type `id` (`None` for void and ids past the end).
    fn record(&self, id: u32) -> Option<Record> {
        let at = *self.offsets.get(id as usize).filter(|&&o| o != u32::MAX)?;
        record(&self.types(), at as usize).ok()
    }

    /// The string at `off` (checked at parse time to lie in the table).
    fn str_at(&self, off: u32) -> &[u8] {
        let end = self.strings_at.saturating_add(self.strings_len);
        let s = self.data.get(self.strings_at..end).and_then(|s| s.get(off as usize..)).unwrap_or_default();
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    /// Binary search of a name-sorted index.
    fn find<T: Copy>(&self, index: &[T], name_of: impl Fn(&T) -> u32, name: &str) -> Option<T> {
        let i = index.binary_search_by(|e| self.str_at(name_of(e)).cmp(name.as_bytes())).ok()?;
        index.get(i).copied()
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        let (_, id) = self.find(&self.structs, |e| e.0, name)?;
        self.record(id).map(|r| r.size_or_type)
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions (as C does: `page->compound_head` lives in one).
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let (_, id) = self.find(&self.structs, |e| e.0, name)?;
        self.find_member(id, member, 0, 0).map(|bits| bits / 8)
    }

    /// The members of a struct or union: (name, type id, bit offset).
    fn members(&self, id: u32) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        let rec = self.record(id).filter(|r| matches!(r.kind, KIND_STRUCT | KIND_UNION));
        let t = self.types();
        (0..rec.map_or(0, |r| r.vlen)).filter_map(move |i| {
            let r = rec?;
            let m = r.body + 12 * i;
            let raw = t.u32(m + 8).ok()?;
            Some((t.u32(m).ok()?, t.u32(m + 4).ok()?, if r.flag { raw & 0xff_ffff } else { raw }))
        })
    }

    fn find_member(&self, id: u32, member: &str, base_bits: u32, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        if let Some((_, _, bits)) = self.members(id).find(|(name, _, _)| self.str_at(*name) == member.as_bytes()) {
            return base_bits.checked_add(bits);
        }
        for (_, type_id, bits) in self.members(id).filter(|(name, _, _)| self.str_at(*name).is_empty()) {
            let inner = self.strip_modifiers(type_id);
            // Offsets past u32 come only from malformed BTF (found by the
            // btf_parse fuzz target): no such member, rather than overflow.
            let Some(base) = base_bits.checked_add(bits) else { continue };
            if let Some(found) = self.find_member(inner, member, base, depth + 1) {
                return Some(found);
            }
        }
        None
    }

    /// Follows typedefs and const/volatile/restrict/type-tag to the type.
    fn strip_modifiers(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.record(id) {
                Some(t) if matches!(t.kind, 8..=11 | 18) => id = t.size_or_type,
                _ => break,
            }
        }
        id
    }

    /// The type id of a function (what an fentry program's
    /// `attach_btf_id` names), if BTF describes it.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.find(&self.funcs, |e| e.0, name).map(|(_, _, id)| id)
    }

    /// The prototype of a function, if BTF describes it.
    pub fn func(&self, name: &str) -> Option<FuncProto> {
        let (_, proto, _) = self.find(&self.funcs, |e| e.0, name)?;
        let rec = self.record(proto)?;
        let t = self.types();
        let params = (0..rec.vlen)
            .map(|i| t.u32(rec.body + 8 * i).map(|at| String::from_utf8_lossy(self.str_at(at)).into_owned()))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(FuncProto { params })
    }

    /// The value of an enumerator (any enum), if BTF has it.
    pub fn enumerator(&self, name: &str) -> Option<i128> {
        let (_, id, i) = self.find(&self.enumerators, |e| e.0, name)?;
        let rec = self.record(id)?;
        let t = self.types();
        let i = i as usize;
        if rec.kind == KIND_ENUM64 {
            let lo = t.u32(rec.body + 12 * i + 4).ok()? as u64;
            let hi = t.u32(rec.body + 12 * i + 8).ok()? as u64;
            return Some(((hi << 32) | lo) as i128);
        }
        let raw = t.u32(rec.body + 8 * i + 4).ok()?;
        Some(if rec.flag { raw as i32 as i128 } else { raw as i128 })
    }
}

/// Reads the fixed part of the type record at `off`.
fn record(t: &Reader<'_>, off: usize) -> Result<Record, BtfError> {
    let info = t.u32(off + 4)?;
    Ok(Record {
        name: t.u32(off)?,
        kind: (info >> 24) & 0x1f,
        vlen: (info & 0xffff) as usize,
        flag: info >> 31 == 1,
        size_or_type: t.u32(off + 8)?,
        body: off + 12,
    })
}

/// Keeps the last element of each run of equal ones (`dedup` keeps the first).
fn keep_last<T: Copy>(v: &mut Vec<T>, same: impl Fn(&T, &T) -> bool) {
    v.reverse();
    v.dedup_by(|later, first| same(later, first));
    v.reverse();
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
    fn functions_have_their_type_ids_and_names_resolve_as_before() {
        let mut b = Builder::new();
        let long = b.int();
        let first = b.func("dup", &["a"], long);
        b.func("dup", &["b", "c"], long);
        let f = b.func("unpin_user_page", &["page"], long);
        b.enumeration(&[("E", 1)]);
        b.enumeration(&[("E", 2)]);
        let btf = KernelBtf::parse(&b.build()).expect("valid BTF");
        assert_eq!(btf.func_id("unpin_user_page"), Some(f));
        assert_eq!(btf.func_id("dup"), Some(first), "the first, as aya picks for fentry");
        assert_eq!(btf.func("dup").map(|p| p.params), Some(vec!["a".to_string()]));
        assert_eq!(btf.enumerator("E"), Some(2), "of two enumerators of one name, the later");
        assert_eq!(btf.func_id("long"), None, "an int is no function");
        assert_eq!(btf.struct_size("long"), None);
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
