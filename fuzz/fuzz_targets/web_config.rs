#![no_main]
//! See `gupwatch_fuzz::harness::web_config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gupwatch_fuzz::harness::web_config(data));
