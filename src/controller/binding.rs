//! RoleBinding controller: assign a Konnect role to a system account; change it without an access
//! gap (create the new assignment, then delete the old); share an assignment between bindings.
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::account_ref;
use super::binding_plan::{plan_binding, validate_role};
use super::budget::Paced;
use super::connections::Connection;
use super::context::Context;
use super::error::ReconcileError;
use super::reconciler::{finish, mark_ready, reconcile_with};
use crate::api::{DeletionPolicy, RoleBinding, RoleBindingSpec};
use crate::k8s::events;
use crate::konnect::{IgnoreNotFound, RoleTuple};

crate::impl_managed!(RoleBinding, "RoleBinding");

pub async fn reconcile(obj: Arc<RoleBinding>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    reconcile_with(obj, ctx, apply, cleanup).await
}

pub fn desired_tuple(spec: &RoleBindingSpec) -> RoleTuple {
    RoleTuple {
        role_name: spec.role_name.clone(),
        entity_type_name: spec.entity_type_name.clone(),
        entity_id: spec.entity_id().to_string(),
        entity_region: spec.entity_region().to_string(),
    }
}

fn describe(t: &RoleTuple) -> String {
    format!(
        "{} on {} {} in region {}",
        t.role_name, t.entity_type_name, t.entity_id, t.entity_region
    )
}

/// Another live RoleBinding wants the same assignment on the same account: it stays.
fn wanted_by_other(ctx: &Context, me: &RoleBinding, account_id: &str, tuple: &RoleTuple) -> bool {
    ctx.bindings.state().iter().any(|b| {
        b.uid() != me.uid()
            && b.metadata.deletion_timestamp.is_none()
            && b.status
                .as_ref()
                .and_then(|s| s.system_account_id.as_deref())
                == Some(account_id)
            && &desired_tuple(&b.spec) == tuple
    })
}

fn tuple_key(account_id: &str, t: &RoleTuple) -> String {
    format!(
        "{account_id}|{}|{}|{}|{}",
        t.role_name, t.entity_type_name, t.entity_id, t.entity_region
    )
}

/// The other RoleBindings of this cluster that want the same tuple on the same account: by their
/// status, or by their spec and resolved account while they have no status yet.
fn siblings(
    ctx: &Context,
    me: &RoleBinding,
    account_id: &str,
    tuple: &RoleTuple,
) -> Vec<std::sync::Arc<RoleBinding>> {
    ctx.bindings
        .state()
        .into_iter()
        .filter(|b| {
            b.uid() != me.uid()
                && b.metadata.deletion_timestamp.is_none()
                && &desired_tuple(&b.spec) == tuple
                && (b
                    .status
                    .as_ref()
                    .and_then(|s| s.system_account_id.as_deref())
                    == Some(account_id)
                    || account_ref::resolve(
                        ctx,
                        &b.namespace().unwrap_or_default(),
                        &b.spec.system_account_ref,
                    )
                    .is_ok_and(|a| a.id == account_id))
        })
        .collect()
}

/// Whether an assignment found to exist already (409, or listed) counts as adopted. Whether it was
/// adopted belongs to the assignment: another binding of this cluster that records it (even one being
/// deleted, as in a GitOps rename) says who made it; failing that, a binding here that wants the same
/// tuple (by spec, before it has status) means this cluster is making it; otherwise it came from
/// outside (a person, another cluster) and is adopted.
fn adopted_when_found(
    ctx: &Context,
    me: &RoleBinding,
    account_id: &str,
    tuple: &RoleTuple,
    id: &str,
) -> bool {
    let recorded: Vec<Option<bool>> = ctx
        .bindings
        .state()
        .iter()
        .filter(|b| b.uid() != me.uid())
        .filter_map(|b| b.status.as_ref())
        .filter(|s| {
            s.system_account_id.as_deref() == Some(account_id)
                && s.assigned_role_id.as_deref() == Some(id)
        })
        .map(|s| s.adopted)
        .collect();
    if !recorded.is_empty() {
        return recorded.iter().all(|a| *a == Some(true));
    }
    siblings(ctx, me, account_id, tuple).is_empty()
}

async fn connection(
    ctx: &Context,
    obj: &RoleBinding,
    account_konnect: Option<&crate::api::KonnectOverride>,
) -> Result<Connection, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    ctx.connections
        .for_object(
            &ns,
            account_ref::auth_secret(obj.spec.konnect.as_ref(), account_konnect),
        )
        .await
}

/// While its account is being created, a binding reads the roles reference it will validate
/// against (cached), so the read is not on the new account's path to its first assignment.
async fn warm_roles_reference(ctx: &Context, obj: &RoleBinding, ns: &str) {
    let Some(name) = obj.spec.system_account_ref.name.as_deref() else {
        return;
    };
    let account = ctx
        .accounts
        .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns));
    let konnect = account.as_ref().and_then(|a| a.spec.konnect.as_ref());
    if let Ok(conn) = connection(ctx, obj, konnect).await {
        let _ = ctx.cache.roles(&conn).await;
    }
}

async fn apply(obj: Arc<RoleBinding>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    obj.spec.validate().map_err(ReconcileError::InvalidSpec)?;
    let account = match account_ref::resolve(&ctx, &ns, &obj.spec.system_account_ref) {
        Ok(account) => account,
        Err(e) => {
            if e.is_brief_wait() {
                warm_roles_reference(&ctx, &obj, &ns).await;
            }
            return Err(e);
        }
    };
    let conn = connection(&ctx, &obj, account.konnect.as_ref()).await?;
    let auth_secret = account_ref::auth_secret(obj.spec.konnect.as_ref(), account.konnect.as_ref())
        .unwrap_or_default()
        .to_string();
    let desired = desired_tuple(&obj.spec);
    match ctx.cache.roles(&conn).await {
        Ok(reference) => validate_role(&reference, &desired.entity_type_name, &desired.role_name)
            .map_err(ReconcileError::InvalidSpec)?,
        Err(e) if e.is_auth() => {
            return Err(ReconcileError::konnect("reading the roles reference")(e));
        }
        // Validation is best effort: Konnect itself still refuses a bad role.
        Err(e) => {
            tracing::debug!(error = %e, "roles reference unavailable; skipping role name check")
        }
    }
    let old = obj.status.clone().unwrap_or_default();
    // An id recorded for another (or a recreated) account means nothing for this one.
    let recorded = old
        .assigned_role_id
        .as_deref()
        .filter(|_| old.system_account_id.as_deref() == Some(account.id.as_str()));
    // A drift check of an unchanged, Ready binding: paced by the budget, and skipped when its
    // assignment was confirmed less than a resync period ago.
    let background = recorded.is_some()
        && old.observed_generation == obj.metadata.generation
        && crate::k8s::conditions::is_ready(&old.conditions, obj.metadata.generation);
    let key = format!("RoleBinding/{}", obj.uid().unwrap_or_default());
    let fingerprint = format!("{}/{}", account.id, recorded.unwrap_or_default());
    if background && ctx.recently_verified(&key, &fingerprint) {
        return Ok(Action::requeue(ctx.resync_with_jitter()));
    }
    let _tuple = ctx.lock_tuple(tuple_key(&account.id, &desired)).await;
    if recorded.is_none() {
        // First assignment: create it (409 = it exists: adopt). No list needed.
        let (id, adopted) = assign(&ctx, &conn, &obj, &account.id, &desired).await?;
        drop_moved_assignment(&ctx, &conn, &obj, &old, &account.id).await?;
        ctx.mark_verified(&key, &format!("{}/{id}", account.id));
        return write_status(
            &ctx,
            &obj,
            &account.id,
            &id,
            adopted,
            &auth_secret,
            &desired,
        )
        .await;
    }
    let listed = if background {
        ctx.cache
            .assignments_paced(&conn, &account.id, &ctx.budget)
            .await
    } else {
        ctx.cache
            .assignments(&conn, &account.id)
            .await
            .map(Paced::Done)
    };
    let assigned = match listed.map_err(ReconcileError::konnect("listing assigned roles"))? {
        Paced::Done(list) => list,
        Paced::Later(wait) => {
            ctx.metrics.drift_check_deferred("RoleBinding");
            return Ok(Action::requeue(wait));
        }
    };
    if background {
        ctx.metrics.drift_check("RoleBinding");
    }
    let plan = plan_binding(&desired, recorded, &assigned);
    let (id, adopted) = match plan.existing {
        Some(id) => {
            let adopted = if Some(id.as_str()) == recorded {
                old.adopted == Some(true)
            } else {
                adopted_when_found(&ctx, &obj, &account.id, &desired, &id)
            };
            if Some(id.as_str()) != recorded {
                events::publish(
                    &ctx.events,
                    &*obj,
                    false,
                    "Adopted",
                    "Assign",
                    format!("Using existing assignment {id}: {}", describe(&desired)),
                )
                .await;
            }
            (id, adopted)
        }
        None => assign(&ctx, &conn, &obj, &account.id, &desired).await?,
    };
    if let Some(stale) = plan.stale {
        // The replaced assignment is removed only if this object made it.
        let made_it = Some(stale.id.as_str()) != recorded || old.adopted != Some(true);
        if made_it && !wanted_by_other(&ctx, &obj, &account.id, &stale.role) {
            conn.client
                .delete_assigned_role(&account.id, &stale.id)
                .await
                .ignore_not_found()
                .map_err(ReconcileError::konnect("removing the previous assignment"))?;
            ctx.cache
                .record_assignment_change(&conn, &account.id, None, Some(&stale.id));
        }
        events::publish(
            &ctx.events,
            &*obj,
            false,
            "Changed",
            "Assign",
            format!(
                "Replaced {} with {}",
                describe(&stale.role),
                describe(&desired)
            ),
        )
        .await;
    }
    drop_moved_assignment(&ctx, &conn, &obj, &old, &account.id).await?;
    ctx.mark_verified(&key, &format!("{}/{id}", account.id));
    write_status(
        &ctx,
        &obj,
        &account.id,
        &id,
        adopted,
        &auth_secret,
        &desired,
    )
    .await
}

/// systemAccountRef moved to another account: the new assignment exists, now drop the old one.
async fn drop_moved_assignment(
    ctx: &Context,
    conn: &Connection,
    obj: &RoleBinding,
    old: &crate::api::RoleBindingStatus,
    account_id: &str,
) -> Result<(), ReconcileError> {
    if let (Some(prev_account), Some(prev_id)) = (
        old.system_account_id
            .as_deref()
            .filter(|a| *a != account_id),
        old.assigned_role_id.as_deref(),
    ) && old.adopted != Some(true)
    {
        remove_from_previous_account(ctx, conn, obj, prev_account, prev_id).await?;
    }
    Ok(())
}

async fn write_status(
    ctx: &Context,
    obj: &RoleBinding,
    account_id: &str,
    id: &str,
    adopted: bool,
    auth_secret: &str,
    desired: &RoleTuple,
) -> Result<Action, ReconcileError> {
    let mut working = obj.clone();
    let st = working.status.get_or_insert_with(Default::default);
    st.konnect_auth_secret = Some(auth_secret.to_string());
    st.assigned_role_id = Some(id.to_string());
    st.system_account_id = Some(account_id.to_string());
    st.adopted = adopted.then_some(true);
    mark_ready(
        &mut working,
        format!(
            "{} is assigned to account {account_id} (assignment {id})",
            describe(desired)
        ),
    );
    finish(ctx, obj, &working).await
}

async fn remove_from_previous_account(
    ctx: &Context,
    conn: &Connection,
    obj: &RoleBinding,
    account_id: &str,
    id: &str,
) -> Result<(), ReconcileError> {
    let list = match ctx.cache.assignments(conn, account_id).await {
        Ok(list) => list,
        // The old account is gone, and its assignments with it.
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => {
            return Err(ReconcileError::konnect(
                "listing the previous account's roles",
            )(e));
        }
    };
    let Some(prev) = list.iter().find(|a| a.id == id) else {
        return Ok(());
    };
    if wanted_by_other(ctx, obj, account_id, &prev.role) {
        return Ok(());
    }
    conn.client
        .delete_assigned_role(account_id, id)
        .await
        .ignore_not_found()
        .map_err(ReconcileError::konnect(
            "removing the previous account's assignment",
        ))?;
    ctx.cache
        .record_assignment_change(conn, account_id, None, Some(id));
    events::publish(
        &ctx.events,
        obj,
        false,
        "Removed",
        "Assign",
        format!(
            "Removed {} from the previous account {account_id}",
            describe(&prev.role)
        ),
    )
    .await;
    Ok(())
}

/// Creates the assignment; a 409 means it exists already: adopt it. Returns its id and whether it
/// counts as adopted (see [`adopted_when_found`]).
async fn assign(
    ctx: &Context,
    conn: &Connection,
    obj: &RoleBinding,
    account_id: &str,
    desired: &RoleTuple,
) -> Result<(String, bool), ReconcileError> {
    let result = conn.client.assign_role(account_id, desired).await;
    match result {
        Ok(a) => {
            ctx.cache
                .record_assignment_change(conn, account_id, Some(&a), None);
            events::publish(
                &ctx.events,
                obj,
                false,
                "Assigned",
                "Assign",
                format!("Assigned {} (assignment {})", describe(desired), a.id),
            )
            .await;
            Ok((a.id, false))
        }
        Err(e) if e.is_conflict() => {
            // The cached list missed it: read it afresh.
            ctx.cache.invalidate_assignments(conn, account_id);
            let list = ctx
                .cache
                .assignments(conn, account_id)
                .await
                .map_err(ReconcileError::konnect("listing assigned roles"))?;
            list.iter()
                .find(|a| &a.role == desired)
                .map(|a| {
                    let adopted = adopted_when_found(ctx, obj, account_id, desired, &a.id);
                    (a.id.clone(), adopted)
                })
                .ok_or_else(|| {
                    ReconcileError::Conflict(format!(
                        "Konnect reports {} as assigned but does not list it",
                        describe(desired)
                    ))
                })
        }
        Err(e) => Err(ReconcileError::konnect("assigning the role")(e)),
    }
}

async fn cleanup(obj: Arc<RoleBinding>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    if obj.spec.deletion_policy() == DeletionPolicy::Orphan {
        events::publish(
            &ctx.events,
            &*obj,
            false,
            "Orphaned",
            "Delete",
            "deletionPolicy is Orphan: the assignment is kept",
        )
        .await;
        return Ok(Action::await_change());
    }
    let st = obj.status.clone().unwrap_or_default();
    let (Some(account_id), Some(id)) = (st.system_account_id, st.assigned_role_id) else {
        return Ok(Action::await_change());
    };
    let ns = obj.namespace().unwrap_or_default();
    let account_konnect = account_ref::resolve(&ctx, &ns, &obj.spec.system_account_ref)
        .ok()
        .and_then(|a| a.konnect);
    // The organisation the assignment was made in (recorded), never a guess.
    let auth = account_ref::cleanup_auth_secret(
        st.konnect_auth_secret.as_deref(),
        obj.spec.konnect.as_ref(),
        account_konnect.as_ref(),
    );
    let conn = ctx.connections.for_object(&ns, auth).await?;
    // The tuple of the assignment recorded in status, not of the current spec (an edit not yet
    // reconciled when the object was deleted names another one).
    let recorded = match ctx.cache.assignments(&conn, &account_id).await {
        Ok(list) => list.iter().find(|a| a.id == id).map(|a| a.role.clone()),
        // The account is gone, and its assignments with it.
        Err(e) if e.is_not_found() => return Ok(Action::await_change()),
        Err(e) => return Err(ReconcileError::konnect("listing assigned roles")(e)),
    };
    let Some(tuple) = recorded else {
        return Ok(Action::await_change());
    };
    let _tuple = ctx.lock_tuple(tuple_key(&account_id, &tuple)).await;
    // Kept when it is not this cluster's to remove, or when another binding here still wants it.
    let others = siblings(&ctx, &obj, &account_id, &tuple);
    // Handing a shared assignment over: this object goes only once a binding that keeps it has
    // recorded it, so that one knows this cluster made it (and removes it when it is the last).
    if st.adopted != Some(true)
        && !others.is_empty()
        && !others.iter().any(|b| {
            b.status
                .as_ref()
                .is_some_and(|s| s.assigned_role_id.as_deref() == Some(id.as_str()))
        })
    {
        return Err(ReconcileError::Handover(format!(
            "waiting for RoleBinding {} to record the shared assignment {id} before this one goes",
            others[0].name_any()
        )));
    }
    let kept = if st.adopted == Some(true) {
        Some("existed before this RoleBinding (adopted); it is left in Konnect")
    } else if !others.is_empty() {
        Some("is still wanted by another RoleBinding; assignment kept")
    } else {
        None
    };
    if let Some(why) = kept {
        let note = format!("{} {why}", describe(&tuple));
        events::publish(&ctx.events, &*obj, false, "Kept", "Delete", note).await;
        return Ok(Action::await_change());
    }
    conn.client
        .delete_assigned_role(&account_id, &id)
        .await
        .ignore_not_found()
        .map_err(ReconcileError::konnect("removing the assignment"))?;
    ctx.cache
        .record_assignment_change(&conn, &account_id, None, Some(&id));
    events::publish(
        &ctx.events,
        &*obj,
        false,
        "Removed",
        "Delete",
        format!("Removed {} from account {account_id}", describe(&tuple)),
    )
    .await;
    Ok(Action::await_change())
}
