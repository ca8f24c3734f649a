//! TURN server URIs (RFC 7065): `turn:HOST[:PORT][?transport=udp|tcp]` and
//! `turns:HOST[:PORT][?transport=tcp]`.

use std::fmt;
use std::str::FromStr;

/// How p2pcopy talks to the relay server (the relayed address itself is always UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain UDP (`turn:`, the default).
    Udp,
    /// TCP, STUN and ChannelData framed on the stream (`turn:...?transport=tcp`).
    Tcp,
    /// TLS over TCP (`turns:`): gets through networks that block UDP and only let port 443 out.
    Tls,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// A parsed `turn:`/`turns:` URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RelayUri {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (3478, or 5349 for `turns:`, when the URI names none).
    pub port: u16,
    /// The transport to the server.
    pub transport: Transport,
}

/// Why a relay URI does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Neither `turn:` nor `turns:`.
    #[error("a relay URI starts with turn: or turns: (e.g. turn:turn.example.org)")]
    Scheme,
    /// Nothing after the scheme.
    #[error("the relay URI names no host")]
    NoHost,
    /// The port is not a number from 1 to 65535.
    #[error("bad port {0:?} in the relay URI")]
    Port(String),
    /// A `?transport=` other than udp or tcp, or udp with `turns:`.
    #[error("unsupported transport {0:?} (turn: takes udp or tcp, turns: takes tcp)")]
    Transport(String),
    /// A query other than `transport=`, or an IPv6 literal without its closing bracket.
    #[error("cannot read {0:?} in the relay URI")]
    Malformed(String),
}

/// RFC 7065 default ports.
const TURN_PORT: u16 = 3478;
const TURNS_PORT: u16 = 5349;

impl FromStr for RelayUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<RelayUri, UriError> {
        let (secure, rest) = if let Some(r) = strip_prefix_ci(s, "turns:") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(s, "turn:") {
            (false, r)
        } else {
            return Err(UriError::Scheme);
        };
        // "turn://host" is a common slip; RFC 7065 has no authority part, but the intent is
        // clear and harmless to accept.
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let transport = match query {
            None => {
                if secure {
                    Transport::Tls
                } else {
                    Transport::Udp
                }
            }
            Some(q) => {
                let Some(value) = strip_prefix_ci(q, "transport=") else {
                    return Err(UriError::Malformed(q.into()));
                };
                match (value.to_ascii_lowercase().as_str(), secure) {
                    ("udp", false) => Transport::Udp,
                    ("tcp", false) => Transport::Tcp,
                    ("tcp", true) => Transport::Tls,
                    _ => return Err(UriError::Transport(value.into())),
                }
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(UriError::Malformed(hostport.into()));
            };
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return Err(UriError::Malformed(hostport.into())),
                },
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(UriError::NoHost);
        }
        if host.contains(['/', '@', ' ', '[', ']'])
            || (!hostport.starts_with('[') && host.contains(':'))
        {
            return Err(UriError::Malformed(host.into()));
        }
        let port = match port {
            None => {
                if secure {
                    TURNS_PORT
                } else {
                    TURN_PORT
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(UriError::Port(p.into())),
            },
        };
        Ok(RelayUri {
            host: host.to_owned(),
            port,
            transport,
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

impl fmt::Display for RelayUri {
    /// The canonical form, which parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.transport == Transport::Tls {
            "turns"
        } else {
            "turn"
        };
        if self.host.contains(':') {
            write!(f, "{scheme}:[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{scheme}:{}:{}", self.host, self.port)?;
        }
        if self.transport == Transport::Tcp {
            f.write_str("?transport=tcp")?;
        }
        Ok(())
    }
}

impl RelayUri {
    /// `host:port`, as `lookup_host` takes it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> RelayUri {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn rfc7065_forms() {
        let cases = [
            (
                "turn:turn.example.org",
                "turn.example.org",
                3478,
                Transport::Udp,
            ),
            (
                "turn:turn.example.org:3479",
                "turn.example.org",
                3479,
                Transport::Udp,
            ),
            (
                "turn:198.19.0.5?transport=udp",
                "198.19.0.5",
                3478,
                Transport::Udp,
            ),
            (
                "TURN:198.19.0.5:80?transport=TCP",
                "198.19.0.5",
                80,
                Transport::Tcp,
            ),
            (
                "turns:turn.example.org",
                "turn.example.org",
                5349,
                Transport::Tls,
            ),
            (
                "turns:turn.example.org:443",
                "turn.example.org",
                443,
                Transport::Tls,
            ),
            (
                "turns:turn.example.org:443?transport=tcp",
                "turn.example.org",
                443,
                Transport::Tls,
            ),
            ("turn:[2001:db8::1]", "2001:db8::1", 3478, Transport::Udp),
            (
                "turn:[2001:db8::1]:5000?transport=tcp",
                "2001:db8::1",
                5000,
                Transport::Tcp,
            ),
            (
                "turn://relay.example",
                "relay.example",
                3478,
                Transport::Udp,
            ),
        ];
        for (s, host, port, transport) in cases {
            let u = uri(s);
            assert_eq!(
                (u.host.as_str(), u.port, u.transport),
                (host, port, transport),
                "{s}"
            );
            // The canonical form parses back to the same thing.
            assert_eq!(uri(&u.to_string()), u, "{s}");
        }
        assert_eq!(uri("turn:[2001:db8::1]").authority(), "[2001:db8::1]:3478");
        assert_eq!(
            uri("turn:a.example?transport=tcp").to_string(),
            "turn:a.example:3478?transport=tcp"
        );
    }

    #[test]
    fn typed_errors() {
        let cases = [
            ("stun:stun.example.org", UriError::Scheme),
            ("turn.example.org:3478", UriError::Scheme),
            ("turn:", UriError::NoHost),
            ("turn::3478", UriError::NoHost),
            ("turn:host:0", UriError::Port("0".into())),
            ("turn:host:70000", UriError::Port("70000".into())),
            ("turn:host:", UriError::Port("".into())),
            (
                "turn:host?transport=sctp",
                UriError::Transport("sctp".into()),
            ),
            (
                "turns:host?transport=udp",
                UriError::Transport("udp".into()),
            ),
            (
                "turn:host?proto=udp",
                UriError::Malformed("proto=udp".into()),
            ),
            (
                "turn:[2001:db8::1",
                UriError::Malformed("[2001:db8::1".into()),
            ),
            ("turn:user@host", UriError::Malformed("user@host".into())),
            ("turn:2001:db8::1", UriError::Malformed("2001:db8:".into())),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<RelayUri>(), Err(want), "{s}");
        }
    }
}
