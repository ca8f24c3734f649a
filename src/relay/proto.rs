//! TURN (RFC 8656) messages on top of the crate's STUN codec ([`crate::stun::message`]):
//! requests with long-term-credential MESSAGE-INTEGRITY, responses checked against it,
//! Send/Data indications, ChannelData, and the framing of all of them on a stream.
//!
//! Pure functions; nothing here does I/O or reads a clock.

use std::net::SocketAddr;

use crate::stun::message::{
    next_attr, parse_address, push_attr, xor_address, ATTR_ERROR_CODE, ATTR_XOR_MAPPED_ADDRESS,
    MAGIC_COOKIE,
};

/// Allocate (RFC 8656 section 7.1).
pub const ALLOCATE: u16 = 0x003;
/// Refresh.
pub const REFRESH: u16 = 0x004;
/// Send (indication only).
pub const SEND: u16 = 0x006;
/// Data (indication only).
pub const DATA: u16 = 0x007;
/// CreatePermission.
pub const CREATE_PERMISSION: u16 = 0x008;
/// ChannelBind.
pub const CHANNEL_BIND: u16 = 0x009;

/// The class bits of a message type (RFC 8489 section 5); TURN's methods are all below 0x10,
/// so a type is simply `method | class`.
pub const REQUEST: u16 = 0x0000;
/// Indication class.
pub const INDICATION: u16 = 0x0010;
/// Success response class.
pub const SUCCESS: u16 = 0x0100;
/// Error response class.
pub const ERROR: u16 = 0x0110;
const CLASS_MASK: u16 = 0x0110;

pub(crate) const ATTR_USERNAME: u16 = 0x0006;
pub(crate) const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub(crate) const ATTR_CHANNEL_NUMBER: u16 = 0x000c;
pub(crate) const ATTR_LIFETIME: u16 = 0x000d;
pub(crate) const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
pub(crate) const ATTR_DATA: u16 = 0x0013;
pub(crate) const ATTR_REALM: u16 = 0x0014;
pub(crate) const ATTR_NONCE: u16 = 0x0015;
pub(crate) const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub(crate) const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
pub(crate) const ATTR_SOFTWARE: u16 = 0x8022;

/// REQUESTED-TRANSPORT's value for UDP (IANA protocol number 17), followed by RFFU bytes.
pub const TRANSPORT_UDP: [u8; 4] = [17, 0, 0, 0];

/// Channel numbers a client may bind (RFC 8656 section 12).
pub const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x4fff;

/// The largest frame accepted from a stream: a STUN message or ChannelData with a 16-bit
/// length, plus its header.
pub const MAX_FRAME: usize = 20 + 0xffff + 3;

/// Builds a message of type `kind` from `attrs` (already encoded with `push_attr`); with
/// a key, MESSAGE-INTEGRITY goes last (RFC 8489 section 14.5).
pub fn build(kind: u16, transaction: &[u8; 12], attrs: &[u8], key: Option<&[u8; 16]>) -> Vec<u8> {
    let mi_len = if key.is_some() { 24 } else { 0 };
    let mut m = Vec::with_capacity(20 + attrs.len() + mi_len);
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&((attrs.len() + mi_len) as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(transaction);
    m.extend_from_slice(attrs);
    if let Some(key) = key {
        let tag = hmac_sha1(key, &m);
        push_attr(&mut m, ATTR_MESSAGE_INTEGRITY, &tag);
    }
    m
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut out = [0u8; 20];
    out.copy_from_slice(ring::hmac::sign(&k, data).as_ref());
    out
}

/// Appends an attribute (padded to 4 bytes).
pub fn attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    push_attr(out, ty, value);
}

/// Appends an XOR-encoded address attribute (XOR-PEER-ADDRESS and friends).
pub fn addr_attr(out: &mut Vec<u8>, ty: u16, a: SocketAddr, transaction: &[u8; 12]) {
    push_attr(out, ty, &xor_address(a, transaction));
}

/// A received STUN message with the magic cookie: whatever its method.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// Method and class.
    pub kind: u16,
    /// Transaction id.
    pub transaction: [u8; 12],
    raw: &'a [u8],
}

impl<'a> Message<'a> {
    /// Reads `b` as one RFC 5389 message; `None` for anything else (QUIC, ChannelData, junk).
    pub fn parse(b: &'a [u8]) -> Option<Message<'a>> {
        if b.len() < 20 || b[0] & 0xc0 != 0 || b[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if !len.is_multiple_of(4) || b.len() != 20 + len {
            return None;
        }
        Some(Message {
            kind: u16::from_be_bytes([b[0], b[1]]),
            transaction: b[8..20].try_into().ok()?,
            raw: b,
        })
    }

    /// The method, without the class bits.
    pub fn method(&self) -> u16 {
        self.kind & !CLASS_MASK
    }

    /// The class bits ([`REQUEST`], [`INDICATION`], [`SUCCESS`], [`ERROR`]).
    pub fn class(&self) -> u16 {
        self.kind & CLASS_MASK
    }

    /// The first attribute of type `ty`, before MESSAGE-INTEGRITY (attributes after it are
    /// not covered by it and must be ignored, except FINGERPRINT).
    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        let mut rest = &self.raw[20..];
        while let Some((t, value, next)) = next_attr(rest) {
            if t == ty {
                return Some(value);
            }
            if t == ATTR_MESSAGE_INTEGRITY {
                return None;
            }
            rest = next;
        }
        None
    }

    /// An XOR-encoded address attribute.
    pub fn address(&self, ty: u16) -> Option<SocketAddr> {
        parse_address(self.get(ty)?, Some(&self.transaction))
    }

    /// XOR-MAPPED-ADDRESS: our address as the server sees it.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.address(ATTR_XOR_MAPPED_ADDRESS)
    }

    /// A 32-bit attribute (LIFETIME).
    pub fn u32(&self, ty: u16) -> Option<u32> {
        Some(u32::from_be_bytes(self.get(ty)?.get(..4)?.try_into().ok()?))
    }

    /// ERROR-CODE: the code and the reason phrase, made printable (it comes from the server
    /// and may end up on a terminal).
    pub fn error(&self) -> Option<(u16, String)> {
        let v = self.get(ATTR_ERROR_CODE)?;
        if v.len() < 4 {
            return None;
        }
        let code = u16::from(v[2] & 0x07) * 100 + u16::from(v[3]);
        let reason: String = String::from_utf8_lossy(&v[4..])
            .chars()
            .filter(|c| !c.is_control())
            .take(80)
            .collect();
        Some((code, reason.trim().to_owned()))
    }

    /// Whether MESSAGE-INTEGRITY is present and matches `key`. RFC 8489 section 14.5: the
    /// HMAC covers the message up to the attribute, with the header's length counting up to
    /// and including it.
    pub fn integrity_ok(&self, key: &[u8; 16]) -> bool {
        let mut rest = &self.raw[20..];
        while let Some((t, value, next)) = next_attr(rest) {
            let offset = self.raw.len() - rest.len();
            if t == ATTR_MESSAGE_INTEGRITY {
                if value.len() != 20 {
                    return false;
                }
                let mut covered = self.raw[..offset].to_vec();
                let len = (offset + 24 - 20) as u16;
                covered[2..4].copy_from_slice(&len.to_be_bytes());
                let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
                return ring::hmac::verify(&k, &covered, value).is_ok();
            }
            rest = next;
        }
        false
    }

    /// Whether the message carries MESSAGE-INTEGRITY at all.
    pub fn has_integrity(&self) -> bool {
        let mut rest = &self.raw[20..];
        while let Some((t, _, next)) = next_attr(rest) {
            if t == ATTR_MESSAGE_INTEGRITY {
                return true;
            }
            rest = next;
        }
        false
    }
}

/// ChannelData (RFC 8656 section 12.4): 4 bytes of header, then the data; on a stream it is
/// padded to a multiple of 4.
pub fn channel_data(number: u16, data: &[u8], pad: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(4 + data.len() + 3);
    m.extend_from_slice(&number.to_be_bytes());
    m.extend_from_slice(&(data.len() as u16).to_be_bytes());
    m.extend_from_slice(data);
    if pad {
        m.resize(m.len().next_multiple_of(4), 0);
    }
    m
}

/// Reads ChannelData: the channel and the data. Padding after the data is allowed (streams
/// carry it, and RFC 8656 lets it appear over UDP too).
pub fn parse_channel_data(b: &[u8]) -> Option<(u16, &[u8])> {
    if b.len() < 4 {
        return None;
    }
    let number = u16::from_be_bytes([b[0], b[1]]);
    if !CHANNELS.contains(&number) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let data = b.get(4..4 + len)?;
    (b.len() - 4 - len < 4).then_some((number, data))
}

/// The length of the frame at the start of a stream buffer: `Ok(None)` until its header is
/// in, `Err(())` for bytes that are neither STUN nor ChannelData (the stream is then out of
/// step and must be closed).
#[allow(clippy::result_unit_err)]
pub fn frame_len(b: &[u8]) -> Result<Option<usize>, ()> {
    if b.len() < 4 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    match b[0] >> 6 {
        0 => Ok(Some(20 + len)),
        1 => Ok(Some(4 + len.next_multiple_of(4))),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn integrity_round_trip_and_tamper() {
        let key = [7u8; 16];
        let mut attrs = Vec::new();
        attr(&mut attrs, ATTR_USERNAME, b"alice");
        attr(&mut attrs, ATTR_REQUESTED_TRANSPORT, &TRANSPORT_UDP);
        let m = build(ALLOCATE | REQUEST, &TXID, &attrs, Some(&key));
        let parsed = Message::parse(&m).unwrap();
        assert_eq!((parsed.method(), parsed.class()), (ALLOCATE, REQUEST));
        assert!(parsed.integrity_ok(&key));
        assert!(!parsed.integrity_ok(&[8u8; 16]));
        assert_eq!(parsed.get(ATTR_USERNAME), Some(&b"alice"[..]));
        let mut bad = m.clone();
        bad[25] ^= 1;
        assert!(!Message::parse(&bad).unwrap().integrity_ok(&key));
        // Attributes after MESSAGE-INTEGRITY are not believed.
        let mut after = m.clone();
        push_attr(&mut after, ATTR_SOFTWARE, b"x");
        let n = after.len() - 20;
        after[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        let p = Message::parse(&after).unwrap();
        assert!(p.integrity_ok(&key));
        assert_eq!(p.get(ATTR_SOFTWARE), None);
        assert!(!Message::parse(&build(ALLOCATE, &TXID, &attrs, None))
            .unwrap()
            .has_integrity());
    }

    /// RFC 5769 section 2.2: a Binding response with MESSAGE-INTEGRITY under the short-term
    /// password "VOkJxbRl1RmTxUk/WvJxBt" (the HMAC is the same whatever the key's origin).
    #[test]
    fn rfc5769_response_integrity() {
        let hex = "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220\
                   002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53\
                   f06be7d780280004c07d4c96";
        let b: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.mapped(), Some("192.0.2.1:32853".parse().unwrap()));
        // Our integrity check takes 16-byte long-term keys; check the HMAC directly.
        let pw = b"VOkJxbRl1RmTxUk/WvJxBt";
        // SOFTWARE (16 bytes) and XOR-MAPPED-ADDRESS (12) precede MESSAGE-INTEGRITY.
        let at = 20 + 16 + 12;
        let mut covered = b[..at].to_vec();
        covered[2..4].copy_from_slice(&((at + 24 - 20) as u16).to_be_bytes());
        assert_eq!(hmac_sha1(pw, &covered)[..], b[at + 4..at + 24]);
    }

    #[test]
    fn errors_are_read_and_made_printable() {
        let mut attrs = Vec::new();
        attr(
            &mut attrs,
            ATTR_ERROR_CODE,
            b"\0\0\x04\x01Unauthorized\x1b[2J",
        );
        let m = build(ALLOCATE | ERROR, &TXID, &attrs, None);
        assert_eq!(
            Message::parse(&m).unwrap().error(),
            Some((401, "Unauthorized[2J".into()))
        );
    }

    #[test]
    fn channel_data_and_stream_frames() {
        let cd = channel_data(0x4001, b"hello", false);
        assert_eq!(cd.len(), 9);
        assert_eq!(parse_channel_data(&cd), Some((0x4001, &b"hello"[..])));
        let padded = channel_data(0x4001, b"hello", true);
        assert_eq!(padded.len(), 12);
        assert_eq!(parse_channel_data(&padded), Some((0x4001, &b"hello"[..])));
        assert_eq!(parse_channel_data(&channel_data(0x3fff, b"x", false)), None);
        assert_eq!(parse_channel_data(&cd[..8]), None);
        assert_eq!(frame_len(&padded), Ok(Some(12)));
        let stun = build(REFRESH | REQUEST, &TXID, &[], None);
        assert_eq!(frame_len(&stun), Ok(Some(20)));
        assert_eq!(frame_len(&stun[..3]), Ok(None));
        assert_eq!(frame_len(&[0xc0, 0, 0, 0]), Err(()));
        // Nothing from a QUIC long header or a p2pcopy probe parses as STUN.
        assert!(Message::parse(&[0xc3; 40]).is_none());
        assert!(Message::parse(&crate::wire::PROBE_MAGIC).is_none());
    }
}
