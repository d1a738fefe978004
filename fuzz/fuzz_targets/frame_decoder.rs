//! The frame decoder over arbitrary byte streams, whole and split: see
//! `timed::fuzz::frame_decoder`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| timed::fuzz::frame_decoder(data));
