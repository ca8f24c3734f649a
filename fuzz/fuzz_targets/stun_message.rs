//! Any datagram as a STUN message, both as a Binding request (what our STUN server decodes)
//! and as a Binding response (what our client decodes): never panics, and whatever decodes
//! re-encodes to a message that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pcopy::stun::message::{decode_request, decode_response, encode_request, encode_response};

fuzz_target!(|data: &[u8]| {
    let request = decode_request(data);
    let response = decode_response(data);
    // The message type decides: never both.
    assert!(
        request.is_none() || response.is_none(),
        "one message decoded as both a request and a response"
    );

    if let Some(req) = request {
        let bytes = encode_request(req.transaction, req.change_ip, req.change_port);
        assert_eq!(decode_request(&bytes), Some(req), "request round trip");
        assert_eq!(decode_response(&bytes), None);
    }

    if let Some(resp) = response {
        for software in ["", "p2pcopy"] {
            let bytes = encode_response(&resp, software);
            assert_eq!(decode_response(&bytes), Some(resp), "response round trip");
            assert_eq!(decode_request(&bytes), None);
        }
    }
});
