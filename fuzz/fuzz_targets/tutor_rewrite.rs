//! libFuzzer entry for the `tutor_rewrite` property (see `fuzz/src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| offload_fuzz::tutor_rewrite(data));
