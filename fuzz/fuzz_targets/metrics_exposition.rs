#![no_main]
//! See `gupwatch_fuzz::harness::metrics_exposition`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gupwatch_fuzz::harness::metrics_exposition(data));
