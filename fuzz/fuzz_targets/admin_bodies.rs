//! Fuzz target `admin_bodies`: see `kasm_fuzz::checks::admin_bodies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kasm_fuzz::checks::admin_bodies(data));
