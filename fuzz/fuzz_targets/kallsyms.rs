#![no_main]
//! See `gupwatch_fuzz::harness::kallsyms`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gupwatch_fuzz::harness::kallsyms(data));
