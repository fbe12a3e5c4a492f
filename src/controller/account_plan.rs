//! Pure decisions of the SystemAccount controller: what to do given what Konnect holds.
use crate::konnect::{SystemAccount, Team, UpdateSystemAccount};

/// What the spec asks for, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredAccount {
    pub name: String,
    pub description: String,
    pub adopt: bool,
}

/// What the controller observed in Konnect.
#[derive(Debug, Clone, Default)]
pub struct ObservedAccount {
    /// `status.id` as recorded.
    pub recorded_id: Option<String>,
    /// The account at `status.id`, when it still exists.
    pub by_id: Option<SystemAccount>,
    /// An account holding the desired name, when one was looked up and found.
    pub by_name: Option<SystemAccount>,
    /// `status.pendingCreate` equals the desired name: a create of ours may have committed before a crash.
    pub create_in_flight: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AccountStep {
    /// No account yet and the name is free.
    Create,
    /// Take over the account with the desired name (then update it on the next step).
    Adopt(SystemAccount),
    /// The account exists; patch these fields.
    Update {
        id: String,
        patch: UpdateSystemAccount,
    },
    /// Konnect matches the spec.
    InSync(SystemAccount),
    /// Konnect manages this account: never adopt, edit or delete it.
    RefuseManaged(String),
    /// The name belongs to an account that is not ours.
    NameTaken(String),
}

/// Whether the by-name lookup is needed for [`plan_account`]: only when no account exists at
/// `status.id`, or when a rename may collide.
pub fn needs_name_lookup(desired: &DesiredAccount, by_id: Option<&SystemAccount>) -> bool {
    by_id.is_none_or(|a| a.name != desired.name)
}

pub fn plan_account(desired: &DesiredAccount, observed: &ObservedAccount) -> AccountStep {
    if let Some(current) = &observed.by_id {
        if current.konnect_managed {
            return AccountStep::RefuseManaged(managed_message(current));
        }
        let mut patch = UpdateSystemAccount::default();
        if current.name != desired.name {
            if let Some(other) = observed.by_name.as_ref().filter(|o| o.id != current.id) {
                return AccountStep::NameTaken(format!(
                    "cannot rename account {} to '{}': Konnect account {} already has that name. \
                     Choose another spec.name or remove the other account",
                    current.id, desired.name, other.id
                ));
            }
            patch.name = Some(desired.name.clone());
        }
        if current.description != desired.description {
            patch.description = Some(desired.description.clone());
        }
        return if patch == UpdateSystemAccount::default() {
            AccountStep::InSync(current.clone())
        } else {
            AccountStep::Update {
                id: current.id.clone(),
                patch,
            }
        };
    }
    match &observed.by_name {
        None => AccountStep::Create,
        Some(existing) if existing.konnect_managed => {
            AccountStep::RefuseManaged(managed_message(existing))
        }
        Some(existing) if desired.adopt || observed.create_in_flight => {
            AccountStep::Adopt(existing.clone())
        }
        Some(existing) => AccountStep::NameTaken(format!(
            "a Konnect system account named '{}' already exists (id {}) and spec.adoption is Refuse. \
             Set spec.adoption: Adopt to manage it, or choose another spec.name",
            desired.name, existing.id
        )),
    }
}

/// Whether `found` is the account our recorded create made: the pending name is the desired one and it
/// was created at or after the marker was recorded (a minute of slack for clocks that disagree). An account someone else
/// created earlier under that name (after a create of ours that Konnect refused, say) is not ours. A
/// marker without a time (written by an older version) is trusted as before.
pub fn created_by_our_create(
    pending: Option<&str>,
    since: Option<&str>,
    name: &str,
    found: Option<&SystemAccount>,
) -> bool {
    if pending != Some(name) {
        return false;
    }
    let parse = |s: Option<&str>| s.and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok());
    match (
        parse(since),
        found.and_then(|a| parse(a.created_at.as_deref())),
    ) {
        (Some(since), Some(created)) => created.as_second() >= since.as_second() - 60,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

fn managed_message(account: &SystemAccount) -> String {
    format!(
        "Konnect account '{}' ({}) is konnect_managed: Konnect owns its life cycle, so this operator never adopts, \
         edits or deletes it. Choose another spec.name",
        account.name, account.id
    )
}

/// A team the spec asks for, resolved to its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedTeam {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TeamsPlan {
    pub add: Vec<ResolvedTeam>,
    /// Team ids to leave: memberships we added earlier and no longer want.
    pub remove: Vec<String>,
}

/// Memberships converge both ways, but only those we own are removed: a membership added by
/// someone else in Konnect is left alone.
pub fn plan_teams(
    desired: &[ResolvedTeam],
    current_ids: &[String],
    owned_ids: &[String],
) -> TeamsPlan {
    let is_member = |id: &str| current_ids.iter().any(|t| t == id);
    let wanted = |id: &str| desired.iter().any(|t| t.id == id);
    TeamsPlan {
        add: desired
            .iter()
            .filter(|t| !is_member(&t.id))
            .cloned()
            .collect(),
        remove: owned_ids
            .iter()
            .filter(|id| !wanted(id) && is_member(id))
            .cloned()
            .collect(),
    }
}

/// Picks the one team with exactly this name, or says why it cannot.
pub fn pick_team_by_name(name: &str, candidates: &[Team]) -> Result<ResolvedTeam, String> {
    let matches: Vec<&Team> = candidates.iter().filter(|t| t.name == name).collect();
    match matches.as_slice() {
        [one] => Ok(ResolvedTeam {
            id: one.id.clone(),
            name: one.name.clone(),
        }),
        [] => Err(format!(
            "no Konnect team is named '{name}': check spec.teams or create the team first"
        )),
        many => Err(format!(
            "{} Konnect teams are named '{name}' (ids {}): team names are not unique, refer to one by id",
            many.len(),
            many.iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(id: &str, name: &str, desc: &str) -> SystemAccount {
        SystemAccount {
            id: id.into(),
            name: name.into(),
            description: desc.into(),
            created_at: None,
            updated_at: None,
            konnect_managed: false,
        }
    }

    fn team(id: &str, name: &str) -> Team {
        Team {
            id: id.into(),
            name: name.into(),
            description: None,
            system_team: false,
            labels: Default::default(),
            created_at: None,
            updated_at: None,
        }
    }

    fn desired(adopt: bool) -> DesiredAccount {
        DesiredAccount {
            name: "ci-bot".into(),
            description: "CI".into(),
            adopt,
        }
    }

    #[test]
    fn creates_when_nothing_exists() {
        assert_eq!(
            plan_account(&desired(false), &ObservedAccount::default()),
            AccountStep::Create
        );
    }

    #[test]
    fn refuses_or_adopts_an_existing_name_by_policy() {
        let obs = ObservedAccount {
            by_name: Some(acct("a1", "ci-bot", "x")),
            ..Default::default()
        };
        assert!(
            matches!(plan_account(&desired(false), &obs), AccountStep::NameTaken(m) if m.contains("Adopt"))
        );
        assert_eq!(
            plan_account(&desired(true), &obs),
            AccountStep::Adopt(acct("a1", "ci-bot", "x"))
        );
    }

    #[test]
    fn a_create_in_flight_before_a_crash_is_recovered_not_refused() {
        let obs = ObservedAccount {
            by_name: Some(acct("a1", "ci-bot", "CI")),
            create_in_flight: true,
            ..Default::default()
        };
        assert!(matches!(
            plan_account(&desired(false), &obs),
            AccountStep::Adopt(_)
        ));
    }

    #[test]
    fn managed_accounts_are_never_touched() {
        let mut m = acct("m1", "ci-bot", "CI");
        m.konnect_managed = true;
        let by_name = ObservedAccount {
            by_name: Some(m.clone()),
            ..Default::default()
        };
        assert!(matches!(
            plan_account(&desired(true), &by_name),
            AccountStep::RefuseManaged(_)
        ));
        let by_id = ObservedAccount {
            by_id: Some(m),
            recorded_id: Some("m1".into()),
            ..Default::default()
        };
        assert!(matches!(
            plan_account(&desired(true), &by_id),
            AccountStep::RefuseManaged(_)
        ));
    }

    #[test]
    fn patches_only_changed_fields_and_refuses_a_taken_name() {
        let obs = ObservedAccount {
            by_id: Some(acct("a1", "old", "CI")),
            ..Default::default()
        };
        assert_eq!(
            plan_account(&desired(false), &obs),
            AccountStep::Update {
                id: "a1".into(),
                patch: UpdateSystemAccount {
                    name: Some("ci-bot".into()),
                    description: None
                }
            }
        );
        let taken = ObservedAccount {
            by_name: Some(acct("b2", "ci-bot", "")),
            ..obs
        };
        assert!(
            matches!(plan_account(&desired(false), &taken), AccountStep::NameTaken(m) if m.contains("b2"))
        );
        let same = ObservedAccount {
            by_id: Some(acct("a1", "ci-bot", "CI")),
            ..Default::default()
        };
        assert!(matches!(
            plan_account(&desired(false), &same),
            AccountStep::InSync(_)
        ));
    }

    #[test]
    fn vanished_account_is_recreated() {
        let obs = ObservedAccount {
            recorded_id: Some("gone".into()),
            ..Default::default()
        };
        assert_eq!(plan_account(&desired(false), &obs), AccountStep::Create);
    }

    #[test]
    fn teams_converge_both_ways_but_leave_foreign_memberships() {
        let want = vec![ResolvedTeam {
            id: "t1".into(),
            name: "A".into(),
        }];
        let current = vec!["t2".to_string(), "t3".to_string()];
        let plan = plan_teams(&want, &current, &["t2".to_string()]);
        assert_eq!(plan.add, want);
        assert_eq!(
            plan.remove,
            vec!["t2".to_string()],
            "t3 was added by someone else and stays"
        );
    }

    #[test]
    fn team_names_must_match_exactly_one_team() {
        let teams = vec![
            team("t1", "Platform"),
            team("t2", "Platform"),
            team("t3", "Ops"),
        ];
        assert_eq!(pick_team_by_name("Ops", &teams).unwrap().id, "t3");
        assert!(
            pick_team_by_name("Platform", &teams)
                .unwrap_err()
                .contains("refer to one by id")
        );
        assert!(
            pick_team_by_name("Nope", &teams)
                .unwrap_err()
                .contains("no Konnect team")
        );
    }

    #[test]
    fn only_an_account_created_after_the_marker_is_our_create() {
        let account = |created: &str| SystemAccount {
            id: "a1".into(),
            name: "ci-bot".into(),
            description: String::new(),
            created_at: Some(created.into()),
            updated_at: None,
            konnect_managed: false,
        };
        let since = Some("2026-11-30T12:00:00Z");
        let after = account("2026-11-30T12:00:03Z");
        let slack = account("2026-11-30T11:59:30Z");
        let before = account("2026-11-30T11:00:00Z");
        assert!(created_by_our_create(
            Some("ci-bot"),
            since,
            "ci-bot",
            Some(&after)
        ));
        assert!(created_by_our_create(
            Some("ci-bot"),
            since,
            "ci-bot",
            Some(&slack)
        ));
        assert!(!created_by_our_create(
            Some("ci-bot"),
            since,
            "ci-bot",
            Some(&before)
        ));
        assert!(!created_by_our_create(
            Some("other"),
            since,
            "ci-bot",
            Some(&after)
        ));
        assert!(!created_by_our_create(None, since, "ci-bot", Some(&after)));
        // A marker from an older version (no time) is trusted as before.
        assert!(created_by_our_create(
            Some("ci-bot"),
            None,
            "ci-bot",
            Some(&before)
        ));
    }
}
