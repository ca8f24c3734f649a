//! The `--relay` flags: a clap struct that `sender`, `receiver` and `doctor` flatten in, and
//! the plain data it turns into ([`RelayConfig`]).
//!
//! Passwords and secrets may come from the environment so they stay out of `ps` and the
//! shell history; `--help` never shows their values.

use clap::Args;

use crate::relay::{Credentials, RelayConfig, RelayUri, Secret};

/// The relay flags.
#[derive(Clone, Debug, Default, Args)]
pub struct RelayArgs {
    // The text is clap's help, where brackets are brackets, not rustdoc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// A TURN relay of your own (repeatable; the first that works is used): the transfer
    /// starts over it at once and moves onto a direct path when punching finds one.
    /// turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT] (TLS, e.g. port 443).
    #[arg(
        long = "relay",
        value_name = "URI",
        env = "P2PCOPY_RELAY",
        value_delimiter = ','
    )]
    pub relays: Vec<RelayUri>,
    /// User name for the relay (with --relay-password); with --relay-secret, the name the
    /// time-limited credentials are made for.
    #[arg(long, value_name = "USER", env = "P2PCOPY_RELAY_USER")]
    pub relay_user: Option<String>,
    /// Password for the relay; better given in the environment than on the command line.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "P2PCOPY_RELAY_PASSWORD",
        hide_env_values = true
    )]
    pub relay_password: Option<Secret>,
    /// The relay's shared secret (coturn `static-auth-secret`): time-limited credentials
    /// are derived from it (TURN REST); better given in the environment.
    #[arg(
        long,
        value_name = "SECRET",
        env = "P2PCOPY_RELAY_SECRET",
        hide_env_values = true,
        conflicts_with = "relay_password"
    )]
    pub relay_secret: Option<Secret>,
    /// The config file's relays, each with its own credentials; used when no --relay is
    /// given ([`super::config`] fills it in after parsing).
    #[arg(skip)]
    pub from_config: Vec<RelayConfig>,
}

/// The flags do not make a relay.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A password without the user it belongs to.
    #[error("--relay-password needs --relay-user")]
    PasswordWithoutUser,
    /// Credentials but no relay to use them with.
    #[error("--relay-user, --relay-password and --relay-secret need a --relay")]
    CredentialsWithoutRelay,
}

impl RelayArgs {
    /// Whether any relay flag was given.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
            && self.relay_user.is_none()
            && self.relay_password.is_none()
            && self.relay_secret.is_none()
    }

    /// The credentials the flags give, if any.
    pub fn credentials(&self) -> Result<Option<Credentials>, ArgsError> {
        let user = self.relay_user.clone();
        Ok(match (&self.relay_password, &self.relay_secret) {
            (Some(password), _) => Some(Credentials::LongTerm {
                user: user.ok_or(ArgsError::PasswordWithoutUser)?,
                password: password.clone(),
            }),
            (None, Some(secret)) => Some(Credentials::Rest {
                user: user.unwrap_or_default(),
                secret: secret.clone(),
            }),
            // A user alone: a relay that takes any password (coturn's no-auth) or a
            // password from a config file.
            (None, None) => user.map(|user| Credentials::LongTerm {
                user,
                password: Secret::new(""),
            }),
        })
    }

    /// The password or secret the flags (or the environment) give, for the config file's
    /// relays that name a user but leave the password out of the file.
    pub fn fallback_credentials(&self) -> Option<Credentials> {
        let user = self.relay_user.clone().unwrap_or_default();
        match (&self.relay_password, &self.relay_secret) {
            (Some(password), _) => Some(Credentials::LongTerm {
                user,
                password: password.clone(),
            }),
            (None, Some(secret)) => Some(Credentials::Rest {
                user,
                secret: secret.clone(),
            }),
            (None, None) => None,
        }
    }

    /// The relays the flags name, each with the flags' credentials (or none: the server's
    /// 401 then says so); without a `--relay`, the config file's.
    pub fn relays(&self) -> Result<Vec<RelayConfig>, ArgsError> {
        if self.relays.is_empty() && !self.from_config.is_empty() {
            return Ok(self.from_config.clone());
        }
        let creds = self.credentials()?;
        if self.relays.is_empty() && creds.is_some() {
            return Err(ArgsError::CredentialsWithoutRelay);
        }
        let creds = creds.unwrap_or(Credentials::LongTerm {
            user: String::new(),
            password: Secret::new(""),
        });
        Ok(self
            .relays
            .iter()
            .map(|uri| RelayConfig {
                uri: uri.clone(),
                creds: creds.clone(),
            })
            .collect())
    }
}

/// The relays a transfer uses (the first that gives an allocation); bad flag combinations
/// are usage errors.
pub fn for_transfers(args: &RelayArgs) -> Result<Vec<RelayConfig>, crate::Error> {
    args.relays()
        .map_err(|e| crate::Error::Usage(e.to_string()))
}

/// The relays `doctor` checks; bad flag combinations are usage errors.
pub fn for_doctor(args: &RelayArgs) -> Result<Vec<RelayConfig>, crate::Error> {
    args.relays()
        .map_err(|e| crate::Error::Usage(e.to_string()))
}

/// `doctor`'s outcome for its relays: the first one that cannot be used fails the run
/// (exit 5), in one line naming it and why.
pub fn first_failure(checks: &[crate::relay::RelayCheck]) -> Result<(), crate::Error> {
    match checks
        .iter()
        .find_map(|c| c.result.as_ref().err().map(|e| (c, e)))
    {
        Some((c, e)) => Err(crate::Error::Relay {
            relay: c.uri.to_string(),
            source: e.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        relay: RelayArgs,
    }

    fn parse(args: &[&str]) -> Result<RelayArgs, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.relay)
    }

    #[test]
    fn flags_make_relays() {
        let a = parse(&[
            "--relay",
            "turn:198.19.0.5",
            "--relay",
            "turns:relay.example:443",
            "--relay-user",
            "alice",
            "--relay-password",
            "pw",
        ])
        .unwrap();
        let r = a.relays().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].uri.port, 443);
        assert_eq!(
            r[0].creds,
            Credentials::LongTerm {
                user: "alice".into(),
                password: Secret::new("pw")
            }
        );
        // The password is not in the flags' Debug output.
        assert!(!format!("{a:?}").contains("\"pw\""), "{a:?}");
        let a = parse(&["--relay", "turn:h", "--relay-secret", "s"]).unwrap();
        assert_eq!(
            a.relays().unwrap()[0].creds,
            Credentials::Rest {
                user: String::new(),
                secret: Secret::new("s")
            }
        );
    }

    #[test]
    fn bad_combinations_are_told() {
        assert!(parse(&["--relay", "stun:h"])
            .unwrap_err()
            .to_string()
            .contains("turn: or turns:"));
        assert!(parse(&["--relay-password", "a", "--relay-secret", "b"]).is_err());
        assert_eq!(
            parse(&["--relay", "turn:h", "--relay-password", "a"])
                .unwrap()
                .relays(),
            Err(ArgsError::PasswordWithoutUser)
        );
        assert_eq!(
            parse(&["--relay-user", "a"]).unwrap().relays(),
            Err(ArgsError::CredentialsWithoutRelay)
        );
        assert!(parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn config_relays_are_used_without_a_relay_flag() {
        let mut a = parse(&["--relay-password", "from-env"]).unwrap();
        assert_eq!(
            a.fallback_credentials(),
            Some(Credentials::LongTerm {
                user: String::new(),
                password: Secret::new("from-env")
            })
        );
        let cfg = RelayConfig {
            uri: "turn:cfg.example".parse().unwrap(),
            creds: Credentials::LongTerm {
                user: "bob".into(),
                password: Secret::new("from-env"),
            },
        };
        a.from_config = vec![cfg.clone()];
        assert_eq!(a.relays(), Ok(vec![cfg.clone()]));
        // A --relay flag replaces the file's relays.
        a.relays = vec!["turn:flag.example".parse().unwrap()];
        a.relay_user = Some("alice".into());
        assert_eq!(a.relays().unwrap()[0].uri.host, "flag.example");
    }
}
