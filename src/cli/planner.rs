//! The decisions behind `plan`: reads Konnect (and the applied objects) for each object of the set and
//! asks the controllers' pure planning functions what they would do.
use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::plan::{Action, Applied, Plan, find};
use super::validate::{self, ManifestSet};
use crate::api::common::ROTATE_ANNOTATION;
use crate::api::{
    AdoptionPolicy, DeletionPolicy, RefTarget, RoleBinding, SystemAccount, SystemAccountRef,
    SystemAccountToken,
};
use crate::controller::account_plan::{
    AccountStep, DesiredAccount, ObservedAccount, ResolvedTeam, created_by_our_create,
    needs_name_lookup, pick_team_by_name, plan_account, plan_teams,
};
use crate::controller::binding::desired_tuple;
use crate::controller::binding_plan::{plan_binding, validate_role};
use crate::controller::token_plan::{CurrentToken, RotationInputs, current_of, rotation_due};
use crate::konnect::{
    AccountFilter, AssignedRole, KonnectClient, KonnectError, RoleTuple, RolesReference,
};

/// Where a SystemAccount of the set ends up: its Konnect id, or None when it is created by this apply.
#[derive(Debug, Clone)]
enum AccountOutcome {
    Id(String),
    New,
    /// Refused, invalid or not planned: its dependents cannot be planned either.
    Blocked,
}

struct Planner<'a> {
    k: &'a KonnectClient,
    applied: Option<&'a Applied>,
    set: &'a ManifestSet,
    now: Timestamp,
    plan: Plan,
    accounts: BTreeMap<(String, String), AccountOutcome>,
    assigned: BTreeMap<String, Vec<AssignedRole>>,
    roles: Option<RolesReference>,
}

/// The plan of a manifest set against Konnect (read through `k`) and, when given, the applied objects.
pub async fn plan_set(
    set: &ManifestSet,
    applied: Option<&Applied>,
    k: &KonnectClient,
    cluster: &str,
) -> Result<Plan, KonnectError> {
    let mut p = Planner {
        k,
        applied,
        set,
        now: Timestamp::now(),
        plan: Plan::default(),
        accounts: BTreeMap::new(),
        assigned: BTreeMap::new(),
        roles: None,
    };
    for item in &set.accounts {
        p.account(&item.namespace, &item.object, cluster).await?;
    }
    for item in &set.bindings {
        p.binding(&item.namespace, &item.object).await?;
    }
    for item in &set.tokens {
        p.token(&item.namespace, &item.object).await?;
    }
    if let Some(applied) = applied {
        p.removals(applied).await?;
    }
    Ok(p.plan)
}

fn in_set<K: kube::Resource>(items: &[validate::Item<K>], ns: &str, name: &str) -> bool {
    items.iter().any(|i| i.namespace == ns && i.name() == name)
}

fn describe_role(t: &RoleTuple) -> String {
    format!(
        "role {} on {} {} ({})",
        t.role_name, t.entity_type_name, t.entity_id, t.entity_region
    )
}

impl Planner<'_> {
    fn applied_account(&self, ns: &str, name: &str) -> Option<&SystemAccount> {
        self.applied.and_then(|a| find(&a.accounts, ns, name))
    }

    async fn account(
        &mut self,
        ns: &str,
        obj: &SystemAccount,
        cluster: &str,
    ) -> Result<(), KonnectError> {
        const KIND: &str = "SystemAccount";
        let name = obj.name_any();
        let key = (ns.to_string(), name.clone());
        let at = (ns, name.as_str());
        let desired = DesiredAccount {
            name: obj.spec.konnect_name(&name),
            description: obj.spec.description_or_default(cluster, ns, &name),
            adopt: obj.spec.adoption() == AdoptionPolicy::Adopt,
        };
        let target = format!("account '{}'", desired.name);
        if obj.spec.konnect.is_some() {
            self.plan.push(
                Action::Unknown,
                KIND,
                at,
                target,
                "uses its own connection (spec.konnect): not planned",
            );
            self.accounts.insert(key, AccountOutcome::Blocked);
            return Ok(());
        }
        let status = self
            .applied_account(ns, &name)
            .and_then(|a| a.status.clone())
            .unwrap_or_default();
        // Teams first, as the controller does: a team error leaves no new account behind.
        let mut teams = Vec::new();
        for t in &obj.spec.teams {
            let resolved = match t.target() {
                Ok(RefTarget::Name(team)) => {
                    pick_team_by_name(team, &self.k.list_teams(Some(team)).await?)
                }
                Ok(RefTarget::Id(id)) => match self.k.get_team(id).await {
                    Ok(t) => Ok(ResolvedTeam {
                        id: t.id,
                        name: t.name,
                    }),
                    Err(e) if e.is_not_found() => {
                        Err(format!("no Konnect team has id {id}: check spec.teams"))
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => Err(e),
            };
            match resolved {
                Ok(t) if !teams.contains(&t) => teams.push(t),
                Ok(_) => {}
                Err(message) => {
                    self.plan.push(Action::Invalid, KIND, at, target, message);
                    self.accounts.insert(key, AccountOutcome::Blocked);
                    return Ok(());
                }
            }
        }
        let by_id = match status.id.as_deref() {
            Some(id) => match self.k.get_system_account(id).await {
                Ok(a) => Some(a),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let by_name = if needs_name_lookup(&desired, by_id.as_ref()) {
            self.find_by_name(&desired.name).await?
        } else {
            None
        };
        let create_in_flight = created_by_our_create(
            status.pending_create.as_deref(),
            status.pending_create_since.as_deref(),
            &desired.name,
            by_name.as_ref(),
        );
        let observed = ObservedAccount {
            recorded_id: status.id.clone(),
            by_id,
            by_name: by_name.clone(),
            create_in_flight,
        };
        let (account, owned) = match plan_account(&desired, &observed) {
            AccountStep::Create => {
                self.plan.push(
                    Action::Create,
                    KIND,
                    at,
                    target.clone(),
                    desired_detail(&desired),
                );
                for t in &teams {
                    self.plan.push(
                        Action::JoinTeam,
                        KIND,
                        at,
                        format!("team '{}'", t.name),
                        format!("{target} (new) joins"),
                    );
                }
                self.accounts.insert(key, AccountOutcome::New);
                return Ok(());
            }
            AccountStep::RefuseManaged(message) | AccountStep::NameTaken(message) => {
                self.plan.push(Action::Refuse, KIND, at, target, message);
                self.accounts.insert(key, AccountOutcome::Blocked);
                return Ok(());
            }
            AccountStep::Adopt(existing) => {
                self.plan.push(
                    Action::Adopt,
                    KIND,
                    at,
                    target.clone(),
                    format!(
                        "existing account {} is taken over (spec.adoption: Adopt)",
                        existing.id
                    ),
                );
                // The controller then plans again with the adopted account at status.id.
                let again = ObservedAccount {
                    recorded_id: Some(existing.id.clone()),
                    by_id: Some(existing.clone()),
                    by_name,
                    create_in_flight: false,
                };
                if let AccountStep::Update { patch, .. } = plan_account(&desired, &again) {
                    self.update_lines(at, &target, &existing.name, &patch);
                }
                (existing, status.teams.clone())
            }
            AccountStep::Update { patch, .. } => {
                // An update is only planned for the account at status.id.
                let Some(current) = observed.by_id.clone() else {
                    return Ok(());
                };
                self.update_lines(at, &target, &current.name, &patch);
                (current, status.teams.clone())
            }
            AccountStep::InSync(current) => (current, status.teams.clone()),
        };
        let current_teams = self.k.list_account_teams(&account.id).await?;
        let current_ids: Vec<String> = current_teams.iter().map(|t| t.id.clone()).collect();
        let owned_ids: Vec<String> = owned.iter().map(|t| t.id.clone()).collect();
        let teams_plan = plan_teams(&teams, &current_ids, &owned_ids);
        for t in &teams_plan.add {
            self.plan.push(
                Action::JoinTeam,
                KIND,
                at,
                format!("team '{}'", t.name),
                format!("{target} ({}) joins", account.id),
            );
        }
        for id in &teams_plan.remove {
            let team_name = current_teams
                .iter()
                .find(|t| &t.id == id)
                .map_or(id.as_str(), |t| t.name.as_str());
            self.plan.push(
                Action::LeaveTeam,
                KIND,
                at,
                format!("team '{team_name}'"),
                format!("{target} ({}) leaves: no longer in spec.teams", account.id),
            );
        }
        self.accounts.insert(key, AccountOutcome::Id(account.id));
        Ok(())
    }

    fn update_lines(
        &mut self,
        at: (&str, &str),
        target: &str,
        current_name: &str,
        patch: &crate::konnect::UpdateSystemAccount,
    ) {
        if patch.name.is_some() {
            self.plan.push(
                Action::Rename,
                "SystemAccount",
                at,
                target,
                format!("renamed from '{current_name}'"),
            );
        }
        if let Some(description) = &patch.description {
            self.plan.push(
                Action::UpdateDescription,
                "SystemAccount",
                at,
                target,
                format!("description becomes '{description}'"),
            );
        }
    }

    async fn find_by_name(
        &self,
        name: &str,
    ) -> Result<Option<crate::konnect::SystemAccount>, KonnectError> {
        let filter = AccountFilter {
            name_eq: Some(name.to_string()),
            konnect_managed: None,
        };
        Ok(self
            .k
            .list_system_accounts(&filter)
            .await?
            .into_iter()
            .find(|a| a.name == name))
    }

    /// The account a reference points at after the apply: from the set's plan, else the cluster.
    /// The Konnect id of a dependent's account; None when it has none yet, after recording the line
    /// for that: `new` for an account the set creates, Unknown for one not planned or not found.
    fn dependent_account(
        &mut self,
        ns: &str,
        reference: &SystemAccountRef,
        kind: &'static str,
        at: (&str, &str),
        target: &str,
        new: (Action, &str),
    ) -> Option<String> {
        let (action, detail) = match self.resolve(ns, reference) {
            Ok(AccountOutcome::Id(id)) => return Some(id),
            Ok(AccountOutcome::New) => new,
            Ok(AccountOutcome::Blocked) => (
                Action::Unknown,
                "its SystemAccount is not planned (refused, invalid or another connection)",
            ),
            Err(message) => {
                self.plan.push(Action::Unknown, kind, at, target, message);
                return None;
            }
        };
        self.plan.push(action, kind, at, target, detail);
        None
    }

    fn resolve(&self, ns: &str, r: &SystemAccountRef) -> Result<AccountOutcome, String> {
        match r.target()? {
            RefTarget::Id(id) => Ok(AccountOutcome::Id(id.to_string())),
            RefTarget::Name(name) => {
                if let Some(outcome) = self.accounts.get(&(ns.to_string(), name.to_string())) {
                    return Ok(outcome.clone());
                }
                match self
                    .applied_account(ns, name)
                    .and_then(|a| a.status.as_ref())
                    .and_then(|s| s.id.clone())
                {
                    Some(id) => Ok(AccountOutcome::Id(id)),
                    None => Err(format!(
                        "waits for SystemAccount {ns}/{name}, which is neither in the set nor applied with a Konnect id"
                    )),
                }
            }
        }
    }

    async fn assigned(&mut self, account_id: &str) -> Result<Vec<AssignedRole>, KonnectError> {
        if let Some(list) = self.assigned.get(account_id) {
            return Ok(list.clone());
        }
        let list = match self.k.list_assigned_roles(account_id).await {
            Ok(list) => list,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e),
        };
        self.assigned.insert(account_id.to_string(), list.clone());
        Ok(list)
    }

    /// Another binding of the set wants this assignment on this account: it stays.
    fn wanted_in_set(&self, me: (&str, &str), account_id: &str, tuple: &RoleTuple) -> bool {
        self.set.bindings.iter().any(|b| {
            (b.namespace.as_str(), b.name().as_str()) != me
                && &desired_tuple(&b.object.spec) == tuple
                && matches!(self.resolve(&b.namespace, &b.object.spec.system_account_ref), Ok(AccountOutcome::Id(id)) if id == account_id)
        })
    }

    async fn binding(&mut self, ns: &str, obj: &RoleBinding) -> Result<(), KonnectError> {
        const KIND: &str = "RoleBinding";
        let name = obj.name_any();
        let at = (ns, name.as_str());
        let desired = desired_tuple(&obj.spec);
        let target = describe_role(&desired);
        let account_override = match obj.spec.system_account_ref.target() {
            Ok(RefTarget::Name(a)) => self
                .set
                .accounts
                .iter()
                .any(|i| i.namespace == ns && i.name() == a && i.object.spec.konnect.is_some()),
            _ => false,
        };
        if obj.spec.konnect.is_some() || account_override {
            self.plan.push(
                Action::Unknown,
                KIND,
                at,
                target,
                "uses its own connection (spec.konnect): not planned",
            );
            return Ok(());
        }
        if self.roles.is_none() {
            // Best effort, as in the controller: Konnect itself still refuses a bad role.
            self.roles = self.k.roles_reference().await.ok();
        }
        if let Some(reference) = &self.roles
            && let Err(message) =
                validate_role(reference, &desired.entity_type_name, &desired.role_name)
        {
            self.plan.push(Action::Invalid, KIND, at, target, message);
            return Ok(());
        }
        let new = (Action::AssignRole, "granted to the new account");
        let reference = &obj.spec.system_account_ref;
        let Some(account_id) = self.dependent_account(ns, reference, KIND, at, &target, new) else {
            return Ok(());
        };
        let old = self
            .applied
            .and_then(|a| find(&a.bindings, ns, &name))
            .and_then(|b| b.status.clone())
            .unwrap_or_default();
        let recorded = old
            .assigned_role_id
            .as_deref()
            .filter(|_| old.system_account_id.as_deref() == Some(account_id.as_str()));
        let assigned = self.assigned(&account_id).await?;
        let plan = plan_binding(&desired, recorded, &assigned);
        if plan.existing.is_none() {
            self.plan.push(
                Action::AssignRole,
                KIND,
                at,
                target.clone(),
                format!("granted to account {account_id}"),
            );
        }
        if let Some(stale) = plan.stale {
            let made_it = Some(stale.id.as_str()) != recorded || old.adopted != Some(true);
            if made_it && !self.wanted_in_set(at, &account_id, &stale.role) {
                self.plan.push(
                    Action::DeleteAssignment,
                    KIND,
                    at,
                    describe_role(&stale.role),
                    format!("replaced by {target}"),
                );
            }
        }
        // Moved to another account: the assignment on the previous one goes (unless it was adopted).
        if let (Some(prev_account), Some(prev_id)) = (
            old.system_account_id
                .as_deref()
                .filter(|a| *a != account_id),
            old.assigned_role_id.as_deref(),
        ) && old.adopted != Some(true)
        {
            let previous = self.assigned(prev_account).await?;
            if let Some(a) = previous.iter().find(|a| a.id == prev_id) {
                self.plan.push(
                    Action::DeleteAssignment,
                    KIND,
                    at,
                    describe_role(&a.role),
                    format!("removed from previous account {prev_account}"),
                );
            }
        }
        Ok(())
    }

    async fn token(&mut self, ns: &str, obj: &SystemAccountToken) -> Result<(), KonnectError> {
        const KIND: &str = "SystemAccountToken";
        let name = obj.name_any();
        let at = (ns, name.as_str());
        let secret_name = obj.spec.secret_name(&name);
        let target = format!("token in Secret {secret_name}");
        let account_override = match obj.spec.system_account_ref.target() {
            Ok(RefTarget::Name(a)) => self
                .set
                .accounts
                .iter()
                .any(|i| i.namespace == ns && i.name() == a && i.object.spec.konnect.is_some()),
            _ => false,
        };
        if obj.spec.konnect.is_some() || account_override {
            self.plan.push(
                Action::Unknown,
                KIND,
                at,
                target,
                "uses its own connection (spec.konnect): not planned",
            );
            return Ok(());
        }
        let new = (Action::IssueToken, "Initial: for the new account");
        let reference = &obj.spec.system_account_ref;
        let Some(account_id) = self.dependent_account(ns, reference, KIND, at, &target, new) else {
            return Ok(());
        };
        let applied = self.applied.and_then(|a| find(&a.tokens, ns, &name));
        let status = applied.and_then(|t| t.status.clone()).unwrap_or_default();
        let current: CurrentToken = current_of(&status);
        let secret = self
            .applied
            .and_then(|a| a.secrets.get(&(ns.to_string(), secret_name.clone())))
            .map(|s| {
                crate::k8s::secret::view(
                    s,
                    &applied.and_then(|t| t.uid()).unwrap_or_default(),
                    obj.spec.secret_key(),
                )
            });
        let live = match (current.token_id.as_deref(), current.account_id.as_deref()) {
            (Some(token), Some(account)) => match self.k.get_access_token(account, token).await {
                Ok(_) => Some(true),
                Err(e) if e.is_not_found() => Some(false),
                Err(e) => return Err(e),
            },
            _ => None,
        };
        let lifetime = obj.spec.duration().unwrap_or_default();
        let rotate = obj.annotations().get(ROTATE_ANNOTATION).map(String::as_str);
        let inputs = RotationInputs {
            current: &current,
            secret: secret.as_ref(),
            account_id: &account_id,
            lifetime,
            rotate_annotation: rotate,
            token_live: live,
            now: self.now,
        };
        if let Some(reason) = rotation_due(&inputs) {
            let mut detail = format!("{}: for account {account_id}", reason.as_str());
            if current.token_id.is_some() {
                detail.push_str("; the current token is revoked after previousTokenRetention");
            }
            self.plan.push(Action::IssueToken, KIND, at, target, detail);
        }
        Ok(())
    }

    /// Applied objects the set no longer has: what their deletionPolicy does in Konnect.
    async fn removals(&mut self, applied: &Applied) -> Result<(), KonnectError> {
        let compared =
            |ns: Option<&str>| ns.is_some_and(|ns| applied.namespaces.iter().any(|n| n == ns));
        for obj in &applied.bindings {
            let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
            if !compared(Some(&ns)) || in_set(&self.set.bindings, &ns, &name) {
                continue;
            }
            let at = (ns.as_str(), name.as_str());
            let st = obj.status.clone().unwrap_or_default();
            let (Some(account_id), Some(id)) = (
                st.system_account_id.as_deref(),
                st.assigned_role_id.as_deref(),
            ) else {
                continue;
            };
            if obj.spec.deletion_policy() == DeletionPolicy::Orphan {
                let target = describe_role(&desired_tuple(&obj.spec));
                self.plan.push(
                    Action::Keep,
                    "RoleBinding",
                    at,
                    target,
                    "removed from the set; kept in Konnect: deletionPolicy: Orphan",
                );
                continue;
            }
            if obj.spec.konnect.is_some()
                || st
                    .konnect_auth_secret
                    .as_deref()
                    .is_some_and(|s| !s.is_empty())
            {
                let target = describe_role(&desired_tuple(&obj.spec));
                self.plan.push(
                    Action::Unknown,
                    "RoleBinding",
                    at,
                    target,
                    "removed from the set; made through its own connection: not planned",
                );
                continue;
            }
            // The assignment as Konnect records it (the controller's cleanup goes by the id, not the spec).
            let Some(tuple) = self
                .assigned(account_id)
                .await?
                .into_iter()
                .find(|a| a.id == id)
                .map(|a| a.role)
            else {
                continue;
            };
            let target = describe_role(&tuple);
            let why_kept = if st.adopted == Some(true) {
                Some("the assignment existed before the binding (adopted)")
            } else if self.wanted_in_set(at, account_id, &tuple) {
                Some("another RoleBinding of the set wants the same assignment")
            } else {
                None
            };
            match why_kept {
                Some(why) => self.plan.push(Action::Keep, "RoleBinding", at, target, format!("removed from the set; kept in Konnect: {why}")),
                None => self.plan.push(Action::DeleteAssignment, "RoleBinding", at, target, format!("removed from the set (deletionPolicy: Delete): revoked from account {account_id}")),
            }
        }
        for obj in &applied.tokens {
            let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
            if !compared(Some(&ns)) || in_set(&self.set.tokens, &ns, &name) {
                continue;
            }
            let at = (ns.as_str(), name.as_str());
            let st = obj.status.clone().unwrap_or_default();
            let count = usize::from(st.token_id.is_some()) + st.previous_tokens.len();
            let target = format!("token in Secret {}", obj.spec.secret_name(&name));
            if count == 0 {
                continue;
            }
            if obj.spec.konnect.is_some() {
                self.plan.push(
                    Action::Unknown,
                    "SystemAccountToken",
                    at,
                    target,
                    "removed from the set; uses its own connection: not planned",
                );
            } else if obj.spec.deletion_policy() == DeletionPolicy::Orphan {
                self.plan.push(
                    Action::Keep,
                    "SystemAccountToken",
                    at,
                    target,
                    "removed from the set; deletionPolicy: Orphan keeps the token and the Secret",
                );
            } else {
                self.plan.push(Action::RevokeTokens, "SystemAccountToken", at, target, format!("removed from the set (deletionPolicy: Delete): {count} token(s) revoked, the Secret deleted"));
            }
        }
        for obj in &applied.accounts {
            let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
            if !compared(Some(&ns)) || in_set(&self.set.accounts, &ns, &name) {
                continue;
            }
            let at = (ns.as_str(), name.as_str());
            let st = obj.status.clone().unwrap_or_default();
            let Some(id) = st.id.as_deref() else { continue };
            if obj.spec.konnect.is_some() {
                self.plan.push(
                    Action::Unknown,
                    "SystemAccount",
                    at,
                    format!("account {id}"),
                    "removed from the set; uses its own connection: not planned",
                );
                continue;
            }
            let account = match self.k.get_system_account(id).await {
                Ok(a) => a,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let target = format!("account '{}'", account.name);
            let why_kept = if obj.spec.deletion_policy() == DeletionPolicy::Orphan {
                Some("deletionPolicy: Orphan")
            } else if account.konnect_managed {
                Some("Konnect manages this account")
            } else if st.adopted == Some(true) {
                Some("the account existed before this object (adopted)")
            } else {
                None
            };
            match why_kept {
                Some(why) => self.plan.push(Action::Keep, "SystemAccount", at, target, format!("removed from the set; kept in Konnect: {why}")),
                None => self.plan.push(Action::DeleteAccount, "SystemAccount", at, target, format!("removed from the set (deletionPolicy: Delete): account {id} deleted, with its tokens and role assignments")),
            }
        }
        Ok(())
    }
}

fn desired_detail(d: &DesiredAccount) -> String {
    format!("new account, description '{}'", d.description)
}
