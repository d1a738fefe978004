//! One connection's state machine (handshake, verdict, liveness, close) driven by an arbitrary
//! script under a clock that may jump backwards: see `timed::fuzz::handshake`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    timed::fuzz::handshake(data);
});
