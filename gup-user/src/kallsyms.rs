//! `/proc/kallsyms`: which kernel functions exist and where they live.
//!
//! BTF only lists functions the compiler kept and described; kallsyms also
//! has static functions, module functions and compiler clones
//! (`foo.isra.0`), which is what kprobes can attach to.

use std::collections::HashMap;

/// Errors reading kallsyms.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    /// `/proc/kallsyms` could not be read.
    #[error("cannot read /proc/kallsyms: {0}. Is /proc mounted?")]
    Read(#[from] std::io::Error),
}

/// A text symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Its address (0 when kptr_restrict hides addresses from us).
    pub addr: u64,
    /// The module it belongs to, or `None` for vmlinux.
    pub module: Option<String>,
}

/// The kernel's text symbols, by name.
#[derive(Clone, Debug, Default)]
pub struct Kallsyms {
    text: HashMap<String, Symbol>,
    /// (address, name) sorted by address, for symbolization.
    by_addr: Vec<(u64, String)>,
}

impl Kallsyms {
    /// Reads the running kernel's symbols.
    pub fn from_proc() -> Result<Kallsyms, KallsymsError> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/kallsyms")?))
    }

    /// Parses kallsyms text. Lines that do not parse are skipped: the file
    /// is the kernel's, and one odd line must not hide the rest.
    pub fn parse(text: &str) -> Kallsyms {
        let mut syms = HashMap::new();
        let mut by_addr = Vec::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let module = it
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
            let addr = u64::from_str_radix(addr, 16).unwrap_or(0);
            if addr != 0 {
                by_addr.push((addr, name.to_string()));
            }
            // The first definition wins: vmlinux precedes modules.
            syms.entry(name.to_string()).or_insert(Symbol { addr, module });
        }
        by_addr.sort_unstable();
        Kallsyms { text: syms, by_addr }
    }

    /// Whether addresses were readable (kptr_restrict and the reader's
    /// capabilities decide; without them every address reads as zero).
    pub fn has_addresses(&self) -> bool {
        !self.by_addr.is_empty()
    }

    /// The symbol with exactly this name.
    pub fn get(&self, name: &str) -> Option<&Symbol> {
        self.text.get(name)
    }

    /// Whether a function of this name exists, exactly or as a compiler clone
    /// (`name.isra.0`, `name.constprop.0`, ...). Returns the symbol to attach to.
    pub fn find_function(&self, name: &str) -> Option<(&str, &Symbol)> {
        if let Some((k, s)) = self.text.get_key_value(name) {
            return Some((k.as_str(), s));
        }
        let prefix = format!("{name}.");
        self.text
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(k, s)| (k.as_str(), s))
    }

    /// The function containing `addr` and the offset into it. `None` when
    /// addresses are hidden (kptr_restrict) or `addr` precedes every symbol.
    pub fn symbolize(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.by_addr.partition_point(|(a, _)| *a <= addr);
        let (base, name) = self.by_addr.get(i.checked_sub(1)?)?;
        Some((name.as_str(), addr - base))
    }

    /// Whether any module symbol of this module is loaded.
    pub fn has_module(&self, module: &str) -> bool {
        self.text.values().any(|s| s.module.as_deref() == Some(module))
    }

    /// Number of text symbols.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// True when no text symbol was found.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

#[cfg(test)]
mod tests {
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
    fn parses_text_symbols_and_modules() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.len(), 4);
        assert_eq!(k.get("pin_user_pages_fast").map(|s| s.addr), Some(0xffffffff815f3de0));
        assert!(k.get("some_data").is_none());
        assert_eq!(
            k.get("i915_gem_userptr_ioctl").and_then(|s| s.module.as_deref()),
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
    fn finds_compiler_clones() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(
            k.find_function("__gup_longterm_locked").map(|(n, _)| n),
            Some("__gup_longterm_locked.isra.0")
        );
        assert_eq!(k.find_function("unpin_user_page").map(|(n, _)| n), Some("unpin_user_page"));
        assert!(k.find_function("unpin_user_pag").is_none());
    }
}
