//! State shared by the handlers, the middleware and `RunningSim`.
use std::sync::{Mutex, MutexGuard};

use k8s_openapi::jiff::Timestamp;

use super::faults::FaultEngine;
use super::problem::ApiError;
use super::stats::{JournalEntry, Stats};
use super::store::{SeedData, Store};
use crate::konnect::models::TokenValue;

pub struct Shared {
    pub admin_token: TokenValue,
    pub store: Mutex<Store>,
    pub faults: Mutex<FaultEngine>,
    pub stats: Mutex<Stats>,
    /// Some when the journal is enabled.
    pub journal: Option<Mutex<Vec<JournalEntry>>>,
    pub seed: Option<u64>,
    pub seed_data: SeedData,
}

/// A poisoned lock only means another request panicked; the data is still usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }
    pub fn faults(&self) -> MutexGuard<'_, FaultEngine> {
        lock(&self.faults)
    }
    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }
}

impl Shared {
    pub fn reset_counts(&self) {
        *self.stats() = Stats::default();
    }

    /// Store back to the seed data, counts and journal cleared.
    pub fn reset(&self) -> Result<(), ApiError> {
        let now = Timestamp::now();
        let mut fresh = Store::new(self.seed, now);
        fresh.seed(now, &self.seed_data)?;
        *self.store() = fresh;
        self.reset_counts();
        if let Some(j) = &self.journal {
            lock(j).clear();
        }
        Ok(())
    }
}
