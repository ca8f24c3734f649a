//! Any datagram as a hole-punch probe: decoding never panics, and a decoded probe encodes to a
//! datagram that decodes to the same probe.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pcopy::wire::{is_probe, Probe};

fuzz_target!(|data: &[u8]| {
    let Some(probe) = Probe::decode(data) else {
        return;
    };
    assert!(is_probe(data), "decoded a datagram that is_probe rejects");
    let bytes = probe.encode();
    assert!(is_probe(&bytes));
    assert_eq!(Probe::decode(&bytes), Some(probe), "round trip");
});
