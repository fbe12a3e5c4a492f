//! Request counts by operation, a per-minute histogram, and the in-memory journal.
use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Requests received in one wall-clock minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteCount {
    /// Start of the minute, RFC 3339 UTC.
    pub minute: String,
    pub count: u64,
}

/// `GET /_sim/counts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// operationId (the spec's; `v2-` prefix for the v2 paths) -> requests received, faulted ones included.
    pub operations: BTreeMap<String, u64>,
    pub per_minute: Vec<MinuteCount>,
    pub total: u64,
}

#[derive(Default)]
pub struct Stats {
    operations: BTreeMap<String, u64>,
    per_minute: BTreeMap<i64, u64>,
}

impl Stats {
    pub fn record(&mut self, operation: &str, now: Timestamp) {
        *self.operations.entry(operation.to_string()).or_default() += 1;
        *self
            .per_minute
            .entry(now.as_second().div_euclid(60))
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> Counts {
        Counts {
            operations: self.operations.clone(),
            per_minute: self
                .per_minute
                .iter()
                .map(|(m, c)| MinuteCount {
                    minute: Timestamp::from_second(m * 60)
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                    count: *c,
                })
                .collect(),
            total: self.operations.values().sum(),
        }
    }
}

/// One API request as the contract tests see it. Bodies may hold token values: the journal lives in
/// memory only, is never served over HTTP nor logged, and Debug leaves the bodies out.
#[derive(Clone, PartialEq)]
pub struct JournalEntry {
    pub operation: String,
    pub method: String,
    /// The request path as sent (ids filled in).
    pub path: String,
    pub status: u16,
    /// None when the body was empty or not JSON.
    pub request_body: Option<serde_json::Value>,
    pub response_body: Option<serde_json::Value>,
    /// Response content type (e.g. `application/problem+json`).
    pub response_content_type: Option<String>,
    /// False when a lost-response fault kept the response from the caller.
    pub delivered: bool,
}

impl std::fmt::Debug for JournalEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalEntry")
            .field("operation", &self.operation)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("status", &self.status)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_operation_and_minute() {
        let mut s = Stats::default();
        let t0: Timestamp = "2026-01-01T00:00:59Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        s.record("get-system-accounts", t0);
        s.record("get-system-accounts", t1);
        s.record("post-system-accounts", t1);
        let c = s.snapshot();
        assert_eq!(c.operations["get-system-accounts"], 2);
        assert_eq!(c.total, 3);
        assert_eq!(
            c.per_minute,
            vec![
                MinuteCount {
                    minute: "2026-01-01T00:00:00Z".into(),
                    count: 1
                },
                MinuteCount {
                    minute: "2026-01-01T00:01:00Z".into(),
                    count: 2
                },
            ]
        );
    }

    #[test]
    fn journal_debug_hides_bodies() {
        let e = JournalEntry {
            operation: "post-system-accounts-id-access-tokens".into(),
            method: "POST".into(),
            path: "/v3/system-accounts/x/access-tokens".into(),
            status: 201,
            request_body: None,
            response_body: Some(serde_json::json!({"token": "spat_abc"})),
            response_content_type: None,
            delivered: true,
        };
        assert!(!format!("{e:?}").contains("spat_"));
    }
}
