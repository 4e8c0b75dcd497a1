//! The output grammar's byte-level rules fed arbitrary bytes: accepting or refusing a byte never
//! panics, and every prefix the rules accept can still be completed — held to finishing mode (what a
//! generation whose tokens run out gets), within the rules' own reserve of bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| st_fuzz::checks::grammar(data));
