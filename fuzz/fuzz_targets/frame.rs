//! Any bytes as the transfer protocol's control stream, and as a data stream's head and
//! trailer: decoding never panics, never claims more bytes than it was given, and every
//! decoded frame encodes to bytes that decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pcopy::wire::{DataHead, Frame, Trailer, DATA_HEAD_LEN, TRAILER_LEN};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((frame, used))) = Frame::decode(&data[at..]) {
        assert!(used > 0 && at + used <= data.len(), "frame length out of bounds");
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(
            Frame::decode(&again),
            Ok(Some((frame, again.len()))),
            "round trip"
        );
        at += used;
    }
    if let Some(h) = data.first_chunk::<DATA_HEAD_LEN>() {
        let head = DataHead::decode(h);
        assert_eq!(DataHead::decode(&head.encode()), head);
    }
    if let Some(t) = data.first_chunk::<TRAILER_LEN>() {
        if let Ok(trailer) = Trailer::decode(t) {
            assert_eq!(Trailer::decode(&trailer.encode()), Ok(trailer));
        }
    }
});
