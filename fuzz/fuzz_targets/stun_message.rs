//! Any datagram as a STUN message, both as a Binding request (what our STUN server reads and
//! answers) and as a Binding response (what our client decodes): never panics, whatever
//! decodes re-encodes to a message that decodes to the same value, and the server's answer
//! to it is never bigger than its size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pcopy::stun::message::{
    answer_limit, decode_request, decode_response, encode_response, parse_request,
};
use p2pcopy::stun::server::reply;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_request(data);
    let response = decode_response(data);
    // The message type decides: never both.
    assert!(
        parsed.is_none() || response.is_none(),
        "one message decoded as both a request and a response"
    );

    if let Some(Ok(req)) = parsed {
        let bytes = req.encode();
        assert_eq!(decode_request(&bytes), Some(req), "request round trip");
        assert_eq!(decode_response(&bytes), None);
    }

    let from = "198.51.100.7:5000".parse().unwrap();
    let one = ["192.0.2.10:3478".parse().unwrap()];
    let four = [
        one[0],
        "192.0.2.10:3479".parse().unwrap(),
        "192.0.2.11:3478".parse().unwrap(),
        "192.0.2.11:3479".parse().unwrap(),
    ];
    for addrs in [&one[..], &four[..]] {
        let answer = reply(0, from, data, addrs);
        assert_eq!(answer.is_some(), parsed.is_some(), "requests, and only they, are answered");
        if let Some(a) = answer {
            assert!(a.bytes.len() <= answer_limit(data.len()), "answer over its size limit");
        }
    }

    if let Some(resp) = response {
        let bytes = encode_response(&resp);
        assert_eq!(decode_response(&bytes), Some(resp), "response round trip");
        assert_eq!(decode_request(&bytes), None);
    }
});
