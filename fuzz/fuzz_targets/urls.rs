//! libFuzzer entry for the `urls` property (see `fuzz/src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| offload_fuzz::urls(data));
