//! libFuzzer entry for the `rdb` property (see `fuzz/src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| offload_fuzz::rdb(data));
