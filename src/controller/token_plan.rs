//! Pure decisions of the SystemAccountToken controller (cert-manager style policies): given the
//! spec, the status, the Secret and the clock, what is due. Each reason is a value the reconcile
//! records in metrics and Events.
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Why a new token is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationReason {
    /// No token was issued yet.
    Initial,
    /// The Secret is gone, or no longer holds the current token.
    SecretLost,
    /// `systemAccountRef` now points to another account, or the account was recreated.
    AccountChanged,
    /// `spec.duration` changed.
    DurationChanged,
    /// The current token no longer exists in Konnect (revoked out of band, or expired).
    TokenRevoked,
    /// `konnect-sa.dev/rotate` got a new value.
    Manual,
    /// `renewalTime` has come.
    Renewal,
}

impl RotationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "Initial",
            Self::SecretLost => "SecretLost",
            Self::AccountChanged => "AccountChanged",
            Self::DurationChanged => "DurationChanged",
            Self::TokenRevoked => "TokenRevoked",
            Self::Manual => "Manual",
            Self::Renewal => "Renewal",
        }
    }
}

/// What the Secret says about the token it holds (from its annotations; never the value itself).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretView {
    /// The Secret has a controller ownerReference to this CR.
    pub owned: bool,
    /// `secretKey` is present and non-empty.
    pub has_value: bool,
    pub token_id: Option<String>,
    pub token_name: Option<String>,
    pub account_id: Option<String>,
    pub revision: Option<i64>,
    pub expires_at: Option<Timestamp>,
    pub issued_at: Option<Timestamp>,
    /// The `konnect-sa.dev/rotate` value this token answered (so a crash before the status write
    /// does not rotate twice for one request).
    pub rotated_for: Option<String>,
}

/// The current token as the status records it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CurrentToken {
    pub token_id: Option<String>,
    pub account_id: Option<String>,
    pub revision: i64,
    pub issued_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub renewal_time: Option<Timestamp>,
    pub last_rotate_annotation: Option<String>,
}

/// Inputs of [`rotation_due`].
#[derive(Debug, Clone)]
pub struct RotationInputs<'a> {
    pub current: &'a CurrentToken,
    /// None: no Secret.
    pub secret: Option<&'a SecretView>,
    pub account_id: &'a str,
    pub lifetime: Duration,
    pub rotate_annotation: Option<&'a str>,
    /// None: not checked this time.
    pub token_live: Option<bool>,
    pub now: Timestamp,
}

/// The first reason that calls for a new token, in order of urgency; None when the current one stays.
pub fn rotation_due(i: &RotationInputs) -> Option<RotationReason> {
    let Some(token_id) = i.current.token_id.as_deref() else {
        return Some(RotationReason::Initial);
    };
    let secret_ok = i
        .secret
        .is_some_and(|s| s.has_value && s.token_id.as_deref() == Some(token_id));
    if !secret_ok {
        return Some(RotationReason::SecretLost);
    }
    if i.current.account_id.as_deref() != Some(i.account_id) {
        return Some(RotationReason::AccountChanged);
    }
    if i.token_live == Some(false) {
        return Some(RotationReason::TokenRevoked);
    }
    let wanted_lifetime = SignedDuration::try_from(i.lifetime).unwrap_or(SignedDuration::MAX);
    if let (Some(issued), Some(expires)) = (i.current.issued_at, i.current.expires_at)
        && expires.duration_since(issued) != wanted_lifetime
    {
        return Some(RotationReason::DurationChanged);
    }
    if let Some(wanted) = i.rotate_annotation
        && i.current.last_rotate_annotation.as_deref() != Some(wanted)
    {
        return Some(RotationReason::Manual);
    }
    match i.current.renewal_time {
        Some(at) if i.now >= at => Some(RotationReason::Renewal),
        None => Some(RotationReason::Renewal),
        _ => None,
    }
}

/// A Secret written after the status (a crash between the Secret write and the status write):
/// its token is the current one.
pub fn secret_is_newer(current: &CurrentToken, secret: &SecretView) -> bool {
    secret.owned
        && secret.has_value
        && secret.token_id.is_some()
        && secret.revision.unwrap_or(0) > current.revision
        && secret.token_id != current.token_id
}

/// Truncates to whole seconds: Konnect keeps `expires_at` at second precision, and comparing
/// at that precision avoids false "changed" verdicts.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// When a token issued at `issued_at` expires.
pub fn expiry(issued_at: Timestamp, lifetime: Duration) -> Timestamp {
    let d = SignedDuration::try_from(lifetime).unwrap_or(SignedDuration::MAX);
    whole_seconds(issued_at.checked_add(d).unwrap_or(Timestamp::MAX))
}

/// When to rotate: `renew_before` ahead of expiry, minus a small jitter (at most a tenth of
/// `renew_before`, at most 5 minutes) so many tokens issued together do not rotate together.
/// The jitter is derived from `seed` (uid + revision), so it is stable across reconciles.
pub fn renewal_time(expires_at: Timestamp, renew_before: Duration, seed: &str) -> Timestamp {
    let max_jitter = (renew_before / 10).min(Duration::from_secs(300));
    let mut h = DefaultHasher::new();
    seed.hash(&mut h);
    let unit = (h.finish() % 10_000) as f64 / 10_000.0;
    let back = renew_before + max_jitter.mul_f64(unit);
    let back = SignedDuration::try_from(back).unwrap_or(SignedDuration::MAX);
    whole_seconds(expires_at.checked_sub(back).unwrap_or(Timestamp::MIN))
}

/// When an old token is revoked: after the retention, never after its own expiry.
pub fn revoke_at(
    now: Timestamp,
    retention: Duration,
    old_expires_at: Option<Timestamp>,
) -> Timestamp {
    let d = SignedDuration::try_from(retention).unwrap_or(SignedDuration::MAX);
    let at = whole_seconds(now.checked_add(d).unwrap_or(Timestamp::MAX));
    match old_expires_at {
        Some(exp) if exp < at => exp,
        _ => at,
    }
}

/// The Konnect-side token name: unique per CR and revision, at most 256 characters (PATName).
pub fn token_name(namespace: &str, name: &str, revision: i64) -> String {
    let full = format!("{namespace}.{name}.r{revision}");
    if full.len() <= 256 {
        return full;
    }
    let mut h = DefaultHasher::new();
    (namespace, name).hash(&mut h);
    let suffix = format!("-{:016x}.r{revision}", h.finish());
    let keep = 256 - suffix.len();
    let prefix: String = format!("{namespace}.{name}").chars().take(keep).collect();
    format!("{prefix}{suffix}")
}

/// The earliest of the given instants that lies in the future, as a delay from `now`,
/// capped by `max` (the resync period).
pub fn next_wakeup(
    now: Timestamp,
    instants: impl IntoIterator<Item = Timestamp>,
    max: Duration,
) -> Duration {
    instants
        .into_iter()
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO))
        .min()
        .map_or(max, |d| d.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn current() -> CurrentToken {
        CurrentToken {
            token_id: Some("t1".into()),
            account_id: Some("a1".into()),
            revision: 1,
            issued_at: Some(ts(1000)),
            expires_at: Some(ts(1090)),
            renewal_time: Some(ts(1030)),
            last_rotate_annotation: None,
        }
    }

    fn secret() -> SecretView {
        SecretView {
            owned: true,
            has_value: true,
            token_id: Some("t1".into()),
            revision: Some(1),
            ..Default::default()
        }
    }

    fn inputs<'a>(c: &'a CurrentToken, s: Option<&'a SecretView>, now: i64) -> RotationInputs<'a> {
        RotationInputs {
            current: c,
            secret: s,
            account_id: "a1",
            lifetime: Duration::from_secs(90),
            rotate_annotation: None,
            token_live: Some(true),
            now: ts(now),
        }
    }

    #[test]
    fn nothing_due_before_renewal_time() {
        let (c, s) = (current(), secret());
        assert_eq!(rotation_due(&inputs(&c, Some(&s), 1029)), None);
        assert_eq!(
            rotation_due(&inputs(&c, Some(&s), 1030)),
            Some(RotationReason::Renewal)
        );
    }

    #[test]
    fn reasons_in_order_of_urgency() {
        let (c, s) = (current(), secret());
        let none = CurrentToken::default();
        assert_eq!(
            rotation_due(&inputs(&none, None, 0)),
            Some(RotationReason::Initial)
        );
        assert_eq!(
            rotation_due(&inputs(&c, None, 1001)),
            Some(RotationReason::SecretLost)
        );
        let emptied = SecretView {
            has_value: false,
            ..s.clone()
        };
        assert_eq!(
            rotation_due(&inputs(&c, Some(&emptied), 1001)),
            Some(RotationReason::SecretLost)
        );
        let other = SecretView {
            token_id: Some("zz".into()),
            ..s.clone()
        };
        assert_eq!(
            rotation_due(&inputs(&c, Some(&other), 1001)),
            Some(RotationReason::SecretLost)
        );
        let moved = RotationInputs {
            account_id: "a2",
            ..inputs(&c, Some(&s), 1001)
        };
        assert_eq!(rotation_due(&moved), Some(RotationReason::AccountChanged));
        let revoked = RotationInputs {
            token_live: Some(false),
            ..inputs(&c, Some(&s), 1001)
        };
        assert_eq!(rotation_due(&revoked), Some(RotationReason::TokenRevoked));
        let longer = RotationInputs {
            lifetime: Duration::from_secs(3600),
            ..inputs(&c, Some(&s), 1001)
        };
        assert_eq!(rotation_due(&longer), Some(RotationReason::DurationChanged));
    }

    #[test]
    fn manual_rotation_fires_once_per_new_value() {
        let (mut c, s) = (current(), secret());
        let asked = RotationInputs {
            rotate_annotation: Some("now"),
            ..inputs(&c, Some(&s), 1001)
        };
        assert_eq!(rotation_due(&asked), Some(RotationReason::Manual));
        c.last_rotate_annotation = Some("now".into());
        let again = RotationInputs {
            rotate_annotation: Some("now"),
            ..inputs(&c, Some(&s), 1001)
        };
        assert_eq!(rotation_due(&again), None);
    }

    #[test]
    fn a_newer_secret_is_adopted_an_older_one_is_not() {
        let c = current();
        let newer = SecretView {
            token_id: Some("t2".into()),
            revision: Some(2),
            ..secret()
        };
        assert!(secret_is_newer(&c, &newer));
        assert!(!secret_is_newer(&c, &secret()));
        let foreign = SecretView {
            owned: false,
            ..newer
        };
        assert!(!secret_is_newer(&c, &foreign));
    }

    #[test]
    fn renewal_jitter_is_bounded_and_stable() {
        let exp = ts(100_000);
        for seed in ["a", "b", "c", "uid-1/3"] {
            let r = renewal_time(exp, Duration::from_secs(60), seed);
            assert!(r <= ts(100_000 - 60) && r >= ts(100_000 - 66), "{r}");
            assert_eq!(r, renewal_time(exp, Duration::from_secs(60), seed));
        }
        let long = renewal_time(exp, Duration::from_secs(720 * 3600), "x");
        assert!(long >= ts(100_000 - 720 * 3600 - 300));
    }

    #[test]
    fn revoke_never_later_than_the_old_tokens_expiry() {
        assert_eq!(
            revoke_at(ts(100), Duration::from_secs(10), Some(ts(500))),
            ts(110)
        );
        assert_eq!(
            revoke_at(ts(100), Duration::from_secs(3600), Some(ts(500))),
            ts(500)
        );
        assert_eq!(revoke_at(ts(100), Duration::ZERO, None), ts(100));
    }

    #[test]
    fn token_names_are_unique_per_revision_and_bounded() {
        assert_eq!(
            token_name("platform", "ci-bot-token", 3),
            "platform.ci-bot-token.r3"
        );
        let long = token_name(&"n".repeat(63), &"x".repeat(253), 12);
        assert!(long.len() <= 256 && long.ends_with(".r12"));
        assert_ne!(long, token_name(&"n".repeat(63), &"x".repeat(252), 12));
    }

    #[test]
    fn wakeup_is_the_nearest_future_instant_capped_by_resync() {
        let max = Duration::from_secs(300);
        assert_eq!(
            next_wakeup(ts(0), [ts(50), ts(20)], max),
            Duration::from_secs(20)
        );
        assert_eq!(next_wakeup(ts(0), [ts(5000)], max), max);
        assert_eq!(next_wakeup(ts(100), [ts(50)], max), Duration::ZERO);
        assert_eq!(next_wakeup(ts(0), [], max), max);
    }

    #[test]
    fn expiry_is_whole_seconds() {
        let t = Timestamp::from_millisecond(1_000_500).unwrap();
        assert_eq!(expiry(t, Duration::from_secs(90)), ts(1090));
    }
}
