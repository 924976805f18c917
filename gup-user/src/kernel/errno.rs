//! Errno names, for reports and labels.
//!
//! A leaf module: the exporters (`errno` labels, `/api/snapshot`), the
//! self-test (`check`) and the reference model all name errnos, and none of
//! them should depend on another for it.

/// The symbolic name of a (positive) errno; `errnoN` for one not listed.
pub fn errno_name(errno: u32) -> String {
    let name = match errno as i32 {
        libc::EPERM => "EPERM",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EHWPOISON => "EHWPOISON",
        // The kernel-internal "restart the syscall", which a GUP call
        // interrupted by a signal returns and user space never sees.
        512 => "ERESTARTSYS",
        _ => return format!("errno{errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::errno_name;

    #[test]
    fn names_known_errnos_and_numbers_the_rest() {
        assert_eq!(errno_name(libc::EFAULT as u32), "EFAULT");
        assert_eq!(errno_name(512), "ERESTARTSYS");
        assert_eq!(errno_name(999), "errno999");
    }
}
