//! `/proc/kallsyms`: which kernel functions exist and where they live.
//!
//! BTF only lists functions the compiler kept and described; kallsyms also
//! has static functions, module functions and compiler clones
//! (`foo.isra.0`), which is what kprobes can attach to.

/// Errors reading kallsyms.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    /// `/proc/kallsyms` could not be read.
    #[error("cannot read /proc/kallsyms: {0}. Is /proc mounted?")]
    Read(#[from] std::io::Error),
}

/// A text symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// Its address (0 when kptr_restrict hides addresses from us).
    pub addr: u64,
    /// The module it belongs to, or `None` for vmlinux.
    pub module: Option<&'a str>,
}

/// One text symbol: 16 bytes, its name in the arena.
#[derive(Clone, Copy, Debug)]
struct Sym {
    addr: u64,
    /// Where its name starts in `names`, and its length.
    start: u32,
    len: u16,
    /// Index into `modules`, or `NO_MODULE`.
    module: u16,
}

const NO_MODULE: u16 = u16::MAX;

/// The kernel's text symbols, by name and by address.
///
/// Compact on purpose: a distribution kernel has 100,000+ text symbols and
/// the daemon keeps them all for symbolization. Names live once in one
/// arena, each symbol is one 16-byte record in address order, and the
/// name index is 4 bytes a name; `from_proc` reads the file a line at a
/// time, never whole (it is some 10 MiB of text). See docs/architecture.md,
/// "Where the daemon's memory goes".
#[derive(Clone, Debug, Default)]
pub struct Kallsyms {
    names: String,
    modules: Vec<String>,
    /// Every text symbol, sorted by address; those whose address reads as
    /// zero (hidden by kptr_restrict) first, in file order.
    syms: Vec<Sym>,
    /// Index into `syms` of the first definition of each name (vmlinux
    /// precedes modules in the file), sorted by name.
    by_name: Vec<u32>,
}

/// One symbolized stack frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The function containing the address.
    pub function: &'a str,
    /// The offset into it.
    pub offset: u64,
    /// The module the function belongs to (`[nvidia]` in kallsyms), or
    /// `None` for vmlinux.
    pub module: Option<&'a str>,
}

/// How far past its nearest preceding symbol an address may lie and still
/// be named after it. No kernel function is anywhere near this large; an
/// address further out lies where kallsyms listed nothing when it was
/// read (a module loaded later, or the gap between vmlinux and the module
/// area), and naming it after whatever symbol precedes it would attribute
/// a driver's pins to an unrelated function.
pub const MAX_SYMBOL_OFFSET: u64 = 1 << 20;

impl Kallsyms {
    /// Reads the running kernel's symbols.
    pub fn from_proc() -> Result<Kallsyms, KallsymsError> {
        let file = std::fs::File::open("/proc/kallsyms")?;
        Ok(Self::read(std::io::BufReader::new(file))?)
    }

    /// Parses kallsyms text. Lines that do not parse are skipped: the file
    /// is the kernel's, and one odd line must not hide the rest.
    pub fn parse(text: &str) -> Kallsyms {
        // Reading from a slice cannot fail.
        Self::read(text.as_bytes()).unwrap_or_default()
    }

    /// Parses kallsyms a line at a time (lines that are not UTF-8 or do not
    /// parse are skipped, as in [`Kallsyms::parse`]).
    pub fn read(mut input: impl std::io::BufRead) -> std::io::Result<Kallsyms> {
        let mut k = Kallsyms::default();
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if let Ok(text) = std::str::from_utf8(&line) {
                if !k.add_line(text) {
                    break;
                }
            }
        }
        k.index();
        Ok(k)
    }

    /// Adds one line's symbol if it is text; false once the name arena is
    /// full (4 GiB of names: nothing real).
    fn add_line(&mut self, line: &str) -> bool {
        let mut it = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
            return true;
        };
        if !matches!(kind, "t" | "T" | "w" | "W") || name.len() > u16::MAX as usize {
            return true;
        }
        let Ok(start) = u32::try_from(self.names.len()) else { return false };
        self.names.push_str(name);
        let module = match it.next().map(|m| m.trim_start_matches('[').trim_end_matches(']')) {
            None => NO_MODULE,
            Some(m) => match self.modules.iter().position(|x| x == m) {
                Some(i) => i as u16,
                None if self.modules.len() < NO_MODULE as usize => {
                    self.modules.push(m.to_string());
                    (self.modules.len() - 1) as u16
                }
                None => NO_MODULE,
            },
        };
        let addr = u64::from_str_radix(addr, 16).unwrap_or(0);
        self.syms.push(Sym { addr, start, len: name.len() as u16, module });
        true
    }

    /// Builds the name index over `syms` (still in file order), then puts
    /// `syms` in address order.
    fn index(&mut self) {
        let (names, syms) = (&self.names, &self.syms);
        let text_of = |s: &Sym| &names[s.start as usize..s.start as usize + s.len as usize];
        // Stable: of equal names, the earliest line first, and it stays.
        let mut by_name: Vec<u32> = (0..syms.len() as u32).collect();
        by_name.sort_by(|&a, &b| text_of(&syms[a as usize]).cmp(text_of(&syms[b as usize])));
        by_name.dedup_by(|later, first| text_of(&syms[*later as usize]) == text_of(&syms[*first as usize]));
        // Module symbols follow vmlinux's in the file, module by module, in
        // no address order (a module's own symbols are not sorted either):
        // only a sort of the whole table makes the nearest-preceding search
        // below correct. Stable, so hidden (zero) addresses keep file order.
        let mut order: Vec<u32> = (0..syms.len() as u32).collect();
        order.sort_by_key(|&i| syms[i as usize].addr);
        let mut position = vec![0u32; syms.len()];
        for (p, &i) in order.iter().enumerate() {
            position[i as usize] = p as u32;
        }
        for i in by_name.iter_mut() {
            *i = position[*i as usize];
        }
        drop(position);
        let sorted: Vec<Sym> = order.iter().map(|&i| syms[i as usize]).collect();
        self.syms = sorted;
        self.by_name = by_name;
        self.names.shrink_to_fit();
        self.by_name.shrink_to_fit();
    }

    /// The text symbol of a name-index entry.
    fn named(&self, i: u32) -> &Sym {
        // Indexes are built from `syms` and never outlive it.
        &self.syms[i as usize]
    }

    fn name_of(&self, s: &Sym) -> &str {
        self.text(s.start, s.len)
    }

    fn symbol(&self, s: &Sym) -> Symbol<'_> {
        Symbol { addr: s.addr, module: self.modules.get(s.module as usize).map(String::as_str) }
    }

    /// A table of text symbols at consecutive made-up addresses, in the
    /// order given: the fixture the plan's and the reference model's tests
    /// resolve against.
    #[cfg(test)]
    pub(crate) fn with_functions(names: &[&str]) -> Kallsyms {
        let text: String = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{:016x} T {n}\n", 0xffffffff81000000u64 + i as u64 * 16))
            .collect();
        Kallsyms::parse(&text)
    }

    /// Whether addresses were readable (kptr_restrict and the reader's
    /// capabilities decide; without them every address reads as zero).
    pub fn has_addresses(&self) -> bool {
        self.syms.last().is_some_and(|s| s.addr != 0)
    }

    /// Position in `by_name` of this exact name.
    fn name_index(&self, name: &str) -> Option<usize> {
        self.by_name.binary_search_by(|&i| self.name_of(self.named(i)).cmp(name)).ok()
    }

    /// The symbol with exactly this name.
    pub fn get(&self, name: &str) -> Option<Symbol<'_>> {
        let i = self.name_index(name)?;
        Some(self.symbol(self.named(self.by_name[i])))
    }

    /// Whether a function of this name exists, exactly or as a compiler clone
    /// (`name.isra.0`, `name.constprop.0`, ...). Returns the symbol to attach to.
    pub fn find_function(&self, name: &str) -> Option<(&str, Symbol<'_>)> {
        if let Some(i) = self.name_index(name) {
            let s = self.named(self.by_name[i]);
            return Some((self.name_of(s), self.symbol(s)));
        }
        // Clones sort right after `name.`: the first of them is the least.
        let prefix = format!("{name}.");
        let i = self.by_name.partition_point(|&i| self.name_of(self.named(i)) < prefix.as_str());
        let s = self.named(*self.by_name.get(i)?);
        self.name_of(s).starts_with(&prefix).then(|| (self.name_of(s), self.symbol(s)))
    }

    /// The function containing `addr` and the offset into it. `None` when
    /// addresses are hidden (kptr_restrict) or `addr` precedes every symbol.
    pub fn symbolize(&self, addr: u64) -> Option<(&str, u64)> {
        self.frame(addr).map(|f| (f.function, f.offset))
    }

    /// The function containing `addr`, the offset into it and its module.
    /// `None` when addresses are hidden, `addr` precedes every symbol, or
    /// it lies more than [`MAX_SYMBOL_OFFSET`] past the nearest symbol.
    pub fn frame(&self, addr: u64) -> Option<Frame<'_>> {
        let i = self.syms.partition_point(|s| s.addr <= addr);
        // A hidden address names nothing.
        let s = self.syms.get(i.checked_sub(1)?).filter(|s| s.addr != 0)?;
        let offset = addr - s.addr;
        (offset <= MAX_SYMBOL_OFFSET).then(|| Frame {
            function: self.name_of(s),
            offset,
            module: self.modules.get(s.module as usize).map(String::as_str),
        })
    }

    /// The text of the function at `addr`: from it to the next symbol's
    /// address. `None` when addresses are hidden or nothing follows it.
    pub fn text_range(&self, addr: u64) -> Option<(u64, u64)> {
        if addr == 0 {
            return None;
        }
        let i = self.syms.partition_point(|s| s.addr <= addr);
        let end = self.syms.get(i)?;
        Some((addr, end.addr))
    }

    /// The span of the core kernel's text (vmlinux, not modules), from its
    /// lowest to just past its highest function address. Modules and BPF
    /// trampolines live outside it.
    pub fn core_text(&self) -> Option<(u64, u64)> {
        let core = self.by_name.iter().map(|&i| self.named(i)).filter(|s| s.module == NO_MODULE && s.addr != 0);
        let (lo, hi) = core.map(|s| s.addr).fold((u64::MAX, 0), |(lo, hi), a| (lo.min(a), hi.max(a)));
        // A symbol at the very top of the address space (only a corrupt
        // table has one) leaves no address "just past" it: no span.
        if lo < hi { Some((lo, hi.checked_add(1)?)) } else { None }
    }

    /// Whether any module symbol of this module is loaded.
    pub fn has_module(&self, module: &str) -> bool {
        self.modules.iter().any(|m| m == module)
    }

    /// Number of text symbols.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when no text symbol was found.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl Kallsyms {
    fn text(&self, start: u32, len: u16) -> &str {
        &self.names[start as usize..start as usize + len as usize]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff815f0530 T unpin_user_page
ffffffff815f3de0 T pin_user_pages_fast
ffffffff815f1000 t __gup_longterm_locked.isra.0
ffffffff815f2000 D some_data
ffffffffc0a00000 t i915_gem_userptr_ioctl\t[i915]
garbage
";

    #[test]
    fn a_function_ends_where_the_next_symbol_begins() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.text_range(0xffffffff815f0530), Some((0xffffffff815f0530, 0xffffffff815f1000)));
        // Data symbols are not text: the next function bounds it.
        assert_eq!(k.text_range(0xffffffff815f1000), Some((0xffffffff815f1000, 0xffffffff815f3de0)));
        assert_eq!(k.text_range(0), None);
        assert_eq!(k.text_range(0xffffffffc0a00000), None, "nothing follows the last symbol");
    }

    #[test]
    fn core_text_leaves_modules_out() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.core_text(), Some((0xffffffff815f0530, 0xffffffff815f3de1)));
        assert_eq!(Kallsyms::parse("0000000000000000 T unpin_user_page\n").core_text(), None);
        // Found by the kallsyms fuzz target: this used to overflow.
        let top = "ffffffff815f0530 T a\nffffffffffffffff T b\n";
        assert_eq!(Kallsyms::parse(top).core_text(), None);
    }

    #[test]
    fn parses_text_symbols_and_modules() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.len(), 4);
        assert_eq!(k.get("pin_user_pages_fast").map(|s| s.addr), Some(0xffffffff815f3de0));
        assert!(k.get("some_data").is_none());
        assert_eq!(
            k.get("i915_gem_userptr_ioctl").and_then(|s| s.module),
            Some("i915")
        );
        assert!(k.has_module("i915"));
        assert!(!k.has_module("amdgpu"));
    }

    #[test]
    fn symbolizes_addresses() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.symbolize(0xffffffff815f0535), Some(("unpin_user_page", 5)));
        assert_eq!(k.symbolize(0xffffffff815f3de0), Some(("pin_user_pages_fast", 0)));
        assert_eq!(k.symbolize(0x1000), None);
    }

    #[test]
    fn the_first_definition_wins_and_every_one_symbolizes() {
        let k = Kallsyms::parse(
            "ffffffff81000000 t dup\nffffffffc0000000 t dup\t[mod]\nffffffff81000100 t x.isra.2\nffffffff81000200 t x.constprop.0\n",
        );
        assert_eq!(k.len(), 3);
        assert_eq!(k.get("dup"), Some(Symbol { addr: 0xffffffff81000000, module: None }));
        assert_eq!(k.symbolize(0xffffffffc0000004), Some(("dup", 4)), "the module's copy still names its address");
        assert_eq!(k.find_function("x").map(|(n, _)| n), Some("x.constprop.0"), "the least clone name");
        assert!(k.has_module("mod"));
        assert!(Kallsyms::parse("").is_empty());
    }

    #[test]
    fn hidden_addresses_name_nothing_but_names_resolve() {
        let k = Kallsyms::parse("0000000000000000 T b\n0000000000000000 t a\t[m]\n0000000000000000 T b.isra.0\n");
        assert!(!k.has_addresses());
        assert_eq!(k.get("a"), Some(Symbol { addr: 0, module: Some("m") }));
        assert_eq!(k.find_function("b").map(|(n, _)| n), Some("b"));
        assert_eq!(k.frame(0), None);
        assert_eq!(k.frame(0x10), None, "a zero address is no symbol to name from");
        assert_eq!(k.text_range(0x10), None);
        assert_eq!(k.core_text(), None);
    }

    #[test]
    fn reading_skips_lines_that_are_not_text() {
        let mut bytes = b"ffffffff81000000 T a\n".to_vec();
        bytes.extend_from_slice(b"ffffffff81000010 T \xff\xfe\n");
        bytes.extend_from_slice(b"ffffffff81000020 T c");
        let k = Kallsyms::read(&bytes[..]).expect("a slice reads");
        assert_eq!(k.len(), 2, "the line that is not UTF-8 is skipped, the unterminated last one kept");
        assert_eq!(k.symbolize(0xffffffff81000024), Some(("c", 4)));
        assert_eq!(k.symbolize(0xffffffff81000014), Some(("a", 0x14)));
    }

    #[test]
    fn finds_compiler_clones() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(
            k.find_function("__gup_longterm_locked").map(|(n, _)| n),
            Some("__gup_longterm_locked.isra.0")
        );
        assert_eq!(k.find_function("unpin_user_page").map(|(n, _)| n), Some("unpin_user_page"));
        assert!(k.find_function("unpin_user_pag").is_none());
    }

    /// What /proc/kallsyms looks like with GPU and RDMA drivers loaded:
    /// vmlinux first, in address order, then each module's symbols, its
    /// own out of order, and modules not in address order either.
    pub(crate) const WITH_MODULES: &str = "\
ffffffff81000000 T _stext
ffffffff815f0530 T unpin_user_page
ffffffff815f3de0 T pin_user_pages_fast
ffffffff815f4200 T pin_user_pages
ffffffff815f5000 T iov_iter_extract_pages
ffffffff81700000 T dma_buf_map_attachment
ffffffff81a00000 T __x64_sys_ioctl
ffffffffc0a1b2c0 t os_lock_user_pages\t[nvidia]
ffffffffc0a10000 t nvidia_ioctl\t[nvidia]
ffffffffc0a1c400 t os_unlock_user_pages\t[nvidia]
ffffffffc0a20000 d nv_data\t[nvidia]
ffffffffc0300200 t mlx5_ib_reg_user_mr\t[mlx5_ib]
ffffffffc0200100 T ib_umem_get\t[ib_core]
ffffffffc0200900 t ib_umem_release\t[ib_core]
ffffffffc0600000 t bpf_prog_6deef7357e7b4530_fentry\t[bpf]
";

    #[test]
    fn module_symbols_symbolize_with_their_module() {
        let k = Kallsyms::parse(WITH_MODULES);
        assert_eq!(
            k.frame(0xffffffffc0a1b2c0 + 0x44),
            Some(Frame { function: "os_lock_user_pages", offset: 0x44, module: Some("nvidia") })
        );
        // Listed after os_lock_user_pages but lower: the sort finds it.
        assert_eq!(k.frame(0xffffffffc0a10010).map(|f| (f.function, f.module)), Some(("nvidia_ioctl", Some("nvidia"))));
        assert_eq!(k.frame(0xffffffffc0a1c401).map(|f| f.function), Some("os_unlock_user_pages"));
        // Data symbols (`d`) are no frames: the text before them names the address.
        assert_eq!(k.frame(0xffffffffc0a20008).map(|f| f.function), Some("os_unlock_user_pages"));
        assert_eq!(k.frame(0xffffffffc0200104).map(|f| (f.function, f.module)), Some(("ib_umem_get", Some("ib_core"))));
        assert_eq!(k.frame(0xffffffffc0300208).map(|f| f.module), Some(Some("mlx5_ib")));
        assert_eq!(k.frame(0xffffffff815f3de8).map(|f| (f.function, f.module)), Some(("pin_user_pages_fast", None)));
        assert_eq!(k.get("ib_umem_get").and_then(|s| s.module), Some("ib_core"));
    }

    #[test]
    fn addresses_far_past_every_symbol_name_nothing() {
        let k = Kallsyms::parse(WITH_MODULES);
        // Between vmlinux and the module area: kallsyms listed nothing there.
        assert_eq!(k.frame(0xffffffffa0000000), None);
        // A module loaded after kallsyms was read, far above the last one.
        assert_eq!(k.frame(0xffffffffc0600000 + MAX_SYMBOL_OFFSET + 1), None);
        assert_eq!(k.symbolize(0xffffffffc0600000 + MAX_SYMBOL_OFFSET).map(|(_, o)| o), Some(MAX_SYMBOL_OFFSET));
    }
}
