//! Pure decisions of the SystemAccountToken controller (cert-manager style policies): given the
//! spec, the status, the Secret and the clock, what is due. Each reason is a value the reconcile
//! records in metrics and Events.
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{PreviousToken, SystemAccountTokenStatus};

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
    /// The key holding the token the annotations describe (`konnect-sa.dev/token-key`; None on a
    /// Secret written before it was recorded: then the spec's key) is present and non-empty.
    pub has_value: bool,
    /// `konnect-sa.dev/token-key`: the key the annotations' token was written under.
    pub key: Option<String>,
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
    // Whole seconds on both sides (Konnect keeps seconds; "24h0.5s" is 24h), and a second of slack
    // for Konnect's own rounding of the expiry it returns: never a rotation loop on a fraction.
    if let (Some(issued), Some(expires)) = (i.current.issued_at, i.current.expires_at) {
        let issued_for = expires.as_second().saturating_sub(issued.as_second());
        let wanted = i64::try_from(i.lifetime.as_secs()).unwrap_or(i64::MAX);
        if issued_for.abs_diff(wanted) > 1 {
            return Some(RotationReason::DurationChanged);
        }
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
        && secret.issued_at.is_some()
        && secret.expires_at.is_some()
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
/// The jitter is derived from `seed` (uid + revision), so it is stable across reconciles. Always
/// after `issued_at`: the jitter takes at most half the time between issue and `renew_before`, and a
/// lifetime no longer than `renew_before` (Konnect may cap what it issues) rotates at half-life, so
/// a token is never due the moment it is issued.
pub fn renewal_time(
    issued_at: Timestamp,
    expires_at: Timestamp,
    renew_before: Duration,
    seed: &str,
) -> Timestamp {
    let lifetime = Duration::try_from(expires_at.duration_since(issued_at)).unwrap_or_default();
    let gap = lifetime.saturating_sub(renew_before);
    if gap.is_zero() {
        let half = SignedDuration::try_from(lifetime / 2).unwrap_or(SignedDuration::ZERO);
        return whole_seconds(issued_at.checked_add(half).unwrap_or(expires_at));
    }
    let max_jitter = (renew_before / 10)
        .min(Duration::from_secs(300))
        .min(gap / 2);
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

/// The Konnect-side token name: `[<cluster>.]<namespace>.<name>.<uid prefix>.r<revision>`, at most 256
/// characters (PATName). The uid makes it unique per object: the same name in a second cluster, or an
/// object recreated after `deletionPolicy: Orphan`, never names (and so never heals away) another's
/// token; `--cluster-name` makes it readable in Konnect's UI.
pub fn token_name(cluster: &str, namespace: &str, name: &str, uid: &str, revision: i64) -> String {
    let uid: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    let name = format!("{name}.{uid}");
    let namespace = if cluster.is_empty() {
        namespace.to_string()
    } else {
        format!("{cluster}.{namespace}")
    };
    let namespace = namespace.as_str();
    let full = format!("{namespace}.{name}.r{revision}");
    if full.len() <= 256 {
        return full;
    }
    let mut h = DefaultHasher::new();
    (namespace, &name).hash(&mut h);
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

/// Whether the current token still exists in Konnect, as far as this reconcile knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Not asked yet.
    Unknown,
    Live,
    /// Revoked out of band, or expired.
    Gone,
    /// Not asked: the background budget had no permit (a drift check waits for the next resync).
    Deferred,
}

/// A token Konnect lists under the pending name.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub id: String,
    pub name: String,
    /// The account it was found in.
    pub account_id: String,
    pub created_at: Option<Timestamp>,
}

/// Everything the decision needs, read by the controller; no I/O in here.
#[derive(Debug, Clone)]
pub struct TokenObserved<'a> {
    pub status: &'a SystemAccountTokenStatus,
    /// None: no Secret at spec.secretName.
    pub secret: Option<&'a SecretView>,
    /// The Secret at `status.pendingSecretName`, when that is not spec.secretName (the spec moved
    /// while an issue was unfinished): it may hold the unfinished token.
    pub pending_secret: Option<&'a SecretView>,
    /// Where the spec writes: (secretName, secretKey).
    pub secret_at: (&'a str, &'a str),
    /// The Konnect id of the account the spec points to.
    pub account_id: &'a str,
    pub lifetime: Duration,
    pub rotate_annotation: Option<&'a str>,
    pub live: Liveness,
    /// Tokens found under `status.pendingTokenName` (None: not looked up yet this reconcile).
    pub found: Option<&'a [Found]>,
    /// `rolloutRestartTargets` is not empty.
    pub has_restart_targets: bool,
    /// A restart was attempted in this reconcile already (a failed one is retried at the next).
    pub restart_tried: bool,
    /// How long a pending marker is left alone before it is healed: a writer that has not stopped yet
    /// (a replaced leader, a request still in flight from a killed process) may still create the
    /// token or write it to the Secret in that time.
    pub pending_settle: Duration,
    pub now: Timestamp,
}

/// The next thing the token controller does. The controller executes it, observes again and asks
/// again, until [`TokenStep::Done`].
#[derive(Debug, Clone, PartialEq)]
pub enum TokenStep {
    /// The Secret holds a newer token than the status (a crash after the Secret write): record it.
    /// `pending_place`: the Secret the unfinished issue wrote to, which the spec has moved away from.
    AdoptSecret { pending_place: bool },
    /// A create may have happened whose value never reached the Secret: list tokens by the pending name.
    FindPending,
    /// Revoke these unfinished tokens (their value reached no one), then clear the pending marker.
    RevokePending(Vec<Found>),
    /// Ask Konnect whether the current token still exists.
    CheckLive,
    /// Create a token, write it to the Secret, record it (the old one goes to previousTokens).
    Issue(RotationReason),
    /// Restart rolloutRestartTargets for the current revision.
    Restart,
    /// Revoke the previous tokens with these ids: their revokeAt has come.
    Revoke(Vec<String>),
    /// A pending marker younger than the settle time: look again at this instant (heal then).
    WaitPending(Timestamp),
    /// Nothing more to do now.
    Done,
}

fn parse(v: &Option<String>) -> Option<Timestamp> {
    v.as_deref().and_then(|s| s.parse().ok())
}

/// The current token as the status records it.
pub fn current_of(st: &SystemAccountTokenStatus) -> CurrentToken {
    CurrentToken {
        token_id: st.token_id.clone(),
        account_id: st.account_id.clone(),
        revision: st.revision.unwrap_or(0),
        issued_at: parse(&st.last_rotation_time),
        expires_at: parse(&st.expires_at),
        renewal_time: parse(&st.renewal_time),
        last_rotate_annotation: st.last_rotate_annotation.clone(),
    }
}

/// The one decision of the token controller: given what was observed, the next step. Every heal and
/// retention rule is here, in order: heal a crash after the Secret write, heal a crash before it,
/// issue when due (asking Konnect about the current token first when that could decide), restart
/// consumers, revoke what is due.
pub fn plan_token(o: &TokenObserved) -> TokenStep {
    let st = o.status;
    let current = current_of(st);
    if o.secret.is_some_and(|s| secret_is_newer(&current, s)) {
        return TokenStep::AdoptSecret {
            pending_place: false,
        };
    }
    if o.pending_secret
        .is_some_and(|s| secret_is_newer(&current, s))
    {
        return TokenStep::AdoptSecret {
            pending_place: true,
        };
    }
    if let Some(pending) = st.pending_token_name.as_deref() {
        // Another writer may still be finishing this issue (its Secret write then lands and is
        // adopted above); healing before it has surely stopped could revoke the token it writes.
        let settle = SignedDuration::try_from(o.pending_settle).unwrap_or(SignedDuration::ZERO);
        if let Some(at) = parse(&st.pending_since).and_then(|s| s.checked_add(settle).ok())
            && at > o.now
        {
            return TokenStep::WaitPending(at);
        }
        let Some(found) = o.found else {
            return TokenStep::FindPending;
        };
        return TokenStep::RevokePending(unfinished_ours(st, pending, found));
    }
    let live = match o.live {
        _ if current.expires_at.is_some_and(|e| e <= o.now) => Some(false),
        Liveness::Live => Some(true),
        Liveness::Gone => Some(false),
        Liveness::Unknown | Liveness::Deferred => None,
    };
    // The current token was written elsewhere (secretName or secretKey edited): the spec's place
    // does not hold it, whatever that Secret's annotations say (after a key moved back, the old key
    // may still hold a replaced token while the annotations name the current one).
    let moved = location(&st.secret_name, &st.secret_key).is_some_and(|at| at != o.secret_at)
        || o.secret
            .is_some_and(|s| s.key.as_deref().is_some_and(|k| k != o.secret_at.1));
    let inputs = RotationInputs {
        current: &current,
        secret: if moved { None } else { o.secret },
        account_id: o.account_id,
        lifetime: o.lifetime,
        rotate_annotation: o.rotate_annotation,
        token_live: live,
        now: o.now,
    };
    match rotation_due(&inputs) {
        // Whether the token still exists cannot change these.
        Some(
            reason @ (RotationReason::Initial
            | RotationReason::SecretLost
            | RotationReason::AccountChanged),
        ) => {
            return TokenStep::Issue(reason);
        }
        _ if live.is_none() && o.live == Liveness::Unknown => return TokenStep::CheckLive,
        Some(reason) => return TokenStep::Issue(reason),
        None => {}
    }
    let restarts_pending = restarts_pending(st, o.has_restart_targets);
    if restarts_pending && !o.restart_tried {
        return TokenStep::Restart;
    }
    // While the consumers have not been restarted onto the current token, the previous ones are
    // what they use: held back past revokeAt, but never past their own expiry.
    let due: Vec<String> = st
        .previous_tokens
        .iter()
        .filter(|p| {
            p.revoke_at
                .parse::<Timestamp>()
                .map_or(true, |at| at <= o.now)
        })
        .filter(|p| !restarts_pending || parse(&p.expires_at).is_none_or(|e| e <= o.now))
        .map(|p| p.id.clone())
        .collect();
    if !due.is_empty() {
        return TokenStep::Revoke(due);
    }
    TokenStep::Done
}

/// Of the tokens found under the pending name, those this object created: the name matches (it
/// carries the object's uid and the revision) and it was not created long before the marker (an
/// hour of slack for clocks that disagree, and for a create Konnect committed late).
pub fn unfinished_ours(
    st: &SystemAccountTokenStatus,
    pending: &str,
    found: &[Found],
) -> Vec<Found> {
    let since = parse(&st.pending_since);
    found
        .iter()
        .filter(|t| t.name == pending)
        .filter(|t| match (since, t.created_at) {
            (Some(since), Some(created)) => created.as_second() >= since.as_second() - 3600,
            _ => true,
        })
        .cloned()
        .collect()
}

/// Whether rolloutRestartTargets still have to be restarted onto the current revision.
pub fn restarts_pending(st: &SystemAccountTokenStatus, has_restart_targets: bool) -> bool {
    let revision = st.revision.unwrap_or(0);
    has_restart_targets && revision > 0 && st.last_restart_revision.unwrap_or(0) < revision
}

/// Moves the current token to `previousTokens`, to be revoked after `keep` (never after its expiry).
pub fn retire_current(st: &mut SystemAccountTokenStatus, now: Timestamp, keep: Duration) {
    if let Some(old_id) = st.token_id.take() {
        st.previous_tokens.push(PreviousToken {
            id: old_id,
            name: st.token_name.clone().unwrap_or_default(),
            account_id: st.account_id.clone().unwrap_or_default(),
            revoke_at: revoke_at(now, keep, parse(&st.expires_at)).to_string(),
            expires_at: st.expires_at.clone(),
            secret_name: st.secret_name.clone(),
            secret_key: st.secret_key.clone(),
        });
    }
}

/// How long the replaced token stays valid after a rotation for `reason`: the retention, whatever
/// happened to the Secret (a consumer that read the old value before the Secret was deleted, emptied
/// or moved keeps working until then, as cert-manager never takes a working credential away before
/// its successor is in place). Revoked at once only when it is gone anyway: Konnect no longer has it,
/// or its account was recreated (`old_exists` false).
pub fn retention_after(reason: RotationReason, retention: Duration, old_exists: bool) -> Duration {
    match reason {
        RotationReason::TokenRevoked => Duration::ZERO,
        RotationReason::AccountChanged if !old_exists => Duration::ZERO,
        _ => retention,
    }
}

/// Records, before a create, the name and account of the token about to exist: after a crash or a
/// lost answer the next reconcile looks for it there (even if the spec moved to another account).
pub fn set_pending(
    st: &mut SystemAccountTokenStatus,
    name: &str,
    account_id: &str,
    secret_name: &str,
    now: Timestamp,
) {
    // The latest attempt's time: the settle time counts from it (a token an earlier attempt under
    // the same name created is still found: the heal allows an hour before the marker).
    st.pending_since = Some(whole_seconds(now).to_string());
    st.pending_token_name = Some(name.to_string());
    st.pending_account_id = Some(account_id.to_string());
    st.pending_secret_name = Some(secret_name.to_string());
}

pub fn clear_pending(st: &mut SystemAccountTokenStatus) {
    st.pending_token_name = None;
    st.pending_since = None;
    st.pending_account_id = None;
    st.pending_secret_name = None;
}

/// The accounts an unfinished token can be in: where it was being created, the spec's, the current
/// token's.
pub fn pending_accounts(st: &SystemAccountTokenStatus, spec_account: Option<&str>) -> Vec<String> {
    let mut accounts: Vec<String> = Vec::new();
    for a in [
        st.pending_account_id.as_deref(),
        spec_account,
        st.account_id.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        if !accounts.iter().any(|x| x == a) {
            accounts.push(a.to_string());
        }
    }
    accounts
}

/// A token as issued (and written to the Secret): what the status records of it.
#[derive(Debug, Clone)]
pub struct Issued<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub account_id: &'a str,
    pub revision: i64,
    pub issued_at: Timestamp,
    /// What Konnect answered (the truth), or what was asked for when the answer had none.
    pub expires_at: Timestamp,
    pub rotated_for: Option<&'a str>,
    /// Where it was written: the Secret and its key.
    pub secret_name: &'a str,
    pub secret_key: &'a str,
}

/// Records `t` as the current token: the old one retires with `keep`, the pending marker clears,
/// the schedule follows the spec (`renew_before`, jitter seeded by `uid` and revision).
pub fn record_issued(
    st: &mut SystemAccountTokenStatus,
    t: &Issued,
    now: Timestamp,
    keep: Duration,
    renew_before: Duration,
    uid: &str,
) {
    retire_current(st, now, keep);
    st.token_id = Some(t.id.to_string());
    st.token_name = Some(t.name.to_string());
    st.account_id = Some(t.account_id.to_string());
    st.revision = Some(t.revision);
    st.expires_at = Some(t.expires_at.to_string());
    let seed = format!("{uid}/{}", t.revision);
    st.renewal_time =
        Some(renewal_time(t.issued_at, t.expires_at, renew_before, &seed).to_string());
    st.last_rotation_time = Some(t.issued_at.to_string());
    st.secret_name = Some(t.secret_name.to_string());
    st.secret_key = Some(t.secret_key.to_string());
    if t.rotated_for.is_some() {
        st.last_rotate_annotation = t.rotated_for.map(str::to_string);
    }
    clear_pending(st);
}

/// Records the token a Secret holds (written before a crash that lost the status write) as current.
/// `at` is where the Secret is: its name and the key that holds the token.
pub fn adopt_secret(
    st: &mut SystemAccountTokenStatus,
    view: &SecretView,
    at: (&str, &str),
    now: Timestamp,
    retention: Duration,
    renew_before: Duration,
    uid: &str,
) {
    let (Some(id), Some(issued_at), Some(expires_at)) =
        (view.token_id.as_deref(), view.issued_at, view.expires_at)
    else {
        return;
    };
    let pending_was_this =
        st.pending_token_name.is_some() && st.pending_token_name == view.token_name;
    let issued = Issued {
        id,
        name: view.token_name.as_deref().unwrap_or_default(),
        account_id: view.account_id.as_deref().unwrap_or_default(),
        revision: view.revision.unwrap_or(0),
        issued_at,
        expires_at,
        // The rotate request this token answered is done: without this, a crash between the
        // Secret and status writes would rotate a second time for the same request.
        rotated_for: view.rotated_for.as_deref(),
        secret_name: at.0,
        secret_key: at.1,
    };
    let pending = (
        st.pending_token_name.take(),
        st.pending_since.take(),
        st.pending_account_id.take(),
        st.pending_secret_name.take(),
    );
    record_issued(st, &issued, now, retention, renew_before, uid);
    if !pending_was_this {
        (
            st.pending_token_name,
            st.pending_since,
            st.pending_account_id,
            st.pending_secret_name,
        ) = pending;
    }
}

/// Where a token was written: (Secret name, key). None for a token recorded before the operator
/// kept track of it (then nothing is cleaned up after it).
fn location<'a>(name: &'a Option<String>, key: &'a Option<String>) -> Option<(&'a str, &'a str)> {
    Some((name.as_deref()?, key.as_deref()?))
}

/// The keys of Secret `secret_name` that must survive writing the next token under `key`: those
/// holding a token still valid, i.e. the current one (about to be replaced) and previous ones, written
/// there under another key (a `secretKey` move keeps the old key until its token is revoked).
pub fn keys_to_keep(st: &SystemAccountTokenStatus, secret_name: &str, key: &str) -> Vec<String> {
    let current = location(&st.secret_name, &st.secret_key).filter(|_| st.token_id.is_some());
    let previous = st
        .previous_tokens
        .iter()
        .filter_map(|p| location(&p.secret_name, &p.secret_key));
    let mut keys: Vec<String> = current
        .into_iter()
        .chain(previous)
        .filter(|(n, k)| *n == secret_name && *k != key)
        .map(|(_, k)| k.to_string())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// What a revoked token leaves to clean up in Kubernetes.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretCleanup {
    /// Its key or Secret still serves another token (or is where the spec writes): keep it.
    Nothing,
    /// It sat under a key nothing else uses any more: remove the key from that Secret.
    RemoveKey { secret: String, key: String },
    /// It sat in a Secret the spec moved away from and nothing else uses: delete that Secret, unless
    /// its annotations name the `current` token (written there again meanwhile).
    Delete {
        secret: String,
        current: Option<String>,
    },
}

/// What revoking the previous token `revoked` leaves to clean up, given the status that still records
/// it, the ids revoked with it now (`batch`), and where the spec writes. A place holds the last token
/// written there: tokens are recorded in the order they were issued (previous ones, then the
/// current one), so a later token at the same place has overwritten it. A token recorded without its
/// location leaves nothing (the operator cannot tell where it was).
pub fn cleanup_after_revoke(
    st: &SystemAccountTokenStatus,
    revoked: &str,
    batch: &[String],
    spec_secret: (&str, &str),
) -> SecretCleanup {
    let Some(index) = st.previous_tokens.iter().position(|p| p.id == revoked) else {
        return SecretCleanup::Nothing;
    };
    let Some((name, key)) = location(
        &st.previous_tokens[index].secret_name,
        &st.previous_tokens[index].secret_key,
    ) else {
        return SecretCleanup::Nothing;
    };
    let current = location(&st.secret_name, &st.secret_key).filter(|_| st.token_id.is_some());
    let later: Vec<(&str, &str)> = st.previous_tokens[index + 1..]
        .iter()
        .filter_map(|p| location(&p.secret_name, &p.secret_key))
        .chain(current)
        .collect();
    if (name, key) == spec_secret || later.contains(&(name, key)) {
        // Where the spec writes, or overwritten since: the place is another token's now.
        return SecretCleanup::Nothing;
    }
    // Other places in use: the spec's, the current token's, and those of previous tokens that stay.
    let others: Vec<(&str, &str)> = st
        .previous_tokens
        .iter()
        .filter(|p| p.id != revoked && !batch.contains(&p.id))
        .filter_map(|p| location(&p.secret_name, &p.secret_key))
        .chain(current)
        .chain(std::iter::once(spec_secret))
        .collect();
    if others.iter().any(|(n, _)| *n == name) {
        SecretCleanup::RemoveKey {
            secret: name.to_string(),
            key: key.to_string(),
        }
    } else {
        SecretCleanup::Delete {
            secret: name.to_string(),
            current: st.token_id.clone(),
        }
    }
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
            issued_at: Some(ts(1050)),
            expires_at: Some(ts(1140)),
            ..secret()
        };
        assert!(secret_is_newer(&c, &newer));
        // Without the times it records, a Secret cannot be adopted (its token is replaced instead).
        let bare = SecretView {
            expires_at: None,
            ..newer.clone()
        };
        assert!(!secret_is_newer(&c, &bare));
        assert!(!secret_is_newer(&c, &secret()));
        let foreign = SecretView {
            owned: false,
            ..newer
        };
        assert!(!secret_is_newer(&c, &foreign));
    }

    #[test]
    fn renewal_jitter_is_bounded_and_stable() {
        let (iss, exp) = (ts(0), ts(100_000));
        for seed in ["a", "b", "c", "uid-1/3"] {
            let r = renewal_time(iss, exp, Duration::from_secs(60), seed);
            assert!(r <= ts(100_000 - 60) && r >= ts(100_000 - 66), "{r}");
            assert_eq!(r, renewal_time(iss, exp, Duration::from_secs(60), seed));
        }
        let long = renewal_time(iss, exp, Duration::from_secs(20 * 3600), "x");
        assert!(long >= ts(100_000 - 20 * 3600 - 300));
    }

    #[test]
    fn renewal_is_never_due_at_issue_time() {
        // renewBefore close to the lifetime: the jitter shrinks to half the gap.
        for seed in ["a", "b", "c", "d", "e"] {
            let r = renewal_time(ts(0), ts(600), Duration::from_secs(570), seed);
            assert!(r > ts(0) && r <= ts(30), "{r}");
        }
        // Konnect issued a shorter lifetime than renewBefore: half-life.
        assert_eq!(
            renewal_time(ts(0), ts(100), Duration::from_secs(600), "x"),
            ts(50)
        );
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
    fn token_names_are_unique_per_object_and_revision_and_bounded() {
        assert_eq!(
            token_name("", "platform", "ci-bot-token", "0a1b2c3d-4e5f-6789", 3),
            "platform.ci-bot-token.0a1b2c3d.r3"
        );
        assert_eq!(
            token_name("eu1", "platform", "ci-bot-token", "0a1b2c3d-4e5f-6789", 3),
            "eu1.platform.ci-bot-token.0a1b2c3d.r3"
        );
        // The same namespace and name, another object (another cluster, or recreated): another name.
        assert_ne!(
            token_name("", "platform", "ci-bot-token", "0a1b2c3d-4e5f-6789", 3),
            token_name("", "platform", "ci-bot-token", "99999999-4e5f-6789", 3)
        );
        let long = token_name("c", &"n".repeat(63), &"x".repeat(253), "u", 12);
        assert!(long.len() <= 256 && long.ends_with(".r12"));
        assert_ne!(
            long,
            token_name("c", &"n".repeat(63), &"x".repeat(252), "u", 12)
        );
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

    fn previous(id: &str, at: (&str, &str)) -> PreviousToken {
        PreviousToken {
            id: id.into(),
            revoke_at: ts(100).to_string(),
            secret_name: Some(at.0.into()),
            secret_key: Some(at.1.into()),
            ..Default::default()
        }
    }

    fn status_at(
        current: Option<(&str, &str)>,
        previous: Vec<PreviousToken>,
    ) -> SystemAccountTokenStatus {
        SystemAccountTokenStatus {
            token_id: current.map(|_| "cur".to_string()),
            secret_name: current.map(|c| c.0.to_string()),
            secret_key: current.map(|c| c.1.to_string()),
            previous_tokens: previous,
            ..Default::default()
        }
    }

    #[test]
    fn a_key_move_keeps_the_keys_of_tokens_still_valid() {
        // Current token under "token" of Secret s; the spec now writes "api-token".
        let st = status_at(
            Some(("s", "token")),
            vec![
                previous("p1", ("s", "older")),
                previous("p2", ("other", "token")),
            ],
        );
        assert_eq!(keys_to_keep(&st, "s", "api-token"), ["older", "token"]);
        // The same key: it is overwritten, nothing else kept but the older previous key.
        assert_eq!(keys_to_keep(&st, "s", "token"), ["older"]);
        // A new Secret keeps nothing of the old one.
        assert!(keys_to_keep(&st, "new", "token").is_empty());
        // Recorded before locations were kept: nothing to keep.
        let legacy = SystemAccountTokenStatus {
            token_id: Some("cur".into()),
            ..Default::default()
        };
        assert!(keys_to_keep(&legacy, "s", "api-token").is_empty());
    }

    #[test]
    fn a_revoked_token_leaves_nothing_behind_that_nobody_uses() {
        let spec = ("s", "api-token");
        let cleanup = |st: &SystemAccountTokenStatus, id: &str| {
            cleanup_after_revoke(st, id, &[id.to_string()], spec)
        };
        // Key move: the old key goes once its token is revoked.
        let st = status_at(Some(spec), vec![previous("p1", ("s", "token"))]);
        assert_eq!(
            cleanup(&st, "p1"),
            SecretCleanup::RemoveKey {
                secret: "s".into(),
                key: "token".into()
            }
        );
        // Name move: the old Secret goes (if it still holds that token).
        let st = status_at(Some(spec), vec![previous("p1", ("old", "token"))]);
        assert_eq!(
            cleanup(&st, "p1"),
            SecretCleanup::Delete {
                secret: "old".into(),
                current: Some("cur".into())
            }
        );
        // ...unless a token that stays still sits there under another key: only its key goes.
        let st = status_at(
            Some(spec),
            vec![
                previous("p1", ("old", "token")),
                previous("p2", ("old", "other")),
            ],
        );
        assert_eq!(
            cleanup(&st, "p1"),
            SecretCleanup::RemoveKey {
                secret: "old".into(),
                key: "token".into()
            }
        );
        // Both revoked together: the Secret goes with the last of them.
        assert_eq!(
            cleanup_after_revoke(&st, "p2", &["p1".into(), "p2".into()], spec),
            SecretCleanup::Delete {
                secret: "old".into(),
                current: Some("cur".into())
            }
        );
        // Where the spec writes, or overwritten since by a later token (previous or current),
        // nothing is removed.
        let st = status_at(Some(spec), vec![previous("p1", spec)]);
        assert_eq!(cleanup(&st, "p1"), SecretCleanup::Nothing);
        let st = status_at(
            Some(spec),
            vec![
                previous("p1", ("s", "token")),
                previous("p2", ("s", "token")),
            ],
        );
        assert_eq!(cleanup(&st, "p1"), SecretCleanup::Nothing);
        let st = status_at(
            Some(("old", "token")),
            vec![previous("p1", ("old", "token"))],
        );
        assert_eq!(cleanup(&st, "p1"), SecretCleanup::Nothing);
        // The latest of two at a place is what it holds: revoking it removes the key, even though
        // the older one (overwritten) is still recorded.
        let st = status_at(
            Some(spec),
            vec![
                previous("p1", ("s", "token")),
                previous("p2", ("s", "token")),
            ],
        );
        assert_eq!(
            cleanup(&st, "p2"),
            SecretCleanup::RemoveKey {
                secret: "s".into(),
                key: "token".into()
            }
        );
        // A token recorded without its location: nothing (the operator cannot tell where it was).
        let mut st = status_at(Some(spec), vec![]);
        st.previous_tokens.push(PreviousToken {
            id: "p0".into(),
            ..Default::default()
        });
        assert_eq!(cleanup(&st, "p0"), SecretCleanup::Nothing);
    }

    #[test]
    fn record_issued_remembers_where_the_token_went_and_retires_it_with_its_place() {
        let mut st = SystemAccountTokenStatus::default();
        let issued = |id: &'static str, name: &'static str, key: &'static str| Issued {
            id,
            name: "n",
            account_id: "a",
            revision: 1,
            issued_at: ts(0),
            expires_at: ts(3600),
            rotated_for: None,
            secret_name: name,
            secret_key: key,
        };
        let d = Duration::from_secs(60);
        record_issued(&mut st, &issued("t1", "s", "token"), ts(0), d, d, "u");
        assert_eq!(
            (st.secret_name.as_deref(), st.secret_key.as_deref()),
            (Some("s"), Some("token"))
        );
        record_issued(&mut st, &issued("t2", "s2", "k"), ts(10), d, d, "u");
        let p = &st.previous_tokens[0];
        assert_eq!(
            (
                p.id.as_str(),
                p.secret_name.as_deref(),
                p.secret_key.as_deref()
            ),
            ("t1", Some("s"), Some("token"))
        );
        assert_eq!(st.secret_name.as_deref(), Some("s2"));
    }

    #[test]
    fn expiry_is_whole_seconds() {
        let t = Timestamp::from_millisecond(1_000_500).unwrap();
        assert_eq!(expiry(t, Duration::from_secs(90)), ts(1090));
    }
}
