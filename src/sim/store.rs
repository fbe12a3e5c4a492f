//! The simulator's in-memory organisation: accounts, tokens, role assignments, teams, memberships.
//! Pure: every call takes `now`, ids and token values come from the store's own RNG; no I/O.
use std::collections::BTreeSet;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::labels::{self, Labels};
use super::problem::{ApiError, InvalidParam};
use super::query::{Filters, PageReq};
use crate::konnect::models::{
    AccessToken, AccessTokenCreated, AssignedRole, Organization, Page, RoleTuple, SystemAccount,
    Team, TokenValue,
};

/// SPAT lifetime limit: "12 months" in the docs; 366 days are accepted so a leap year fits.
pub const MAX_TOKEN_LIFETIME: SignedDuration = SignedDuration::from_hours(366 * 24);
const TOKEN_PREFIX: &str = "spat_";
const PERSONAL_TOKEN_PREFIX: &str = "kpat_";
/// Members of this predefined team may do everything, Identity administration included.
pub const ORGANIZATION_ADMIN_TEAM: &str = "Organization Admin";
const TOKEN_RANDOM_LEN: usize = 50;

/// RFC 3339, UTC, whole seconds (Konnect's response form).
pub fn fmt_ts(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

fn truncate(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

struct TokenRec {
    account_id: String,
    id: String,
    name: String,
    created_at: Timestamp,
    updated_at: Timestamp,
    expires_at: Timestamp,
    last_used_at: Option<Timestamp>,
    value: TokenValue,
}

impl TokenRec {
    fn wire(&self) -> AccessToken {
        AccessToken {
            id: self.id.clone(),
            name: self.name.clone(),
            created_at: Some(fmt_ts(self.created_at)),
            updated_at: Some(fmt_ts(self.updated_at)),
            expires_at: fmt_ts(self.expires_at),
            last_used_at: self.last_used_at.map(fmt_ts),
        }
    }
    fn live(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }
}

struct RoleRec {
    account_id: String,
    role: AssignedRole,
}

/// Who a bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    /// A person's `kpat_` (made through `/_sim/personal-access-tokens`): full access, like the
    /// organisation owner who made it.
    Personal {
        token_id: String,
    },
    SystemAccount {
        account_id: String,
        token_id: String,
    },
}

/// A token as the state dump shows it: never its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub expires_at: String,
    pub last_used_at: Option<String>,
    /// Not expired (deleted tokens are gone from the dump).
    pub live: bool,
}

/// One account with everything attached to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    pub account: SystemAccount,
    pub tokens: Vec<TokenInfo>,
    pub roles: Vec<AssignedRole>,
    /// Ids of the teams the account is a member of.
    pub team_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Membership {
    pub team_id: String,
    pub account_id: String,
}

/// The whole organisation, for tests (`GET /_sim/state`, `RunningSim::state()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateDump {
    pub organization: Organization,
    pub accounts: Vec<AccountState>,
    pub teams: Vec<Team>,
    pub memberships: Vec<Membership>,
}

impl StateDump {
    pub fn account_by_name(&self, name: &str) -> Option<&AccountState> {
        self.accounts.iter().find(|a| a.account.name == name)
    }
}

/// Seed data (`--seed-file`, YAML). Example:
/// ```yaml
/// organization_name: Acme
/// teams:
///   - name: Organization Admin
///     system_team: true
///   - {name: platform, description: Platform team, id: 6f1c1f43-0a35-4a4b-9d4e-5b0a3e6f0f01}
/// system_accounts:
///   - name: mesh-zone-eu-1
///     konnect_managed: true
///   - name: legacy-ci
///     description: created by hand
///     teams: [platform]
///     roles:
///       - {role_name: Viewer, entity_type_name: Control Planes, entity_id: "*", entity_region: eu}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedData {
    pub organization_name: Option<String>,
    pub teams: Vec<SeedTeam>,
    pub system_accounts: Vec<SeedAccount>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedTeam {
    /// Fixed id (a random uuid when absent).
    pub id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub system_team: bool,
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedAccount {
    pub id: Option<String>,
    pub name: String,
    pub description: String,
    pub konnect_managed: bool,
    /// Names of seeded teams the account belongs to.
    pub teams: Vec<String>,
    pub roles: Vec<RoleTuple>,
}

pub type StoreResult<T> = Result<T, ApiError>;

pub struct Store {
    rng: StdRng,
    org: Organization,
    accounts: Vec<SystemAccount>,
    tokens: Vec<TokenRec>,
    roles: Vec<RoleRec>,
    teams: Vec<Team>,
    memberships: BTreeSet<Membership>,
    personal_tokens: Vec<PersonalToken>,
}

/// A person's access token (`kpat_`): never listed by the API, made and revoked by the admin.
struct PersonalToken {
    id: String,
    value: TokenValue,
}

/// A personal token as `/_sim/personal-access-tokens` returns it on create (the only time the
/// value is shown).
#[derive(Debug, Clone)]
pub struct PersonalTokenCreated {
    pub id: String,
    pub name: String,
    pub token: TokenValue,
}

impl Store {
    pub fn new(seed: Option<u64>, now: Timestamp) -> Self {
        let mut rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let org = Organization {
            id: new_id(&mut rng),
            name: "Simulated Organization".into(),
            owner_id: Some(new_id(&mut rng)),
            login_path: Some(String::new()),
            created_at: Some(fmt_ts(now)),
            updated_at: Some(fmt_ts(now)),
            state: Some("active".into()),
        };
        Self {
            rng,
            org,
            accounts: Vec::new(),
            tokens: Vec::new(),
            roles: Vec::new(),
            teams: Vec::new(),
            memberships: BTreeSet::new(),
            personal_tokens: Vec::new(),
        }
    }

    pub fn organization(&self) -> Organization {
        self.org.clone()
    }

    /// Loads seed data; an error names the first bad entry.
    pub fn seed(&mut self, now: Timestamp, data: &SeedData) -> StoreResult<()> {
        if let Some(n) = &data.organization_name {
            self.org.name = n.clone();
        }
        for t in &data.teams {
            let team = self.create_team(now, &t.name, t.description.clone(), t.labels.clone())?;
            let rec = self.team_mut(&team.id)?;
            rec.system_team = t.system_team;
            if let Some(id) = &t.id {
                rec.id = id.clone();
            }
        }
        for a in &data.system_accounts {
            let acc = self.create_account(now, &a.name, &a.description, a.konnect_managed)?;
            let id = match &a.id {
                Some(id) => {
                    if let Some(rec) = self.accounts.iter_mut().find(|x| x.id == acc.id) {
                        rec.id = id.clone();
                    }
                    id.clone()
                }
                None => acc.id,
            };
            for team_name in &a.teams {
                let team_id = self
                    .teams
                    .iter()
                    .find(|t| &t.name == team_name)
                    .map(|t| t.id.clone())
                    .ok_or_else(|| {
                        ApiError::not_found(format!("Seed team [{team_name}] not found"))
                    })?;
                self.add_member(&team_id, &id)?;
            }
            for r in &a.roles {
                self.assign_role(&id, r.clone())?;
            }
        }
        Ok(())
    }

    // ---- system accounts ----

    pub fn create_account(
        &mut self,
        now: Timestamp,
        name: &str,
        description: &str,
        konnect_managed: bool,
    ) -> StoreResult<SystemAccount> {
        if name.is_empty() {
            return Err(ApiError::bad_request(
                "Name cannot be blank",
                vec![InvalidParam::new("name", Some("required"), "must not be blank").body()],
            ));
        }
        self.check_account_name_free(name, None)?;
        let acc = SystemAccount {
            id: new_id(&mut self.rng),
            name: name.to_string(),
            description: description.to_string(),
            created_at: Some(fmt_ts(now)),
            updated_at: Some(fmt_ts(now)),
            konnect_managed,
        };
        self.accounts.push(acc.clone());
        Ok(acc)
    }

    fn check_account_name_free(&self, name: &str, except: Option<&str>) -> StoreResult<()> {
        if self
            .accounts
            .iter()
            .any(|a| a.name == name && Some(a.id.as_str()) != except)
        {
            // Wording of the real API (quoted by kong-operator).
            return Err(ApiError::conflict(format!(
                "Key (org_id, name)=({}, {name}) already exists.",
                self.org.id
            )));
        }
        Ok(())
    }

    pub fn get_account(&self, id: &str) -> StoreResult<SystemAccount> {
        self.accounts
            .iter()
            .find(|a| a.id == id)
            .cloned()
            .ok_or_else(|| account_not_found(id))
    }

    pub fn list_accounts(&self, filters: &Filters, page: PageReq) -> Page<SystemAccount> {
        page.apply(
            self.accounts
                .iter()
                .filter(|a| account_matches(filters, a))
                .cloned()
                .collect(),
        )
    }

    // Konnect refuses edits of managed accounts; the real status is UNCONFIRMED (400 or 403), we answer 400.
    fn refuse_managed(acc: &SystemAccount, verb: &str) -> StoreResult<()> {
        if acc.konnect_managed {
            return Err(ApiError::bad_request(
                format!(
                    "System account [{}] is managed by Konnect and cannot be {verb}",
                    acc.id
                ),
                vec![InvalidParam::new(
                    "konnect_managed",
                    Some("invalid"),
                    format!("a Konnect-managed system account cannot be {verb}"),
                )],
            ));
        }
        Ok(())
    }

    pub fn patch_account(
        &mut self,
        now: Timestamp,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
    ) -> StoreResult<SystemAccount> {
        let acc = self.get_account(id)?;
        Self::refuse_managed(&acc, "edited")?;
        if let Some(n) = name {
            if n.is_empty() {
                return Err(ApiError::bad_request(
                    "Name cannot be blank",
                    vec![InvalidParam::new("name", Some("required"), "must not be blank").body()],
                ));
            }
            self.check_account_name_free(n, Some(id))?;
        }
        let rec = self
            .accounts
            .iter_mut()
            .find(|a| a.id == id)
            .ok_or_else(|| account_not_found(id))?;
        if let Some(n) = name {
            rec.name = n.to_string();
        }
        if let Some(d) = description {
            rec.description = d.to_string();
        }
        rec.updated_at = Some(fmt_ts(now));
        Ok(rec.clone())
    }

    /// Deletes the account with its tokens, role assignments and memberships.
    pub fn delete_account(&mut self, id: &str) -> StoreResult<()> {
        let acc = self.get_account(id)?;
        Self::refuse_managed(&acc, "deleted")?;
        self.accounts.retain(|a| a.id != id);
        self.tokens.retain(|t| t.account_id != id);
        self.roles.retain(|r| r.account_id != id);
        self.memberships.retain(|m| m.account_id != id);
        Ok(())
    }

    // ---- access tokens ----

    /// `expires_at_raw` is RFC 3339; it must be in the future and at most [`MAX_TOKEN_LIFETIME`] ahead.
    pub fn create_token(
        &mut self,
        now: Timestamp,
        account_id: &str,
        name: &str,
        expires_at_raw: &str,
    ) -> StoreResult<AccessTokenCreated> {
        self.get_account(account_id)?;
        if name.is_empty() {
            return Err(ApiError::bad_request(
                "Name cannot be blank",
                vec![InvalidParam::new("name", Some("required"), "must not be blank").body()],
            ));
        }
        let expires_at = parse_expiry(now, expires_at_raw)?;
        self.check_token_name_free(account_id, name, None)?;
        let value: String = (&mut self.rng)
            .sample_iter(Alphanumeric)
            .take(TOKEN_RANDOM_LEN)
            .map(char::from)
            .collect();
        let rec = TokenRec {
            account_id: account_id.to_string(),
            id: new_id(&mut self.rng),
            name: name.to_string(),
            created_at: now,
            updated_at: now,
            expires_at,
            last_used_at: None,
            value: TokenValue::new(format!("{TOKEN_PREFIX}{value}")),
        };
        let created = AccessTokenCreated {
            meta: rec.wire(),
            token: rec.value.clone(),
        };
        self.tokens.push(rec);
        Ok(created)
    }

    fn check_token_name_free(
        &self,
        account_id: &str,
        name: &str,
        except: Option<&str>,
    ) -> StoreResult<()> {
        if self
            .tokens
            .iter()
            .any(|t| t.account_id == account_id && t.name == name && Some(t.id.as_str()) != except)
        {
            return Err(ApiError::conflict(format!(
                "Key (system_account_id, name)=({account_id}, {name}) already exists."
            )));
        }
        Ok(())
    }

    fn token(&self, account_id: &str, token_id: &str) -> StoreResult<&TokenRec> {
        self.get_account(account_id)?;
        self.tokens
            .iter()
            .find(|t| t.account_id == account_id && t.id == token_id)
            .ok_or_else(|| ApiError::not_found(format!("Access token [{token_id}] not found")))
    }

    fn token_mut(&mut self, account_id: &str, token_id: &str) -> StoreResult<&mut TokenRec> {
        self.token(account_id, token_id)?;
        self.tokens
            .iter_mut()
            .find(|t| t.account_id == account_id && t.id == token_id)
            .ok_or_else(|| ApiError::not_found(format!("Access token [{token_id}] not found")))
    }

    pub fn get_token(&self, account_id: &str, token_id: &str) -> StoreResult<AccessToken> {
        self.token(account_id, token_id).map(TokenRec::wire)
    }

    pub fn list_tokens(
        &self,
        account_id: &str,
        filters: &Filters,
        page: PageReq,
    ) -> StoreResult<Page<AccessToken>> {
        self.get_account(account_id)?;
        Ok(page.apply(
            self.tokens
                .iter()
                .filter(|t| t.account_id == account_id && filters.str_ok("name", &t.name))
                .map(TokenRec::wire)
                .collect(),
        ))
    }

    /// Only the name can change (`expires_at` is not patchable).
    pub fn patch_token(
        &mut self,
        now: Timestamp,
        account_id: &str,
        token_id: &str,
        name: &str,
    ) -> StoreResult<AccessToken> {
        self.token(account_id, token_id)?;
        if name.is_empty() {
            return Err(ApiError::bad_request(
                "Name cannot be blank",
                vec![InvalidParam::new("name", Some("required"), "must not be blank").body()],
            ));
        }
        self.check_token_name_free(account_id, name, Some(token_id))?;
        let rec = self.token_mut(account_id, token_id)?;
        rec.name = name.to_string();
        rec.updated_at = now;
        Ok(rec.wire())
    }

    pub fn delete_token(&mut self, account_id: &str, token_id: &str) -> StoreResult<()> {
        self.token(account_id, token_id)?;
        self.tokens
            .retain(|t| !(t.account_id == account_id && t.id == token_id));
        Ok(())
    }

    /// Makes a token expire now (tests of expiry without waiting).
    pub fn expire_token_now(
        &mut self,
        now: Timestamp,
        account_id: &str,
        token_id: &str,
    ) -> StoreResult<()> {
        let rec = self.token_mut(account_id, token_id)?;
        rec.expires_at = truncate(now);
        Ok(())
    }

    /// Makes a person's token (`kpat_`); its value is returned once.
    pub fn create_personal_token(&mut self, name: &str) -> PersonalTokenCreated {
        let value: String = (&mut self.rng)
            .sample_iter(Alphanumeric)
            .take(TOKEN_RANDOM_LEN)
            .map(char::from)
            .collect();
        let rec = PersonalToken {
            id: new_id(&mut self.rng),
            value: TokenValue::new(format!("{PERSONAL_TOKEN_PREFIX}{value}")),
        };
        let created = PersonalTokenCreated {
            id: rec.id.clone(),
            name: name.to_string(),
            token: rec.value.clone(),
        };
        self.personal_tokens.push(rec);
        created
    }

    /// Revokes a person's token (404 when unknown).
    pub fn revoke_personal_token(&mut self, id: &str) -> StoreResult<()> {
        let before = self.personal_tokens.len();
        self.personal_tokens.retain(|t| t.id != id);
        if self.personal_tokens.len() == before {
            return Err(ApiError::not_found(format!(
                "Personal access token [{id}] not found"
            )));
        }
        Ok(())
    }

    /// May this principal manage identities (system accounts, their tokens, roles, teams)?
    /// Konnect: the Identity `Admin` role, assigned directly or held through the Organization
    /// Admin team. Team role assignments are not modelled, so that team is the only way in.
    pub fn is_identity_admin(&self, principal: &Principal) -> bool {
        let account_id = match principal {
            Principal::Admin | Principal::Personal { .. } => return true,
            Principal::SystemAccount { account_id, .. } => account_id,
        };
        let direct = self.roles.iter().any(|r| {
            &r.account_id == account_id
                && r.role.role.role_name == "Admin"
                && r.role.role.entity_type_name == "Identity"
        });
        let through_team = self.memberships.iter().any(|m| {
            &m.account_id == account_id
                && self
                    .teams
                    .iter()
                    .any(|t| t.id == m.team_id && t.name == ORGANIZATION_ADMIN_TEAM)
        });
        direct || through_team
    }

    /// The principal of a non-admin bearer token: a person's `kpat_` or a live `spat_` token.
    /// Marks a `spat_` used.
    pub fn authenticate(&mut self, now: Timestamp, bearer: &str) -> Option<Principal> {
        if let Some(p) = self
            .personal_tokens
            .iter()
            .find(|t| t.value.expose() == bearer)
        {
            return Some(Principal::Personal {
                token_id: p.id.clone(),
            });
        }
        let rec = self
            .tokens
            .iter_mut()
            .find(|t| t.value.expose() == bearer && t.live(now))?;
        rec.last_used_at = Some(now);
        Some(Principal::SystemAccount {
            account_id: rec.account_id.clone(),
            token_id: rec.id.clone(),
        })
    }

    // ---- role assignments ----

    pub fn assign_role(&mut self, account_id: &str, role: RoleTuple) -> StoreResult<AssignedRole> {
        self.get_account(account_id)?;
        if self
            .roles
            .iter()
            .any(|r| r.account_id == account_id && r.role.role == role)
        {
            return Err(ApiError::conflict(format!(
                "Role [{}] on [{}] [{}] in region [{}] is already assigned to system account [{account_id}]",
                role.role_name, role.entity_type_name, role.entity_id, role.entity_region
            )));
        }
        let assigned = AssignedRole {
            id: new_id(&mut self.rng),
            role,
        };
        self.roles.push(RoleRec {
            account_id: account_id.to_string(),
            role: assigned.clone(),
        });
        Ok(assigned)
    }

    /// All assignments matching the filters (the operation declares no pagination).
    pub fn list_roles(
        &self,
        account_id: &str,
        filters: &Filters,
    ) -> StoreResult<Vec<AssignedRole>> {
        self.get_account(account_id)?;
        Ok(self
            .roles
            .iter()
            .filter(|r| r.account_id == account_id)
            .map(|r| &r.role)
            .filter(|r| {
                filters.str_ok("entity_id", &r.role.entity_id)
                    && filters.str_ok("role_name", &r.role.role_name)
                    && filters.str_ok("entity_type_name", &r.role.entity_type_name)
            })
            .cloned()
            .collect())
    }

    pub fn get_role(&self, account_id: &str, role_id: &str) -> StoreResult<AssignedRole> {
        self.get_account(account_id)?;
        self.roles
            .iter()
            .find(|r| r.account_id == account_id && r.role.id == role_id)
            .map(|r| r.role.clone())
            .ok_or_else(|| ApiError::not_found(format!("Assigned role [{role_id}] not found")))
    }

    pub fn delete_role(&mut self, account_id: &str, role_id: &str) -> StoreResult<()> {
        self.get_role(account_id, role_id)?;
        self.roles
            .retain(|r| !(r.account_id == account_id && r.role.id == role_id));
        Ok(())
    }

    // ---- teams and memberships ----

    /// Team names are not unique (the spec says so).
    pub fn create_team(
        &mut self,
        now: Timestamp,
        name: &str,
        description: Option<String>,
        labels: Labels,
    ) -> StoreResult<Team> {
        let mut invalid = team_text_problems(Some(name), description.as_deref());
        invalid.extend(labels::problems(labels.iter().map(|(k, v)| (k, Some(v)))));
        if !invalid.is_empty() {
            return Err(ApiError::bad_request("Invalid team", invalid));
        }
        let team = Team {
            id: new_id(&mut self.rng),
            name: name.to_string(),
            description,
            system_team: false,
            labels,
            created_at: Some(fmt_ts(now)),
            updated_at: Some(fmt_ts(now)),
        };
        self.teams.push(team.clone());
        Ok(team)
    }

    fn team_mut(&mut self, id: &str) -> StoreResult<&mut Team> {
        self.teams
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| team_not_found(id))
    }

    pub fn get_team(&self, id: &str) -> StoreResult<Team> {
        self.teams
            .iter()
            .find(|t| t.id == id)
            .cloned()
            .ok_or_else(|| team_not_found(id))
    }

    pub fn list_teams(&self, filters: &Filters, page: PageReq) -> Page<Team> {
        page.apply(
            self.teams
                .iter()
                .filter(|t| filters.str_ok("name", &t.name) && filters.labels_ok(&t.labels))
                .cloned()
                .collect(),
        )
    }

    // Predefined teams "can't be modified or deleted" [docs]; the real status is UNCONFIRMED, we answer
    // 400 (the only client error besides 404 the spec declares for update and delete).
    fn refuse_system_team(team: &Team, verb: &str) -> StoreResult<()> {
        if team.system_team {
            return Err(ApiError::bad_request(
                format!("Team [{}] is a system team and cannot be {verb}", team.id),
                vec![InvalidParam::new(
                    "system_team",
                    Some("invalid"),
                    format!("a system team cannot be {verb}"),
                )],
            ));
        }
        Ok(())
    }

    /// PATCH: each given field replaces the stored one; `labels` merges (a `null` value removes its key,
    /// `labels: null` removes them all).
    pub fn update_team(
        &mut self,
        now: Timestamp,
        id: &str,
        update: TeamUpdate,
    ) -> StoreResult<Team> {
        let team = self.get_team(id)?;
        Self::refuse_system_team(&team, "modified")?;
        let mut invalid = team_text_problems(update.name.as_deref(), update.description.as_deref());
        let merged = match &update.labels {
            None => team.labels.clone(),
            Some(None) => Labels::new(),
            Some(Some(changes)) => {
                invalid.extend(labels::problems(
                    changes.iter().map(|(k, v)| (k, v.as_ref())),
                ));
                labels::merge(&team.labels, changes)
            }
        };
        if merged.len() > labels::MAX_LABELS && invalid.is_empty() {
            invalid.extend(labels::problems(merged.iter().map(|(k, v)| (k, Some(v)))));
        }
        if !invalid.is_empty() {
            return Err(ApiError::bad_request("Invalid team", invalid));
        }
        let rec = self.team_mut(id)?;
        if let Some(n) = update.name {
            rec.name = n;
        }
        if let Some(d) = update.description {
            rec.description = Some(d);
        }
        rec.labels = merged;
        rec.updated_at = Some(fmt_ts(now));
        Ok(rec.clone())
    }

    /// Deletes the team and its memberships (the accounts stay).
    pub fn delete_team(&mut self, id: &str) -> StoreResult<()> {
        let team = self.get_team(id)?;
        Self::refuse_system_team(&team, "deleted")?;
        self.teams.retain(|t| t.id != id);
        self.memberships.retain(|m| m.team_id != id);
        Ok(())
    }

    pub fn add_member(&mut self, team_id: &str, account_id: &str) -> StoreResult<()> {
        self.get_team(team_id)?;
        self.get_account(account_id)?;
        let m = Membership {
            team_id: team_id.to_string(),
            account_id: account_id.to_string(),
        };
        if self.memberships.contains(&m) {
            return Err(ApiError::conflict(format!(
                "System account [{account_id}] is already a member of team [{team_id}]"
            )));
        }
        self.memberships.insert(m);
        Ok(())
    }

    pub fn remove_member(&mut self, team_id: &str, account_id: &str) -> StoreResult<()> {
        self.get_team(team_id)?;
        self.get_account(account_id)?;
        let m = Membership {
            team_id: team_id.to_string(),
            account_id: account_id.to_string(),
        };
        if !self.memberships.remove(&m) {
            return Err(ApiError::not_found(format!(
                "System account [{account_id}] is not a member of team [{team_id}]"
            )));
        }
        Ok(())
    }

    pub fn list_team_accounts(
        &self,
        team_id: &str,
        filters: &Filters,
        page: PageReq,
    ) -> StoreResult<Page<SystemAccount>> {
        self.get_team(team_id)?;
        Ok(page.apply(
            self.accounts
                .iter()
                .filter(|a| {
                    self.memberships.contains(&Membership {
                        team_id: team_id.to_string(),
                        account_id: a.id.clone(),
                    }) && filters.str_ok("name", &a.name)
                })
                .cloned()
                .collect(),
        ))
    }

    pub fn list_account_teams(
        &self,
        account_id: &str,
        filters: &Filters,
        page: PageReq,
    ) -> StoreResult<Page<Team>> {
        self.get_account(account_id)?;
        Ok(page.apply(
            self.teams
                .iter()
                .filter(|t| {
                    self.memberships.contains(&Membership {
                        team_id: t.id.clone(),
                        account_id: account_id.to_string(),
                    }) && filters.str_ok("name", &t.name)
                })
                .cloned()
                .collect(),
        ))
    }

    // ---- inspection ----

    pub fn dump(&self, now: Timestamp) -> StateDump {
        let accounts = self
            .accounts
            .iter()
            .map(|a| AccountState {
                account: a.clone(),
                tokens: self
                    .tokens
                    .iter()
                    .filter(|t| t.account_id == a.id)
                    .map(|t| TokenInfo {
                        id: t.id.clone(),
                        name: t.name.clone(),
                        created_at: fmt_ts(t.created_at),
                        expires_at: fmt_ts(t.expires_at),
                        last_used_at: t.last_used_at.map(fmt_ts),
                        live: t.live(now),
                    })
                    .collect(),
                roles: self
                    .roles
                    .iter()
                    .filter(|r| r.account_id == a.id)
                    .map(|r| r.role.clone())
                    .collect(),
                team_ids: self
                    .memberships
                    .iter()
                    .filter(|m| m.account_id == a.id)
                    .map(|m| m.team_id.clone())
                    .collect(),
            })
            .collect();
        StateDump {
            organization: self.org.clone(),
            accounts,
            teams: self.teams.clone(),
            memberships: self.memberships.iter().cloned().collect(),
        }
    }
}

fn account_matches(f: &Filters, a: &SystemAccount) -> bool {
    f.str_ok("name", &a.name)
        && f.str_ok("description", &a.description)
        && f.bool_ok("konnect_managed", a.konnect_managed)
}

/// The fields of a team PATCH; `labels: Some(None)` is an explicit `null`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeamUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: Option<Option<std::collections::BTreeMap<String, Option<String>>>>,
}

/// The spec's `TeamName` and team description: 1 to 250 characters.
fn team_text_problems(name: Option<&str>, description: Option<&str>) -> Vec<InvalidParam> {
    const MAX: u64 = 250;
    [("name", name), ("description", description)]
        .into_iter()
        .filter_map(|(field, v)| match v?.chars().count() as u64 {
            0 => Some(InvalidParam {
                minimum: Some(1),
                ..InvalidParam::new(field, Some("min_length"), "must not be empty").body()
            }),
            n if n > MAX => Some(InvalidParam {
                maximum: Some(MAX),
                ..InvalidParam::new(field, Some("max_length"), "must be at most 250 characters")
                    .body()
            }),
            _ => None,
        })
        .collect()
}

fn account_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("System account [{id}] not found"))
}

fn team_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Team [{id}] not found"))
}

fn new_id(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

fn parse_expiry(now: Timestamp, raw: &str) -> StoreResult<Timestamp> {
    let bad = |rule: &'static str, reason: &str| {
        ApiError::bad_request(
            format!("Invalid expires_at: {reason}"),
            vec![InvalidParam::new("expires_at", Some(rule), reason).body()],
        )
    };
    let t: Timestamp = raw
        .parse()
        .map_err(|_| bad("is_date_time", "must be an RFC 3339 date-time"))?;
    let t = truncate(t);
    if t <= now {
        return Err(bad("invalid", "must be in the future"));
    }
    if t > now + MAX_TOKEN_LIFETIME {
        return Err(bad("invalid", "must be at most 12 months in the future"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::query::{Cond, Filters};

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }
    fn store() -> Store {
        Store::new(Some(7), now())
    }
    fn role(name: &str) -> RoleTuple {
        RoleTuple {
            role_name: name.into(),
            entity_type_name: "Control Planes".into(),
            entity_id: "*".into(),
            entity_region: "eu".into(),
        }
    }
    fn status(e: ApiError) -> u16 {
        e.status.as_u16()
    }

    #[test]
    fn duplicate_account_names_conflict_on_create_and_patch() {
        let mut s = store();
        let a = s.create_account(now(), "a", "", false).unwrap();
        s.create_account(now(), "b", "", false).unwrap();
        assert_eq!(
            status(s.create_account(now(), "a", "x", false).unwrap_err()),
            409
        );
        assert_eq!(
            status(s.patch_account(now(), &a.id, Some("b"), None).unwrap_err()),
            409
        );
        // Renaming to its own name is not a conflict.
        assert_eq!(
            s.patch_account(now(), &a.id, Some("a"), Some("d"))
                .unwrap()
                .description,
            "d"
        );
    }

    #[test]
    fn missing_objects_are_404() {
        let mut s = store();
        assert_eq!(status(s.get_account("nope").unwrap_err()), 404);
        assert_eq!(status(s.delete_account("nope").unwrap_err()), 404);
        assert_eq!(
            status(
                s.create_token(now(), "nope", "t", "2026-02-01T00:00:00Z")
                    .unwrap_err()
            ),
            404
        );
        let a = s.create_account(now(), "a", "", false).unwrap();
        assert_eq!(status(s.get_token(&a.id, "nope").unwrap_err()), 404);
        assert_eq!(status(s.delete_role(&a.id, "nope").unwrap_err()), 404);
        assert_eq!(status(s.add_member("nope", &a.id).unwrap_err()), 404);
        let t = s.create_team(now(), "t", None, Default::default()).unwrap();
        assert_eq!(status(s.add_member(&t.id, "nope").unwrap_err()), 404);
        assert_eq!(status(s.remove_member(&t.id, &a.id).unwrap_err()), 404);
    }

    #[test]
    fn token_names_are_unique_per_account_and_role_and_membership_duplicates_conflict() {
        let mut s = store();
        let a = s.create_account(now(), "a", "", false).unwrap();
        let b = s.create_account(now(), "b", "", false).unwrap();
        let exp = "2026-06-01T00:00:00Z";
        let t1 = s.create_token(now(), &a.id, "t", exp).unwrap();
        assert_eq!(
            status(s.create_token(now(), &a.id, "t", exp).unwrap_err()),
            409
        );
        s.create_token(now(), &b.id, "t", exp).unwrap();
        let t2 = s.create_token(now(), &a.id, "u", exp).unwrap();
        assert_eq!(
            status(s.patch_token(now(), &a.id, &t2.meta.id, "t").unwrap_err()),
            409
        );
        assert_eq!(
            s.patch_token(now(), &a.id, &t1.meta.id, "v").unwrap().name,
            "v"
        );

        s.assign_role(&a.id, role("Viewer")).unwrap();
        assert_eq!(
            status(s.assign_role(&a.id, role("Viewer")).unwrap_err()),
            409
        );
        s.assign_role(&a.id, role("Admin")).unwrap();
        s.assign_role(&b.id, role("Viewer")).unwrap();

        let team = s
            .create_team(now(), "team", None, Default::default())
            .unwrap();
        s.add_member(&team.id, &a.id).unwrap();
        assert_eq!(status(s.add_member(&team.id, &a.id).unwrap_err()), 409);
        // Team names are not unique.
        s.create_team(now(), "team", None, Default::default())
            .unwrap();
    }

    #[test]
    fn managed_accounts_refuse_patch_and_delete() {
        let mut s = store();
        let m = s.create_account(now(), "mesh", "", true).unwrap();
        assert_eq!(
            status(s.patch_account(now(), &m.id, Some("x"), None).unwrap_err()),
            400
        );
        assert_eq!(status(s.delete_account(&m.id).unwrap_err()), 400);
        assert_eq!(s.get_account(&m.id).unwrap().name, "mesh");
    }

    #[test]
    fn deleting_an_account_cascades() {
        let mut s = store();
        let a = s.create_account(now(), "a", "", false).unwrap();
        let b = s.create_account(now(), "b", "", false).unwrap();
        let tok = s
            .create_token(now(), &a.id, "t", "2026-02-01T00:00:00Z")
            .unwrap();
        s.create_token(now(), &b.id, "t", "2026-02-01T00:00:00Z")
            .unwrap();
        s.assign_role(&a.id, role("Viewer")).unwrap();
        let team = s
            .create_team(now(), "team", None, Default::default())
            .unwrap();
        s.add_member(&team.id, &a.id).unwrap();
        s.add_member(&team.id, &b.id).unwrap();
        assert!(s.authenticate(now(), tok.token.expose()).is_some());

        s.delete_account(&a.id).unwrap();
        assert!(s.authenticate(now(), tok.token.expose()).is_none());
        let d = s.dump(now());
        assert_eq!(d.accounts.len(), 1);
        assert_eq!(d.accounts[0].tokens.len(), 1);
        assert_eq!(
            d.memberships,
            vec![Membership {
                team_id: team.id.clone(),
                account_id: b.id.clone()
            }]
        );
        // A new account with the same name starts clean.
        let a2 = s.create_account(now(), "a", "", false).unwrap();
        assert!(
            s.list_roles(&a2.id, &Filters::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn filters_and_pagination() {
        let mut s = store();
        for i in 0..25 {
            s.create_account(
                now(),
                &format!("acct-{i:02}"),
                if i % 2 == 0 { "even" } else { "odd" },
                i == 3,
            )
            .unwrap();
        }
        let all = s.list_accounts(
            &Filters::default(),
            PageReq {
                number: 3,
                size: 10,
            },
        );
        assert_eq!(all.data.len(), 5);
        assert_eq!(all.meta.page.total, 25);
        assert_eq!(all.data[0].name, "acct-20");
        let eq = Filters::new(vec![("name".into(), Cond::Eq("acct-07".into()))]);
        assert_eq!(s.list_accounts(&eq, PageReq::default()).data.len(), 1);
        let contains = Filters::new(vec![("name".into(), Cond::Contains("ACCT-1".into()))]);
        assert_eq!(
            s.list_accounts(&contains, PageReq::default())
                .meta
                .page
                .total,
            10
        );
        let desc = Filters::new(vec![("description".into(), Cond::Eq("odd".into()))]);
        assert_eq!(
            s.list_accounts(&desc, PageReq::default()).meta.page.total,
            12
        );
        let managed = Filters::new(vec![("konnect_managed".into(), Cond::Bool(true))]);
        let m = s.list_accounts(&managed, PageReq::default());
        assert_eq!((m.meta.page.total, m.data[0].name.as_str()), (1, "acct-03"));

        let a = &all.data[0].id;
        s.assign_role(a, role("Viewer")).unwrap();
        s.assign_role(a, role("Admin")).unwrap();
        let f = Filters::new(vec![("role_name".into(), Cond::Eq("Admin".into()))]);
        assert_eq!(s.list_roles(a, &f).unwrap().len(), 1);
    }

    #[test]
    fn token_expiry_rules_and_normalisation() {
        let mut s = store();
        let a = s.create_account(now(), "a", "", false).unwrap();
        let t = s
            .create_token(now(), &a.id, "t", "2026-01-01T07:00:00.112+05:30")
            .unwrap();
        assert_eq!(t.meta.expires_at, "2026-01-01T01:30:00Z");
        assert!(t.token.expose().starts_with("spat_"));
        assert_eq!(t.token.expose().len(), 55);
        assert!(
            t.token.expose()[5..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        );
        // 366 days ahead is fine; 367 days, the past and garbage are not.
        s.create_token(now(), &a.id, "y", "2027-01-02T00:00:00Z")
            .unwrap();
        for bad in [
            "2027-01-03T00:00:00Z",
            "2025-12-31T23:59:59Z",
            "2026-01-01T00:00:00Z",
            "soon",
            "",
        ] {
            let e = s.create_token(now(), &a.id, bad, bad).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{bad}");
            assert_eq!(
                e.invalid[0].field,
                if bad.is_empty() { "name" } else { "expires_at" }
            );
        }
        // The token stops authenticating once expired.
        let later: Timestamp = "2026-01-01T01:30:00Z".parse().unwrap();
        assert!(s.authenticate(now(), t.token.expose()).is_some());
        assert!(s.authenticate(later, t.token.expose()).is_none());
        assert!(!s.dump(later).accounts[0].tokens[0].live);
        s.expire_token_now(now(), &a.id, &t.meta.id).unwrap();
        assert!(s.authenticate(now(), t.token.expose()).is_none());
        assert!(s.authenticate(now(), "spat_nope").is_none());
    }

    #[test]
    fn seed_data_loads_teams_accounts_memberships_roles() {
        let mut s = store();
        let seed: SeedData = serde_yaml::from_str(
            r#"
teams:
  - name: Org Admins
    system_team: true
    id: 11111111-1111-4111-8111-111111111111
system_accounts:
  - name: mesh-zone
    konnect_managed: true
    teams: [Org Admins]
    roles:
      - {role_name: Viewer, entity_type_name: Control Planes, entity_id: "*", entity_region: "*"}
"#,
        )
        .unwrap();
        s.seed(now(), &seed).unwrap();
        let d = s.dump(now());
        assert!(d.teams[0].system_team);
        assert_eq!(
            d.memberships[0].team_id,
            "11111111-1111-4111-8111-111111111111"
        );
        let acc = d.account_by_name("mesh-zone").unwrap();
        assert!(acc.account.konnect_managed);
        assert_eq!(acc.roles.len(), 1);
    }
}
