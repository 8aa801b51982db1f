//! Recently cut identities.
//!
//! A connection authenticates against the registry, then attaches to its
//! session. If the identity is revoked between the two (the registry read saw
//! it active, the cut ran before the session existed), the cut finds nothing
//! to close. The log closes that gap: a connection notes the epoch before it
//! authenticates and, once attached, asks whether any cut since then names
//! it. Entries are kept for a bounded time measured on this node's monotonic
//! clock; a connection whose admission outlasted that is refused, because it
//! can no longer be checked.

use onramp_domain::RevokedIdentity;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a cut is remembered; admission (TLS is done, CONNECT read) takes
/// milliseconds, so this is generous.
const KEEP: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
pub(crate) struct CutLog {
    /// Number of cuts recorded so far; the epoch of the newest one.
    epoch: u64,
    /// Every cut with an epoch above this one is still in `entries`.
    forgotten_through: u64,
    entries: VecDeque<(u64, Instant, RevokedIdentity)>,
}

impl CutLog {
    /// The epoch a connection notes before it authenticates.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn record(&mut self, cut: RevokedIdentity, now: Instant) {
        self.epoch += 1;
        self.entries.push_back((self.epoch, now, cut));
        while let Some((epoch, at, _)) = self.entries.front() {
            if now.duration_since(*at) <= KEEP {
                break;
            }
            self.forgotten_through = *epoch;
            self.entries.pop_front();
        }
    }

    /// Whether an identity admitted at `since` must be cut: a cut after
    /// `since` names it, or cuts after `since` were already forgotten.
    pub(crate) fn cut_since(
        &self,
        since: u64,
        tenant: &str,
        thing_name: &str,
        certificate_serial: &str,
    ) -> bool {
        if self.forgotten_through > since {
            return true;
        }
        self.entries.iter().any(|(epoch, _, c)| {
            *epoch > since
                && c.tenant == tenant
                && c.thing_name == thing_name
                && c.certificate_serial
                    .as_deref()
                    .is_none_or(|s| s == certificate_serial)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(thing: &str, serial: Option<&str>) -> RevokedIdentity {
        RevokedIdentity {
            tenant: "t".into(),
            thing_name: thing.into(),
            certificate_serial: serial.map(str::to_string),
        }
    }

    #[test]
    fn a_cut_after_admission_started_names_the_connection() {
        let mut log = CutLog::default();
        let now = Instant::now();
        log.record(cut("d1", Some("s1")), now);
        let since = log.epoch();
        assert!(
            !log.cut_since(since, "t", "d1", "s1"),
            "older cuts were seen by authentication"
        );
        log.record(cut("d1", Some("s1")), now);
        assert!(log.cut_since(since, "t", "d1", "s1"));
        assert!(
            !log.cut_since(since, "t", "d1", "s2"),
            "another certificate of the thing"
        );
        assert!(!log.cut_since(since, "other", "d1", "s1"), "another tenant");
        assert!(!log.cut_since(since, "t", "d2", "s1"));
    }

    #[test]
    fn a_device_cut_names_every_certificate_of_the_thing() {
        let mut log = CutLog::default();
        let since = log.epoch();
        log.record(cut("d1", None), Instant::now());
        assert!(log.cut_since(since, "t", "d1", "any"));
    }

    #[test]
    fn an_admission_older_than_the_log_is_refused() {
        let mut log = CutLog::default();
        let start = Instant::now();
        let since = log.epoch();
        log.record(cut("x", None), start);
        log.record(cut("y", None), start + KEEP + Duration::from_secs(1));
        assert!(
            log.cut_since(since, "t", "d1", "s1"),
            "a forgotten cut might have named it"
        );
        assert!(!log.cut_since(log.epoch(), "t", "d1", "s1"));
    }
}
