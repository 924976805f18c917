//! Where the eBPF side finds the file of a pinning syscall's descriptor
//! (`gup_common::object`): `struct` offsets from BTF, and the padding above
//! the saved user registers, which only the kernel's configuration knows.

use gup_common::object::ObjectLayout;
use serde::Serialize;

use crate::{kernel::btf::KernelBtf, kernel::kallsyms::Kallsyms};

/// Symbols of the FRED entry code (`CONFIG_X86_FRED`, 6.9+). With FRED
/// compiled in, `TOP_OF_KERNEL_STACK_PADDING` is 16 bytes (the rest of the
/// FRED frame), whether the CPU uses FRED or not; else 0 on x86-64.
const FRED_SYMBOLS: &[&str] = &["asm_fred_entrypoint_user", "fred_entry_from_user"];

/// The kernel function a `task_file` iterator program attaches to.
pub const TASK_FILE_ITER: &str = "bpf_iter_task_file";

/// The object lookup as planned.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ObjectLookup {
    /// The offsets, for the programs' `OBJECT_LAYOUT`.
    #[serde(skip)]
    pub layout: ObjectLayout,
    /// Whether every offset was found (else the lookup is off and the
    /// pins' holders cannot be named).
    pub enabled: bool,
    /// Whether the kernel has FRED's 16 bytes above the saved registers.
    pub fred_padding: bool,
    /// The BTF id of `bpf_iter_task_file`, which the holder iterator
    /// attaches to (`holderiter.rs`); none without BTF or the iterator
    /// (5.8+), and then character-device objects have no holders named.
    #[serde(skip)]
    pub task_file_iter_btf_id: Option<u32>,
}

impl ObjectLookup {
    pub(super) fn resolve(btf: Option<&KernelBtf>, kallsyms: &Kallsyms) -> ObjectLookup {
        let fred_padding = FRED_SYMBOLS.iter().any(|s| kallsyms.get(s).is_some());
        let layout = btf.and_then(|b| layout(b, if fred_padding { 16 } else { 0 }));
        let task_file_iter_btf_id = btf.and_then(|b| b.func_id(TASK_FILE_ITER)).filter(|_| layout.is_some());
        ObjectLookup { layout: layout.unwrap_or(ObjectLayout::NONE), enabled: layout.is_some(), fred_padding, task_file_iter_btf_id }
    }
}

fn layout(b: &KernelBtf, padding: u64) -> Option<ObjectLayout> {
    let m = |s: &str, f: &str| b.member_offset(s, f).map(u64::from);
    Some(ObjectLayout {
        regs_below_top: u64::from(b.struct_size("pt_regs")?) + padding,
        regs_nr: m("pt_regs", "orig_ax")?,
        regs_arg0: m("pt_regs", "di")?,
        task_files: m("task_struct", "files")?,
        files_fdt: m("files_struct", "fdt")?,
        fdt_max_fds: m("fdtable", "max_fds")?,
        fdt_fd: m("fdtable", "fd")?,
        file_inode: m("file", "f_inode")?,
        inode_ino: m("inode", "i_ino")?,
        inode_mode: m("inode", "i_mode")?,
        inode_sb: m("inode", "i_sb")?,
        sb_dev: m("super_block", "s_dev")?,
        task_tgid: m("task_struct", "tgid")?,
    })
}
