#![no_main]
//! See `gupwatch_fuzz::harness::kernel_version`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gupwatch_fuzz::harness::kernel_version(data));
