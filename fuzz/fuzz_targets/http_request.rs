#![no_main]
//! See `gupwatch_fuzz::harness::http_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gupwatch_fuzz::harness::http_request(data));
