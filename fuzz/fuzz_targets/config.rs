//! Fuzz target `config`: see `kasm_fuzz::checks::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kasm_fuzz::checks::config(data));
