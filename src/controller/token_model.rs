//! Model-based test of the token lifecycle's decision (`token_plan::plan_token`): a seeded state
//! machine of user edits, Konnect events, time, and reconciles that crash or fail at any effect, with
//! the lifecycle's invariants checked after every operation. The executor here does what
//! `token.rs` does for each step, through the same pure status transitions (`record_issued`,
//! `adopt_secret`, `retention_after`), against a model of Konnect and the Secret.
//!
//! A failure prints the seed and the operations so far, a sequence to replay:
//! `TOKEN_MODEL_SEED=<seed> cargo test --lib token_model`. More runs:
//! `TOKEN_MODEL_SEEDS=100 TOKEN_MODEL_STEPS=100 cargo test --release --lib token_model` (10,000 steps).
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use std::collections::BTreeMap;

use super::token_plan::{
    Found, Issued, Liveness, RotationReason, SecretCleanup, SecretView, TokenObserved, TokenStep,
    adopt_secret, cleanup_after_revoke, clear_pending, expiry, keys_to_keep, pending_accounts,
    plan_token, record_issued, retention_after, set_pending, token_name,
};
use crate::api::SystemAccountTokenStatus;

const UID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const ACCOUNTS: [&str; 2] = ["acc-a", "acc-b"];
const START: i64 = 1_800_000_000;
/// The executor's bound on steps per reconcile, as in `token.rs`.
const MAX_STEPS: usize = 16;
/// The executor's settle time for an unfinished issue (seconds).
const SETTLE: u64 = 30;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(s).expect("in range")
}

/// One token in the model of Konnect, with what the invariants need to know about it.
#[derive(Debug, Clone)]
struct KToken {
    id: String,
    name: String,
    revision: i64,
    account: String,
    created: i64,
    expires: i64,
    revoked: bool,
    /// When it was first written to the Secret (its value reached consumers).
    in_secret_at: Option<i64>,
    /// When a successor replaced it in the Secret, and the overlap promised then (its end).
    overlap_until: Option<i64>,
    /// A user removed it from consumers' reach (deleted the Secret, emptied the key), or revoked it.
    user_lost: bool,
}

impl KToken {
    fn live(&self, now: i64) -> bool {
        !self.revoked && self.expires > now
    }
}

/// What can happen, as a replayable list.
#[derive(Debug, Clone)]
enum Op {
    Reconcile,
    /// The operator is killed right after its `n`-th effect (a Konnect write or a Kubernetes write).
    ReconcileCrashAfter(u32),
    /// The create's answer is lost (Konnect did create the token).
    ReconcileLostCreate,
    /// The API server refuses the Secret write once.
    ReconcileSecretRefused,
    /// Konnect answers 5xx to the create (nothing created).
    ReconcileCreateFails,
    /// The Secret write's answer is lost and the Secret cannot be read back: the write landed (true)
    /// or not (false); the operator cannot tell.
    ReconcileSecretUnknown(bool),
    Advance(i64),
    /// `spec.duration` in seconds, with half a second more when the flag is set.
    SetDuration(u64, bool),
    SetRetention(u64),
    Rotate(u32),
    DeleteSecret,
    EmptySecretKey,
    /// `spec.secretName` toggles between two names (a late writer still writes to the old one).
    MoveSecretName,
    /// `spec.secretKey` toggles between two keys.
    MoveSecretKey,
    RevokeCurrentInKonnect,
    SwitchAccount,
    /// A writer that has not stopped yet (a replaced leader, a request of a killed process still in
    /// flight) writes the unfinished token into the Secret, within the settle time of its marker.
    LateSecretWrite,
    /// `rolloutRestartTargets` set (true) or emptied.
    SetRestartTargets(bool),
    /// Restarts fail from now on (true) or work again.
    BreakRestarts(bool),
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    CrashAfter(u32),
    LostCreate,
    SecretRefused,
    CreateFails,
    SecretUnknown(bool),
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Done,
    Stopped,
}

struct World {
    now: i64,
    tokens: Vec<KToken>,
    status: SystemAccountTokenStatus,
    /// The token Secrets by name: what their annotations say, and which token each key holds.
    secrets: BTreeMap<String, MSecret>,
    /// Where the spec writes: (secretName, secretKey).
    spec_at: (String, String),
    account: usize,
    lifetime: Duration,
    retention: Duration,
    rotate: Option<String>,
    next_id: u64,
    /// Effects done in the current reconcile (for crash points).
    effects: u32,
    creates: u32,
    restart_targets: bool,
    restarts_broken: bool,
    /// A token created by an issue that was cut off before its Secret write was settled: its writer
    /// may still be alive (a replaced leader, a request in flight).
    inflight: Option<String>,
    /// Where that issue writes (the spec's place when it started).
    inflight_at: (String, String),
}

/// A token Secret in the model.
#[derive(Debug, Clone)]
struct MSecret {
    /// What its annotations say (`has_value` is computed for the key asked).
    ann: SecretView,
    /// Key -> the id of the token whose value it holds.
    data: BTreeMap<String, String>,
}

/// An invariant broken: what, in a sentence.
type Broken = String;

impl World {
    fn new() -> Self {
        World {
            now: START,
            tokens: Vec::new(),
            status: SystemAccountTokenStatus::default(),
            secrets: BTreeMap::new(),
            spec_at: ("tok".into(), "token".into()),
            account: 0,
            lifetime: Duration::from_secs(3600),
            retention: Duration::from_secs(600),
            rotate: None,
            next_id: 0,
            effects: 0,
            creates: 0,
            restart_targets: false,
            restarts_broken: false,
            inflight: None,
            inflight_at: ("tok".into(), "token".into()),
        }
    }

    fn renew_before(&self) -> Duration {
        Duration::from_secs(self.lifetime.as_secs() / 3)
    }

    fn token(&mut self, id: &str) -> Option<&mut KToken> {
        self.tokens.iter_mut().find(|t| t.id == id)
    }

    /// The token whose value sits at the spec's place (what a consumer reading it gets).
    fn secret_token(&self) -> Option<&KToken> {
        let (name, key) = &self.spec_at;
        let id = self.secrets.get(name)?.data.get(key)?;
        self.tokens.iter().find(|t| &t.id == id)
    }

    /// What the operator reads of the spec's Secret: its annotations, and whether the key they name
    /// (else the spec's) holds a value.
    fn view(&self) -> Option<SecretView> {
        self.view_of(&self.spec_at.0)
    }

    fn view_of(&self, name: &str) -> Option<SecretView> {
        let key = &self.spec_at.1;
        let s = self.secrets.get(name)?;
        Some(SecretView {
            has_value: s.data.contains_key(s.ann.key.as_deref().unwrap_or(key)),
            ..s.ann.clone()
        })
    }

    /// Whether a place may be emptied of token `id`: its revocation is due now, or it is dead.
    fn may_drop(&self, id: &str, revoking: &[String]) -> bool {
        revoking.iter().any(|r| r == id)
            || self
                .tokens
                .iter()
                .find(|t| t.id == id)
                .is_none_or(|t| !t.live(self.now) || t.user_lost)
    }

    /// Executes the Kubernetes side of a revocation as `token.rs` does, checking that no place is
    /// emptied of a token someone may still use.
    fn clean_up(&mut self, cleanup: SecretCleanup, revoking: &[String]) -> Result<(), Broken> {
        match cleanup {
            SecretCleanup::Nothing => {}
            SecretCleanup::RemoveKey { secret, key } => {
                let Some(id) = self
                    .secrets
                    .get(&secret)
                    .and_then(|s| s.data.get(&key))
                    .cloned()
                else {
                    return Ok(());
                };
                if !self.may_drop(&id, revoking) {
                    return Err(format!(
                        "revoking {revoking:?} removed key {key} of Secret {secret}, which holds live {id}"
                    ));
                }
                if let Some(s) = self.secrets.get_mut(&secret) {
                    s.data.remove(&key);
                }
            }
            SecretCleanup::Delete { secret, current } => {
                let Some(s) = self.secrets.get(&secret) else {
                    return Ok(());
                };
                if current.is_some() && s.ann.token_id == current {
                    return Ok(());
                }
                if let Some(id) = s.data.values().find(|id| !self.may_drop(id, revoking)) {
                    return Err(format!(
                        "revoking {revoking:?} deleted Secret {secret}, which holds live {id}"
                    ));
                }
                self.secrets.remove(&secret);
            }
        }
        Ok(())
    }

    /// Counts an effect; false when the operator dies right after it.
    fn effect(&mut self, fault: Fault) -> bool {
        self.effects += 1;
        !matches!(fault, Fault::CrashAfter(n) if n == self.effects)
    }

    /// The operator revokes `id`: it must never take a token from consumers before its overlap.
    fn operator_revokes(&mut self, id: &str) -> Result<(), Broken> {
        let now = self.now;
        let guard = self.restart_targets;
        let restarted = self.status.last_restart_revision.unwrap_or(0);
        let Some(t) = self.token(id) else {
            return Ok(());
        };
        if t.revoked || t.expires <= now {
            return Ok(());
        }
        if guard && t.in_secret_at.is_some() && !t.user_lost && restarted <= t.revision {
            // Consumers are restarted onto a successor before a token they use is revoked.
            return Err(format!(
                "token {} revoked at {} before the restart targets moved past it (restarted: r{restarted})",
                t.name,
                now - START
            ));
        }
        if t.in_secret_at.is_some() && !t.user_lost {
            match t.overlap_until {
                Some(until) if now >= until => {}
                other => {
                    return Err(format!(
                        "token {} (in the Secret since {:?}) revoked at {} before its overlap ended ({:?})",
                        t.name,
                        t.in_secret_at.map(|s| s - START),
                        now - START,
                        other.map(|u| u - START)
                    ));
                }
            }
        }
        t.revoked = true;
        Ok(())
    }

    /// The Secret writer, at `(name, key)`: the key gets `t`, the keys `keys_to_keep` names keep
    /// theirs, every other key goes (checked: none of them holds a token still within its overlap).
    fn write_secret(
        &mut self,
        t: &KToken,
        revision: i64,
        rotated_for: Option<String>,
        (name, key): (String, String),
    ) -> Result<(), Broken> {
        let now = self.now;
        let old = self
            .secrets
            .get(&name)
            .and_then(|s| s.data.get(&key))
            .cloned();
        let kept = keys_to_keep(&self.status, &name, &key);
        let before = self
            .secrets
            .get(&name)
            .map(|s| s.data.clone())
            .unwrap_or_default();
        for (k, id) in &before {
            let promised = self.tokens.iter().find(|x| &x.id == id).is_some_and(|x| {
                x.live(now) && !x.user_lost && x.overlap_until.is_some_and(|u| now < u)
            });
            if *k != key && !kept.contains(k) && promised {
                return Err(format!(
                    "writing {} dropped key {k} of Secret {name}, which holds {id} within its overlap",
                    t.name
                ));
            }
        }
        let mut data: BTreeMap<String, String> = before
            .into_iter()
            .filter(|(k, _)| kept.contains(k))
            .collect();
        data.insert(key.clone(), t.id.clone());
        let ann = SecretView {
            owned: true,
            has_value: true,
            key: Some(key),
            token_id: Some(t.id.clone()),
            token_name: Some(t.name.clone()),
            account_id: Some(t.account.clone()),
            revision: Some(revision),
            expires_at: Some(ts(t.expires)),
            issued_at: Some(ts(t.created)),
            rotated_for,
        };
        self.secrets.insert(name, MSecret { ann, data });
        if let Some(nt) = self.token(&t.id) {
            nt.in_secret_at.get_or_insert(now);
        }
        // Replaced: what the Secret held, and the token the status knows (consumers may hold it
        // even if the Secret was deleted meanwhile).
        let replaced = [old, self.status.token_id.clone()];
        let retention = self.retention.as_secs() as i64;
        for old in replaced.into_iter().flatten().filter(|o| *o != t.id) {
            if let Some(ot) = self.token(&old) {
                // The overlap promised: the retention, or the token's own expiry if sooner.
                ot.overlap_until
                    .get_or_insert((now + retention).min(ot.expires));
            }
        }
        Ok(())
    }

    /// One reconcile, as `token.rs` executes it, with a fault.
    fn reconcile(&mut self, fault: Fault) -> Result<Outcome, Broken> {
        self.effects = 0;
        let account_id = ACCOUNTS[self.account].to_string();
        let mut live = Liveness::Unknown;
        let mut found: Option<Vec<Found>> = None;
        let mut restart_tried = false;
        for _ in 0..MAX_STEPS {
            let status = self.status.clone();
            let secret = self.view();
            let pending_secret = status
                .pending_secret_name
                .as_ref()
                .filter(|n| **n != self.spec_at.0)
                .and_then(|n| self.view_of(n));
            let spec_at = self.spec_at.clone();
            let step = plan_token(&TokenObserved {
                status: &status,
                secret: secret.as_ref(),
                pending_secret: pending_secret.as_ref(),
                secret_at: (&spec_at.0, &spec_at.1),
                account_id: &account_id,
                lifetime: self.lifetime,
                rotate_annotation: self.rotate.as_deref(),
                live,
                found: found.as_deref(),
                has_restart_targets: self.restart_targets,
                restart_tried,
                pending_settle: Duration::from_secs(SETTLE),
                now: ts(self.now),
            });
            if std::env::var_os("TOKEN_MODEL_TRACE").is_some() {
                eprintln!(
                    "    t={} step {step:?} (current {:?} r{:?}, previous {:?}, pending {:?}, secret {:?}/{:?})",
                    self.now - START,
                    status.token_name,
                    status.revision,
                    status
                        .previous_tokens
                        .iter()
                        .map(|p| (&p.name, &p.revoke_at))
                        .collect::<Vec<_>>(),
                    status.pending_token_name,
                    secret.as_ref().and_then(|s| s.token_name.clone()),
                    secret.as_ref().map(|s| s.has_value),
                );
            }
            match step {
                TokenStep::AdoptSecret { pending_place } => {
                    let (view, name) = if pending_place {
                        (pending_secret, status.pending_secret_name.clone())
                    } else {
                        (secret, Some(spec_at.0.clone()))
                    };
                    let (view, name) = (view.expect("planned on a Secret"), name.unwrap());
                    // Where the Secret says the token is (the spec's key may have moved since).
                    let key = view.key.clone().unwrap_or_else(|| spec_at.1.clone());
                    let before = self.status.clone();
                    let renew_before = self.renew_before();
                    adopt_secret(
                        &mut self.status,
                        &view,
                        (&name, &key),
                        ts(self.now),
                        self.retention,
                        renew_before,
                        UID,
                    );
                    if self.status == before {
                        return Err("AdoptSecret changed nothing (it would repeat)".into());
                    }
                    if !self.effect(fault) {
                        return Ok(Outcome::Stopped);
                    }
                }
                TokenStep::FindPending => {
                    let pending = status.pending_token_name.clone().unwrap_or_default();
                    let accounts = pending_accounts(&status, Some(&account_id));
                    let now = self.now;
                    found = Some(
                        self.tokens
                            .iter()
                            .filter(|t| {
                                t.name == pending && accounts.contains(&t.account) && t.live(now)
                            })
                            .map(|t| Found {
                                id: t.id.clone(),
                                name: t.name.clone(),
                                account_id: t.account.clone(),
                                created_at: Some(ts(t.created)),
                            })
                            .collect(),
                    );
                }
                TokenStep::RevokePending(ours) => {
                    for t in &ours {
                        if self
                            .tokens
                            .iter()
                            .any(|k| k.id == t.id && k.in_secret_at.is_some() && !k.user_lost)
                        {
                            return Err(format!(
                                "the pending heal revoked {}, which reached the Secret",
                                t.name
                            ));
                        }
                        self.operator_revokes(&t.id)?;
                        if !self.effect(fault) {
                            return Ok(Outcome::Stopped);
                        }
                    }
                    clear_pending(&mut self.status);
                    found = None;
                    if !self.effect(fault) {
                        return Ok(Outcome::Stopped);
                    }
                }
                TokenStep::CheckLive => {
                    let now = self.now;
                    let id = status.token_id.clone().unwrap_or_default();
                    live = match self.tokens.iter().find(|t| t.id == id) {
                        Some(t) if t.live(now) => Liveness::Live,
                        _ => Liveness::Gone,
                    };
                }
                TokenStep::Issue(reason) => {
                    if self.issue(reason, &account_id, fault)? == Outcome::Stopped {
                        return Ok(Outcome::Stopped);
                    }
                    live = Liveness::Live;
                }
                TokenStep::Restart => {
                    if !self.restart_targets {
                        return Err("Restart planned without restart targets".into());
                    }
                    restart_tried = true;
                    if !self.restarts_broken {
                        self.status.last_restart_revision = self.status.revision;
                    }
                }
                TokenStep::Revoke(ids) => {
                    for id in &ids {
                        // The Secret side first, as token.rs does.
                        let spec = (spec_at.0.as_str(), spec_at.1.as_str());
                        let cleanup = cleanup_after_revoke(&status, id, &ids, spec);
                        if cleanup != SecretCleanup::Nothing {
                            self.clean_up(cleanup, &ids)?;
                            if !self.effect(fault) {
                                return Ok(Outcome::Stopped);
                            }
                        }
                        self.operator_revokes(id)?;
                        if !self.effect(fault) {
                            return Ok(Outcome::Stopped);
                        }
                    }
                    self.status.previous_tokens.retain(|p| !ids.contains(&p.id));
                    if !self.effect(fault) {
                        return Ok(Outcome::Stopped);
                    }
                }
                TokenStep::WaitPending(_) => return Ok(Outcome::Stopped),
                TokenStep::Done => return Ok(Outcome::Done),
            }
        }
        Err(format!(
            "no Done within {MAX_STEPS} steps (a loop in the plan)"
        ))
    }

    fn issue(
        &mut self,
        reason: RotationReason,
        account_id: &str,
        fault: Fault,
    ) -> Result<Outcome, Broken> {
        let revision = self.status.revision.unwrap_or(0) + 1;
        let name = token_name("", "ns", "tok", UID, revision);
        // 1. marker
        let at = self.spec_at.clone();
        set_pending(&mut self.status, &name, account_id, &at.0, ts(self.now));
        self.inflight = None;
        self.inflight_at = at.clone();
        if !self.effect(fault) {
            return Ok(Outcome::Stopped);
        }
        // 2. create
        if fault == Fault::CreateFails {
            clear_pending(&mut self.status);
            return Ok(Outcome::Stopped);
        }
        self.next_id += 1;
        self.creates += 1;
        let t = KToken {
            id: format!("tok-{}", self.next_id),
            name: name.clone(),
            revision,
            account: account_id.to_string(),
            created: self.now,
            expires: expiry(ts(self.now), self.lifetime).as_second(),
            revoked: false,
            in_secret_at: None,
            overlap_until: None,
            user_lost: false,
        };
        self.tokens.push(t.clone());
        self.inflight = Some(t.id.clone());
        if fault == Fault::LostCreate || !self.effect(fault) {
            return Ok(Outcome::Stopped);
        }
        // 3. Secret
        if let Fault::SecretUnknown(landed) = fault {
            // As token.rs: nothing is revoked, the marker stays; the next pass settles it.
            if landed {
                self.write_secret(&t, revision, self.rotate.clone(), at)?;
            }
            return Ok(Outcome::Stopped);
        }
        if fault == Fault::SecretRefused {
            self.inflight = None;
            self.operator_revokes(&t.id)?;
            clear_pending(&mut self.status);
            return Ok(Outcome::Stopped);
        }
        self.write_secret(&t, revision, self.rotate.clone(), at.clone())?;
        self.inflight = None;
        if !self.effect(fault) {
            return Ok(Outcome::Stopped);
        }
        // 4. status
        let old = self.status.clone();
        let old_exists = old
            .token_id
            .as_deref()
            .and_then(|id| self.tokens.iter().find(|k| k.id == id))
            .is_some_and(|k| k.live(self.now));
        let keep = retention_after(
            reason,
            self.retention,
            old_exists || reason != RotationReason::AccountChanged,
        );
        let issued = Issued {
            id: &t.id,
            name: &t.name,
            account_id,
            revision,
            issued_at: ts(t.created),
            expires_at: ts(t.expires),
            rotated_for: self.rotate.as_deref(),
            secret_name: &at.0,
            secret_key: &at.1,
        };
        let renew_before = self.renew_before();
        record_issued(
            &mut self.status,
            &issued,
            ts(self.now),
            keep,
            renew_before,
            UID,
        );
        if !self.effect(fault) {
            return Ok(Outcome::Stopped);
        }
        Ok(Outcome::Done)
    }

    /// The invariants at rest (after a reconcile that ran to Done).
    fn check_at_rest(&self) -> Result<(), Broken> {
        let now = self.now;
        // (a) The Secret holds the current token, and it authenticates.
        let Some(current) = self.secret_token() else {
            return Err("at rest without a token in the Secret".into());
        };
        if self.status.token_id.as_deref() != Some(&current.id) {
            return Err(format!(
                "the Secret holds {} but the status names {:?}",
                current.name, self.status.token_id
            ));
        }
        if !current.live(now) {
            return Err(format!(
                "the Secret holds {}, which does not authenticate",
                current.name
            ));
        }
        if current.account != ACCOUNTS[self.account] {
            return Err(format!(
                "the Secret's token {} belongs to {}, not the spec's account",
                current.name, current.account
            ));
        }
        if self.status.pending_token_name.is_some() {
            return Err("at rest with a pending marker".into());
        }
        if self.view().and_then(|v| v.token_id) != self.status.token_id {
            return Err(
                "at rest, the Secret's annotations name another token than the status".into(),
            );
        }
        // Places other than the spec's hold only replaced tokens waiting for their revocation (a
        // moved Secret or key keeps its token until then, and nothing after; a token the user
        // revoked in Konnect may sit there until its revokeAt).
        for (name, s) in &self.secrets {
            for (key, id) in &s.data {
                if (name, key) == (&self.spec_at.0, &self.spec_at.1) {
                    continue;
                }
                if !self.status.previous_tokens.iter().any(|p| &p.id == id) {
                    return Err(format!(
                        "at rest, key {key} of Secret {name} still holds {id}, which is neither current nor waiting for its revocation"
                    ));
                }
            }
        }
        // (c) No leak: every live token of ours is the current one or a previous one still in its overlap.
        for t in self.tokens.iter().filter(|t| t.live(now)) {
            // Held back while restarts are pending: known, revoked once they are done or it expires.
            let held =
                crate::controller::token_plan::restarts_pending(&self.status, self.restart_targets);
            let known = t.id == current.id
                || self.status.previous_tokens.iter().any(|p| {
                    p.id == t.id
                        && (held
                            || p.revoke_at
                                .parse::<Timestamp>()
                                .is_ok_and(|at| at.as_second() > now))
                });
            if !known {
                return Err(format!(
                    "token {} is live and nobody will revoke it",
                    t.name
                ));
            }
        }
        // Retention is never promised past a token's own expiry.
        for p in &self.status.previous_tokens {
            if let Some(t) = self.tokens.iter().find(|t| t.id == p.id)
                && p.revoke_at
                    .parse::<Timestamp>()
                    .is_ok_and(|at| at.as_second() > t.expires)
            {
                return Err(format!("{} is kept past its expiry", t.name));
            }
        }
        Ok(())
    }

    /// (b) after every operation: a token that reached consumers is valid until its overlap ended,
    /// unless a user took it away or it expired.
    fn check_overlaps(&self) -> Result<(), Broken> {
        for t in &self.tokens {
            if t.revoked && t.in_secret_at.is_some() && !t.user_lost {
                match t.overlap_until {
                    Some(_) => {}
                    None => {
                        return Err(format!(
                            "{} was revoked while still the Secret's token",
                            t.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// A user deletes the Secret or empties its key. The token the status knows keeps the promised
    /// overlap (consumers may have read it); a token a crashed rotation wrote, which the status does
    /// not know yet, is healed like any unfinished token (revoked at once).
    /// `key`: the key emptied (None: the whole Secret deleted).
    fn secret_taken_away(&mut self, key: Option<&str>) {
        let known: Vec<String> = self
            .status
            .token_id
            .iter()
            .cloned()
            .chain(self.status.previous_tokens.iter().map(|p| p.id.clone()))
            .collect();
        let name = self.spec_at.0.clone();
        let ids: Vec<String> = self
            .secrets
            .get(&name)
            .map(|s| {
                s.data
                    .iter()
                    .filter(|(k, _)| key.is_none_or(|key| key == k.as_str()))
                    .map(|(_, id)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for id in ids.into_iter().filter(|id| !known.contains(id)) {
            if let Some(t) = self.token(&id) {
                t.user_lost = true;
            }
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), Broken> {
        match op {
            Op::Reconcile => {
                let creates = self.creates;
                if self.reconcile(Fault::None)? == Outcome::Done {
                    self.check_at_rest()?;
                    // (d) Idempotent at rest: once more, with no time passing, issues nothing.
                    let again = self.creates;
                    self.reconcile(Fault::None)?;
                    if self.creates != again {
                        return Err(format!(
                            "a second reconcile right after issued again (a rotation loop); {} create(s) before",
                            again - creates
                        ));
                    }
                    self.check_at_rest()?;
                }
            }
            Op::ReconcileCrashAfter(n) => {
                self.reconcile(Fault::CrashAfter(*n))?;
            }
            Op::ReconcileLostCreate => {
                self.reconcile(Fault::LostCreate)?;
            }
            Op::ReconcileSecretRefused => {
                self.reconcile(Fault::SecretRefused)?;
            }
            Op::ReconcileCreateFails => {
                self.reconcile(Fault::CreateFails)?;
            }
            Op::ReconcileSecretUnknown(landed) => {
                self.reconcile(Fault::SecretUnknown(*landed))?;
            }
            Op::Advance(s) => self.now += s,
            Op::SetDuration(secs, half) => {
                self.lifetime = Duration::from_secs(*secs)
                    + if *half {
                        Duration::from_millis(500)
                    } else {
                        Duration::ZERO
                    };
            }
            Op::SetRetention(secs) => {
                self.retention = Duration::from_secs(*secs);
                // A rotation interrupted between the Secret write and the status write is recorded
                // with the retention in force when it is recorded: the promise is the new one.
                let recorded: Vec<String> = self
                    .status
                    .previous_tokens
                    .iter()
                    .map(|p| p.id.clone())
                    .collect();
                let now = self.now;
                for t in self.tokens.iter_mut() {
                    if let Some(until) = t.overlap_until.as_mut()
                        && !recorded.contains(&t.id)
                        && *until > now
                    {
                        *until = (*until).min(now + *secs as i64);
                    }
                }
            }
            Op::Rotate(v) => self.rotate = Some(format!("r{v}")),
            Op::DeleteSecret => {
                self.secret_taken_away(None);
                self.secrets.remove(&self.spec_at.0);
            }
            Op::EmptySecretKey => {
                let (name, key) = self.spec_at.clone();
                self.secret_taken_away(Some(&key));
                if let Some(s) = self.secrets.get_mut(&name) {
                    s.data.remove(&key);
                }
            }
            Op::MoveSecretName => {
                self.spec_at.0 = if self.spec_at.0 == "tok" {
                    "tok2"
                } else {
                    "tok"
                }
                .into();
            }
            Op::MoveSecretKey => {
                self.spec_at.1 = if self.spec_at.1 == "token" {
                    "api"
                } else {
                    "token"
                }
                .into();
            }
            Op::RevokeCurrentInKonnect => {
                if let Some(id) = self.status.token_id.clone()
                    && let Some(t) = self.token(&id)
                {
                    t.revoked = true;
                    t.user_lost = true;
                }
            }
            Op::SwitchAccount => self.account = 1 - self.account,
            Op::SetRestartTargets(on) => self.restart_targets = *on,
            Op::LateSecretWrite => {
                let since = self
                    .status
                    .pending_since
                    .as_deref()
                    .and_then(|s| s.parse::<Timestamp>().ok())
                    .map(|t| t.as_second());
                let now = self.now;
                let late = self
                    .inflight
                    .clone()
                    .and_then(|id| self.tokens.iter().find(|t| t.id == id).cloned())
                    .filter(|t| t.in_secret_at.is_none());
                if let (Some(since), Some(t)) = (since, late)
                    && now < since + SETTLE as i64
                {
                    if !t.live(now) {
                        return Err(format!(
                            "the late writer finds {} revoked within the settle time: its Secret write would hand out a revoked token",
                            t.name
                        ));
                    }
                    let at = self.inflight_at.clone();
                    self.write_secret(&t, t.revision, self.rotate.clone(), at)?;
                }
            }
            Op::BreakRestarts(broken) => self.restarts_broken = *broken,
        }
        self.check_overlaps()
    }
}

fn random_op(rng: &mut StdRng) -> Op {
    match rng.random_range(0..100) {
        0..=34 => Op::Reconcile,
        35..=46 => Op::ReconcileCrashAfter(rng.random_range(1..6)),
        47..=50 => Op::ReconcileLostCreate,
        51..=53 => Op::ReconcileSecretRefused,
        54..=55 => Op::ReconcileCreateFails,
        56 => Op::ReconcileSecretUnknown(rng.random_bool(0.5)),
        57..=74 => Op::Advance(
            *[1, 30, 300, 900, 1800, 2400]
                .get(rng.random_range(0..6))
                .unwrap_or(&1),
        ),
        75..=79 => Op::SetDuration(
            *[3600, 5400, 7200]
                .get(rng.random_range(0..3))
                .unwrap_or(&3600),
            rng.random_bool(0.5),
        ),
        80..=82 => Op::SetRetention(
            *[0, 60, 600, 3000]
                .get(rng.random_range(0..4))
                .unwrap_or(&600),
        ),
        83..=87 => Op::Rotate(rng.random_range(0..4)),
        88..=89 => Op::DeleteSecret,
        90 => Op::EmptySecretKey,
        91 => Op::MoveSecretName,
        92 => Op::MoveSecretKey,
        93..=94 => Op::RevokeCurrentInKonnect,
        95 => {
            if rng.random_bool(0.5) {
                Op::SetRestartTargets(rng.random_bool(0.7))
            } else {
                Op::LateSecretWrite
            }
        }
        96 => Op::BreakRestarts(rng.random_bool(0.5)),
        _ => Op::SwitchAccount,
    }
}

/// Runs one seed; on a broken invariant, the seed and the operations so far.
fn run(seed: u64, steps: usize) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = World::new();
    let mut ops = Vec::new();
    for _ in 0..steps {
        let op = random_op(&mut rng);
        ops.push(op.clone());
        if std::env::var_os("TOKEN_MODEL_TRACE").is_some() {
            eprintln!("{:>3}: {op:?}", ops.len() - 1);
        }
        if let Err(broken) = w.apply(&op) {
            let replay: Vec<String> = ops
                .iter()
                .enumerate()
                .map(|(i, o)| format!("  {i:>3}: {o:?}"))
                .collect();
            return Err(format!(
                "seed {seed}: {broken}\nreplay with TOKEN_MODEL_SEED={seed} (operations in order):\n{}",
                replay.join("\n")
            ));
        }
    }
    // Whatever happened, a quiet reconcile (after the settle time) brings it to rest with the
    // invariants holding.
    w.apply(&Op::Advance(SETTLE as i64))
        .map_err(|b| format!("seed {seed}: {b}"))?;
    w.apply(&Op::Reconcile)
        .map_err(|b| format!("seed {seed}: final reconcile: {b}"))?;
    Ok(())
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn token_lifecycle_invariants_hold_over_random_operations_faults_and_crashes() {
    let steps = env_num("TOKEN_MODEL_STEPS", 100) as usize;
    let seeds: Vec<u64> = match std::env::var("TOKEN_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(one) => vec![one],
        None => (0..env_num("TOKEN_MODEL_SEEDS", 20)).collect(),
    };
    let failures: Vec<String> = seeds.iter().filter_map(|s| run(*s, steps).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} seeds broke an invariant; the first:\n{}",
        failures.len(),
        seeds.len(),
        failures[0]
    );
}

/// The model itself can fail: a plan that revoked the Secret's token at once on a rotation would be
/// caught by the overlap check.
#[test]
fn the_model_catches_a_revocation_inside_the_overlap() {
    let mut w = World::new();
    w.apply(&Op::Reconcile).unwrap();
    let first = w.status.token_id.clone().unwrap();
    w.apply(&Op::Rotate(1)).unwrap();
    w.apply(&Op::Reconcile).unwrap();
    assert_ne!(w.status.token_id.as_deref(), Some(first.as_str()));
    let broken = w.operator_revokes(&first).unwrap_err();
    assert!(broken.contains("before its overlap ended"), "{broken}");
}
