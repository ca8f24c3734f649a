//! STUN messages as pure encode/decode functions: RFC 5389 Binding, the RFC 5780 attributes a
//! NAT-behaviour server needs (CHANGE-REQUEST, RESPONSE-PORT, PADDING, RESPONSE-ORIGIN,
//! OTHER-ADDRESS), and the RFC 3489 forms that classic clients (no magic cookie) still use.
//!
//! The server's answers are built under a size limit ([`answer_limit`]): optional attributes
//! go in only while they fit, so an answer is never much bigger than the request it answers
//! (a STUN server on a public address must not be a useful traffic amplifier).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fixed value at bytes 4..8 of every RFC 5389 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Binding request.
pub const BINDING_REQUEST: u16 = 0x0001;
/// Binding success response.
pub const BINDING_RESPONSE: u16 = 0x0101;
/// Binding error response.
pub const BINDING_ERROR: u16 = 0x0111;

const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
/// RFC 5780 CHANGE-REQUEST (RFC 3489 had it too).
pub const ATTR_CHANGE_REQUEST: u16 = 0x0003;
/// RFC 3489's name for what RFC 5780 calls RESPONSE-ORIGIN.
const ATTR_SOURCE_ADDRESS: u16 = 0x0004;
/// RFC 3489's name for what RFC 5780 calls OTHER-ADDRESS.
const ATTR_CHANGED_ADDRESS: u16 = 0x0005;
pub(crate) const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_UNKNOWN_ATTRIBUTES: u16 = 0x000a;
pub(crate) const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_PADDING: u16 = 0x0026;
const ATTR_RESPONSE_PORT: u16 = 0x0027;
const ATTR_RESPONSE_ORIGIN: u16 = 0x802b;
const ATTR_OTHER_ADDRESS: u16 = 0x802c;

/// Below this type an attribute is comprehension-required (RFC 5389 section 15).
const FIRST_OPTIONAL_ATTR: u16 = 0x8000;

/// The smallest size limit for an answer: room for a 20-byte header, XOR-MAPPED-ADDRESS and
/// OTHER-ADDRESS (IPv4), so that an RFC 5780 client's first, attribute-less, 20-byte request
/// learns the alternate address (2.2 times its size).
pub const MIN_ANSWER_LIMIT: usize = 44;

/// How big the answer to a request of `request_len` bytes may be: twice the request, and
/// never less than [`MIN_ANSWER_LIMIT`].
pub fn answer_limit(request_len: usize) -> usize {
    request_len.saturating_mul(2).max(MIN_ANSWER_LIMIT)
}

/// A decoded Binding request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingRequest {
    /// Transaction id to echo.
    pub transaction: [u8; 12],
    /// Bytes 4..8: [`MAGIC_COOKIE`] from RFC 5389 clients. Anything else marks an RFC 3489
    /// client, whose 128-bit transaction id starts here; it is echoed back as it came.
    pub cookie: [u8; 4],
    /// RFC 5780 CHANGE-REQUEST: answer from the other IP address.
    pub change_ip: bool,
    /// RFC 5780 CHANGE-REQUEST: answer from the other port.
    pub change_port: bool,
    /// RFC 5780 RESPONSE-PORT: answer to this port of the request's source address.
    pub response_port: Option<u16>,
    /// RFC 5780 PADDING: the length of its value.
    pub padding: Option<u16>,
}

impl BindingRequest {
    /// A plain RFC 5389 request.
    pub fn new(transaction: [u8; 12]) -> BindingRequest {
        BindingRequest {
            transaction,
            cookie: MAGIC_COOKIE.to_be_bytes(),
            change_ip: false,
            change_port: false,
            response_port: None,
            padding: None,
        }
    }

    /// Whether it came from an RFC 3489 client (no magic cookie).
    pub fn is_rfc3489(&self) -> bool {
        self.cookie != MAGIC_COOKIE.to_be_bytes()
    }

    /// The request on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut attrs = Vec::new();
        if let Some(port) = self.response_port {
            // RFC 5780 section 7.5: the port, then two bytes of padding inside the value.
            let mut v = port.to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 0]);
            push_attr(&mut attrs, ATTR_RESPONSE_PORT, &v);
        }
        if self.change_ip || self.change_port {
            let flags = (u32::from(self.change_ip) << 2) | (u32::from(self.change_port) << 1);
            push_attr(&mut attrs, ATTR_CHANGE_REQUEST, &flags.to_be_bytes());
        }
        if let Some(n) = self.padding {
            push_attr(&mut attrs, ATTR_PADDING, &vec![0; usize::from(n)]);
        }
        message(BINDING_REQUEST, self.cookie, self.transaction, &attrs)
    }
}

/// Encodes an RFC 5389 Binding request (optionally with CHANGE-REQUEST).
pub fn encode_request(transaction: [u8; 12], change_ip: bool, change_port: bool) -> Vec<u8> {
    BindingRequest {
        change_ip,
        change_port,
        ..BindingRequest::new(transaction)
    }
    .encode()
}

/// Why a Binding request gets an error answer instead of a success.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Comprehension-required attributes this server does not know: answered with 420.
    #[error("unknown comprehension-required attributes {0:04x?}")]
    UnknownAttributes(Vec<u16>),
    /// A known attribute that makes no sense, or attributes overrunning the message:
    /// answered with 400.
    #[error("bad request: {0}")]
    Malformed(&'static str),
}

impl RequestError {
    /// The STUN error code it is answered with.
    pub fn code(&self) -> u16 {
        match self {
            RequestError::UnknownAttributes(_) => 420,
            RequestError::Malformed(_) => 400,
        }
    }
}

/// A Binding request that is answered with an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Transaction id to echo.
    pub transaction: [u8; 12],
    /// Bytes 4..8 to echo (see [`BindingRequest::cookie`]).
    pub cookie: [u8; 4],
    /// What is wrong with it.
    pub error: RequestError,
}

/// Reads a datagram as a Binding request.
///
/// `None` for anything that is not one (responses, indications, other methods, garbage):
/// RFC 5389 section 7.3 has those dropped silently. `Some(Err(..))` for a Binding request that
/// deserves an error answer (RFC 5389 section 7.3.1: unknown comprehension-required
/// attributes get 420; RFC 5780 section 6.1: PADDING with RESPONSE-PORT gets 400).
pub fn parse_request(b: &[u8]) -> Option<Result<BindingRequest, Rejected>> {
    let Header {
        kind,
        cookie,
        transaction,
        attrs,
    } = header(b)?;
    if kind != BINDING_REQUEST {
        return None;
    }
    let mut req = BindingRequest {
        transaction,
        cookie,
        change_ip: false,
        change_port: false,
        response_port: None,
        padding: None,
    };
    let reject = |error| {
        Some(Err(Rejected {
            transaction,
            cookie,
            error,
        }))
    };
    let mut unknown = Vec::new();
    let mut malformed = None;
    let mut rest = attrs;
    while !rest.is_empty() {
        let Some((ty, value, next)) = next_attr(rest) else {
            return reject(RequestError::Malformed("an attribute overruns the message"));
        };
        rest = next;
        match (ty, value.len()) {
            (ATTR_CHANGE_REQUEST, 4) => {
                req.change_ip = value[3] & 4 != 0;
                req.change_port = value[3] & 2 != 0;
            }
            (ATTR_CHANGE_REQUEST, _) => malformed = Some("CHANGE-REQUEST is not 4 bytes long"),
            // The value is the port and two bytes of padding; some clients count only the port.
            (ATTR_RESPONSE_PORT, 2 | 4) => {
                req.response_port = Some(u16::from_be_bytes([value[0], value[1]]));
            }
            (ATTR_RESPONSE_PORT, _) => malformed = Some("RESPONSE-PORT is not 2 or 4 bytes long"),
            (ATTR_PADDING, n) => req.padding = Some(u16::try_from(n).unwrap_or(u16::MAX)),
            (ty, _) if ty < FIRST_OPTIONAL_ATTR => unknown.push(ty),
            _ => {}
        }
    }
    if !unknown.is_empty() {
        unknown.sort_unstable();
        unknown.dedup();
        return reject(RequestError::UnknownAttributes(unknown));
    }
    if req.response_port.is_some() && req.padding.is_some() {
        malformed = Some("PADDING together with RESPONSE-PORT (RFC 5780 section 6.1)");
    }
    if req.response_port == Some(0) {
        malformed = Some("RESPONSE-PORT is 0");
    }
    if let Some(why) = malformed {
        return reject(RequestError::Malformed(why));
    }
    Some(Ok(req))
}

/// Decodes a Binding request that gets a success answer; `None` for anything else.
pub fn decode_request(b: &[u8]) -> Option<BindingRequest> {
    parse_request(b)?.ok()
}

/// What a Binding success response says.
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

/// Encodes an RFC 5389 Binding success response with every attribute `r` has.
pub fn encode_response(r: &BindingResponse) -> Vec<u8> {
    encode_success(
        &BindingRequest::new(r.transaction),
        &Success {
            mapped: r.mapped,
            response_origin: r.response_origin,
            other_address: r.other_address,
        },
        usize::MAX,
    )
}

/// What the server tells a client in a success answer, before the size limit picks what fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Success {
    /// The requester's address as the server saw it.
    pub mapped: SocketAddr,
    /// The address the answer is sent from.
    pub response_origin: Option<SocketAddr>,
    /// The address that answers when asked to change both IP and port.
    pub other_address: Option<SocketAddr>,
}

/// Encodes the success answer to `req` in at most `limit` bytes (see [`answer_limit`]).
///
/// The mapped address always goes in: XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS for an RFC 3489
/// client (which does not know the XOR form and, like the classic `stun` client, may reject
/// the whole answer for an attribute it does not know). Then, while they fit and in this
/// order: OTHER-ADDRESS (RFC 3489: CHANGED-ADDRESS), RESPONSE-ORIGIN (SOURCE-ADDRESS), and
/// PADDING as long as the request's. No SOFTWARE: it would only make answers bigger.
pub fn encode_success(req: &BindingRequest, s: &Success, limit: usize) -> Vec<u8> {
    let classic = req.is_rfc3489();
    let mut attrs = Vec::new();
    if classic {
        push_attr(&mut attrs, ATTR_MAPPED_ADDRESS, &plain_address(s.mapped));
    } else {
        push_attr(
            &mut attrs,
            ATTR_XOR_MAPPED_ADDRESS,
            &xor_address(s.mapped, &req.transaction),
        );
    }
    let room = limit.saturating_sub(20);
    let (other_ty, origin_ty) = if classic {
        (ATTR_CHANGED_ADDRESS, ATTR_SOURCE_ADDRESS)
    } else {
        (ATTR_OTHER_ADDRESS, ATTR_RESPONSE_ORIGIN)
    };
    for (ty, addr) in [(other_ty, s.other_address), (origin_ty, s.response_origin)] {
        if let Some(a) = addr {
            let v = plain_address(a);
            if attrs.len() + 4 + v.len() <= room {
                push_attr(&mut attrs, ty, &v);
            }
        }
    }
    if let Some(n) = req.padding {
        let n = usize::from(n);
        if attrs.len() + 4 + n.next_multiple_of(4) <= room {
            push_attr(&mut attrs, ATTR_PADDING, &vec![0; n]);
        }
    }
    message(BINDING_RESPONSE, req.cookie, req.transaction, &attrs)
}

/// Encodes the error answer to a rejected request in at most `limit` bytes, if the request
/// allowed that much (see [`answer_limit`]).
///
/// ERROR-CODE and, for 420, UNKNOWN-ATTRIBUTES listing every unknown type always go in (they
/// always fit: each listed type took at least 4 bytes of the request and takes 2 here); the
/// reason phrase only if it fits too.
pub fn encode_error(r: &Rejected, limit: usize) -> Vec<u8> {
    let code = r.error.code();
    let mut unknown_attr = Vec::new();
    if let RequestError::UnknownAttributes(types) = &r.error {
        let mut v: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
        // RFC 3489 section 11.2.3: an odd count is made even by repeating one type (RFC 5389
        // uses ordinary attribute padding instead).
        if r.cookie != MAGIC_COOKIE.to_be_bytes() && types.len() % 2 == 1 {
            v.extend_from_slice(&types[types.len() - 1].to_be_bytes());
        }
        push_attr(&mut unknown_attr, ATTR_UNKNOWN_ATTRIBUTES, &v);
    }
    let reason = match code {
        420 => "Unknown Attribute",
        _ => "Bad Request",
    };
    let bare = 20 + 8 + unknown_attr.len();
    let reason = if bare + reason.len().next_multiple_of(4) <= limit {
        reason
    } else {
        ""
    };
    let mut value = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
    value.extend_from_slice(reason.as_bytes());
    let mut attrs = Vec::new();
    push_attr(&mut attrs, ATTR_ERROR_CODE, &value);
    attrs.extend_from_slice(&unknown_attr);
    message(BINDING_ERROR, r.cookie, r.transaction, &attrs)
}

/// Decodes an RFC 5389 Binding success response.
pub fn decode_response(b: &[u8]) -> Option<BindingResponse> {
    let Header {
        kind,
        cookie,
        transaction,
        attrs,
    } = header(b)?;
    if kind != BINDING_RESPONSE || cookie != MAGIC_COOKIE.to_be_bytes() {
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

/// The transaction id of an RFC 5389 Binding error response; `None` for anything else.
pub fn error_transaction(b: &[u8]) -> Option<[u8; 12]> {
    let h = header(b)?;
    (h.kind == BINDING_ERROR && h.cookie == MAGIC_COOKIE.to_be_bytes()).then_some(h.transaction)
}

fn message(kind: u16, cookie: [u8; 4], transaction: [u8; 12], attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + attrs.len());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&cookie);
    m.extend_from_slice(&transaction);
    m.extend_from_slice(attrs);
    m
}

/// The fixed 20 bytes every message starts with, and the attributes after them.
struct Header<'a> {
    kind: u16,
    cookie: [u8; 4],
    transaction: [u8; 12],
    attrs: &'a [u8],
}

/// Header checks shared by all messages: top bits, length. The cookie is returned, not
/// checked: RFC 3489 clients put part of their transaction id there.
fn header(b: &[u8]) -> Option<Header<'_>> {
    if b.len() < 20 || b[0] & 0xc0 != 0 {
        return None;
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if !len.is_multiple_of(4) || b.len() != 20 + len {
        return None;
    }
    Some(Header {
        kind: u16::from_be_bytes([b[0], b[1]]),
        cookie: b[4..8].try_into().ok()?,
        transaction: b[8..20].try_into().ok()?,
        attrs: &b[20..],
    })
}

pub(crate) fn push_attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The first attribute of `b`: type, value, and what follows it; `None` if it overruns `b`.
pub(crate) fn next_attr(b: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    if b.len() < 4 {
        return None;
    }
    let ty = u16::from_be_bytes([b[0], b[1]]);
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let padded = len.next_multiple_of(4);
    if b.len() < 4 + padded {
        return None;
    }
    Some((ty, &b[4..4 + len], &b[4 + padded..]))
}

/// Iterates over attributes; stops at the first malformed one.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let Some((ty, value, rest)) = next_attr(self.0) else {
            self.0 = &[];
            return None;
        };
        self.0 = rest;
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

pub(crate) fn xor_address(a: SocketAddr, transaction: &[u8; 12]) -> Vec<u8> {
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

pub(crate) fn parse_address(v: &[u8], xor_with: Option<&[u8; 12]>) -> Option<SocketAddr> {
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

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The attributes of a message (any kind), as (type, value) pairs.
    fn attrs(b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        Attrs(header(b).expect("a STUN message").attrs)
            .map(|(t, v)| (t, v.to_vec()))
            .collect()
    }

    fn types(b: &[u8]) -> Vec<u16> {
        attrs(b).into_iter().map(|(t, _)| t).collect()
    }

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
                    change_ip: ip,
                    change_port: port,
                    ..BindingRequest::new(TXID)
                })
            );
            assert_eq!(decode_response(&b), None);
        }
        for req in [
            BindingRequest {
                response_port: Some(4301),
                change_ip: true,
                change_port: true,
                ..BindingRequest::new(TXID)
            },
            BindingRequest {
                padding: Some(1499),
                ..BindingRequest::new(TXID)
            },
            BindingRequest {
                cookie: [1, 2, 3, 4],
                change_port: true,
                ..BindingRequest::new(TXID)
            },
        ] {
            assert_eq!(decode_request(&req.encode()), Some(req));
        }
    }

    #[test]
    fn requests_other_clients_send() {
        // coturn's turnutils_stunclient, second test: RESPONSE-PORT 58432 (value 4 bytes,
        // the port and its padding), CHANGE-REQUEST ip+port.
        let coturn =
            hex("000100102112a44202cc33e96f74135872d82f1300270004e44000000003000400000006");
        let r = decode_request(&coturn).unwrap();
        assert_eq!(
            (r.response_port, r.change_ip, r.change_port),
            (Some(58432), true, true)
        );
        assert!(!r.is_rfc3489());
        // The classic `stun` client (RFC 3489): no magic cookie, CHANGE-REQUEST "change IP".
        let classic = hex("0001000802598620cfb125561c557c35767b770c0003000400000004");
        let r = decode_request(&classic).unwrap();
        assert!(r.is_rfc3489());
        assert_eq!(r.cookie, [0x02, 0x59, 0x86, 0x20]);
        assert_eq!(
            (r.change_ip, r.change_port, r.response_port),
            (true, false, None)
        );
        // RFC 5769 section 2.1 (an ICE check: USERNAME, MESSAGE-INTEGRITY and PRIORITY are
        // comprehension-required and unknown here; SOFTWARE, ICE-CONTROLLED and FINGERPRINT
        // are optional).
        let ice = include_bytes!("../../fuzz/seeds/stun_message/rfc5769-request");
        assert_eq!(
            parse_request(ice).unwrap().unwrap_err().error,
            RequestError::UnknownAttributes(vec![0x0006, 0x0008, 0x0024])
        );
    }

    #[test]
    fn bad_requests_are_told_why() {
        let with = |extra: &[u8]| {
            let mut b = encode_request(TXID, false, false);
            b.extend_from_slice(extra);
            b[2..4].copy_from_slice(&(extra.len() as u16).to_be_bytes());
            parse_request(&b).unwrap().map_err(|r| r.error)
        };
        // Unknown comprehension-required types, listed once each and sorted; optional
        // unknown ones (0x8000 and up) are ignored.
        assert_eq!(
            with(&hex("0030000000120004aabbccdd80ff000000300000")),
            Err(RequestError::UnknownAttributes(vec![0x0012, 0x0030]))
        );
        assert_eq!(with(&hex("80ff0000")), Ok(BindingRequest::new(TXID)));
        // 420 wins over a malformed known attribute.
        assert_eq!(
            with(&hex("000300020000000000120000")),
            Err(RequestError::UnknownAttributes(vec![0x0012]))
        );
        for (extra, why) in [
            ("00030002 00000000", "CHANGE-REQUEST is not"),
            ("00270008 1234000000000000", "RESPONSE-PORT is not"),
            ("00270002 00000000", "RESPONSE-PORT is 0"),
            (
                "00270002 12340000 00260004 00000000",
                "PADDING together with RESPONSE-PORT",
            ),
            ("00260008 00000000", "overruns"),
        ] {
            let e = with(&hex(&extra.replace(' ', ""))).unwrap_err();
            assert_eq!(e.code(), 400, "{extra}");
            assert!(e.to_string().contains(why), "{extra}: {e}");
        }
        // RESPONSE-PORT counted as 2 bytes is fine too.
        assert_eq!(
            with(&hex("0027000212340000")).unwrap().response_port,
            Some(0x1234)
        );
    }

    #[test]
    fn error_answers() {
        let rejected = |cookie, types: &[u16]| Rejected {
            transaction: TXID,
            cookie,
            error: RequestError::UnknownAttributes(types.to_vec()),
        };
        let r = rejected(MAGIC_COOKIE.to_be_bytes(), &[0x0012, 0x0030, 0x0031]);
        let b = encode_error(&r, usize::MAX);
        assert_eq!(u16::from_be_bytes([b[0], b[1]]), BINDING_ERROR);
        assert_eq!(b[8..20], TXID);
        let a = attrs(&b);
        assert_eq!(a[0].0, ATTR_ERROR_CODE);
        assert_eq!(a[0].1, b"\0\0\x04\x14Unknown Attribute");
        assert_eq!(a[1], (ATTR_UNKNOWN_ATTRIBUTES, hex("001200300031")));
        // RFC 3489: the cookie bytes are echoed and an odd list is made even.
        let b = encode_error(&rejected([9, 9, 9, 9], &[0x0002]), usize::MAX);
        assert_eq!(b[4..8], [9, 9, 9, 9]);
        assert_eq!(attrs(&b)[1], (ATTR_UNKNOWN_ATTRIBUTES, hex("00020002")));
        // Too little room: no reason phrase, but still the code and the full list.
        let b = encode_error(&r, 44);
        assert_eq!(b.len(), 20 + 8 + 12);
        assert_eq!(attrs(&b)[0].1, [0, 0, 4, 20]);
        let bad = Rejected {
            error: RequestError::Malformed("x"),
            ..r
        };
        assert_eq!(
            attrs(&encode_error(&bad, 44))[0].1,
            b"\0\0\x04\x00Bad Request"
        );
    }

    #[test]
    fn success_answers_fit_the_limit() {
        let s = Success {
            mapped: "198.18.1.2:4300".parse().unwrap(),
            response_origin: Some("198.19.0.1:3478".parse().unwrap()),
            other_address: Some("198.19.0.2:3479".parse().unwrap()),
        };
        let plain = BindingRequest::new(TXID);
        let all = [
            ATTR_XOR_MAPPED_ADDRESS,
            ATTR_OTHER_ADDRESS,
            ATTR_RESPONSE_ORIGIN,
        ];
        for (limit, want) in [(32, 1), (43, 1), (44, 2), (55, 2), (56, 3), (usize::MAX, 3)] {
            let b = encode_success(&plain, &s, limit);
            assert_eq!(types(&b), all[..want], "limit {limit}");
            assert!(b.len() <= limit.max(32));
        }
        // The mapped address goes in even when nothing fits.
        assert_eq!(encode_success(&plain, &s, 0).len(), 32);
        // RFC 3489 clients get the RFC 3489 attributes and their own cookie bytes back.
        let classic = BindingRequest {
            cookie: [1, 2, 3, 4],
            ..plain
        };
        let b = encode_success(&classic, &s, 56);
        assert_eq!(b[4..8], [1, 2, 3, 4]);
        assert_eq!(
            types(&b),
            [
                ATTR_MAPPED_ADDRESS,
                ATTR_CHANGED_ADDRESS,
                ATTR_SOURCE_ADDRESS
            ]
        );
        assert_eq!(attrs(&b)[0].1, plain_address(s.mapped));
        // PADDING is echoed at the request's length when it fits.
        let padded = BindingRequest {
            padding: Some(1500),
            ..plain
        };
        let b = encode_success(&padded, &s, answer_limit(padded.encode().len()));
        assert_eq!(attrs(&b)[3], (ATTR_PADDING, vec![0; 1500]));
        assert_eq!(types(&encode_success(&padded, &s, 100)).len(), 3);
    }

    #[test]
    fn response_round_trip() {
        let r = BindingResponse {
            transaction: TXID,
            mapped: "198.18.1.2:4300".parse().unwrap(),
            response_origin: Some("198.19.0.1:3478".parse().unwrap()),
            other_address: Some("198.19.0.2:3479".parse().unwrap()),
        };
        let b = encode_response(&r);
        assert_eq!(decode_response(&b), Some(r));
        assert_eq!(decode_request(&b), None);
        let minimal = BindingResponse {
            response_origin: None,
            other_address: None,
            ..r
        };
        assert_eq!(decode_response(&encode_response(&minimal)), Some(minimal));
    }

    #[test]
    fn garbage_is_not_a_message() {
        let good = encode_request(TXID, true, true);
        for n in 0..good.len() {
            assert_eq!(parse_request(&good[..n]), None);
        }
        // Without the cookie it is an RFC 3489 request; a response needs the cookie.
        let mut no_cookie = good.clone();
        no_cookie[5] ^= 1;
        assert!(decode_request(&no_cookie).unwrap().is_rfc3489());
        let mut resp = encode_response(&BindingResponse {
            transaction: TXID,
            mapped: "198.18.1.2:4300".parse().unwrap(),
            response_origin: None,
            other_address: None,
        });
        resp[5] ^= 1;
        assert_eq!(decode_response(&resp), None);
        // A p2pcopy probe and a QUIC packet are not STUN.
        assert_eq!(parse_request(&crate::wire::PROBE_MAGIC), None);
        assert_eq!(parse_request(&[0xc0; 40]), None);
        // An indication or another method is not answered.
        let mut indication = good.clone();
        indication[1] = 0x11;
        assert_eq!(parse_request(&indication), None);
        // Truncated attribute: the header length matches, the attribute overruns it.
        let mut overrun = good.clone();
        overrun[22] = 0x00;
        overrun[23] = 0x40;
        assert_eq!(
            parse_request(&overrun).unwrap().unwrap_err().error.code(),
            400
        );
    }
}
