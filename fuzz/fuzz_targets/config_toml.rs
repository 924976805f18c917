#![no_main]
//! See `gupwatch_fuzz::harness::config_toml`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gupwatch_fuzz::harness::config_toml(data));
