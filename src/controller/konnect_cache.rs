//! Short-lived reads shared by controllers, per Konnect connection: the roles reference and each
//! account's assigned roles (so N bindings of one account cost one list, not N GETs).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::budget::DriftBudget;
use super::connections::{Connection, ConnectionKey};
use crate::konnect::{AssignedRole, Result, RolesReference, Team};

type Entry<T> = (Instant, Arc<T>);
type AccountKey = (ConnectionKey, String);

pub struct KonnectCache {
    roles_ttl: Duration,
    assignments_ttl: Duration,
    roles: Mutex<HashMap<ConnectionKey, Entry<RolesReference>>>,
    assignments: Mutex<HashMap<AccountKey, Entry<Vec<AssignedRole>>>>,
    teams: Mutex<HashMap<AccountKey, Entry<Vec<Team>>>>,
}

impl KonnectCache {
    pub fn new(roles_ttl: Duration, assignments_ttl: Duration) -> Self {
        Self {
            roles_ttl,
            assignments_ttl,
            roles: Mutex::default(),
            assignments: Mutex::default(),
            teams: Mutex::default(),
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
    /// A background check passes its `budget`: a cache miss then waits for a permit.
    pub async fn assignments(
        &self,
        conn: &Connection,
        account_id: &str,
        budget: Option<&DriftBudget>,
    ) -> Result<Arc<Vec<AssignedRole>>> {
        let key = (conn.key.clone(), account_id.to_string());
        if let Some(v) = Self::fresh(&self.assignments, &key, self.assignments_ttl) {
            return Ok(v);
        }
        if let Some(b) = budget {
            b.acquire(1).await;
        }
        let v = Arc::new(conn.client.list_assigned_roles(account_id).await?);
        self.assignments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (Instant::now(), v.clone()));
        Ok(v)
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

    /// Forget an account's assignments after writing them.
    pub fn invalidate_assignments(&self, conn: &Connection, account_id: &str) {
        self.assignments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(conn.key.clone(), account_id.to_string()));
    }
}
