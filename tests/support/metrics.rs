//! The in-process operator's `/metrics`, read as Prometheus does. A "nothing happened" check waits on what the
//! operator recorded (it reconciled, checked drift, held a wake back) instead of a fixed sleep, so it is
//! anchored on a look the operator provably took and fails against a dead or idle one.
use std::time::Duration;

use super::env::metric_total;
use super::operator::check_operators;

const T: Duration = Duration::from_secs(30);

pub struct Scrape {
    url: String,
}

impl Scrape {
    pub fn at(addr: &str) -> Scrape {
        Scrape {
            url: format!("http://{addr}/metrics"),
        }
    }

    /// The metrics text (empty while the server is not up yet).
    pub async fn text(&self) -> String {
        match reqwest::get(&self.url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The sum of `name`'s samples whose labels contain every `label="value"` in `labels`.
    pub async fn value(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let text = self.text().await;
        metric_total(&text, |l| {
            l.starts_with(&format!("{name}{{"))
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
    }

    /// Waits until `name{labels}` is at least `at_least`; returns its value.
    pub async fn wait_at_least(&self, name: &str, labels: &[(&str, &str)], at_least: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            check_operators();
            let v = self.value(name, labels).await;
            if v >= at_least {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}{labels:?} stayed at {v}, below {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the operator has run two more background drift checks of `kind` than now: the first of
    /// them, writes included, finished before the second began (one object's reconciles never overlap).
    pub async fn two_more_drift_checks(&self, kind: &str) {
        let name = "konnect_sa_drift_checks_total";
        let now = self.value(name, &[("kind", kind)]).await;
        self.wait_at_least(name, &[("kind", kind)], now + 2).await;
    }
}

/// Wakes a failing object with a change its backoff ignores (a label: not the user's spec, annotations or
/// deletion) and waits until the operator has held that wake back (`konnect_sa_reconciles_held_back_total`):
/// a look the operator provably took during the backoff, after which "nothing was sent" means something.
pub async fn poke_held_back<K>(scrape: &Scrape, api: &kube::Api<K>, name: &str, kind: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let metric = "konnect_sa_reconciles_held_back_total";
    let before = scrape.value(metric, &[("kind", kind)]).await;
    let poke = uuid::Uuid::new_v4().simple().to_string();
    super::env::merge_patch(
        api,
        name,
        serde_json::json!({"metadata": {"labels": {"test.konnect-sa.dev/poke": poke}}}),
    )
    .await;
    scrape
        .wait_at_least(metric, &[("kind", kind)], before + 1)
        .await;
}
