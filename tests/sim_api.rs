//! The simulator in-process over HTTP: the rules a client relies on, faults, admin endpoints,
//! the journal, and that no token value reaches a log line or a Debug output.
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use konnect_sa_operator::sim::{Faults, SeedAccount, SeedData, SeedTeam, SimConfig, Simulator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(base: String, token: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        logs();
        Api {
            http: reqwest::Client::builder().build().unwrap(),
            base,
            token: token.to_string(),
        }
    }
    fn with_token(&self, token: &str) -> Self {
        Api::new(self.base.clone(), token)
    }
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (s, _, v) = self
            .call_full(method, path, body)
            .await
            .expect("transport error");
        (s, v)
    }
    /// Status, content type, JSON body (Null when not JSON).
    async fn call_full(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, String, Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await?;
        Ok((
            status,
            ct,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        ))
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
}

fn expiry(days: i64) -> String {
    (Timestamp::now() + SignedDuration::from_hours(24 * days)).to_string()
}

async fn start(journal: bool) -> (konnect_sa_operator::sim::RunningSim, Api) {
    let sim = Simulator::start(SimConfig {
        journal,
        seed: Some(1),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let api = Api::new(sim.base_url(), sim.admin_token().expose());
    (sim, api)
}

#[tokio::test]
async fn accounts_tokens_roles_teams_follow_the_spec_rules() {
    let (sim, api) = start(false).await;
    let acc = |n: &str| json!({"name": n, "description": "d"});

    let (s, a) = api.post("/v3/system-accounts", acc("a")).await;
    assert_eq!(s, 201);
    let id = a["id"].as_str().unwrap().to_string();
    assert_eq!(api.post("/v3/system-accounts", acc("a")).await.0, 409);
    // description is required on v3 (not on v2).
    let (s, e) = api.post("/v3/system-accounts", json!({"name": "b"})).await;
    assert_eq!(
        (s, e["invalid_parameters"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("description"))
    );
    assert_eq!(
        api.post("/v2/system-accounts", json!({"name": "b"}))
            .await
            .0,
        201
    );
    let (s, _) = api
        .call(
            Method::PATCH,
            &format!("/v3/system-accounts/{id}"),
            Some(json!({"name": "b"})),
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(api.get("/v3/system-accounts/nope").await.0, 404);

    // Filters and pagination.
    for i in 0..12 {
        api.post("/v3/system-accounts", acc(&format!("page-{i:02}")))
            .await;
    }
    let (s, p) = api
        .get("/v3/system-accounts?filter[name][contains]=page-&page[size]=5&page[number]=3")
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        p["meta"]["page"],
        json!({"number": 3, "size": 5, "total": 12})
    );
    assert_eq!(p["data"].as_array().unwrap().len(), 2);
    let (_, p) = api.get("/v3/system-accounts?filter[name]=page-03").await;
    assert_eq!(p["data"][0]["name"], "page-03");
    let (_, p) = api
        .get("/v3/system-accounts?filter%5Bname%5D%5Beq%5D=a&filter[konnect_managed]=false")
        .await;
    assert_eq!(p["meta"]["page"]["total"], 1);
    let (s, e) = api.get("/v3/system-accounts?filter[name][like]=a").await;
    assert_eq!(s, 400);
    assert_eq!(
        e["invalid_parameters"][0],
        json!({"field": "[filter][name][like]", "reason": "[like] is not a supported filter operation"})
    );

    // Tokens: 409 per account, value only on create, patch name only.
    let tokens = format!("/v3/system-accounts/{id}/access-tokens");
    let (s, t) = api
        .post(&tokens, json!({"name": "t", "expires_at": expiry(30)}))
        .await;
    assert_eq!(s, 201);
    let tid = t["id"].as_str().unwrap().to_string();
    let spat = t["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.post(&tokens, json!({"name": "t", "expires_at": expiry(30)}))
            .await
            .0,
        409
    );
    let (s, e) = api
        .post(&tokens, json!({"name": "u", "expires_at": expiry(400)}))
        .await;
    assert_eq!(
        (s, e["invalid_parameters"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("expires_at"))
    );
    let (_, got) = api.get(&format!("{tokens}/{tid}")).await;
    assert!(got.get("token").is_none());
    let (s, p) = api
        .call(
            Method::PATCH,
            &format!("{tokens}/{tid}"),
            Some(json!({"name": "t2"})),
        )
        .await;
    assert_eq!((s, p["name"].as_str()), (StatusCode::OK, Some("t2")));
    let (_, l) = api.get(&format!("{tokens}?filter[name][eq]=t2")).await;
    assert_eq!(l["meta"]["page"]["total"], 1);

    // The token authenticates until deleted.
    let as_sa = api.with_token(&spat);
    assert_eq!(as_sa.get("/v3/organizations/me").await.0, 200);
    assert_eq!(
        as_sa.get("/v3/system-accounts").await.0,
        403,
        "an account without the Identity Admin role may not manage identities"
    );
    assert_eq!(sim.live_tokens(&id).len(), 1);
    assert_eq!(
        api.call(Method::DELETE, &format!("{tokens}/{tid}"), None)
            .await
            .0,
        204
    );
    assert_eq!(as_sa.get("/v3/organizations/me").await.0, 401);
    assert_eq!(
        api.call(Method::DELETE, &format!("{tokens}/{tid}"), None)
            .await
            .0,
        404
    );

    // Roles.
    let roles = format!("/v3/system-accounts/{id}/assigned-roles");
    let role = json!({"role_name": "Viewer", "entity_type_name": "Control Planes", "entity_id": "*", "entity_region": "eu"});
    assert_eq!(api.post(&roles, role.clone()).await.0, 201);
    assert_eq!(api.post(&roles, role).await.0, 409);
    let (s, l) = api
        .get(&format!("{roles}?filter[role_name][eq]=Viewer"))
        .await;
    assert_eq!(
        (s, l["data"].as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    assert_eq!(
        api.get(&format!("{roles}?filter[role_name][contains]=V"))
            .await
            .0,
        400
    );

    // Teams and membership.
    let (_, t1) = api.post("/v3/teams", json!({"name": "ops"})).await;
    let (s, _) = api.post("/v3/teams", json!({"name": "ops"})).await;
    assert_eq!(s, 201, "team names are not unique");
    let team = t1["id"].as_str().unwrap();
    assert!(t1["description"].is_null() && t1["labels"].is_object());
    let members = format!("/v3/teams/{team}/system-accounts");
    let (s, _, _) = api
        .call_full(Method::POST, &members, Some(json!({"id": id})))
        .await
        .unwrap();
    assert_eq!(s, 201);
    assert_eq!(api.post(&members, json!({"id": id})).await.0, 409);
    let (_, l) = api.get(&members).await;
    assert_eq!(l["data"][0]["id"], id.as_str());
    let (_, l) = api
        .get(&format!(
            "/v3/system-accounts/{id}/teams?filter[name][eq]=ops"
        ))
        .await;
    assert_eq!(l["meta"]["page"]["total"], 1);

    // Deleting the account takes its tokens, roles and memberships with it.
    let (_, t) = api
        .post(&tokens, json!({"name": "t3", "expires_at": expiry(30)}))
        .await;
    let spat3 = t["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.call(Method::DELETE, &format!("/v3/system-accounts/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        api.with_token(&spat3).get("/v3/organizations/me").await.0,
        401
    );
    let (_, l) = api.get(&members).await;
    assert_eq!(l["meta"]["page"]["total"], 0);
    assert!(sim.state().memberships.is_empty());

    // Reference data.
    let (s, r) = api.get("/v3/roles").await;
    assert_eq!(
        (s, r["control_planes"]["name"].as_str()),
        (StatusCode::OK, Some("Control Planes"))
    );
    let counts = sim.counts();
    assert_eq!(counts["post-system-accounts"], 15);
    assert_eq!(counts["v2-post-system-accounts"], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn konnect_managed_accounts_refuse_patch_and_delete_and_seed_data_loads() {
    let sim = Simulator::start(SimConfig {
        seed_data: SeedData {
            teams: vec![SeedTeam {
                name: "Organization Admin".into(),
                system_team: true,
                ..SeedTeam::default()
            }],
            system_accounts: vec![SeedAccount {
                name: "mesh-zone-1".into(),
                konnect_managed: true,
                teams: vec!["Organization Admin".into()],
                ..SeedAccount::default()
            }],
            ..SeedData::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let api = Api::new(sim.base_url(), sim.admin_token().expose());
    let (_, l) = api
        .get("/v3/system-accounts?filter[konnect_managed]=true")
        .await;
    let id = l["data"][0]["id"].as_str().unwrap().to_string();
    let (s, e) = api
        .call(
            Method::PATCH,
            &format!("/v3/system-accounts/{id}"),
            Some(json!({"description": "x"})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(e["detail"].as_str().unwrap().contains("managed by Konnect"));
    assert_eq!(
        api.call(Method::DELETE, &format!("/v3/system-accounts/{id}"), None)
            .await
            .0,
        400
    );
    let (_, teams) = api.get(&format!("/v3/system-accounts/{id}/teams")).await;
    assert_eq!(teams["data"][0]["system_team"], true);

    // Runtime seeding through the admin API, then reset back to the seed data.
    assert_eq!(
        api.post("/_sim/system-accounts", json!({"name": "extra"}))
            .await
            .0,
        201
    );
    assert_eq!(sim.state().accounts.len(), 2);
    assert_eq!(api.post("/_sim/reset", json!({})).await.0, 204);
    assert_eq!(sim.state().accounts.len(), 1);
}

#[tokio::test]
async fn faults_429_5xx_rate_limit_and_lost_responses() {
    let (sim, api) = start(false).await;
    let body = json!({"name": "x", "description": ""});

    sim.set_faults(Faults {
        rate_429: 1.0,
        retry_after_secs: 7,
        ..Faults::default()
    });
    let resp = api
        .http
        .get(format!("{}/v3/system-accounts", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"message":"API rate limit exceeded"}"#
    );
    // Admin endpoints are never faulted.
    assert_eq!(api.get("/_sim/state").await.0, 200);

    sim.set_faults(Faults {
        rate_5xx: 1.0,
        ..Faults::default()
    });
    let (s, ct, _) = api
        .call_full(Method::POST, "/v3/system-accounts", Some(body.clone()))
        .await
        .unwrap();
    assert_eq!((s.as_u16(), ct.as_str()), (503, "application/problem+json"));
    assert!(
        sim.state().accounts.is_empty(),
        "a 5xx before the operation changes nothing"
    );

    // Lost responses: the create commits, the caller sees 502, 503 or a cut connection.
    sim.set_faults(Faults {
        rate_lost: 1.0,
        ..Faults::default()
    });
    let (mut dropped, mut gateway) = (0, 0);
    for i in 0..30 {
        let b = json!({"name": format!("lost-{i}"), "description": ""});
        match api
            .call_full(Method::POST, "/v3/system-accounts", Some(b))
            .await
        {
            Err(_) => dropped += 1,
            Ok((s, _, _)) => {
                assert!(s == 502 || s == 503, "{s}");
                gateway += 1;
            }
        }
    }
    assert!(
        dropped > 0 && gateway > 0,
        "both variants occur: {dropped} dropped, {gateway} 5xx"
    );
    assert_eq!(
        sim.state().accounts.len(),
        30,
        "every lost create committed"
    );

    // The per-minute limit, changed at runtime over the admin API.
    let (s, _) = api
        .call(
            Method::PUT,
            "/_sim/faults",
            Some(json!({"requests_per_minute": 2})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(sim.faults().requests_per_minute, Some(2));
    let mut statuses = Vec::new();
    let mut retry_after = 0;
    for _ in 0..3 {
        let resp = api
            .http
            .get(format!("{}/v3/organizations/me", api.base))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if let Some(v) = resp.headers().get("retry-after") {
            retry_after = v.to_str().unwrap().parse().unwrap();
        }
    }
    // The minute may roll over between requests; then all three pass.
    if statuses != [200, 200, 200] {
        assert_eq!(statuses[2], 429, "{statuses:?}");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(
        api.call(Method::PUT, "/_sim/faults", Some(json!({"rate_429": 2.0})))
            .await
            .0,
        400
    );

    let (_, counts) = api.get("/_sim/counts").await;
    assert!(
        counts["operations"]["post-system-accounts"]
            .as_u64()
            .unwrap()
            >= 31
    );
    assert!(!counts["per_minute"].as_array().unwrap().is_empty());
    // The admin API wants the admin token.
    assert_eq!(api.with_token("kpat_wrong").get("/_sim/state").await.0, 401);
}

#[tokio::test]
async fn the_journal_records_operations_with_bodies_and_expiry_stops_auth() {
    let (sim, api) = start(true).await;
    let (_, a) = api
        .post(
            "/v3/system-accounts",
            json!({"name": "j", "description": ""}),
        )
        .await;
    let id = a["id"].as_str().unwrap();
    let (_, t) = api
        .post(
            &format!("/v3/system-accounts/{id}/access-tokens"),
            json!({"name": "t", "expires_at": expiry(1)}),
        )
        .await;
    let spat = t["token"].as_str().unwrap();
    assert_eq!(
        api.with_token(spat).get("/v3/organizations/me").await.0,
        200
    );
    assert!(sim.expire_token_now(id, t["id"].as_str().unwrap()));
    assert_eq!(
        api.with_token(spat).get("/v3/organizations/me").await.0,
        401
    );
    assert!(sim.live_tokens(id).is_empty());
    assert_eq!(sim.state().accounts[0].tokens.len(), 1);

    let j = sim.journal();
    let ops: Vec<_> = j.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(
        ops,
        [
            "post-system-accounts",
            "post-system-accounts-id-access-tokens",
            "get-organizations-me",
            "get-organizations-me"
        ]
    );
    assert_eq!(j[3].status, 401, "rejected requests are journaled too");
    assert_eq!(j[1].status, 201);
    assert_eq!(j[1].request_body.as_ref().unwrap()["name"], "t");
    assert_eq!(j[1].response_body.as_ref().unwrap()["token"], spat);
    assert!(!format!("{j:?}").contains("spat_"));
}

/// A `MakeWriter` that appends to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// All log output of this test binary (a global subscriber: every test's requests land here).
fn logs() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,konnect_sa_operator=trace",
            ))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        capture
    })
}

#[tokio::test]
async fn no_token_value_in_logs_or_debug_output() {
    let capture = logs();
    let config = SimConfig {
        journal: true,
        ..SimConfig::default()
    };
    let admin = config.admin_token.expose().to_string();
    let config_debug = format!("{config:?}");
    let sim = Simulator::start(config).await.unwrap();
    let api = Api::new(sim.base_url(), &admin);
    let (_, a) = api
        .post(
            "/v3/system-accounts",
            json!({"name": "l", "description": ""}),
        )
        .await;
    let id = a["id"].as_str().unwrap();
    let (_, t) = api
        .post(
            &format!("/v3/system-accounts/{id}/access-tokens"),
            json!({"name": "t", "expires_at": expiry(1)}),
        )
        .await;
    let spat = t["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.with_token(&spat).get("/v3/organizations/me").await.0,
        200
    );
    assert_eq!(
        api.with_token("spat_bogus")
            .get("/v3/organizations/me")
            .await
            .0,
        401
    );

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("post-system-accounts-id-access-tokens"),
        "requests are logged:\n{logs}"
    );
    let debug = format!(
        "{config_debug} {sim:?} {:?} {:?} {:?} {:?}",
        sim.state(),
        sim.journal(),
        sim.admin_token(),
        sim.faults()
    );
    for text in [&logs, &debug] {
        for secret in [spat.as_str(), admin.as_str(), "spat_", "kpat_"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
    }
    let args = <SimCli as clap::Parser>::parse_from(["sim", "--admin-token", &admin]);
    assert!(!format!("{:?}", args.args).contains("kpat_"));
}

#[derive(clap::Parser)]
struct SimCli {
    #[command(flatten)]
    args: konnect_sa_operator::sim::SimArgs,
}

/// Like Konnect: a `spat_` manages identities only with the Identity Admin role (directly or
/// through the Organization Admin team); the token check works for any token; a person's `kpat_`
/// (made and revoked through the admin endpoints) may do everything until revoked.
#[tokio::test]
async fn a_spat_needs_identity_admin_and_personal_tokens_come_and_go() {
    let (sim, api) = start(false).await;
    let mk = |n: &str| json!({"name": n, "description": "d"});
    let (_, a) = api.post("/v3/system-accounts", mk("direct")).await;
    let (_, b) = api.post("/v3/system-accounts", mk("via-team")).await;
    let spat = |id: String| {
        let api = &api;
        async move {
            let (_, t) = api
                .post(
                    &format!("/v3/system-accounts/{id}/access-tokens"),
                    json!({"name": "t", "expires_at": expiry(1)}),
                )
                .await;
            api.with_token(t["token"].as_str().unwrap())
        }
    };
    let direct = spat(a["id"].as_str().unwrap().to_string()).await;
    let via_team = spat(b["id"].as_str().unwrap().to_string()).await;
    for who in [&direct, &via_team] {
        assert_eq!(who.get("/v3/organizations/me").await.0, 200);
        assert_eq!(who.get("/v3/roles").await.0, 200);
        let (s, e) = who.get("/v3/system-accounts").await;
        assert_eq!(
            (s, e["status"].as_u64()),
            (StatusCode::FORBIDDEN, Some(403))
        );
        assert_eq!(who.post("/v3/teams", json!({"name": "x"})).await.0, 403);
    }
    // A role on something else is not enough; Identity Admin is.
    let roles = format!(
        "/v3/system-accounts/{}/assigned-roles",
        a["id"].as_str().unwrap()
    );
    api.post(&roles, json!({"role_name": "Admin", "entity_type_name": "Control Planes", "entity_id": "*", "entity_region": "*"})).await;
    assert_eq!(direct.get("/v3/system-accounts").await.0, 403);
    let (s, identity_admin) = api
        .post(&roles, json!({"role_name": "Admin", "entity_type_name": "Identity", "entity_id": "*", "entity_region": "*"}))
        .await;
    assert_eq!(s, 201);
    assert_eq!(direct.get("/v3/system-accounts").await.0, 200);
    // The Organization Admin team grants it too.
    let team = sim.seed_team("Organization Admin");
    sim.seed_membership(&team.id, b["id"].as_str().unwrap());
    assert_eq!(via_team.get("/v3/system-accounts").await.0, 200);
    // Taken away, it is gone at once.
    let role_path = format!("{roles}/{}", identity_admin["id"].as_str().unwrap());
    assert_eq!(api.call(Method::DELETE, &role_path, None).await.0, 204);
    assert_eq!(direct.get("/v3/system-accounts").await.0, 403);

    // Personal tokens: admin endpoint only; full access until revoked.
    let (s, _) = direct
        .post("/_sim/personal-access-tokens", json!({"name": "alice"}))
        .await;
    assert_eq!(s, 401, "only the admin makes personal tokens");
    let (s, p) = api
        .post("/_sim/personal-access-tokens", json!({"name": "alice"}))
        .await;
    assert_eq!(s, 201);
    let kpat = p["token"].as_str().unwrap();
    assert!(kpat.starts_with("kpat_"));
    let alice = api.with_token(kpat);
    assert_eq!(alice.get("/v3/system-accounts").await.0, 200);
    let revoke = format!("/_sim/personal-access-tokens/{}", p["id"].as_str().unwrap());
    assert_eq!(api.call(Method::DELETE, &revoke, None).await.0, 204);
    assert_eq!(alice.get("/v3/organizations/me").await.0, 401);
    assert_eq!(api.call(Method::DELETE, &revoke, None).await.0, 404);
}

/// Team update and delete, as the spec has them (`update-team`, `delete-team`).
#[tokio::test]
async fn teams_can_be_updated_and_deleted_and_take_their_memberships_along() {
    let sim = Simulator::start(SimConfig {
        seed: Some(3),
        seed_data: SeedData {
            teams: vec![SeedTeam {
                name: "Organization Admin".into(),
                system_team: true,
                ..SeedTeam::default()
            }],
            ..SeedData::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let api = Api::new(sim.base_url(), sim.admin_token().expose());
    let (_, team) = api
        .post(
            "/v3/teams",
            json!({"name": "ops", "description": "Ops", "labels": {"env": "prod", "tier": "1"}}),
        )
        .await;
    let path = format!("/v3/teams/{}", team["id"].as_str().unwrap());

    // PATCH replaces the given fields and merges labels: a null value removes its key.
    let (s, t) = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"name": "ops-eu", "labels": {"env": "dev", "tier": null, "region": "eu"}})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (&t["name"], &t["description"], &t["labels"]),
        (
            &json!("ops-eu"),
            &json!("Ops"),
            &json!({"env": "dev", "region": "eu"})
        )
    );
    assert_eq!(
        api.get(&path).await.1["name"],
        "ops-eu",
        "the change is stored"
    );
    let (s, t) = api
        .call(Method::PATCH, &path, Some(json!({"labels": null})))
        .await;
    assert_eq!((s, &t["labels"]), (StatusCode::OK, &json!({})));
    for bad in [
        json!({"name": ""}),
        json!({"description": null}),
        json!({"labels": {"env": "not valid"}}),
        json!({"labels": {"konnect-owned": "x"}}),
    ] {
        let (s, e) = api.call(Method::PATCH, &path, Some(bad.clone())).await;
        assert_eq!(s, 400, "{bad}");
        assert!(
            e["invalid_parameters"][0]["field"].is_string(),
            "{bad}: {e}"
        );
    }
    let missing = "/v3/teams/00000000-0000-4000-8000-000000000000";
    assert_eq!(
        api.call(Method::PATCH, missing, Some(json!({"name": "x"})))
            .await
            .0,
        404
    );

    // The predefined team can be neither changed nor deleted.
    let (_, l) = api
        .get("/v3/teams?filter[name][eq]=Organization%20Admin")
        .await;
    let admin = format!("/v3/teams/{}", l["data"][0]["id"].as_str().unwrap());
    let (s, e) = api
        .call(Method::PATCH, &admin, Some(json!({"name": "Admins"})))
        .await;
    assert_eq!(
        (s, e["invalid_parameters"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("system_team"))
    );
    assert_eq!(api.call(Method::DELETE, &admin, None).await.0, 400);
    assert_eq!(api.get(&admin).await.1["name"], "Organization Admin");

    // DELETE takes the memberships with it; the accounts stay.
    let account = sim.seed_account("ci", "d", false);
    sim.seed_membership(team["id"].as_str().unwrap(), &account.id);
    assert_eq!(api.call(Method::DELETE, &path, None).await.0, 204);
    assert_eq!(api.get(&path).await.0, 404);
    assert_eq!(api.call(Method::DELETE, &path, None).await.0, 404);
    assert_eq!(api.get(&format!("{path}/system-accounts")).await.0, 404);
    let (_, teams) = api
        .get(&format!("/v3/system-accounts/{}/teams", account.id))
        .await;
    assert_eq!(teams["meta"]["page"]["total"], 0);
    assert!(sim.state().memberships.is_empty());
    assert_eq!(
        api.get(&format!("/v3/system-accounts/{}", account.id))
            .await
            .0,
        200
    );

    // The spec lists GET, PATCH and DELETE for a team: a 405 names them.
    let resp = api
        .http
        .put(format!("{}{admin}", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let allow = resp.headers()["allow"].to_str().unwrap().to_string();
    for m in ["GET", "PATCH", "DELETE"] {
        assert!(allow.contains(m), "{allow}");
    }
    sim.shutdown().await;
}

/// `filter[labels.<key>][eq|contains|exists]` on `GET /v3/teams`, and the `Labels` limits on create.
#[tokio::test]
async fn teams_are_filtered_by_label_and_labels_keep_the_spec_limits() {
    let (sim, api) = start(false).await;
    for (name, labels) in [
        ("a", json!({"env": "prod", "tier": "gold"})),
        ("b", json!({"env": "prod-eu"})),
        ("c", json!({})),
    ] {
        assert_eq!(
            api.post("/v3/teams", json!({"name": name, "labels": labels}))
                .await
                .0,
            201
        );
    }
    let names = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (query, want) in [
        ("filter[labels.env][eq]=prod", vec!["a"]),
        ("filter[labels.env]=prod", vec!["a"]),
        ("filter%5Blabels%5D%5Benv%5D%5Beq%5D=prod", vec!["a"]),
        ("filter[labels.env][contains]=PROD", vec!["a", "b"]),
        ("filter[labels.tier][exists]=true", vec!["a"]),
        ("filter[labels.env][exists]=false", vec!["c"]),
        (
            "filter[labels.env][contains]=prod&filter[name][eq]=b",
            vec!["b"],
        ),
    ] {
        let (s, page) = api.get(&format!("/v3/teams?{query}")).await;
        assert_eq!(
            (s, names(&page)),
            (StatusCode::OK, want.iter().map(|n| n.to_string()).collect()),
            "{query}"
        );
    }
    let (s, e) = api.get("/v3/teams?filter[labels.env][startswith]=p").await;
    assert_eq!(
        (s, e["invalid_parameters"][0]["field"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("[filter][labels.env][startswith]")
        )
    );
    assert_eq!(
        api.get("/v3/system-accounts?filter[labels.env]=prod")
            .await
            .0,
        400,
        "only teams have labels"
    );

    // At most 50 labels; a refused team is not created.
    let labels = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let (s, e) = api
        .post("/v3/teams", json!({"name": "many", "labels": labels(51)}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        e["invalid_parameters"],
        json!([{"field": "labels", "rule": "max_items", "maximum": 50, "reason": "must have at most 50 labels", "source": "body"}])
    );
    let (_, l) = api.get("/v3/teams?filter[name][eq]=many").await;
    assert_eq!(l["meta"]["page"]["total"], 0);
    assert_eq!(
        api.post("/v3/teams", json!({"name": "fifty", "labels": labels(50)}))
            .await
            .0,
        201
    );
    for bad in [
        json!({"name": "x", "labels": null}),
        json!({"name": "x", "description": null}),
        json!({"name": "x", "description": ""}),
        json!({"name": "x".repeat(251)}),
        json!({"name": "x", "labels": {"env": 1}}),
    ] {
        assert_eq!(api.post("/v3/teams", bad.clone()).await.0, 400, "{bad}");
    }
    sim.shutdown().await;
}

/// Fixes found by the schemathesis run (.ci/sim-conformance.py): unique `invalid_parameters`, empty and large
/// page parameters, a whitespace body.
#[tokio::test]
async fn query_and_body_edge_cases_follow_the_spec() {
    let (sim, api) = start(false).await;
    // uniqueItems: the same bad parameter twice is one problem.
    let (s, e) = api
        .get("/v3/system-accounts?page[size]=x&page[size]=x")
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["invalid_parameters"].as_array().unwrap().len(), 1, "{e}");
    // allowEmptyValue: an empty page parameter is the default; the spec sets no maximum size.
    let (s, p) = api.get("/v3/teams?page[size]=&page[number]=").await;
    assert_eq!(
        (s, &p["meta"]["page"]["size"]),
        (StatusCode::OK, &json!(10))
    );
    let (s, p) = api.get("/v3/teams?page[size]=1000").await;
    assert_eq!(
        (s, &p["meta"]["page"]["size"]),
        (StatusCode::OK, &json!(1000))
    );
    assert_eq!(api.get("/v3/teams?page[size]=0").await.0, 400);
    // Whitespace is not a JSON body (an empty body still reads as `{}`).
    let resp = api
        .http
        .post(format!("{}/v3/teams", api.base))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body("\t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    sim.shutdown().await;
}
