//! Fuzz target `dlq_headers`: see `kasm_fuzz::checks::dlq_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kasm_fuzz::checks::dlq_headers(data));
