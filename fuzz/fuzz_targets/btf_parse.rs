#![no_main]
//! See `gupwatch_fuzz::harness::btf_parse`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gupwatch_fuzz::harness::btf_parse(data));
