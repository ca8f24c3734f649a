//! STUN messages (RFC 5389 Binding, with the RFC 5780 attributes a NAT-behaviour server
//! needs), as pure encode/decode functions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fixed value at bytes 4..8 of every RFC 5389 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Binding request.
pub const BINDING_REQUEST: u16 = 0x0001;
/// Binding success response.
pub const BINDING_RESPONSE: u16 = 0x0101;

const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_CHANGE_REQUEST: u16 = 0x0003;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_RESPONSE_ORIGIN: u16 = 0x802b;
const ATTR_OTHER_ADDRESS: u16 = 0x802c;

/// A decoded Binding request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingRequest {
    /// Transaction id to echo.
    pub transaction: [u8; 12],
    /// RFC 5780 CHANGE-REQUEST: answer from the other IP address.
    pub change_ip: bool,
    /// RFC 5780 CHANGE-REQUEST: answer from the other port.
    pub change_port: bool,
}

/// Encodes a Binding request (optionally with CHANGE-REQUEST).
pub fn encode_request(transaction: [u8; 12], change_ip: bool, change_port: bool) -> Vec<u8> {
    let mut attrs = Vec::new();
    if change_ip || change_port {
        let flags = (u32::from(change_ip) << 2) | (u32::from(change_port) << 1);
        push_attr(&mut attrs, ATTR_CHANGE_REQUEST, &flags.to_be_bytes());
    }
    message(BINDING_REQUEST, transaction, &attrs)
}

/// Decodes a Binding request; `None` for anything else (responses, other methods, garbage).
pub fn decode_request(b: &[u8]) -> Option<BindingRequest> {
    let (kind, transaction, attrs) = split(b)?;
    if kind != BINDING_REQUEST {
        return None;
    }
    let mut req = BindingRequest {
        transaction,
        change_ip: false,
        change_port: false,
    };
    for (ty, value) in Attrs(attrs) {
        if ty == ATTR_CHANGE_REQUEST && value.len() == 4 {
            let flags = u32::from_be_bytes(value.try_into().ok()?);
            req.change_ip = flags & 4 != 0;
            req.change_port = flags & 2 != 0;
        }
    }
    Some(req)
}

/// What a Binding response says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingResponse {
    /// Transaction id of the request it answers.
    pub transaction: [u8; 12],
    /// The requester's address as the server saw it.
    pub mapped: SocketAddr,
    /// The address the response was sent from (RFC 5780).
    pub response_origin: Option<SocketAddr>,
    /// The server's alternate address (RFC 5780), when it has one.
    pub other_address: Option<SocketAddr>,
}

/// Encodes a Binding success response.
pub fn encode_response(r: &BindingResponse, software: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    push_attr(
        &mut attrs,
        ATTR_XOR_MAPPED_ADDRESS,
        &xor_address(r.mapped, &r.transaction),
    );
    // Plain MAPPED-ADDRESS as well, for RFC 3489 clients.
    push_attr(&mut attrs, ATTR_MAPPED_ADDRESS, &plain_address(r.mapped));
    if let Some(a) = r.response_origin {
        push_attr(&mut attrs, ATTR_RESPONSE_ORIGIN, &plain_address(a));
    }
    if let Some(a) = r.other_address {
        push_attr(&mut attrs, ATTR_OTHER_ADDRESS, &plain_address(a));
    }
    push_attr(&mut attrs, ATTR_SOFTWARE, software.as_bytes());
    message(BINDING_RESPONSE, r.transaction, &attrs)
}

/// Decodes a Binding success response.
pub fn decode_response(b: &[u8]) -> Option<BindingResponse> {
    let (kind, transaction, attrs) = split(b)?;
    if kind != BINDING_RESPONSE {
        return None;
    }
    let (mut xor, mut plain, mut origin, mut other) = (None, None, None, None);
    for (ty, value) in Attrs(attrs) {
        match ty {
            ATTR_XOR_MAPPED_ADDRESS => xor = parse_address(value, Some(&transaction)),
            ATTR_MAPPED_ADDRESS => plain = parse_address(value, None),
            ATTR_RESPONSE_ORIGIN => origin = parse_address(value, None),
            ATTR_OTHER_ADDRESS => other = parse_address(value, None),
            _ => {}
        }
    }
    Some(BindingResponse {
        transaction,
        mapped: xor.or(plain)?,
        response_origin: origin,
        other_address: other,
    })
}

fn message(kind: u16, transaction: [u8; 12], attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + attrs.len());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(&transaction);
    m.extend_from_slice(attrs);
    m
}

/// Header checks shared by both directions: type, length, cookie.
fn split(b: &[u8]) -> Option<(u16, [u8; 12], &[u8])> {
    if b.len() < 20 || b[0] & 0xc0 != 0 {
        return None;
    }
    let kind = u16::from_be_bytes([b[0], b[1]]);
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if u32::from_be_bytes(b[4..8].try_into().ok()?) != MAGIC_COOKIE
        || !len.is_multiple_of(4)
        || b.len() != 20 + len
    {
        return None;
    }
    Some((kind, b[8..20].try_into().ok()?, &b[20..]))
}

fn push_attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Iterates over attributes; stops at the first malformed one.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.len() < 4 {
            return None;
        }
        let ty = u16::from_be_bytes([self.0[0], self.0[1]]);
        let len = u16::from_be_bytes([self.0[2], self.0[3]]) as usize;
        let padded = len.next_multiple_of(4);
        if self.0.len() < 4 + padded {
            self.0 = &[];
            return None;
        }
        let value = &self.0[4..4 + len];
        self.0 = &self.0[4 + padded..];
        Some((ty, value))
    }
}

fn plain_address(a: SocketAddr) -> Vec<u8> {
    let mut v = vec![0];
    match a.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
    }
    v
}

/// The XOR pad for addresses: the cookie, then (for IPv6) the transaction id.
fn pad(transaction: &[u8; 12]) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    p[4..].copy_from_slice(transaction);
    p
}

fn xor_address(a: SocketAddr, transaction: &[u8; 12]) -> Vec<u8> {
    let mut v = plain_address(a);
    let p = pad(transaction);
    for (i, byte) in v[2..4].iter_mut().enumerate() {
        *byte ^= p[i];
    }
    for (i, byte) in v[4..].iter_mut().enumerate() {
        *byte ^= p[i];
    }
    v
}

fn parse_address(v: &[u8], xor_with: Option<&[u8; 12]>) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let p = xor_with.map(pad).unwrap_or([0; 16]);
    let port = u16::from_be_bytes([v[2] ^ p[0], v[3] ^ p[1]]);
    let raw: Vec<u8> = v[4..].iter().zip(p.iter()).map(|(b, k)| b ^ k).collect();
    let ip = match (v[1], raw.len()) {
        (1, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(raw.as_slice()).ok()?)),
        (2, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw.as_slice()).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    #[test]
    fn rfc5769_ipv4_xor_mapped_address() {
        // RFC 5769 section 2.2: 192.0.2.1:32853 encodes as 0001 a147 e112a643.
        let v = xor_address("192.0.2.1:32853".parse().unwrap(), &TXID);
        assert_eq!(v, [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
        assert_eq!(
            parse_address(&v, Some(&TXID)),
            Some("192.0.2.1:32853".parse().unwrap())
        );
    }

    #[test]
    fn rfc5769_ipv6_xor_mapped_address() {
        // RFC 5769 section 2.3: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
        let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let v = xor_address(addr, &TXID);
        assert_eq!(
            v,
            [
                0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
                0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
        assert_eq!(parse_address(&v, Some(&TXID)), Some(addr));
    }

    #[test]
    fn request_round_trip() {
        for (ip, port) in [(false, false), (true, false), (false, true), (true, true)] {
            let b = encode_request(TXID, ip, port);
            assert_eq!(
                decode_request(&b),
                Some(BindingRequest {
                    transaction: TXID,
                    change_ip: ip,
                    change_port: port
                })
            );
            assert_eq!(decode_response(&b), None);
        }
    }

    #[test]
    fn response_round_trip() {
        let r = BindingResponse {
            transaction: TXID,
            mapped: "198.18.1.2:4300".parse().unwrap(),
            response_origin: Some("198.19.0.1:3478".parse().unwrap()),
            other_address: Some("198.19.0.2:3479".parse().unwrap()),
        };
        let b = encode_response(&r, "p2pcopy");
        assert_eq!(decode_response(&b), Some(r));
        assert_eq!(decode_request(&b), None);
        let minimal = BindingResponse {
            response_origin: None,
            other_address: None,
            ..r
        };
        assert_eq!(
            decode_response(&encode_response(&minimal, "")),
            Some(minimal)
        );
    }

    #[test]
    fn garbage_is_not_a_message() {
        let good = encode_request(TXID, true, true);
        for n in 0..good.len() {
            assert_eq!(decode_request(&good[..n]), None);
        }
        let mut bad_cookie = good.clone();
        bad_cookie[5] ^= 1;
        assert_eq!(decode_request(&bad_cookie), None);
        // A p2pcopy probe and a QUIC packet are not STUN.
        assert_eq!(decode_request(&crate::wire::PROBE_MAGIC), None);
        assert_eq!(decode_request(&[0xc0; 40]), None);
        // Truncated attribute: the header length matches, the attribute overruns it.
        let mut overrun = good.clone();
        overrun[22] = 0x00;
        overrun[23] = 0x40;
        let _ = decode_request(&overrun);
    }
}
