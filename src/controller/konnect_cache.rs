//! Short-lived reads shared by controllers, per Konnect connection: the roles reference and each
//! account's assigned roles (so N bindings of one account cost one list, not N GETs).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::budget::{DriftBudget, Paced};
use super::connections::{Connection, ConnectionKey};
use crate::konnect::{AssignedRole, Result, RolesReference, Team};

type Entry<T> = (Instant, Arc<T>);
type AccountKey = (ConnectionKey, String);
type FetchLocks = Mutex<HashMap<AccountKey, Arc<tokio::sync::Mutex<()>>>>;

pub struct KonnectCache {
    roles_ttl: Duration,
    assignments_ttl: Duration,
    roles: Mutex<HashMap<ConnectionKey, Entry<RolesReference>>>,
    assignments: Mutex<HashMap<AccountKey, Entry<Vec<AssignedRole>>>>,
    teams: Mutex<HashMap<AccountKey, Entry<Vec<Team>>>>,
    /// One list call in flight per account: concurrent reconciles of its bindings wait for it
    /// instead of each sending their own.
    fetching: FetchLocks,
}

impl KonnectCache {
    pub fn new(roles_ttl: Duration, assignments_ttl: Duration) -> Self {
        Self {
            roles_ttl,
            assignments_ttl,
            roles: Mutex::default(),
            assignments: Mutex::default(),
            teams: Mutex::default(),
            fetching: Mutex::default(),
        }
    }

    fn fresh<K: std::hash::Hash + Eq, T>(
        map: &Mutex<HashMap<K, Entry<T>>>,
        key: &K,
        ttl: Duration,
    ) -> Option<Arc<T>> {
        let map = map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, v)| v.clone())
    }

    /// `GET /v3/roles`, refreshed after the TTL.
    pub async fn roles(&self, conn: &Connection) -> Result<Arc<RolesReference>> {
        if let Some(v) = Self::fresh(&self.roles, &conn.key, self.roles_ttl) {
            return Ok(v);
        }
        let v = Arc::new(conn.client.roles_reference().await?);
        self.roles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn.key.clone(), (Instant::now(), v.clone()));
        Ok(v)
    }

    /// An account's assigned roles, shared by every binding of the account for a short while.
    pub async fn assignments(
        &self,
        conn: &Connection,
        account_id: &str,
    ) -> Result<Arc<Vec<AssignedRole>>> {
        match self.fetch_assignments(conn, account_id, None).await? {
            Paced::Done(v) => Ok(v),
            Paced::Later(_) => unreachable!("no budget, no refusal"),
        }
    }

    /// `assignments` for a background check: a cache miss without a permit is `Later`.
    pub async fn assignments_paced(
        &self,
        conn: &Connection,
        account_id: &str,
        budget: &DriftBudget,
    ) -> Result<Paced<Arc<Vec<AssignedRole>>>> {
        self.fetch_assignments(conn, account_id, Some(budget)).await
    }

    async fn fetch_assignments(
        &self,
        conn: &Connection,
        account_id: &str,
        budget: Option<&DriftBudget>,
    ) -> Result<Paced<Arc<Vec<AssignedRole>>>> {
        let key = (conn.key.clone(), account_id.to_string());
        if let Some(v) = Self::fresh(&self.assignments, &key, self.assignments_ttl) {
            return Ok(Paced::Done(v));
        }
        let gate = self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _in_flight = gate.lock().await;
        // Whoever held the gate before us has just filled the cache.
        if let Some(v) = Self::fresh(&self.assignments, &key, self.assignments_ttl) {
            return Ok(Paced::Done(v));
        }
        if let Some(b) = budget
            && let Err(wait) = b.admit(&format!("assignments/{:?}/{account_id}", conn.key), 1)
        {
            return Ok(Paced::Later(wait));
        }
        let v = Arc::new(conn.client.list_assigned_roles(account_id).await?);
        self.assignments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (Instant::now(), v.clone()));
        Ok(Paced::Done(v))
    }

    /// Teams named `name` (team names are not unique), shared for a minute: N accounts in one
    /// team resolve it with one call.
    pub async fn teams_named(&self, conn: &Connection, name: &str) -> Result<Arc<Vec<Team>>> {
        let key = (conn.key.clone(), name.to_string());
        if let Some(v) = Self::fresh(&self.teams, &key, Duration::from_secs(60)) {
            return Ok(v);
        }
        let v = Arc::new(conn.client.list_teams(Some(name)).await?);
        self.teams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (Instant::now(), v.clone()));
        Ok(v)
    }

    /// Records our own write in the cached list (when there is one) instead of dropping it, so the
    /// account's other bindings keep sharing one list call. `added`/`removed_id`: what changed.
    pub fn record_assignment_change(
        &self,
        conn: &Connection,
        account_id: &str,
        added: Option<&AssignedRole>,
        removed_id: Option<&str>,
    ) {
        let mut map = self.assignments.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, list)) = map.get_mut(&(conn.key.clone(), account_id.to_string())) {
            let list = Arc::make_mut(list);
            if let Some(id) = removed_id {
                list.retain(|a| a.id != id);
            }
            if let Some(a) = added.filter(|a| !list.iter().any(|x| x.id == a.id)) {
                list.push(a.clone());
            }
        }
    }

    /// Forget an account's assignments (when the cached list proved wrong).
    pub fn invalidate_assignments(&self, conn: &Connection, account_id: &str) {
        self.assignments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(conn.key.clone(), account_id.to_string()));
    }
}
