//! SystemAccount controller: observe Konnect -> plan (account_plan) -> act -> status.
use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::account_plan::{
    AccountStep, DesiredAccount, ObservedAccount, ResolvedTeam, created_by_our_create,
    needs_name_lookup, pick_team_by_name, plan_account, plan_teams,
};
use super::budget::Paced;
use super::connections::Connection;
use super::context::Context;
use super::error::ReconcileError;
use super::reconciler::{
    FINALIZER, WRITE_AHEAD_ANNOTATION, add_finalizer, finish, mark_not_ready, mark_ready,
    reconcile_with,
};
use crate::api::{
    AdoptionPolicy, DeletionPolicy, RefTarget, SystemAccount, SystemAccountStatus, TeamStatus,
};
use crate::k8s::conditions::{self, Reason};
use crate::k8s::events;
use crate::konnect::{
    AccountFilter, CreateSystemAccount, IgnoreNotFound, KonnectClient, KonnectError,
    SystemAccount as KAccount,
};

crate::impl_managed!(SystemAccount, "SystemAccount", own_finalizer);

pub async fn reconcile(
    obj: Arc<SystemAccount>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    reconcile_with(obj, ctx, apply, cleanup).await
}

fn desired(obj: &SystemAccount, cluster: &str) -> Result<DesiredAccount, ReconcileError> {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let konnect_name = obj.spec.konnect_name(&name);
    if konnect_name.trim().is_empty() {
        return Err(ReconcileError::InvalidSpec(
            "spec.name must not be blank".into(),
        ));
    }
    for team in &obj.spec.teams {
        team.target().map_err(ReconcileError::InvalidSpec)?;
    }
    Ok(DesiredAccount {
        name: konnect_name,
        description: obj.spec.description_or_default(cluster, &ns, &name),
        adopt: obj.spec.adoption() == AdoptionPolicy::Adopt,
    })
}

fn auth_secret(obj: &SystemAccount) -> Option<&str> {
    super::account_ref::auth_secret(obj.spec.konnect.as_ref(), None)
}

async fn apply(obj: Arc<SystemAccount>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<SystemAccount> = Api::namespaced(ctx.kube.clone(), &ns);
    let desired = desired(&obj, &ctx.config.cluster_name)?;
    let conn = ctx.connections.for_object(&ns, auth_secret(&obj)).await?;
    let k = &conn.client;
    let old_status = with_create_marker(&obj);
    // A drift check of an unchanged, Ready account reads the shared snapshot (paced by the budget).
    let background = old_status.id.is_some()
        && old_status.observed_generation == obj.metadata.generation
        && conditions::is_ready(&old_status.conditions, obj.metadata.generation);
    // Resolve the teams first: a spec error (unknown or ambiguous team) must not leave a new account behind.
    let wanted_teams = resolve_teams(&ctx, &conn, &obj, &old_status, background).await?;
    let mut observed = match observe(&ctx, &conn, &desired, &old_status, background).await? {
        Paced::Done(observed) => observed,
        Paced::Later(wait) => {
            ctx.metrics.drift_check_deferred("SystemAccount");
            return Ok(Action::requeue(wait));
        }
    };
    if background {
        ctx.metrics.drift_check("SystemAccount");
    }
    let mut created = false;
    let mut announce: Option<(&str, String)> = None;
    let mut working = (*obj).clone();
    let mut adopted = old_status.adopted;
    let account = loop {
        match plan_account(&desired, &observed) {
            AccountStep::Create => {
                // Record the create before making it: an account found by this name after a crash
                // is ours. A new object's finalizer and this marker go in one patch; a later create
                // (a recreate, a renamed first attempt) records it in the status. A retry under the
                // same name keeps the first attempt's time, and writes nothing.
                let recorded = create_marker(&working).filter(|m| m.name == desired.name);
                if !has_finalizer(&working) {
                    let marker = recorded.unwrap_or_else(|| CreateMarker::now(&desired.name));
                    let status = working.status.take();
                    working = add_finalizer(&api, &working, &ctx, marker.to_annotation()).await?;
                    working.status = status;
                } else if recorded.is_none() {
                    let status = working.status.get_or_insert_with(Default::default);
                    let marker = CreateMarker::now(&desired.name);
                    status.pending_create = Some(marker.name);
                    status.pending_create_since = marker.since;
                    mark_not_ready(
                        &mut working,
                        Reason::Pending,
                        format!("Creating system account '{}' in Konnect", desired.name),
                    );
                    working = ctx
                        .write_status(&api, &working)
                        .await
                        .map_err(ReconcileError::kube("recording the create"))?;
                }
                let body = CreateSystemAccount {
                    name: desired.name.clone(),
                    description: desired.description.clone(),
                    konnect_managed: None,
                };
                let new = match k.create_system_account(&body).await {
                    Ok(new) => new,
                    Err(e) if e.is_conflict() => {
                        // A first-attempt 409: someone else took the name between our check and our
                        // create. Nothing of ours exists, so the pending marker must not make the
                        // next reconcile adopt their account.
                        drop_create_marker(&ctx, &api, &mut working).await;
                        return Err(ReconcileError::Conflict(format!(
                            "a Konnect system account named '{}' was created by someone else just now; \
                             set spec.adoption: Adopt to manage it, or choose another spec.name",
                            desired.name
                        )));
                    }
                    Err(e) => {
                        // Refused outright (400, 401, 403): nothing was created, so the marker goes.
                        // Left behind, it would make an account someone creates by hand later look
                        // like ours. Not after a 429 or 404: the client retries a create after a
                        // 5xx, so an earlier attempt may have committed before that final answer.
                        if matches!(
                            e,
                            KonnectError::BadRequest { .. }
                                | KonnectError::Unauthorized { .. }
                                | KonnectError::Forbidden { .. }
                                | KonnectError::Config(_)
                        ) {
                            drop_create_marker(&ctx, &api, &mut working).await;
                        }
                        return Err(ReconcileError::konnect("creating the system account")(e));
                    }
                };
                created = true;
                let verb = if observed.recorded_id.is_some() {
                    "Recreated"
                } else {
                    "Created"
                };
                // Published once its teams are joined: one Event says both.
                announce = Some((
                    verb,
                    format!(
                        "{verb} Konnect system account '{}' ({})",
                        new.value.name, new.value.id
                    ),
                ));
                adopted = Some(false);
                observed = ObservedAccount {
                    by_id: Some(new.value),
                    ..Default::default()
                };
            }
            AccountStep::Adopt(existing) => {
                working = ensure_finalizer(&api, working, &ctx).await?;
                if !observed.create_in_flight {
                    events::publish(
                        &ctx.events,
                        &*obj,
                        false,
                        "Adopted",
                        "Adopt",
                        format!(
                            "Adopted existing Konnect system account '{}' ({})",
                            existing.name, existing.id
                        ),
                    )
                    .await;
                    adopted = Some(true);
                } else {
                    // Our own create whose response was lost: created, not adopted.
                    events::publish(
                        &ctx.events,
                        &*obj,
                        false,
                        "Created",
                        "Create",
                        format!(
                            "Created Konnect system account '{}' ({})",
                            existing.name, existing.id
                        ),
                    )
                    .await;
                    adopted = Some(false);
                }
                observed = ObservedAccount {
                    by_id: Some(existing),
                    ..Default::default()
                };
            }
            AccountStep::Update { id, patch } => {
                working = ensure_finalizer(&api, working, &ctx).await?;
                let updated = k.update_system_account(&id, &patch).await.map_err(|e| match e {
                    e if e.is_conflict() => ReconcileError::Conflict(format!(
                        "cannot rename account {id} to '{}': another Konnect account has that name", desired.name
                    )),
                    e => ReconcileError::konnect("updating the system account")(e),
                })?;
                events::publish(
                    &ctx.events,
                    &*obj,
                    false,
                    "Updated",
                    "Update",
                    format!(
                        "Updated Konnect system account '{}' ({})",
                        updated.name, updated.id
                    ),
                )
                .await;
                observed = ObservedAccount {
                    by_id: Some(updated),
                    ..Default::default()
                };
            }
            AccountStep::InSync(account) => break account,
            AccountStep::RefuseManaged(msg) => return Err(ReconcileError::InvalidSpec(msg)),
            AccountStep::NameTaken(msg) => return Err(ReconcileError::Conflict(msg)),
        }
    };

    // Team changes are Konnect changes too: the finalizer is on before them.
    working = ensure_finalizer(&api, working, &ctx).await?;
    ctx.snapshot.note_account(&conn, &account).await;
    let teams = converge_teams(
        &ctx,
        &conn,
        &obj,
        wanted_teams,
        &account,
        &old_status,
        MembershipSource::pick(created, background),
    )
    .await;
    let announce = announce.map(|(verb, note)| match &teams {
        Ok(teams) if !teams.is_empty() => {
            let names: Vec<&str> = teams.iter().map(|t| t.name.as_str()).collect();
            (verb, format!("{note} in team(s) [{}]", names.join(", ")))
        }
        _ => (verb, note),
    });
    let teams = match teams {
        Ok(teams) => teams,
        Err(e) => {
            if let Some((verb, note)) = announce {
                events::publish(&ctx.events, &*obj, false, verb, "Create", note).await;
            }
            return Err(e);
        }
    };

    let status = working.status.get_or_insert_with(Default::default);
    status.id = Some(account.id.clone());
    status.pending_create = None;
    status.pending_create_since = None;
    status.adopted = adopted;
    status.teams = teams;
    mark_ready(
        &mut working,
        format!(
            "System account '{}' ({}) matches the spec",
            account.name, account.id
        ),
    );
    // Ready first: dependents wait for it, nobody waits for the Event.
    let action = finish(&ctx, &*obj, &working).await;
    if let Some((verb, note)) = announce {
        events::publish(&ctx.events, &*obj, false, verb, "Create", note).await;
    }
    action
}

/// Reads the account by recorded id (from the shared snapshot during a drift check, confirming
/// a miss with a GET), and by name only when the plan needs it.
async fn observe(
    ctx: &Context,
    conn: &Connection,
    desired: &DesiredAccount,
    status: &SystemAccountStatus,
    background: bool,
) -> Result<Paced<ObservedAccount>, ReconcileError> {
    let k = &conn.client;
    let by_id = match status.id.as_deref() {
        Some(id) => {
            let seen = if background {
                match ctx
                    .snapshot
                    .account(conn, &ctx.budget, id)
                    .await
                    .map_err(ReconcileError::konnect("listing system accounts"))?
                {
                    Paced::Done(seen) => seen,
                    Paced::Later(wait) => return Ok(Paced::Later(wait)),
                }
            } else {
                None
            };
            match seen {
                Some(a) => Some(a),
                None => {
                    if background && let Err(wait) = ctx.budget.admit(&format!("account/{id}"), 1) {
                        return Ok(Paced::Later(wait));
                    }
                    match k.get_system_account(id).await {
                        Ok(a) => Some(a),
                        Err(e) if e.is_not_found() => {
                            ctx.snapshot.forget_account(conn, id).await;
                            None
                        }
                        Err(e) => {
                            return Err(ReconcileError::konnect("reading the system account")(e));
                        }
                    }
                }
            }
        }
        None => None,
    };
    let by_name = if needs_name_lookup(desired, by_id.as_ref()) {
        find_by_name(k, &desired.name).await?
    } else {
        None
    };
    let create_in_flight = created_by_our_create(
        status.pending_create.as_deref(),
        status.pending_create_since.as_deref(),
        &desired.name,
        by_name.as_ref(),
    );
    Ok(Paced::Done(ObservedAccount {
        recorded_id: status.id.clone(),
        by_id,
        by_name,
        create_in_flight,
    }))
}

async fn find_by_name(k: &KonnectClient, name: &str) -> Result<Option<KAccount>, ReconcileError> {
    let filter = AccountFilter {
        name_eq: Some(name.to_string()),
        konnect_managed: None,
    };
    let found = k
        .list_system_accounts(&filter)
        .await
        .map_err(ReconcileError::konnect("looking up the account name"))?;
    Ok(found.into_iter().find(|a| a.name == name))
}

async fn resolve_teams(
    ctx: &Context,
    conn: &Connection,
    obj: &SystemAccount,
    old: &SystemAccountStatus,
    background: bool,
) -> Result<Vec<ResolvedTeam>, ReconcileError> {
    let mut resolved = Vec::with_capacity(obj.spec.teams.len());
    for team in &obj.spec.teams {
        let t = match team.target().map_err(ReconcileError::InvalidSpec)? {
            RefTarget::Name(name) => {
                let candidates = ctx
                    .cache
                    .teams_named(conn, name)
                    .await
                    .map_err(ReconcileError::konnect("looking up teams"))?;
                pick_team_by_name(name, &candidates).map_err(ReconcileError::InvalidSpec)?
            }
            // During a drift check, a team id resolved before needs no new lookup.
            RefTarget::Id(id) if background && old.teams.iter().any(|t| t.id == id) => {
                let known = old
                    .teams
                    .iter()
                    .find(|t| t.id == id)
                    .cloned()
                    .unwrap_or_default();
                ResolvedTeam {
                    id: known.id,
                    name: known.name,
                }
            }
            RefTarget::Id(id) => match conn.client.get_team(id).await {
                Ok(t) => ResolvedTeam {
                    id: t.id,
                    name: t.name,
                },
                Err(e) if e.is_not_found() => {
                    return Err(ReconcileError::InvalidSpec(format!(
                        "no Konnect team has id {id}: check spec.teams"
                    )));
                }
                Err(e) => return Err(ReconcileError::konnect("reading a team")(e)),
            },
        };
        if !resolved.contains(&t) {
            resolved.push(t);
        }
    }
    Ok(resolved)
}

/// Where the account's current memberships come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MembershipSource {
    /// Created in this reconcile: in no team yet, nothing to read.
    NewAccount,
    /// A drift check: the shared per-team member lists.
    Snapshot,
    /// A change: list the account's teams.
    Konnect,
}

impl MembershipSource {
    fn pick(created: bool, background: bool) -> Self {
        match (created, background) {
            (true, _) => Self::NewAccount,
            (false, true) => Self::Snapshot,
            (false, false) => Self::Konnect,
        }
    }
}

async fn converge_teams(
    ctx: &Context,
    conn: &Connection,
    obj: &SystemAccount,
    desired: Vec<ResolvedTeam>,
    account: &KAccount,
    old: &SystemAccountStatus,
    source: MembershipSource,
) -> Result<Vec<TeamStatus>, ReconcileError> {
    let k = &conn.client;
    let owned: Vec<String> = old.teams.iter().map(|t| t.id.clone()).collect();
    // A new account is in no team; a drift check asks the shared per-team member lists about the
    // teams that matter (wanted or owned); a change lists the account's teams directly.
    let current: Vec<String> = if source == MembershipSource::NewAccount {
        Vec::new()
    } else if source == MembershipSource::Snapshot {
        let mut ids = Vec::new();
        for id in desired.iter().map(|t| &t.id).chain(owned.iter()) {
            if ids.contains(id) {
                continue;
            }
            match ctx
                .snapshot
                .is_member(conn, &ctx.budget, id, &account.id)
                .await
                .map_err(ReconcileError::konnect("listing team members"))?
            {
                Paced::Done(true) => ids.push(id.clone()),
                Paced::Done(false) => {}
                // No permit for a member list: the teams are compared at a later sweep.
                Paced::Later(_) => {
                    ctx.metrics.drift_check_deferred("SystemAccount");
                    return Ok(old.teams.clone());
                }
            }
        }
        ids
    } else {
        k.list_account_teams(&account.id)
            .await
            .map_err(ReconcileError::konnect("listing team memberships"))?
            .into_iter()
            .map(|t| t.id)
            .collect()
    };
    let plan = plan_teams(&desired, &current, &owned);
    // What this object owns: memberships it added, and those it owned before that are still wanted.
    // A membership that existed already (a person's, or from before an adoption) is never claimed,
    // so dropping it from the spec never removes it.
    let mut added: Vec<String> = Vec::new();
    for team in &plan.add {
        match k.add_team_member(&team.id, &account.id).await {
            Ok(()) => {
                added.push(team.id.clone());
                ctx.snapshot
                    .note_member(conn, &team.id, &account.id, true)
                    .await
            }
            Err(e) if e.is_conflict() => {
                ctx.snapshot
                    .note_member(conn, &team.id, &account.id, true)
                    .await
            }
            Err(e) => {
                return Err(ReconcileError::konnect(format!(
                    "adding the account to team '{}'",
                    team.name
                ))(e));
            }
        }
    }
    for id in &plan.remove {
        k.remove_team_member(id, &account.id)
            .await
            .ignore_not_found()
            .map_err(ReconcileError::konnect("removing a team membership"))?;
        ctx.snapshot.note_member(conn, id, &account.id, false).await;
    }
    // A new account's teams are named in its Created Event.
    if (!plan.add.is_empty() || !plan.remove.is_empty()) && source != MembershipSource::NewAccount {
        let added: Vec<&str> = plan.add.iter().map(|t| t.name.as_str()).collect();
        events::publish(
            &ctx.events,
            obj,
            false,
            "TeamsChanged",
            "Update",
            format!(
                "Team memberships changed: added [{}], removed {} membership(s)",
                added.join(", "),
                plan.remove.len()
            ),
        )
        .await;
    }
    Ok(desired
        .into_iter()
        .filter(|t| added.contains(&t.id) || owned.contains(&t.id))
        .map(|t| TeamStatus {
            id: t.id,
            name: t.name,
        })
        .collect())
}

async fn cleanup(obj: Arc<SystemAccount>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let status = with_create_marker(&obj);
    if obj.spec.deletion_policy() == DeletionPolicy::Orphan {
        events::publish(
            &ctx.events,
            &*obj,
            false,
            "Orphaned",
            "Delete",
            "deletionPolicy is Orphan: the Konnect account is kept",
        )
        .await;
        return Ok(Action::await_change());
    }
    let conn = ctx.connections.for_object(&ns, auth_secret(&obj)).await?;
    let k = &conn.client;
    let account = match status.id.as_deref() {
        Some(id) => match k.get_system_account(id).await {
            Ok(a) => Some(a),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                return Err(ReconcileError::konnect(
                    "reading the account before deleting it",
                )(e));
            }
        },
        // A create may have committed before a crash: the account with the pending name is ours.
        None => match status.pending_create.as_deref() {
            Some(name) => find_by_name(k, name).await?.filter(|a| {
                created_by_our_create(
                    Some(name),
                    status.pending_create_since.as_deref(),
                    name,
                    Some(a),
                )
            }),
            None => None,
        },
    };
    if let Some(account) = account {
        if account.konnect_managed {
            return Ok(Action::await_change());
        }
        // An adopted account existed before this object (a person's, another cluster's): the
        // operator deletes in Konnect only what it created.
        if status.adopted == Some(true) {
            events::publish(
                &ctx.events,
                &*obj,
                false,
                "Kept",
                "Delete",
                format!(
                    "Konnect system account '{}' ({}) existed before this object (adopted); it is left in Konnect",
                    account.name, account.id
                ),
            )
            .await;
            return Ok(Action::await_change());
        }
        k.delete_system_account(&account.id)
            .await
            .ignore_not_found()
            .map_err(ReconcileError::konnect("deleting the system account"))?;
        ctx.snapshot.forget_account(&conn, &account.id).await;
        events::publish(
            &ctx.events,
            &*obj,
            false,
            "Deleted",
            "Delete",
            format!(
                "Deleted Konnect system account '{}' ({})",
                account.name, account.id
            ),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// The record of a create about to be made: the Konnect name and when (whole seconds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct CreateMarker {
    name: String,
    since: Option<String>,
}

impl CreateMarker {
    fn now(name: &str) -> Self {
        let now = k8s_openapi::jiff::Timestamp::now();
        let since = k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
        Self {
            name: name.to_string(),
            since: Some(since.to_string()),
        }
    }

    fn to_annotation(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}

/// The create marker in force: `status.pendingCreate`, else the one written with the finalizer
/// ([`WRITE_AHEAD_ANNOTATION`]), which only speaks for the first create (before an id or an
/// adoption was ever recorded).
fn create_marker(obj: &SystemAccount) -> Option<CreateMarker> {
    let status = obj.status.clone().unwrap_or_default();
    if let Some(name) = status.pending_create {
        return Some(CreateMarker {
            name,
            since: status.pending_create_since,
        });
    }
    if status.id.is_some() || status.adopted.is_some() {
        return None;
    }
    serde_json::from_str(obj.annotations().get(WRITE_AHEAD_ANNOTATION)?).ok()
}

/// The status, with the create marker in force in `pendingCreate` / `pendingCreateSince`.
fn with_create_marker(obj: &SystemAccount) -> SystemAccountStatus {
    let mut status = obj.status.clone().unwrap_or_default();
    if let Some(marker) = create_marker(obj) {
        status.pending_create = Some(marker.name);
        status.pending_create_since = marker.since;
    }
    status
}

fn has_finalizer(obj: &SystemAccount) -> bool {
    obj.finalizers().iter().any(|f| f == FINALIZER)
}

/// The finalizer is on before any change in Konnect (an adoption's team memberships, an update).
async fn ensure_finalizer(
    api: &Api<SystemAccount>,
    obj: SystemAccount,
    ctx: &Context,
) -> Result<SystemAccount, ReconcileError> {
    if has_finalizer(&obj) {
        return Ok(obj);
    }
    let mut updated = add_finalizer(api, &obj, ctx, None).await?;
    // What this reconcile decided so far travels on.
    updated.status = obj.status;
    Ok(updated)
}

/// A create that made nothing (refused, or the name taken just before it): the marker goes, in
/// the status or the annotation. Left behind, it would make an account someone creates by hand
/// later look like ours.
async fn drop_create_marker(ctx: &Context, api: &Api<SystemAccount>, working: &mut SystemAccount) {
    if let Some(st) = working.status.as_mut()
        && st.pending_create.is_some()
    {
        st.pending_create = None;
        st.pending_create_since = None;
        if let Ok(written) = ctx.write_status(api, working).await {
            *working = written;
        }
    }
    if working.annotations().contains_key(WRITE_AHEAD_ANNOTATION) {
        let patch =
            serde_json::json!({"metadata": {"annotations": {WRITE_AHEAD_ANNOTATION: null}}});
        match api
            .patch(
                &working.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(written) => ctx.note_version(&written),
            Err(e) => {
                tracing::debug!(error = %crate::k8s::error_summary(&e), "could not drop the create marker")
            }
        }
    }
}

/// True when the SystemAccount is Ready for its current generation and has a Konnect id.
pub fn ready_account_id(account: &SystemAccount) -> Option<String> {
    let status = account.status.as_ref()?;
    if !conditions::is_ready(&status.conditions, account.metadata.generation) {
        return None;
    }
    status.id.clone()
}
