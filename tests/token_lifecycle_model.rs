//! Model-based test of the token lifecycle end to end: the real operator binary (two replicas with
//! leader election) against the Kubernetes API stand-in and the Konnect simulator, driven by a seeded
//! random sequence of GitOps edits, user actions, Konnect faults, kill -9 and handovers. The pure
//! decision has its own, much longer model-based test (`src/controller/token_model.rs`); this one
//! proves that the executor, the Secret writer, leader election and the real API calls keep the
//! same promises.
//!
//! Invariants, checked after every operation (and right after every kill, when nothing moves):
//! (a) once converged, the Secret the spec names holds, under the spec's key, the status's token, and
//!     it authenticates;
//! (b) a token that was seen in a Secret stays valid until its successor has been there for the
//!     retention (or until its own expiry), unless the user revoked it; after a move the old place
//!     keeps it that long;
//! (c) at rest, the object's live tokens are its current one and previous ones within retention, and
//!     the bystander object's token is never touched;
//! (d) no hot loop: a quiet operator makes no Konnect write and few reads;
//! (e) no token value (raw or base64) in a log line, Event or status.
//!
//! A failure names the seed and the operations so far: `LIFECYCLE_SEED=<n> cargo nextest run --test
//! token_lifecycle_model` replays the sequence (timings differ). `LIFECYCLE_STEPS=<n>` runs longer
//! (CI: 24 steps).
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use konnect_sa_operator::api::{SystemAccount, SystemAccountToken, SystemAccountTokenStatus};
use konnect_sa_operator::sim::{Faults, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::proxy::{Mode, Net, Proxy, write_kubeconfig};
use support::{NS, TestEnv, merge_patch, ready_of, wait_for};

const CR: &str = "life";
const BYSTANDER: &str = "bystander";
const LEASE: &str = "konnect-sa-operator";
/// Every retention the sequence sets is at least this; (b) is checked against it.
const MIN_RETENTION: i64 = 4;
/// Slack for whole-second timestamps and the time between a check's read and its verdict.
const MARGIN: i64 = 2;
const CONVERGE: Duration = Duration::from_secs(90);

fn status(t: &SystemAccountToken) -> SystemAccountTokenStatus {
    t.status.clone().unwrap_or_default()
}

fn annotation(s: &Secret, key: &str) -> Option<String> {
    s.metadata.annotations.as_ref()?.get(key).cloned()
}

fn value(s: &Secret, key: &str) -> Option<String> {
    let v = s.data.as_ref()?.get(key)?;
    String::from_utf8(v.0.clone())
        .ok()
        .filter(|v| !v.is_empty())
}

fn ts(s: &Option<String>) -> Option<Timestamp> {
    s.as_deref()?.parse().ok()
}

/// A value seen in a Secret, and what (b) promises about it.
#[derive(Debug)]
struct Seen {
    value: String,
    token_id: String,
    /// The Konnect account it belongs to.
    account: String,
    place: (String, String),
    expires: i64,
    /// When its successor was issued (the successor's `issued-at`).
    replaced_at: Option<i64>,
    /// The user revoked it in Konnect: no promise any more.
    user_revoked: bool,
    /// The user deleted its Secret or removed its key: its place is no longer checked (its
    /// validity still is: consumers that read it keep working).
    place_lost: bool,
}

impl Seen {
    /// Until when it must authenticate.
    fn promised_until(&self) -> i64 {
        let until = self
            .replaced_at
            .map_or(i64::MAX, |at| at + MIN_RETENTION)
            .min(self.expires);
        if self.user_revoked { 0 } else { until }
    }
}

struct Replica {
    name: &'static str,
    child: tokio::process::Child,
    /// Its own way to the API server, which a partition cuts.
    kube: Proxy,
    metrics: support::metrics::Scrape,
}

struct Run {
    env: TestEnv,
    seed: u64,
    trail: Vec<String>,
    seen: Vec<Seen>,
    accounts: BTreeMap<&'static str, String>,
    replicas: Vec<Replica>,
    net: Net,
    logs: Vec<PathBuf>,
    http: reqwest::Client,
    secret_name: String,
    secret_key: String,
    rotations: u32,
    /// life-b's spec names the ambiguous team.
    ambiguous: bool,
    /// A token the user revoked in Konnect: converged only once it is replaced (the operator
    /// notices at its next check of the token, at most a resync period later).
    revoked: Option<String>,
}

impl Run {
    fn fail(&self, what: String) -> ! {
        panic!(
            "seed {}: {what}\noperations so far (replay: LIFECYCLE_SEED={}):\n  {}",
            self.seed,
            self.seed,
            self.trail.join("\n  ")
        );
    }

    /// Background drift checks of tokens, summed over the replicas (only the leader makes them).
    async fn token_drift_checks(&self) -> u64 {
        let mut sum = 0;
        for r in &self.replicas {
            sum += r
                .metrics
                .value(
                    "konnect_sa_drift_checks_total",
                    &[("kind", "SystemAccountToken")],
                )
                .await;
        }
        sum
    }

    async fn spawn(&mut self, name: &'static str) {
        let log = self.env.dir.path().join(format!("{name}.log"));
        if !self.logs.contains(&log) {
            self.logs.push(log.clone());
        }
        let kube = self.net.proxy(name, "kube", &self.env.kube.url()).await;
        let kubeconfig = self.env.dir.path().join(format!("{name}.kubeconfig"));
        write_kubeconfig(&kubeconfig, &kube.url);
        let metrics_addr = format!("127.0.0.1:{}", support::env::free_port());
        let child = self.env.spawn_operator_env(
            &[
                "--metrics-addr",
                &metrics_addr,
                "--leader-elect",
                "--leader-election-namespace",
                NS,
                "--leader-lease-duration",
                "3s",
                "--resync-period",
                "3s",
            ],
            &[
                ("POD_NAME", name),
                ("RUST_LOG", "trace"),
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ],
            &log,
        );
        self.replicas.push(Replica {
            name,
            child,
            kube,
            metrics: support::metrics::Scrape::at(&metrics_addr),
        });
    }

    /// The leader is cut off from the API server while it works (it keeps running: a moment of two
    /// replicas that each may think they lead); the standby takes over, the old leader stops, and
    /// comes back as a standby once the network heals.
    async fn partition(&mut self) {
        let Some(leader) = self.leader().await else {
            return;
        };
        let Some(i) = self.replicas.iter().position(|r| r.name == leader) else {
            return;
        };
        self.replicas[i].kube.set_mode(Mode::Cut);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.leader().await.as_deref() == Some(leader.as_str()) {
            if Instant::now() > deadline {
                self.fail(format!(
                    "{leader}, cut off, still holds the Lease after 30 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The old leader notices it lost the Lease and exits (its writes were fenced before).
        let mut r = self.replicas.remove(i);
        let exited = tokio::time::timeout(Duration::from_secs(20), r.child.wait()).await;
        if exited.is_err() {
            self.fail(format!(
                "{leader}, cut off and replaced, did not stop within 20 s"
            ));
        }
        self.check_promises("after a takeover from a cut-off leader")
            .await;
        r.kube.set_mode(Mode::Pass);
        self.spawn(r.name).await;
    }

    async fn leader(&self) -> Option<String> {
        let lease = self.env.api::<Lease>().get_opt(LEASE).await.ok()??;
        lease.spec?.holder_identity
    }

    /// kill -9 (or SIGTERM) of the leader, or of a random replica when none leads yet; the replica
    /// comes back at once as a standby.
    async fn kill(&mut self, rng: &mut StdRng, graceful: bool) {
        let leader = self.leader().await;
        let i = self
            .replicas
            .iter()
            .position(|r| Some(r.name) == leader.as_deref())
            .unwrap_or_else(|| rng.random_range(0..self.replicas.len()));
        let mut r = self.replicas.remove(i);
        if graceful {
            let pid = r.child.id().expect("running");
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let _ = tokio::time::timeout(Duration::from_secs(10), r.child.wait()).await;
        }
        let _ = r.child.start_kill();
        let _ = r.child.wait().await;
        // Nothing of the dead replica moves now: what it left must keep the promises.
        self.check_promises("right after a kill").await;
        self.spawn(r.name).await;
    }

    async fn accepted(&self, token: &str) -> bool {
        for _ in 0..200 {
            let resp = self
                .http
                .get(format!("{}/v3/organizations/me", self.env.sim.base_url()))
                .bearer_auth(token)
                .send()
                .await;
            match resp.map(|r| r.status().as_u16()) {
                Ok(200) => return true,
                Ok(401) => return false,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        self.fail("Konnect gave no verdict on a token".into())
    }

    /// (b): every value seen keeps working until its promise ends.
    async fn check_promises(&self, when: &str) {
        for s in &self.seen {
            let now = Timestamp::now().as_second();
            if now + MARGIN < s.promised_until() && !self.accepted(&s.value).await {
                self.fail(format!(
                    "{when}: token {} (seen in {:?}, replaced at {:?}) no longer authenticates, though \
                     promised until {}",
                    s.token_id,
                    s.place,
                    s.replaced_at,
                    s.promised_until()
                ));
            }
        }
    }

    async fn cr(&self, name: &str) -> SystemAccountToken {
        self.env
            .api::<SystemAccountToken>()
            .get(name)
            .await
            .expect("CR exists")
    }

    /// Converged: Ready for the generation, nothing pending, the rotate request answered, and the
    /// spec's place holds the status's token.
    async fn converged(&self) -> Option<(SystemAccountTokenStatus, Secret)> {
        let t = self.cr(CR).await;
        let st = status(&t);
        let ready = ready_of(&st.conditions).is_some_and(|(s, _, _)| s == "True")
            && st.observed_generation == t.metadata.generation
            && st.pending_token_name.is_none();
        let wanted = t
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("konnect-sa.dev/rotate"))
            .cloned();
        if !ready
            || (wanted.is_some() && st.last_rotate_annotation != wanted)
            || (self.revoked.is_some() && st.token_id == self.revoked)
        {
            return None;
        }
        let s = self
            .env
            .api::<Secret>()
            .get_opt(&self.secret_name)
            .await
            .ok()??;
        let holds = annotation(&s, "konnect-sa.dev/token-id") == st.token_id
            && value(&s, &self.secret_key).is_some();
        holds.then_some((st, s))
    }

    async fn wait_converged(&mut self) -> (SystemAccountTokenStatus, Secret) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            if let Some(c) = self.converged().await {
                return c;
            }
            if Instant::now() > deadline {
                let st = status(&self.cr(CR).await);
                self.fail(format!(
                    "did not converge within {CONVERGE:?}; status {st:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After convergence: record what the Secret holds, then check (a), (b), (c).
    async fn observe(&mut self) {
        let (st, s) = self.wait_converged().await;
        let v = value(&s, &self.secret_key).expect("converged");
        let id = st.token_id.clone().unwrap_or_default();
        if !self.seen.iter().any(|x| x.value == v) {
            let issued = ts(&annotation(&s, "konnect-sa.dev/issued-at"))
                .map(|t| t.as_second())
                .unwrap_or_else(|| Timestamp::now().as_second());
            for old in self.seen.iter_mut().filter(|x| x.replaced_at.is_none()) {
                old.replaced_at = Some(issued);
            }
            self.seen.push(Seen {
                value: v.clone(),
                token_id: id.clone(),
                account: st.account_id.clone().unwrap_or_default(),
                place: (self.secret_name.clone(), self.secret_key.clone()),
                expires: ts(&st.expires_at).map_or(i64::MAX, |t| t.as_second()),
                replaced_at: None,
                user_revoked: false,
                place_lost: false,
            });
        }
        // (a)
        if !self.accepted(&v).await {
            self.fail(format!(
                "converged, but the Secret's token {id} does not authenticate"
            ));
        }
        // (b), including the old place after a move: it still holds its token while promised.
        self.check_promises("after convergence").await;
        let now = Timestamp::now().as_second();
        for (i, old) in self.seen.iter().enumerate() {
            // A place holds the last token written there (an older one was overwritten by a rotation).
            let latest_there = self.seen[i + 1..].iter().all(|x| x.place != old.place);
            if !latest_there
                || old.place_lost
                || old.place == (self.secret_name.clone(), self.secret_key.clone())
                || now + MARGIN >= old.promised_until()
                || st.previous_tokens.iter().all(|p| p.id != old.token_id)
            {
                continue;
            }
            let there = self
                .env
                .api::<Secret>()
                .get_opt(&old.place.0)
                .await
                .ok()
                .flatten()
                .and_then(|s| value(&s, &old.place.1));
            if there.as_deref() != Some(old.value.as_str()) {
                self.fail(format!(
                    "{:?} no longer holds token {} though it is still within its retention",
                    old.place, old.token_id
                ));
            }
        }
        // (c): our live tokens are the current one and previous ones within retention. A revocation
        // may be late by a takeover (lease) or a backoff after Konnect faults: given 30 s to happen.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = status(&self.cr(CR).await);
            let unexplained = self.unexplained_live(&st);
            if unexplained.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "tokens {unexplained:?} are live and neither current nor within retention (30 s after); status {st:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let by = self.cr(BYSTANDER).await;
        let by_secret = self.env.api::<Secret>().get(BYSTANDER).await.unwrap();
        let by_value = value(&by_secret, "token").unwrap_or_default();
        if status(&by).revision != Some(1) || !self.accepted(&by_value).await {
            self.fail("the bystander's token was touched".into());
        }
    }

    /// Live tokens of ours that are neither current nor previous within retention (plus 5 s).
    fn unexplained_live(&self, st: &SystemAccountTokenStatus) -> Vec<String> {
        let now = Timestamp::now();
        let mut out = Vec::new();
        for account in self.accounts.values() {
            for t in self.env.sim.live_tokens(account) {
                if !t.name.contains(&format!(".{CR}.")) || Some(&t.id) == st.token_id.as_ref() {
                    continue;
                }
                let kept = st.previous_tokens.iter().any(|p| {
                    p.id == t.id
                        && p.revoke_at
                            .parse::<Timestamp>()
                            .is_ok_and(|at| at.checked_add(Duration::from_secs(5)).unwrap() > now)
                });
                if !kept {
                    out.push(t.name);
                }
            }
        }
        out
    }

    async fn patch_spec(&self, spec: serde_json::Value) {
        merge_patch(
            &self.env.api::<SystemAccountToken>(),
            CR,
            json!({ "spec": spec }),
        )
        .await;
    }

    /// Sends an admin request to the simulator until it answers (faults may be on).
    async fn admin(&self, method: reqwest::Method, path: &str) {
        let url = format!("{}{path}", self.env.sim.base_url());
        for _ in 0..100 {
            let r = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.env.sim.admin_token().expose())
                .send()
                .await;
            if matches!(r.map(|r| r.status().as_u16()), Ok(200..=299 | 404)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.fail(format!("the simulator never answered {method} {path}"));
    }

    /// The accounts' Konnect ids as their SystemAccounts record them now (one may be recreated).
    async fn refresh_accounts(&mut self) {
        for (name, id) in self.accounts.iter_mut() {
            if let Ok(a) = self.env.api::<SystemAccount>().get(name).await
                && let Some(new) = a.status.and_then(|s| s.id)
            {
                *id = new;
            }
        }
    }

    /// The token expires in Konnect (as if its lifetime had run out early): re-issued at the next check.
    async fn expire_current_in_konnect(&mut self) {
        let st = status(&self.cr(CR).await);
        let (Some(account), Some(id)) = (st.account_id, st.token_id) else {
            return;
        };
        self.env.sim.expire_token_now(&account, &id);
        for s in self.seen.iter_mut().filter(|s| s.token_id == id) {
            s.user_revoked = true;
        }
        self.revoked = Some(id);
    }

    /// Someone deletes life-b's account in Konnect: its SystemAccount recreates it, and a token on it
    /// is re-issued in the new account (every token of the old one went with it).
    async fn delete_account_b_in_konnect(&mut self) {
        let old = self.accounts["life-b"].clone();
        self.admin(
            reqwest::Method::DELETE,
            &format!("/v3/system-accounts/{old}"),
        )
        .await;
        for s in self.seen.iter_mut().filter(|s| s.account == old) {
            s.user_revoked = true;
        }
        let st = status(&self.cr(CR).await);
        if st.account_id.as_deref() == Some(old.as_str()) {
            self.revoked = st.token_id;
        }
        let deadline = Instant::now() + CONVERGE;
        loop {
            self.refresh_accounts().await;
            if self.accounts["life-b"] != old {
                break;
            }
            if Instant::now() > deadline {
                self.fail("life-b's account was not recreated".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn revoke_current_in_konnect(&mut self) {
        let st = status(&self.cr(CR).await);
        let (Some(account), Some(id)) = (st.account_id, st.token_id) else {
            return;
        };
        let url = format!(
            "{}/v3/system-accounts/{account}/access-tokens/{id}",
            self.env.sim.base_url()
        );
        for _ in 0..100 {
            let r = self
                .http
                .delete(&url)
                .bearer_auth(self.env.sim.admin_token().expose())
                .send()
                .await;
            if matches!(r.map(|r| r.status().as_u16()), Ok(204 | 404)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for s in self.seen.iter_mut().filter(|s| s.token_id == id) {
            s.user_revoked = true;
        }
        self.revoked = Some(id);
    }

    /// A Secret nobody owns at a new name: the move is refused (`SecretConflict`) and the current
    /// token stays in use; once the foreign Secret is gone the move goes ahead.
    async fn foreign_secret_at_new_name(&mut self) {
        let name = &format!("life-foreign-{}", self.trail.len());
        self.env.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{token: not-ours}}\n"
        ));
        self.patch_spec(json!({"secretName": name})).await;
        let api = self.env.api::<SystemAccountToken>();
        wait_for(&api, CR, CONVERGE, |t| {
            let st = status(t);
            st.observed_generation == t.metadata.generation
                && ready_of(&st.conditions)
                    .is_some_and(|(s, r, _)| s == "False" && r == "SecretConflict")
        })
        .await;
        self.check_promises("while the move is refused").await;
        let foreign = self.env.api::<Secret>().get(name).await.unwrap();
        if value(&foreign, "token").as_deref() != Some("not-ours") {
            self.fail("the foreign Secret was overwritten".into());
        }
        support::delete(&self.env.api::<Secret>(), name).await;
        // A fix made outside the object is picked up at once after any annotation.
        merge_patch(
            &api,
            CR,
            json!({"metadata": {"annotations": {"example.com/nudge": self.trail.len().to_string()}}}),
        )
        .await;
        self.secret_name = name.to_string();
    }

    async fn step(&mut self, rng: &mut StdRng, faults: &mut bool) {
        self.refresh_accounts().await;
        let roll = rng.random_range(0..100);
        let op: String = match roll {
            0..=9 => {
                let d = ["60s", "60.5s", "75s", "2m0.25s"][rng.random_range(0..4)];
                self.patch_spec(json!({"duration": d, "renewBefore": "20s"}))
                    .await;
                format!("duration {d}")
            }
            10..=15 => {
                let r = ["4s", "6s"][rng.random_range(0..2)];
                self.patch_spec(json!({"previousTokenRetention": r})).await;
                format!("previousTokenRetention {r}")
            }
            16..=27 => {
                self.rotations += 1;
                merge_patch(
                    &self.env.api::<SystemAccountToken>(),
                    CR,
                    json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": format!("r{}", self.rotations)}}}),
                )
                .await;
                format!("rotate r{}", self.rotations)
            }
            28..=36 => {
                let to = if self.secret_name == CR {
                    "life-moved"
                } else {
                    CR
                };
                self.patch_spec(json!({"secretName": to})).await;
                self.secret_name = to.to_string();
                format!("secretName -> {to}")
            }
            37..=45 => {
                let to = if self.secret_key == "token" {
                    "api-token"
                } else {
                    "token"
                };
                self.patch_spec(json!({"secretKey": to})).await;
                self.secret_key = to.to_string();
                format!("secretKey -> {to}")
            }
            46..=53 => {
                let (which, by_id) = (rng.random_range(0..2), rng.random_bool(0.5));
                let name = ["life-a", "life-b"][which];
                let r = if by_id {
                    json!({"id": self.accounts[name]})
                } else {
                    json!({"name": name})
                };
                // A merge patch would keep the other field: replace the reference whole (again on
                // a 409: the operator writes the status meanwhile).
                let api = self.env.api::<SystemAccountToken>();
                for attempt in 0.. {
                    let mut t = self.cr(CR).await;
                    t.metadata.managed_fields = None;
                    t.spec.system_account_ref = serde_json::from_value(r.clone()).unwrap();
                    match api.replace(CR, &Default::default(), &t).await {
                        Ok(_) => break,
                        Err(e) if attempt < 20 => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => self.fail(format!("replacing the spec: {e}")),
                    }
                }
                format!("systemAccountRef -> {r}")
            }
            54..=59 => {
                support::delete(&self.env.api::<Secret>(), &self.secret_name).await;
                let name = self.secret_name.clone();
                for s in self.seen.iter_mut().filter(|s| s.place.0 == name) {
                    s.place_lost = true;
                }
                format!("delete Secret {}", self.secret_name)
            }
            60..=64 => {
                let patch = json!({"data": {self.secret_key.clone(): null}});
                let _ = self
                    .env
                    .api::<Secret>()
                    .patch(
                        &self.secret_name,
                        &Default::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await;
                format!(
                    "remove key {} from Secret {}",
                    self.secret_key, self.secret_name
                )
            }
            65..=66 => {
                self.revoke_current_in_konnect().await;
                "revoke the current token in Konnect".into()
            }
            67 => {
                self.expire_current_in_konnect().await;
                "the current token expires in Konnect".into()
            }
            68 => {
                // Only while the token is on life-b by name: a reference by id would point at an
                // account that is gone for good (Ready=False until the spec changes).
                let t = self.cr(CR).await;
                if t.spec.system_account_ref.name.as_deref() == Some("life-b") {
                    self.delete_account_b_in_konnect().await;
                    "life-b's account deleted in Konnect (recreated by its SystemAccount)".into()
                } else {
                    "(life-b's account delete skipped: the token is not on it by name)".into()
                }
            }
            69 => {
                // life-b names a team two Konnect teams share: the account is not Ready, its tokens
                // keep working and rotating all the same.
                self.ambiguous = !self.ambiguous;
                let teams = if self.ambiguous {
                    json!([{"name": "dup"}])
                } else {
                    json!([])
                };
                merge_patch(
                    &self.env.api::<SystemAccount>(),
                    "life-b",
                    json!({"spec": {"teams": teams}}),
                )
                .await;
                format!("life-b's team ambiguous: {}", self.ambiguous)
            }
            70..=74 => {
                self.foreign_secret_at_new_name().await;
                "a foreign Secret at the new secretName".into()
            }
            75..=79 => {
                self.rotations += 1;
                merge_patch(
                    &self.env.api::<SystemAccountToken>(),
                    CR,
                    json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": format!("r{}", self.rotations)}}}),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
                self.partition().await;
                format!(
                    "rotate r{} and cut the leader off from the API server",
                    self.rotations
                )
            }
            80..=87 => {
                *faults = !*faults;
                self.env.set_faults(if *faults {
                    Faults {
                        rate_lost: 0.1,
                        rate_429: 0.15,
                        rate_5xx: 0.05,
                        retry_after_secs: 1,
                        latency_ms: 20,
                        ..Faults::default()
                    }
                } else {
                    Faults::default()
                });
                format!("Konnect faults {}", if *faults { "on" } else { "off" })
            }
            _ => {
                // Rotate, then kill the leader while it works (or hand over with SIGTERM).
                self.rotations += 1;
                merge_patch(
                    &self.env.api::<SystemAccountToken>(),
                    CR,
                    json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": format!("r{}", self.rotations)}}}),
                )
                .await;
                let graceful = rng.random_bool(0.3);
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
                self.kill(rng, graceful).await;
                format!(
                    "rotate r{} and {} the leader",
                    self.rotations,
                    if graceful { "SIGTERM" } else { "kill -9" }
                )
            }
        };
        self.trail.push(op);
        self.observe().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_lifecycle_keeps_its_promises_under_edits_faults_kills_and_handovers() {
    let seed: u64 = std::env::var("LIFECYCLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Timestamp::now().as_nanosecond() as u64);
    let steps: usize = std::env::var("LIFECYCLE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    println!("lifecycle seed {seed}, {steps} steps (replay with LIFECYCLE_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::start_with(SimConfig {
        seed: Some(seed),
        ..SimConfig::default()
    })
    .await;
    let mut run = Run {
        env,
        seed,
        trail: Vec::new(),
        seen: Vec::new(),
        accounts: BTreeMap::new(),
        replicas: Vec::new(),
        net: Net::new(),
        logs: Vec::new(),
        http: reqwest::Client::new(),
        secret_name: CR.into(),
        secret_key: "token".into(),
        rotations: 0,
        ambiguous: false,
        revoked: None,
    };
    // Two Konnect teams of one name: a SystemAccount that names it is ambiguous (not Ready).
    run.env.sim.seed_team("dup");
    run.env.sim.seed_team("dup");
    run.spawn("replica-1").await;
    run.spawn("replica-2").await;
    for name in ["life-a", "life-b"] {
        run.env.apply(&format!(
            "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {{name: {name}}}\nspec: {{description: lifecycle}}\n"
        ));
        let a = wait_for(&run.env.api::<SystemAccount>(), name, CONVERGE, |a| {
            a.status.as_ref().is_some_and(|s| s.id.is_some())
        })
        .await;
        run.accounts.insert(name, a.status.unwrap().id.unwrap());
    }
    run.env.apply(&format!(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {{name: {BYSTANDER}}}
spec: {{systemAccountRef: {{name: life-a}}, duration: 1h}}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {{name: {CR}}}
spec:
  systemAccountRef: {{name: life-a}}
  duration: 60s
  renewBefore: 20s
  previousTokenRetention: {MIN_RETENTION}s
"#
    ));
    wait_for(
        &run.env.api::<SystemAccountToken>(),
        BYSTANDER,
        CONVERGE,
        |t| status(t).revision == Some(1),
    )
    .await;
    run.trail.push("apply".into());
    run.observe().await;

    let mut faults = false;
    for _ in 0..steps {
        run.step(&mut rng, &mut faults).await;
    }

    // (d) No hot loop: faults off, converged, then a quiet window of three resync periods.
    run.env.set_faults(Faults::default());
    run.trail.push("faults off, quiet".into());
    run.observe().await;
    // Replaced tokens are revoked within their retention (at most 6 s here).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !status(&run.cr(CR).await).previous_tokens.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !status(&run.cr(CR).await).previous_tokens.is_empty() {
        let st = status(&run.cr(CR).await);
        run.fail(format!(
            "replaced tokens were not revoked within 30 s: {st:?}"
        ));
    }
    // The window: until the replicas have recorded six more drift checks of tokens (two tokens, three
    // sweeps), so it measures an operator that provably kept looking.
    let before = run.env.sim.counts();
    let start = run.token_drift_checks().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.token_drift_checks().await < start + 6 {
        if Instant::now() > deadline {
            run.fail("the operator stopped checking its tokens".to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = run.env.sim.counts();
    let delta: BTreeMap<&String, u64> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    let writes: u64 = delta
        .iter()
        .filter(|(k, _)| {
            k.starts_with("post-") || k.starts_with("delete-") || k.starts_with("patch-")
        })
        .map(|(_, d)| d)
        .sum();
    let reads: u64 = delta.values().sum::<u64>() - writes;
    // A renewal (60 s tokens renew about every 40 s) may fall in the window: 1 create + 1 revoke.
    // Reads: a drift check per object per resync period (2 tokens, 2 accounts, 3 periods) and slack.
    if writes > 2 || reads > 16 {
        run.fail(format!(
            "a quiet operator made {writes} Konnect writes and {reads} reads in three sweeps: {delta:?}"
        ));
    }

    // (e) No token value in any log line (trace level), Event or status.
    for r in &mut run.replicas {
        let _ = r.child.start_kill();
        let _ = r.child.wait().await;
    }
    let mut text = String::new();
    for log in &run.logs {
        text.push_str(&std::fs::read_to_string(log).unwrap_or_default());
    }
    assert!(text.contains("token issued"), "the logs captured the run");
    for e in run.env.kube.events() {
        text.push_str(&e.to_string());
    }
    for o in run.env.kube.list(
        "konnect-sa.dev",
        "v1alpha1",
        "systemaccounttokens",
        Some(NS),
    ) {
        text.push_str(&o["status"].to_string());
    }
    for s in &run.seen {
        // As Secret data travels: base64 (ByteString's JSON form).
        let b64 = serde_json::to_value(k8s_openapi::ByteString(s.value.clone().into_bytes()))
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        if text.contains(&s.value) || text.contains(&b64) {
            run.fail(format!(
                "token {} appears in a log line, Event or status",
                s.token_id
            ));
        }
    }
    assert!(
        !text.contains("spat_"),
        "seed {seed}: a token value outside its Secret"
    );
    let count = |what: &str| run.trail.iter().filter(|o| o.contains(what)).count();
    println!(
        "seed {seed}: {} operations ({} kill -9, {} SIGTERM, {} cut off), {} tokens seen, quiet window: {writes} writes, {reads} reads",
        run.trail.len(),
        count("kill -9"),
        count("SIGTERM"),
        count("cut the leader off"),
        run.seen.len()
    );
}
