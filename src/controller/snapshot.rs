//! One shared view of Konnect per connection for drift checks: all system accounts (paged list)
//! and the members of the teams we care about, refreshed at most once per resync period and kept
//! current with our own writes. A drift sweep then costs about N/100 list calls for N accounts
//! instead of one GET each. What the snapshot says is missing is confirmed with a GET before
//! anything is recreated, so a stale snapshot costs a call, never a wrong action.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::budget::{DriftBudget, Paced};
use super::connections::{Connection, ConnectionKey};
use crate::konnect::{AccountFilter, Result, SystemAccount};

#[derive(Default)]
struct Accounts {
    fetched: Option<Instant>,
    by_id: HashMap<String, SystemAccount>,
}

#[derive(Default)]
struct Members {
    fetched: Option<Instant>,
    ids: HashSet<String>,
}

type Slots<K, V> = std::sync::Mutex<HashMap<K, Arc<Mutex<V>>>>;

pub struct Snapshot {
    ttl: Duration,
    accounts: Slots<ConnectionKey, Accounts>,
    members: Slots<(ConnectionKey, String), Members>,
}

fn slot<K: std::hash::Hash + Eq + Clone, V: Default>(map: &Slots<K, V>, key: &K) -> Arc<Mutex<V>> {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key.clone())
        .or_default()
        .clone()
}

fn stale(fetched: Option<Instant>, ttl: Duration) -> bool {
    fetched.is_none_or(|at| at.elapsed() >= ttl)
}

impl Snapshot {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            accounts: Default::default(),
            members: Default::default(),
        }
    }

    /// The account with `id` as of the snapshot (None: not listed). One refresh at a time per
    /// connection; concurrent callers wait for it and share the result. A refresh the budget
    /// has no permits for is not made (`Later`).
    pub async fn account(
        &self,
        conn: &Connection,
        budget: &DriftBudget,
        id: &str,
    ) -> Result<Paced<Option<SystemAccount>>> {
        let slot = slot(&self.accounts, &conn.key);
        let mut s = slot.lock().await;
        if stale(s.fetched, self.ttl) {
            let pages = s.by_id.len() as u32 / crate::konnect::client::PAGE_SIZE as u32 + 1;
            if let Err(wait) = budget.admit(&format!("accounts/{:?}", conn.key), pages) {
                return Ok(Paced::Later(wait));
            }
            let all = conn
                .client
                .list_system_accounts(&AccountFilter::default())
                .await?;
            s.by_id = all.into_iter().map(|a| (a.id.clone(), a)).collect();
            s.fetched = Some(Instant::now());
        }
        Ok(Paced::Done(s.by_id.get(id).cloned()))
    }

    /// Whether `account_id` is a member of `team_id`, as of the snapshot.
    pub async fn is_member(
        &self,
        conn: &Connection,
        budget: &DriftBudget,
        team_id: &str,
        account_id: &str,
    ) -> Result<Paced<bool>> {
        let slot = slot(&self.members, &(conn.key.clone(), team_id.to_string()));
        let mut s = slot.lock().await;
        if stale(s.fetched, self.ttl) {
            let pages = s.ids.len() as u32 / crate::konnect::client::PAGE_SIZE as u32 + 1;
            if let Err(wait) = budget.admit(&format!("members/{:?}/{team_id}", conn.key), pages) {
                return Ok(Paced::Later(wait));
            }
            let members = conn.client.list_team_accounts(team_id).await?;
            s.ids = members.into_iter().map(|a| a.id).collect();
            s.fetched = Some(Instant::now());
        }
        Ok(Paced::Done(s.ids.contains(account_id)))
    }

    /// Records an account we created, changed or confirmed.
    pub async fn note_account(&self, conn: &Connection, account: &SystemAccount) {
        let slot = slot(&self.accounts, &conn.key);
        slot.lock()
            .await
            .by_id
            .insert(account.id.clone(), account.clone());
    }

    /// Records an account we deleted or found gone.
    pub async fn forget_account(&self, conn: &Connection, id: &str) {
        let slot = slot(&self.accounts, &conn.key);
        slot.lock().await.by_id.remove(id);
    }

    /// Records a membership we added (true) or removed (false).
    pub async fn note_member(
        &self,
        conn: &Connection,
        team_id: &str,
        account_id: &str,
        member: bool,
    ) {
        let slot = slot(&self.members, &(conn.key.clone(), team_id.to_string()));
        let mut s = slot.lock().await;
        if member {
            s.ids.insert(account_id.to_string());
        } else {
            s.ids.remove(account_id);
        }
    }
}
