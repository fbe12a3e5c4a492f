//! SystemAccountToken controller: issue a `spat_`, keep it in a Secret, rotate before expiry,
//! revoke the old one after the overlap, and heal every crash point (API.md invariants).
//!
//! Order, always: record pendingTokenName -> create -> write Secret -> restart targets ->
//! status (old token recorded with revokeAt) -> revoke at revokeAt. The first issue records its
//! marker with the finalizer, in one patch ([`IssueMarker`]).
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use super::account_ref::{self, ResolvedAccount};
use super::context::Context;
use super::error::ReconcileError;
use super::own_token;
use super::reconciler::{
    FINALIZER, WRITE_AHEAD_ANNOTATION, add_finalizer, mark_ready, object_key, reconcile_with,
};
use super::token_plan::{
    Found, Issued, Liveness, RotationReason, SecretCleanup, SecretView, TokenObserved, TokenStep,
    adopt_secret, cleanup_after_revoke, clear_pending, current_of, expiry, keys_to_keep,
    next_wakeup, pending_accounts, plan_token, record_issued, renewal_time, restarts_pending,
    retention_after, secret_is_newer, set_pending, token_name, unfinished_ours, whole_seconds,
};
use crate::api::common::ROTATE_ANNOTATION;
use crate::api::{
    DeletionPolicy, PreviousToken, RestartKind, SecretTemplate, SystemAccountToken,
    SystemAccountTokenStatus,
};
use crate::k8s::conditions::{self, ISSUING, RESTART_TARGETS, Reason};
use crate::k8s::events;
use crate::k8s::restart::{self, RestartOutcome, WorkloadKind};
use crate::k8s::secret::{self, IssuedToken, SecretTarget};
use crate::konnect::{CreateAccessToken, IgnoreNotFound, KonnectClient};
use crate::telemetry::ReasonLabels;

crate::impl_managed!(SystemAccountToken, "SystemAccountToken", own_finalizer);

/// The first issue's write-ahead marker: written as [`WRITE_AHEAD_ANNOTATION`] in the patch that
/// adds the finalizer (one write where there would be two). It speaks only while the status
/// records no token and no unfinished issue; from the first status write on, the status's own
/// marker (`pendingTokenName`) and record take over, and a left-behind annotation means nothing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct IssueMarker {
    name: String,
    account_id: String,
    secret_name: String,
    since: Option<String>,
    auth_secret: Option<String>,
}

impl IssueMarker {
    fn of(st: &SystemAccountTokenStatus) -> Option<Self> {
        Some(Self {
            name: st.pending_token_name.clone()?,
            account_id: st.pending_account_id.clone().unwrap_or_default(),
            secret_name: st.pending_secret_name.clone().unwrap_or_default(),
            since: st.pending_since.clone(),
            auth_secret: st.konnect_auth_secret.clone(),
        })
    }

    /// The marker in force: the annotation, while the status records nothing of its own.
    fn in_force(obj: &SystemAccountToken) -> Option<Self> {
        if let Some(st) = &obj.status
            && (st.pending_token_name.is_some() || st.revision.is_some() || st.token_id.is_some())
        {
            return None;
        }
        serde_json::from_str(obj.annotations().get(WRITE_AHEAD_ANNOTATION)?).ok()
    }
}

/// The status with the marker in force in it (`pendingTokenName` and the rest).
fn with_issue_marker(obj: &SystemAccountToken) -> Option<SystemAccountTokenStatus> {
    let mut status = obj.status.clone();
    if let Some(m) = IssueMarker::in_force(obj) {
        let st = status.get_or_insert_with(Default::default);
        st.pending_token_name = Some(m.name);
        st.pending_account_id = Some(m.account_id).filter(|a| !a.is_empty());
        st.pending_secret_name = Some(m.secret_name).filter(|s| !s.is_empty());
        st.pending_since = m.since;
        if st.konnect_auth_secret.is_none() {
            st.konnect_auth_secret = m.auth_secret;
        }
    }
    status
}

fn has_finalizer(obj: &SystemAccountToken) -> bool {
    obj.finalizers().iter().any(|f| f == FINALIZER)
}

pub async fn reconcile(
    obj: Arc<SystemAccountToken>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    reconcile_with(obj, ctx, apply, cleanup).await
}

fn parse_time(v: &Option<String>) -> Option<Timestamp> {
    v.as_deref().and_then(|s| s.parse().ok())
}

/// A bound on the steps of one reconcile: each step changes what the next observes, so a plan
/// that repeats itself is a bug; stopping keeps it from becoming a hot loop.
const MAX_STEPS: usize = 16;

/// How soon a failed rollout restart is tried again.
const RESTART_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// One reconcile's view of the object and its surroundings.
struct Work<'a> {
    ctx: &'a Context,
    k: KonnectClient,
    api: Api<SystemAccountToken>,
    secrets: Api<Secret>,
    /// The object as last written (its resourceVersion guards the next status write).
    obj: SystemAccountToken,
    /// The status as last written, to skip writes that change nothing.
    saved: Option<SystemAccountTokenStatus>,
    secret: Option<Secret>,
    /// The Secret an unfinished issue wrote to, when the spec has moved away from it since.
    pending_secret: Option<Secret>,
    account_id: String,
    secret_name: String,
    secret_key: String,
}

impl Work<'_> {
    fn st(&mut self) -> &mut SystemAccountTokenStatus {
        self.obj.status.get_or_insert_with(Default::default)
    }

    async fn save(&mut self) -> Result<(), ReconcileError> {
        self.obj = self
            .ctx
            .write_status(&self.api, &self.obj)
            .await
            .map_err(ReconcileError::kube("writing token status"))?;
        self.saved = self.obj.status.clone();
        // The status cleared an unfinished first issue: the annotation must not bring it back.
        if IssueMarker::in_force(&self.obj).is_some() {
            self.drop_issue_marker().await;
        }
        Ok(())
    }

    async fn drop_issue_marker(&mut self) {
        let patch =
            serde_json::json!({"metadata": {"annotations": {WRITE_AHEAD_ANNOTATION: null}}});
        let params = kube::api::PatchParams::default();
        match self
            .api
            .patch(
                &self.obj.name_any(),
                &params,
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(written) => {
                self.ctx.note_version(&written);
                let status = self.obj.status.take();
                self.obj = written;
                self.obj.status = status;
            }
            // Left behind, the next reconcile looks for the unfinished token again: finds none.
            Err(e) => {
                tracing::debug!(error = %crate::k8s::error_summary(&e), "could not drop the issue marker")
            }
        }
    }

    /// The finalizer, before any change in Konnect or to the Secret (the first issue adds it with
    /// its marker instead).
    async fn ensure_finalizer(&mut self) -> Result<(), ReconcileError> {
        if has_finalizer(&self.obj) {
            return Ok(());
        }
        let status = self.obj.status.take();
        self.obj = add_finalizer(&self.api, &self.obj, self.ctx, None).await?;
        self.obj.status = status;
        Ok(())
    }

    /// Saves what this reconcile recorded and has not written yet (an issued token is recorded
    /// with the Ready status when nothing else happens first: one write, not two).
    async fn checkpoint(&mut self) -> Result<(), ReconcileError> {
        if self.obj.status != self.saved {
            self.save().await?;
        }
        Ok(())
    }

    fn uid(&self) -> String {
        self.obj.uid().unwrap_or_default()
    }

    fn view(&self) -> Option<SecretView> {
        self.secret
            .as_ref()
            .map(|s| secret::view(s, &self.uid(), &self.secret_key))
    }

    fn pending_view(&self) -> Option<SecretView> {
        self.pending_secret
            .as_ref()
            .map(|s| secret::view(s, &self.uid(), &self.secret_key))
    }

    /// Where and how the spec wants the token written; `keep`: other keys that keep their value.
    fn target<'a>(&'a self, template: &'a SecretTemplate, keep: &'a [String]) -> SecretTarget<'a> {
        SecretTarget {
            namespace: self.obj.meta().namespace.as_deref().unwrap_or_default(),
            name: &self.secret_name,
            key: &self.secret_key,
            labels: &template.labels,
            annotations: &template.annotations,
            owner: owner_ref(&self.obj),
            orphan: self.obj.spec.deletion_policy() == DeletionPolicy::Orphan,
            keep,
        }
    }
}

/// The spec's schedule, parsed once per reconcile.
#[derive(Clone, Copy)]
struct Schedule {
    lifetime: std::time::Duration,
    renew_before: std::time::Duration,
    retention: std::time::Duration,
}

async fn apply(obj: Arc<SystemAccountToken>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    obj.spec.validate().map_err(ReconcileError::InvalidSpec)?;
    let lifetime = obj.spec.duration().map_err(ReconcileError::InvalidSpec)?;
    let schedule = Schedule {
        lifetime,
        renew_before: obj.spec.renew_before(lifetime),
        retention: obj
            .spec
            .previous_token_retention()
            .map_err(ReconcileError::InvalidSpec)?,
    };
    let ResolvedAccount {
        id: account_id,
        konnect: account_konnect,
    } = account_ref::resolve_identity(&ctx, &ns, &obj.spec.system_account_ref)?;
    let auth = account_ref::auth_secret(obj.spec.konnect.as_ref(), account_konnect.as_ref());
    let conn = ctx.connections.for_object(&ns, auth).await?;
    let auth_secret = auth.unwrap_or_default().to_string();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &ns);
    let secret_name = obj.spec.secret_name(&obj.name_any());
    let secret = secrets
        .get_opt(&secret_name)
        .await
        .map_err(ReconcileError::kube(format!(
            "reading Secret {secret_name}"
        )))?;
    let uid = obj.uid().unwrap_or_default();
    if let Some(s) = &secret
        && !secret::is_controlled_by(s, &uid)
    {
        return Err(ReconcileError::SecretConflict(format!(
            "Secret {ns}/{secret_name} exists and is not owned by this SystemAccountToken; it is never \
             overwritten. Delete it, or set spec.secretName to another name"
        )));
    }
    let mut w = Work {
        ctx: &ctx,
        k: conn.client,
        api: Api::namespaced(ctx.kube.clone(), &ns),
        secrets,
        obj: SystemAccountToken {
            status: with_issue_marker(&obj),
            ..(*obj).clone()
        },
        saved: obj.status.clone(),
        secret,
        pending_secret: None,
        account_id,
        secret_name,
        secret_key: obj.spec.secret_key().to_string(),
    };
    let rotate_annotation = obj.annotations().get(ROTATE_ANNOTATION).cloned();
    // Recorded before any token is created (it travels with the pending marker's status write).
    w.st().konnect_auth_secret = Some(auth_secret);
    // An unfinished issue that wrote to a Secret the spec has moved away from since: that Secret may
    // hold its token (adopted, not revoked).
    if let Some(pending) = w.st().pending_secret_name.clone()
        && pending != w.secret_name
    {
        w.pending_secret = w
            .secrets
            .get_opt(&pending)
            .await
            .map_err(ReconcileError::kube(format!("reading Secret {pending}")))?;
    }

    // Observe, decide (token_plan::plan_token), act; again until there is nothing to do.
    let mut live = Liveness::Unknown;
    let mut found: Option<Vec<Found>> = None;
    let mut restart_tried = false;
    let mut settled = false;
    let mut held: Option<String> = None;
    for _ in 0..MAX_STEPS {
        let view = w.view();
        let pending_view = w.pending_view();
        let status = w.obj.status.clone().unwrap_or_default();
        let step = plan_token(&TokenObserved {
            status: &status,
            secret: view.as_ref(),
            pending_secret: pending_view.as_ref(),
            secret_at: (&w.secret_name, &w.secret_key),
            account_id: &w.account_id,
            lifetime: schedule.lifetime,
            rotate_annotation: rotate_annotation.as_deref(),
            live,
            found: found.as_deref(),
            has_restart_targets: !w.obj.spec.rollout_restart_targets.is_empty(),
            restart_tried,
            pending_settle: w.ctx.config.pending_settle,
            now: w.ctx.clock.now(),
        });
        tracing::debug!(?step, "token step");
        // (An issue saves everything with its pending marker first.)
        if !matches!(step, TokenStep::Done | TokenStep::Issue(_)) {
            w.checkpoint().await?;
        }
        if !matches!(
            step,
            TokenStep::Issue(_) | TokenStep::CheckLive | TokenStep::FindPending
        ) {
            w.ensure_finalizer().await?;
        }
        match step {
            TokenStep::AdoptSecret { pending_place } => {
                let (view, name) = if pending_place {
                    (pending_view, status.pending_secret_name.clone())
                } else {
                    (view, Some(w.secret_name.clone()))
                };
                let (Some(view), Some(name), uid) = (view, name, w.uid()) else {
                    break;
                };
                let now = whole_seconds(w.ctx.clock.now());
                // Where the Secret says the token is (the spec's key may have moved since).
                let key = view.key.clone().unwrap_or_else(|| w.secret_key.clone());
                let st = w.st();
                adopt_secret(
                    st,
                    &view,
                    (&name, &key),
                    now,
                    schedule.retention,
                    schedule.renew_before,
                    &uid,
                );
                if st.pending_token_name.is_none() {
                    conditions::remove(&mut st.conditions, ISSUING);
                }
                tracing::info!(revision = ?view.revision, "adopted the token found in the Secret (written before a restart)");
                w.save().await?;
            }
            TokenStep::FindPending => found = Some(find_pending(&w).await?),
            TokenStep::RevokePending(ours) => {
                revoke_pending(&mut w, &ours).await?;
                found = None;
            }
            TokenStep::CheckLive => live = check_live(&w).await?,
            TokenStep::Issue(reason) => {
                issue(&mut w, reason, schedule, rotate_annotation.clone()).await?;
                live = Liveness::Live;
            }
            TokenStep::Restart => {
                restart_targets(&mut w).await;
                restart_tried = true;
            }
            TokenStep::Revoke(ids) => {
                // The operator's own token: never revoke the one it may still be running on.
                let (ns, key) = (ns.clone(), w.secret_key.clone());
                match own_token::may_revoke_previous(&ctx, &ns, &w.secret_name, &key).await {
                    Ok(()) => revoke(&mut w, &ids).await?,
                    Err(why) => {
                        let expired = own_token::expired(w.st(), &ids, ctx.clock.now());
                        if !expired.is_empty() {
                            revoke(&mut w, &expired).await?;
                            continue;
                        }
                        held = Some(why);
                        settled = true;
                        break;
                    }
                }
            }
            TokenStep::WaitPending(at) => {
                let wait = next_wakeup(w.ctx.clock.now(), [at], w.ctx.resync_with_jitter());
                tracing::info!(
                    ?wait,
                    "an unfinished token issue is left to its writer before it is healed"
                );
                return Ok(Action::requeue(wait.max(std::time::Duration::from_secs(1))));
            }
            TokenStep::Done => {
                settled = true;
                break;
            }
        }
    }
    if !settled {
        w.checkpoint().await?;
        // A plan that keeps asking for steps is a bug: never report Ready on it, back off.
        return Err(ReconcileError::InvalidSpec(format!(
            "the token's next steps did not settle within {MAX_STEPS} steps; retried with backoff"
        )));
    }

    if let Err(e) = sync_secret_metadata(&mut w).await {
        w.checkpoint().await?;
        return Err(e);
    }

    // renewBefore(Percentage) may have changed since the token was issued: the schedule follows the spec.
    let seed = format!("{}/{}", w.uid(), w.st().revision.unwrap_or(0));
    if let (Some(issued), Some(expires)) = (
        parse_time(&w.st().last_rotation_time),
        parse_time(&w.st().expires_at),
    ) {
        w.st().renewal_time =
            Some(renewal_time(issued, expires, schedule.renew_before, &seed).to_string());
    }

    let st = w.st().clone();
    let (Some(expires), Some(renewal)) = (parse_time(&st.expires_at), parse_time(&st.renewal_time))
    else {
        return Err(ReconcileError::InvalidSpec(
            "token status lost its expiry; it is re-issued".into(),
        ));
    };
    ctx.metrics.set_token_times(
        &ns,
        &obj.name_any(),
        expires.as_second() as f64,
        renewal.as_second() as f64,
    );
    let message = format!(
        "Token {} (revision {}) is in Secret {}; it expires at {} and rotates at {}",
        st.token_name.clone().unwrap_or_default(),
        st.revision.unwrap_or(0),
        w.secret_name,
        expires,
        renewal
    );
    let secret_key = w.secret_key.clone();
    let loading = own_token::note(&ctx, &mut w.obj, &w.secret_name, &secret_key, held).await;
    mark_ready(&mut w.obj, message);
    if w.obj.status != w.saved {
        w.save().await?;
    }
    let revokes = st
        .previous_tokens
        .iter()
        .filter_map(|p| p.revoke_at.parse::<Timestamp>().ok());
    // A drift check put off by the budget comes back at its reserved turn.
    let check = ctx
        .budget
        .reserved_in(&verified_key(&obj))
        .unwrap_or_else(|| ctx.resync_with_jitter());
    let mut wakeup = next_wakeup(
        ctx.clock.now(),
        std::iter::once(renewal).chain(revokes),
        check,
    );
    if restarts_pending(&st, !obj.spec.rollout_restart_targets.is_empty()) {
        // A failed restart is tried again soon; the previous token waits for it.
        wakeup = wakeup.min(RESTART_RETRY);
    }
    if loading {
        // A held revoke is due already (its revokeAt has passed): look again in a moment, not at once.
        wakeup = own_token::RECHECK;
    }
    Ok(Action::requeue(wakeup))
}

/// The Secret's labels and template annotations follow the spec on every pass, not only at the next
/// rotation (a template edit applies at once; a stripped managed-by label comes back).
async fn sync_secret_metadata(w: &mut Work<'_>) -> Result<(), ReconcileError> {
    let Some(existing) = w.secret.clone() else {
        return Ok(());
    };
    let template = w.obj.spec.secret_template.clone().unwrap_or_default();
    let target = w.target(&template, &[]);
    if let Some(updated) = secret::sync_metadata(&w.secrets, &existing, &target)
        .await
        .map_err(ReconcileError::kube(format!(
            "updating the labels and annotations of Secret {}",
            w.secret_name
        )))?
    {
        w.secret = Some(updated);
    }
    Ok(())
}

/// Whether the current (about to be previous) token still exists in Konnect; errors count as yes,
/// so an unsure answer keeps the overlap and the revoke happens later.
async fn old_token_exists(w: &mut Work<'_>) -> bool {
    let st = w.st().clone();
    let (Some(account), Some(token)) = (st.account_id, st.token_id) else {
        return false;
    };
    !matches!(w.k.get_access_token(&account, &token).await, Err(e) if e.is_not_found())
}

/// Lists the tokens named `pending` in `accounts` (an account that is gone has none).
async fn list_pending(
    k: &KonnectClient,
    accounts: &[String],
    pending: &str,
) -> Result<Vec<Found>, ReconcileError> {
    let mut out = Vec::new();
    for account in accounts {
        let listed = match k.list_access_tokens(account, Some(pending)).await {
            Ok(listed) => listed,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(ReconcileError::konnect("looking up an unfinished token")(e)),
        };
        out.extend(
            listed
                .into_iter()
                .filter(|t| t.name == pending)
                .map(|t| Found {
                    created_at: parse_time(&t.created_at),
                    id: t.id,
                    name: t.name,
                    account_id: account.clone(),
                }),
        );
    }
    Ok(out)
}

async fn find_pending(w: &Work<'_>) -> Result<Vec<Found>, ReconcileError> {
    let st = w.obj.status.clone().unwrap_or_default();
    let Some(pending) = st.pending_token_name.as_deref() else {
        return Ok(Vec::new());
    };
    let accounts = pending_accounts(&st, Some(&w.account_id));
    list_pending(&w.k, &accounts, pending).await
}

/// Crash (or lost response) between recording pendingTokenName and writing the Secret: the token
/// found under that name never reached anyone; revoke it before issuing again, so none leaks.
async fn revoke_pending(w: &mut Work<'_>, ours: &[Found]) -> Result<(), ReconcileError> {
    for t in ours {
        w.k.delete_access_token(&t.account_id, &t.id)
            .await
            .ignore_not_found()
            .map_err(ReconcileError::konnect("revoking an unfinished token"))?;
        tracing::info!(token_name = %t.name, "revoked a token whose value never reached the Secret");
    }
    let st = w.st();
    clear_pending(st);
    conditions::remove(&mut st.conditions, ISSUING);
    w.save().await
}

/// Whether the current token still exists in Konnect. A token confirmed less than a resync period
/// ago costs nothing; a drift check of an unchanged token is paced by the background budget.
async fn check_live(w: &Work<'_>) -> Result<Liveness, ReconcileError> {
    let st = w.obj.status.clone().unwrap_or_default();
    let (Some(token_id), Some(account_id)) = (st.token_id.as_deref(), st.account_id.as_deref())
    else {
        return Ok(Liveness::Unknown);
    };
    let key = verified_key(&w.obj);
    if w.ctx.recently_verified(&key, token_id) {
        return Ok(Liveness::Live);
    }
    let now = w.ctx.clock.now();
    let renewal_due = parse_time(&st.renewal_time).is_none_or(|r| r <= now);
    if st.observed_generation == w.obj.metadata.generation
        && conditions::is_ready(&st.conditions, w.obj.metadata.generation)
        && !renewal_due
    {
        // A drift check of an unchanged token (a due renewal is not one): paced by the background
        // budget. Without a permit it is put off to the turn the budget reserves for it (the
        // requeue below), never waited for: a wait would hold a reconcile slot that changes and
        // due renewals need.
        if w.ctx.budget.admit(&key, 1).is_err() {
            w.ctx.metrics.drift_check_deferred("SystemAccountToken");
            return Ok(Liveness::Deferred);
        }
        w.ctx.metrics.drift_check("SystemAccountToken");
    }
    match w.k.get_access_token(account_id, token_id).await {
        // Konnect still lists it, but its own expiry says it no longer authenticates.
        Ok(t)
            if t.expires_at
                .parse::<Timestamp>()
                .is_ok_and(|e| e <= w.ctx.clock.now()) =>
        {
            Ok(Liveness::Gone)
        }
        Ok(_) => {
            w.ctx.mark_verified(&key, token_id);
            Ok(Liveness::Live)
        }
        Err(e) if e.is_not_found() => Ok(Liveness::Gone),
        Err(e) => Err(ReconcileError::konnect("checking the current token")(e)),
    }
}

fn verified_key(obj: &SystemAccountToken) -> String {
    format!("SystemAccountToken/{}", obj.uid().unwrap_or_default())
}

fn owner_ref(obj: &SystemAccountToken) -> OwnerReference {
    let mut r = obj.controller_owner_ref(&()).unwrap_or_default();
    r.block_owner_deletion = Some(true);
    r
}

async fn issue(
    w: &mut Work<'_>,
    reason: RotationReason,
    schedule: Schedule,
    rotate_annotation: Option<String>,
) -> Result<(), ReconcileError> {
    let ns = w.obj.namespace().unwrap_or_default();
    let name = w.obj.name_any();
    let uid = w.uid();
    let revision = w.st().revision.unwrap_or(0) + 1;
    let token_name = token_name(&w.ctx.config.cluster_name, &ns, &name, &uid, revision);
    let template = w.obj.spec.secret_template.clone().unwrap_or_default();
    // A secretKey move keeps the old key (its token stays valid for the retention).
    let status = w.obj.status.clone().unwrap_or_default();
    let kept_keys = keys_to_keep(&status, &w.secret_name, &w.secret_key);
    let (secret_name, secret_key) = (w.secret_name.clone(), w.secret_key.clone());

    // 0. A token is created only for a Secret that can take it: a refused write would otherwise
    //    cost a token created and revoked on every attempt. What is certain is checked here; after
    //    a failed attempt the API server is asked too (dry run: webhooks and policies answer).
    if let Some(why) = secret::unwritable(w.secret.as_ref()) {
        return Err(ReconcileError::SecretConflict(why));
    }
    if w.ctx.backoffs.failed_last_time(&object_key(&w.obj)) {
        secret::probe(
            &w.secrets,
            w.secret.as_ref(),
            &w.target(&template, &kept_keys),
        )
        .await
        .map_err(ReconcileError::kube(format!(
            "the API server would refuse Secret {}",
            w.secret_name
        )))?;
    }

    // 1. Record the name before the create: if the response is lost or we crash, the next
    //    reconcile finds this token by name and revokes it.
    let generation = w.obj.metadata.generation;
    let account_id = w.account_id.clone();
    let now = w.ctx.clock.now();
    let st = w.st();
    set_pending(st, &token_name, &account_id, &secret_name, now);
    conditions::set(
        &mut st.conditions,
        ISSUING,
        true,
        Reason::Pending,
        format!("Issuing token {token_name} ({})", reason.as_str()),
        generation,
        now,
    );
    if has_finalizer(&w.obj) {
        w.save().await?;
    } else {
        // A new object: the finalizer and the marker in one patch; the status is written once the
        // token is in the Secret.
        let marker = IssueMarker::of(w.st()).and_then(|m| serde_json::to_string(&m).ok());
        let status = w.obj.status.take();
        w.obj = add_finalizer(&w.api, &w.obj, w.ctx, marker).await?;
        w.obj.status = status;
    }

    // 2. Create. Never retried blindly by the client: a lost value cannot be recovered.
    let issued_at = whole_seconds(w.ctx.clock.now());
    let expires_at = expiry(issued_at, schedule.lifetime);
    let body = CreateAccessToken {
        name: token_name.clone(),
        expires_at: expires_at.to_string(),
    };
    let created = match w.k.create_access_token(&w.account_id, &body).await {
        Ok(c) => c,
        Err(e) => {
            w.ctx.metrics.token_rotation_failures.inc();
            if e.nothing_was_done() {
                let st = w.st();
                clear_pending(st);
                conditions::remove(&mut st.conditions, ISSUING);
                let _ = w.save().await;
            }
            return Err(ReconcileError::konnect("issuing a token")(e));
        }
    };

    // Konnect's answer is the truth about the expiry (it may round or cap what was asked).
    let expires_at = created
        .meta
        .expires_at
        .parse::<Timestamp>()
        .map(whole_seconds)
        .unwrap_or(expires_at);

    // 3. Write the Secret: from here on consumers have the new token.
    let token = IssuedToken {
        value: &created.token,
        token_id: &created.meta.id,
        token_name: &token_name,
        account_id: &w.account_id,
        revision,
        issued_at,
        expires_at,
        rotated_for: rotate_annotation.as_deref(),
    };
    let target = w.target(&template, &kept_keys);
    let written = match secret::write(&w.secrets, w.secret.as_ref(), &target, &token).await {
        Ok(s) => Ok(s),
        // No answer, a timeout or a server error: the write may have landed. The Secret decides;
        // when it cannot be read either, nothing is revoked: the pending marker stays, and the
        // next reconcile adopts the token from the Secret or revokes it as unfinished.
        Err(e) if crate::k8s::error_code(&e).is_none_or(|c| c >= 500 || c == 408) => {
            match w.secrets.get_opt(&w.secret_name).await {
                Ok(Some(s)) if secret::holds_token(&s, &created.meta.id) => Ok(s),
                Ok(_) => Err(e),
                Err(_) => {
                    w.ctx.metrics.token_rotation_failures.inc();
                    return Err(ReconcileError::kube(format!(
                        "writing Secret {} (outcome unknown; settled at the next reconcile)",
                        w.secret_name
                    ))(e));
                }
            }
        }
        Err(e) => Err(e),
    };
    let written = match written {
        Ok(s) => s,
        Err(e) => {
            w.ctx.metrics.token_rotation_failures.inc();
            // The value reached no one: revoke it now. If that fails too, pendingTokenName
            // makes the next reconcile find and revoke it.
            if w.k
                .delete_access_token(&w.account_id, &created.meta.id)
                .await
                .ignore_not_found()
                .is_ok()
            {
                let st = w.st();
                clear_pending(st);
                conditions::remove(&mut st.conditions, ISSUING);
                let _ = w.save().await;
            }
            return Err(ReconcileError::kube(format!(
                "writing Secret {}",
                w.secret_name
            ))(e));
        }
    };
    w.secret = Some(written);

    // 4. Record: the old token becomes previous, revoked after the retention. A token whose Secret
    //    was lost, or that Konnect no longer has, is revoked at once: no consumer can get it anymore.
    //    After an account change consumers still hold the old token until they reload: it keeps
    //    the retention (an old token of a recreated account is gone already; its revoke is a 404).
    let now = whole_seconds(w.ctx.clock.now());
    let old_exists = reason != RotationReason::AccountChanged || old_token_exists(w).await;
    let keep = retention_after(reason, schedule.retention, old_exists);
    let account_id = w.account_id.clone();
    let issued = Issued {
        id: &created.meta.id,
        name: &token_name,
        account_id: &account_id,
        revision,
        issued_at,
        expires_at,
        rotated_for: rotate_annotation.as_deref(),
        secret_name: &secret_name,
        secret_key: &secret_key,
    };
    let st = w.st();
    record_issued(st, &issued, now, keep, schedule.renew_before, &uid);
    conditions::remove(&mut st.conditions, ISSUING);
    w.ctx.mark_verified(&verified_key(&w.obj), &created.meta.id);
    w.ctx
        .metrics
        .token_rotations
        .get_or_create(&ReasonLabels {
            reason: reason.as_str().to_string(),
        })
        .inc();
    let verb = if revision == 1 { "Issued" } else { "Rotated" };
    let note = format!(
        "{verb} token {token_name} (revision {revision}, reason {}), expires at {expires_at}; stored in Secret {}",
        reason.as_str(),
        w.secret_name
    );
    tracing::info!(revision, reason = reason.as_str(), %expires_at, "token issued");
    events::publish(&w.ctx.events, &w.obj, false, verb, "Rotate", note).await;
    // Recorded by the next write: the checkpoint before the next step's effect, or the Ready status.
    Ok(())
}

/// Restarts the targets once per revision. The stamp is the revision's issue time and number (two
/// rotations within one second still differ), so repeating the patch (after a crash) changes
/// nothing and triggers no second rollout.
async fn restart_targets(w: &mut Work<'_>) {
    let targets = w.obj.spec.rollout_restart_targets.clone();
    let st = w.st().clone();
    let revision = st.revision.unwrap_or(0);
    let Some(issued_at) = st.last_rotation_time.clone() else {
        return;
    };
    let stamp = format!("{issued_at}/r{revision}");
    let ns = w.obj.namespace().unwrap_or_default();
    // A missing workload has no pods holding the old token: reported, not waited for. A restart
    // that failed is retried, and the previous token is kept until it succeeds.
    let (mut missing, mut failed) = (Vec::new(), Vec::new());
    for t in &targets {
        let kind = match t.kind {
            RestartKind::Deployment => WorkloadKind::Deployment,
            RestartKind::StatefulSet => WorkloadKind::StatefulSet,
            RestartKind::DaemonSet => WorkloadKind::DaemonSet,
        };
        match restart::restart(&w.ctx.kube, &ns, kind, &t.name, &stamp).await {
            RestartOutcome::Patched => {}
            RestartOutcome::NotFound => missing.push(format!("{} {}", t.kind.as_str(), t.name)),
            RestartOutcome::Failed(e) => failed.push(format!(
                "{} {} ({})",
                t.kind.as_str(),
                t.name,
                crate::k8s::error_summary(&e)
            )),
        }
    }
    let generation = w.obj.metadata.generation;
    let st = w.st();
    let (reason, msg) = if !failed.is_empty() {
        let held = st
            .previous_tokens
            .iter()
            .filter_map(|p| p.expires_at.clone())
            .min()
            .map(|e| format!(" (at the latest until it expires at {e})"))
            .unwrap_or_default();
        (
            Reason::RestartFailed,
            format!(
                "could not restart {} for revision {revision}; retrying every {}s, and the previous token \
                 is kept until they restart{held}",
                failed.join(", "),
                RESTART_RETRY.as_secs()
            ),
        )
    } else {
        st.last_restart_revision = Some(revision);
        if missing.is_empty() {
            conditions::remove(&mut st.conditions, RESTART_TARGETS);
            return;
        }
        (
            Reason::TargetNotFound,
            format!(
                "could not restart {} for revision {revision}: not found; the token itself was rotated",
                missing.join(", ")
            ),
        )
    };
    let changed = conditions::get(&st.conditions, RESTART_TARGETS)
        .is_none_or(|c| c.message != msg || c.reason != reason.as_str());
    conditions::set(
        &mut st.conditions,
        RESTART_TARGETS,
        false,
        reason,
        msg.clone(),
        generation,
        Timestamp::now(),
    );
    // Once per change, not at every retry.
    if changed {
        events::publish(
            &w.ctx.events,
            &w.obj,
            true,
            "RestartTargetFailed",
            "Restart",
            msg,
        )
        .await;
    }
}

/// Revokes the previous tokens `ids` (their revokeAt has come).
async fn revoke(w: &mut Work<'_>, ids: &[String]) -> Result<(), ReconcileError> {
    let due: Vec<PreviousToken> = w
        .st()
        .previous_tokens
        .iter()
        .filter(|p| ids.contains(&p.id))
        .cloned()
        .collect();
    let recorded = w.st().clone();
    let mut done: Vec<String> = Vec::new();
    let mut failed = None;
    for p in &due {
        match revoke_one(w, &recorded, p, ids).await {
            Ok(()) => done.push(p.id.clone()),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // What was revoked is recorded even when a later one failed: the retry starts from there.
    w.st().previous_tokens.retain(|p| !done.contains(&p.id));
    if !done.is_empty() || failed.is_none() {
        w.save().await?;
    }
    failed.map_or(Ok(()), Err)
}

/// One previous token: the Secret side first (a crash after it leaves the token recorded, and its
/// revoke is retried), then Konnect.
async fn revoke_one(
    w: &Work<'_>,
    recorded: &SystemAccountTokenStatus,
    p: &PreviousToken,
    batch: &[String],
) -> Result<(), ReconcileError> {
    let spec_secret = (w.secret_name.as_str(), w.secret_key.as_str());
    let cleanup = cleanup_after_revoke(recorded, &p.id, batch, spec_secret);
    clean_up_secret(&w.secrets, &w.uid(), cleanup).await?;
    let account = if p.account_id.is_empty() {
        w.account_id.clone()
    } else {
        p.account_id.clone()
    };
    w.k.delete_access_token(&account, &p.id)
        .await
        .ignore_not_found()
        .map_err(ReconcileError::konnect("revoking a previous token"))?;
    events::publish(
        &w.ctx.events,
        &w.obj,
        false,
        "Revoked",
        "Revoke",
        format!("Revoked previous token {} ({})", p.name, p.id),
    )
    .await;
    Ok(())
}

/// Removes what a revoked token leaves in Kubernetes: its key (a `secretKey` move) or the Secret the
/// spec moved away from (a `secretName` move), when nothing else uses it.
async fn clean_up_secret(
    secrets: &Api<Secret>,
    uid: &str,
    cleanup: SecretCleanup,
) -> Result<(), ReconcileError> {
    match cleanup {
        SecretCleanup::Nothing => {}
        SecretCleanup::RemoveKey { secret, key } => {
            secret::remove_key(secrets, &secret, &key, uid)
                .await
                .map_err(ReconcileError::kube(format!(
                    "removing the replaced token's key {key} from Secret {secret}"
                )))?;
            tracing::info!(%secret, %key, "removed the key of a revoked token (secretKey moved)");
        }
        SecretCleanup::Delete { secret, current } => {
            let deleted = secret::delete_unless_holding(secrets, &secret, current.as_deref(), uid)
                .await
                .map_err(ReconcileError::kube(format!(
                    "deleting Secret {secret}, which held a replaced token"
                )))?;
            if deleted {
                tracing::info!(%secret, "deleted the Secret of a revoked token (secretName moved)");
            }
        }
    }
    Ok(())
}

async fn cleanup(
    obj: Arc<SystemAccountToken>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    let st = with_issue_marker(&obj).unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &ns);
    let secret_name = obj.spec.secret_name(&obj.name_any());
    let secret = secrets
        .get_opt(&secret_name)
        .await
        .map_err(ReconcileError::kube("reading the Secret"))?;
    let secret = secret.filter(|s| secret::is_controlled_by(s, &uid));
    ctx.metrics.forget_token(&ns, &obj.name_any());
    // A crash after the Secret write and before the status write: the Secret's token is the current
    // one (kept under Orphan, revoked under Delete), the one the status names is a previous one.
    let mut st = st;
    if let Some(view) = secret
        .as_ref()
        .map(|s| secret::view(s, &uid, obj.spec.secret_key()))
        && secret_is_newer(&current_of(&st), &view)
    {
        let lifetime = obj
            .spec
            .duration()
            .unwrap_or(crate::api::token::DEFAULT_DURATION);
        adopt_secret(
            &mut st,
            &view,
            (
                &secret_name,
                view.key.as_deref().unwrap_or(obj.spec.secret_key()),
            ),
            whole_seconds(ctx.clock.now()),
            std::time::Duration::ZERO,
            obj.spec.renew_before(lifetime),
            &uid,
        );
    }
    // Orphan keeps the current token and its Secret; replaced and unfinished tokens are revoked all
    // the same (nobody would ever revoke them otherwise). The Secret carries no ownerReference under
    // this policy already (written so), so no garbage collection mode takes it; an older one is
    // released here.
    let orphan = obj.spec.deletion_policy() == DeletionPolicy::Orphan;
    if orphan && let Some(s) = &secret {
        secret::release(&secrets, s, &uid)
            .await
            .map_err(ReconcileError::kube("releasing the Secret"))?;
    }
    // The organisation the tokens were made in: recorded in status (the account and its auth Secret
    // reference may be gone by now). A missing auth Secret blocks the deletion with a clear message.
    let account_konnect = account_ref::resolve_identity(&ctx, &ns, &obj.spec.system_account_ref)
        .ok()
        .and_then(|a| a.konnect);
    let auth = account_ref::cleanup_auth_secret(
        st.konnect_auth_secret.as_deref(),
        obj.spec.konnect.as_ref(),
        account_konnect.as_ref(),
    );
    let k = ctx.connections.for_object(&ns, auth).await?.client;
    let mut doomed: Vec<(String, String)> = Vec::new();
    if !orphan && let (Some(a), Some(t)) = (&st.account_id, &st.token_id) {
        doomed.push((a.clone(), t.clone()));
    }
    for p in &st.previous_tokens {
        doomed.push((
            if p.account_id.is_empty() {
                st.account_id.clone().unwrap_or_default()
            } else {
                p.account_id.clone()
            },
            p.id.clone(),
        ));
    }
    if !orphan
        && let Some(v) = secret
            .as_ref()
            .map(|s| secret::view(s, &uid, obj.spec.secret_key()))
        && let (Some(a), Some(t)) = (v.account_id, v.token_id)
    {
        doomed.push((a, t));
    }
    if orphan {
        // The kept Secret loses the keys of replaced tokens, and a Secret the spec moved away from
        // goes (only the current token is left; garbage collection does this under Delete).
        let all: Vec<String> = st.previous_tokens.iter().map(|p| p.id.clone()).collect();
        for id in &all {
            let spec_secret = (secret_name.as_str(), obj.spec.secret_key());
            let cleanup = cleanup_after_revoke(&st, id, &all, spec_secret);
            clean_up_secret(&secrets, &uid, cleanup).await?;
        }
    }
    doomed.retain(|(a, _)| !a.is_empty());
    doomed.sort();
    doomed.dedup();
    for (account, token) in &doomed {
        k.delete_access_token(account, token)
            .await
            .ignore_not_found()
            .map_err(ReconcileError::konnect("revoking a token"))?;
    }
    if let Some(pending) = &st.pending_token_name {
        let spec_account = account_ref::resolve_identity(&ctx, &ns, &obj.spec.system_account_ref)
            .ok()
            .map(|a| a.id);
        let accounts = pending_accounts(&st, spec_account.as_deref());
        let found = list_pending(&k, &accounts, pending).await?;
        for t in unfinished_ours(&st, pending, &found) {
            k.delete_access_token(&t.account_id, &t.id)
                .await
                .ignore_not_found()
                .map_err(ReconcileError::konnect("revoking a token"))?;
        }
    }
    let note = if orphan {
        format!(
            "deletionPolicy is Orphan: the current token and its Secret are kept; revoked {} replaced \
             token(s)",
            doomed.len()
        )
    } else {
        format!(
            "Revoked {} token(s) of this SystemAccountToken",
            doomed.len()
        )
    };
    let reason = if orphan { "Orphaned" } else { "Revoked" };
    events::publish(&ctx.events, &*obj, false, reason, "Delete", note).await;
    Ok(Action::await_change())
}
