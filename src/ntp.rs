//! Wall-clock time corrected by NTP, so that two peers agree on round boundaries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Public NTP servers used when none is given.
pub const DEFAULT_SERVERS: &[&str] = &["pool.ntp.org", "time.google.com", "time.cloudflare.com"];

/// How long one server gets to answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The local clock plus an offset measured against an NTP server.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Clock {
    /// Seconds to add to the local clock to get NTP time.
    pub offset_secs: f64,
}

impl Clock {
    /// NTP-corrected time since the Unix epoch.
    pub fn now_unix(&self) -> Duration {
        let local = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        apply_offset(local, self.offset_secs)
    }
}

/// Adds a signed offset to a time, saturating at the epoch.
pub fn apply_offset(t: Duration, offset_secs: f64) -> Duration {
    if offset_secs >= 0.0 {
        t + Duration::from_secs_f64(offset_secs)
    } else {
        t.saturating_sub(Duration::from_secs_f64(-offset_secs))
    }
}

/// Asks the servers in turn; the first answer wins. `None` when nobody answered.
pub async fn query(servers: &[String]) -> Option<(String, Clock)> {
    for server in servers {
        let mut client = rsntp::AsyncSntpClient::new();
        client.set_timeout(QUERY_TIMEOUT);
        match tokio::time::timeout(
            QUERY_TIMEOUT + Duration::from_millis(500),
            client.synchronize(server.as_str()),
        )
        .await
        {
            Ok(Ok(result)) => {
                let offset_secs = result.clock_offset().as_secs_f64();
                tracing::info!(%server, offset_secs, "NTP answer");
                return Some((server.clone(), Clock { offset_secs }));
            }
            Ok(Err(e)) => tracing::debug!(%server, error = %e, "NTP query failed"),
            Err(_) => tracing::debug!(%server, "NTP query timed out"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_apply_both_ways() {
        let t = Duration::from_secs(100);
        assert_eq!(apply_offset(t, 7.5), Duration::from_millis(107_500));
        assert_eq!(apply_offset(t, -7.5), Duration::from_millis(92_500));
        assert_eq!(apply_offset(Duration::from_secs(1), -5.0), Duration::ZERO);
    }
}
