//! The operator's own Konnect credential: the token file is watched and re-read, so a rotated
//! token is picked up under a running operator and the old one can be revoked without a failed
//! reconcile.
mod support;

use std::time::Duration;

use konnect_sa_operator::api::SystemAccount;
use konnect_sa_operator::konnect::{
    ClientConfig, CreateAccessToken, KonnectClient, RoleTuple, TokenSource, TokenValue,
};
use support::env::metric_total;
use support::kubelet::write_token;
use support::{TestEnv, eventually, ready_of, wait_for};

const T: Duration = Duration::from_secs(30);

fn identity_admin() -> RoleTuple {
    RoleTuple {
        role_name: "Admin".into(),
        entity_type_name: "Identity".into(),
        entity_id: "*".into(),
        entity_region: "*".into(),
    }
}

/// An account with the Identity Admin role, made by a person in Konnect; returns its id.
fn operator_account(env: &TestEnv) -> String {
    let acc = env.sim.seed_account("operator", "runs the operator", false);
    env.sim.seed_assignment(&acc.id, identity_admin());
    acc.id
}

fn admin_client(env: &TestEnv) -> KonnectClient {
    KonnectClient::new(ClientConfig::new(env.sim.base_url(), env.sim.admin_token())).unwrap()
}

/// Issues a spat_ for the account as a person would (id, value).
async fn issue(env: &TestEnv, account: &str, name: &str) -> (String, TokenValue) {
    let created = admin_client(env)
        .create_access_token(
            account,
            &CreateAccessToken {
                name: name.into(),
                expires_at: (k8s_openapi::jiff::Timestamp::now()
                    + k8s_openapi::jiff::SignedDuration::from_hours(24))
                .to_string(),
            },
        )
        .await
        .unwrap();
    (created.meta.id.clone(), created.token.clone())
}

fn used(env: &TestEnv, account: &str, token_id: &str) -> bool {
    env.sim
        .live_tokens(account)
        .iter()
        .any(|t| t.id == token_id && t.last_used_at.is_some())
}

fn ready(a: &SystemAccount) -> bool {
    ready_of(&a.status.clone().unwrap_or_default().conditions).is_some_and(|(s, _, _)| s == "True")
}

async fn metrics(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_token_file_is_used_without_restart_and_the_old_token_can_go() {
    let mut env = TestEnv::start().await;
    let account = operator_account(&env);
    let (old_id, old) = issue(&env, &account, "first").await;
    let mount = env.dir.path().join("konnect-token");
    let file = write_token(&mount, old.expose());
    let addr = format!("127.0.0.1:{}", support::env::free_port());
    let file_arg = file.display().to_string();
    env.start_operator(&["--konnect-token-file", &file_arg, "--metrics-addr", &addr])
        .await;

    let api = env.api::<SystemAccount>();
    env.apply("apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {name: before}\nspec: {}\n");
    wait_for(&api, "before", T, ready).await;
    assert!(
        used(&env, &account, &old_id),
        "the operator runs on the file's token"
    );

    // The Secret is rotated: the kubelet swaps the new value in; the operator picks it up.
    let (new_id, new) = issue(&env, &account, "second").await;
    write_token(&mount, new.expose());
    env.apply("apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {name: during}\nspec: {}\n");
    wait_for(&api, "during", T, ready).await;
    assert!(
        eventually(T, || used(&env, &account, &new_id)).await,
        "the new token is used"
    );

    // The old token is revoked: everything keeps converging, and nothing failed on the way.
    admin_client(&env)
        .delete_access_token(&account, &old_id)
        .await
        .unwrap();
    env.apply("apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {name: after}\nspec: {}\n");
    wait_for(&api, "after", T, ready).await;
    for name in ["before", "during"] {
        assert!(ready(&api.get(name).await.unwrap()), "{name} stays Ready");
    }
    let text = metrics(&addr).await;
    assert_eq!(
        metric_total(&text, |l| l
            .starts_with("konnect_sa_reconcile_errors_total")),
        0,
        "no reconcile failed:\n{text}"
    );
    assert_eq!(
        metric_total(&text, |l| l
            .starts_with("konnect_sa_konnect_requests_total")
            && l.contains("code=\"401\"")),
        0,
        "the old token was never sent after it was revoked:\n{text}"
    );
    env.stop_operator().await;
}

/// A 401 re-reads the file once: a request right after a swap and a revocation still succeeds,
/// even before the watch has looked at the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_reads_the_token_file_again_before_it_counts() {
    let env = TestEnv::start().await;
    let account = operator_account(&env);
    let (old_id, old) = issue(&env, &account, "first").await;
    let mount = env.dir.path().join("mount");
    let path = write_token(&mount, old.expose());
    let (file, token) = konnect_sa_operator::konnect::TokenFile::open(&path).unwrap();
    let file = std::sync::Arc::new(file);
    let mut config = ClientConfig::new(env.sim.base_url(), token.unwrap());
    config.token_source = Some(file.clone() as std::sync::Arc<dyn TokenSource>);
    let client = KonnectClient::new(config).unwrap();
    client.me().await.expect("the first token works");

    let (_, new) = issue(&env, &account, "second").await;
    write_token(&mount, new.expose());
    admin_client(&env)
        .delete_access_token(&account, &old_id)
        .await
        .unwrap();
    client
        .me()
        .await
        .expect("the 401 made it read the new token");
    assert!(client.uses_token(&new));

    // A token that is simply wrong still fails: one re-read, not a loop.
    write_token(&mount, "spat_notarealtokennotarealtokennotarealtoken000000");
    admin_client(&env)
        .delete_access_token(&account, &{ env.sim.live_tokens(&account)[0].id.clone() })
        .await
        .unwrap();
    let err = client.me().await.expect_err("a rejected token is an error");
    assert!(err.to_string().contains("401"), "{err}");
}

/// A valid token without the Identity Admin role is told apart from a rejected one, and the
/// object recovers once the role is assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_without_identity_admin_says_so_and_recovers_when_the_role_is_given() {
    let mut env = TestEnv::start().await;
    env.start_operator(&[]).await;
    let weak = env.sim.seed_account("weak", "no roles yet", false);
    let (_, token) = issue(&env, &weak.id, "t").await;
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: weak-auth}}\nstringData: {{token: {}}}\n---\n\
         apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {{name: weakling}}\n\
         spec: {{konnect: {{authSecretRef: {{name: weak-auth}}}}}}\n",
        token.expose()
    ));
    let api = env.api::<SystemAccount>();
    let sa = wait_for(&api, "weakling", T, |a| {
        ready_of(&a.status.clone().unwrap_or_default().conditions)
            .is_some_and(|(_, r, _)| r == "AuthFailed")
    })
    .await;
    let (_, _, msg) = ready_of(&sa.status.unwrap().conditions).unwrap();
    assert!(
        msg.contains("403")
            && msg.contains("lacks the Identity Admin role")
            && !msg.contains("rejected"),
        "{msg}"
    );
    assert!(!msg.contains("spat_"), "{msg}");
    env.sim.seed_assignment(&weak.id, identity_admin());
    wait_for(&api, "weakling", Duration::from_secs(60), ready).await;
    env.stop_operator().await;
}
