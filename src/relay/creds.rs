//! Relay credentials: RFC 8656 long-term credentials, and the time-limited ones that the TURN
//! REST scheme (draft-uberti-behave-turn-rest, coturn's `use-auth-secret`) derives from a
//! secret shared with the server.
//!
//! Passwords and secrets live in [`Secret`], whose `Debug` prints nothing of them and which
//! has no `Display`, so a `{:?}` in a log line or an error message cannot leak one.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// A password or shared secret. Only [`Secret::expose`] gives the bytes out, so every use is
/// greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the key derivation only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

/// How long derived REST credentials stay valid. Long enough for a big transfer's
/// allocation refreshes (the server checks the expiry on every authenticated request), short
/// enough that a leaked username/password pair soon becomes useless.
pub const REST_TTL: Duration = Duration::from_secs(24 * 3600);

/// What p2pcopy authenticates to a relay with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A user and password the server's admin gave out (`--relay-user`, `--relay-password`).
    LongTerm {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
    /// The secret the server shares with its web front end (coturn `static-auth-secret`);
    /// every allocation derives its own time-limited user and password from it.
    Rest {
        /// The part after the expiry in the derived user name (`--relay-user`; may be empty).
        user: String,
        /// The shared secret.
        secret: Secret,
    },
}

impl Credentials {
    /// The user name and password to put on the wire, at wall time `now`.
    pub fn resolve(&self, now: SystemTime) -> (String, Secret) {
        match self {
            Credentials::LongTerm { user, password } => (user.clone(), password.clone()),
            Credentials::Rest { user, secret } => {
                let expiry = now
                    .checked_add(REST_TTL)
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                rest_credentials(secret, user, expiry)
            }
        }
    }
}

/// TURN REST credentials, exactly as coturn checks them with `use-auth-secret`: the user
/// name is `EXPIRY:USER` (or only `EXPIRY` for an empty user) and the password is
/// base64(HMAC-SHA1(secret, user name)).
pub fn rest_credentials(secret: &Secret, user: &str, expiry_unix: u64) -> (String, Secret) {
    let username = if user.is_empty() {
        expiry_unix.to_string()
    } else {
        format!("{expiry_unix}:{user}")
    };
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        secret.expose().as_bytes(),
    );
    let tag = ring::hmac::sign(&key, username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (username, Secret(password))
}

/// The RFC 8656 long-term key: MD5(user ":" realm ":" password). RFC 8489's SASLprep /
/// OpaqueString step is left out: it changes nothing for ASCII passwords, and coturn does not
/// apply it either.
pub fn long_term_key(user: &str, realm: &str, password: &Secret) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.expose().as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_coturns_formula() {
        // `printf %s 1735686000:alice | openssl dgst -sha1 -hmac lab-static-secret -binary
        // | base64`: the formula coturn's turnserver checks under use-auth-secret (and its
        // docs' shell example computes).
        let secret = Secret::new("lab-static-secret");
        let (user, password) = rest_credentials(&secret, "alice", 1_735_686_000);
        assert_eq!(user, "1735686000:alice");
        assert_eq!(password.expose(), "A3W+92ujg0RNUeZ5Y9MgA9hWNY8=");
        assert_eq!(rest_credentials(&secret, "", 7).0, "7");
        // Derived at a wall time: valid for REST_TTL from then.
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let creds = Credentials::Rest {
            user: "p2pcopy".into(),
            secret,
        };
        assert_eq!(creds.resolve(now).0, "1086400:p2pcopy");
    }

    #[test]
    fn long_term_key_is_md5_of_user_realm_password() {
        // `printf %s alice:lab:s3cret | md5sum`
        let key = long_term_key("alice", "lab", &Secret::new("s3cret"));
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "da2a725bc3bdbb7e4b5af5621295c908");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let creds = Credentials::LongTerm {
            user: "alice".into(),
            password: Secret::new("hunter2-very-secret"),
        };
        let shown = format!(
            "{creds:?} {:#?}",
            Credentials::Rest {
                user: "bob".into(),
                secret: Secret::new("shared-secret-xyz"),
            }
        );
        assert!(
            shown.contains("alice") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("shared-secret"),
            "{shown}"
        );
    }
}
