#![no_main]
//! See `gupwatch_fuzz::harness::map_records`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gupwatch_fuzz::harness::map_records(data));
