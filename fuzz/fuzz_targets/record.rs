//! Fuzz target `record`: see `kasm_fuzz::checks::record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kasm_fuzz::checks::record(data));
