//! gupwatch's fuzz harnesses (one function per target in [`harness`]) and
//! the exposition checker they use ([`exposition`]). The targets in
//! `fuzz_targets/` call them; gup-user's `tests/fuzz_seeds.rs` replays the
//! committed seeds through the same functions on every `cargo test`.

pub mod exposition;
pub mod harness;
