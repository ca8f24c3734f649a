//! Anything a TURN server (or someone forging its address) can send, fed to the TURN client:
//! never panics. The fuzzer's bytes are read as a sequence of messages; each takes the
//! transaction id of the client's latest request, so that answers reach the response code
//! (the 401 dance, 438, success parsing) instead of being dropped as strangers.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use p2pcopy::relay::client::Client;
use p2pcopy::relay::proto::{frame_len, parse_channel_data, Message};
use p2pcopy::relay::{Secret, Transport};

fuzz_target!(|data: &[u8]| {
    let _ = frame_len(data);
    let _ = parse_channel_data(data);
    if let Some(m) = Message::parse(data) {
        let _ = (m.error(), m.mapped(), m.integrity_ok(&[1; 16]), m.has_integrity());
    }

    let now = Instant::now();
    let transport = if data.first().is_some_and(|b| b & 1 == 1) {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let mut c = Client::new(transport, "alice".into(), Secret::new("pw"), now);
    let mut last = c.poll_transmit().expect("the first Allocate");
    // Messages are separated by the two bytes 0xff 0xfe, which never start a STUN or
    // ChannelData frame.
    for (i, piece) in data.split(|&b| b == 0xfe).enumerate() {
        let mut msg = piece.to_vec();
        if msg.len() >= 20 && last.len() >= 20 {
            msg[8..20].copy_from_slice(&last[8..20]);
        }
        let t = now + Duration::from_millis(10 * i as u64);
        let _ = c.handle_input(&msg, t);
        if let Some(peer) = msg.get(..6) {
            let ip = std::net::Ipv4Addr::new(peer[0], peer[1], peer[2], peer[3]);
            let port = u16::from_be_bytes([peer[4], peer[5]]);
            c.create_permission(ip.into(), t);
            c.bind_channel((ip, port).into(), t);
            let _ = c.wrap((ip, port).into(), &msg);
        }
        if let Some(deadline) = c.poll_timeout() {
            c.handle_timeout(deadline.max(t));
        }
        while let Some(m) = c.poll_transmit() {
            last = m;
        }
        while c.poll_event().is_some() {}
    }
});
