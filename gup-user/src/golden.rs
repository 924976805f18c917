//! The documents of `gup_report` as gup-user's writers produce them, byte
//! for byte (golden files), and read back. They live here, not in
//! gup-report, because the documents are built by gup-user's writers
//! (`export::api`) from its readings (`collect::fixture`).

pub(crate) mod fixture;
mod tests;
