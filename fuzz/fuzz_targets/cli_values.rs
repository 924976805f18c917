#![no_main]
//! See `gupwatch_fuzz::harness::cli_values`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gupwatch_fuzz::harness::cli_values(data));
