//! The Kubernetes API stand-in (tests/kube-standin, a crate of the workspace) driven by the real kube client, watcher and Controller:
//! if these pass, controller integration tests run against semantics a real API server would show.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use support::FakeKube;
use support::kube_api::DeleteOutcome;

const NS: &str = "team-a";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crds")
}

async fn start() -> (FakeKube, kube::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = FakeKube::start(&fixture_dir()).await;
    // Namespaces must exist before anything is created in them, as in a real cluster.
    for ns in [NS, "a", "b"] {
        kube.create_namespace(ns);
    }
    let client = kube.client();
    (kube, client)
}

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.dev", "v1", "Widget"),
        "widgets",
    )
}

fn widgets(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &widget_resource())
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    let mut w = DynamicObject::new(name, &widget_resource());
    w.data = json!({"spec": spec});
    w
}

fn secret(name: &str, labels: &[(&str, &str)]) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    s.string_data = None;
    s.data = Some([("k".to_string(), k8s_openapi::ByteString(b"v".to_vec()))].into());
    s
}

fn api_code(err: &kube::Error) -> Option<(u16, String)> {
    match err {
        kube::Error::Api(status) => Some((status.code, status.reason.clone())),
        _ => None,
    }
}

fn generation(o: &DynamicObject) -> i64 {
    o.metadata.generation.unwrap_or_default()
}

#[tokio::test]
async fn create_get_replace_conflict_and_errors() {
    let (kube, client) = start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);

    let created = secrets
        .create(&PostParams::default(), &secret("s1", &[]))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some(NS));
    assert_eq!(
        created.metadata.generation, None,
        "Secrets have no generation"
    );

    let mut fresh = secrets.get("s1").await.unwrap();
    fresh.metadata.labels = Some([("edited".to_string(), "yes".to_string())].into());
    let replaced = secrets
        .replace("s1", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert!(
        replaced.resource_version().unwrap().parse::<u64>().unwrap()
            > created.resource_version().unwrap().parse::<u64>().unwrap()
    );

    // `created` carries the old resourceVersion now.
    let err = secrets
        .replace("s1", &PostParams::default(), &created)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status.message.contains(
            "the object has been modified; please apply your changes to the latest version"
        )
    );

    let dup = secrets
        .create(&PostParams::default(), &secret("s1", &[]))
        .await
        .unwrap_err();
    assert_eq!(api_code(&dup), Some((409, "AlreadyExists".into())));
    let missing = secrets.get("nope").await.unwrap_err();
    assert_eq!(api_code(&missing), Some((404, "NotFound".into())));
    assert_eq!(secrets.get_opt("nope").await.unwrap(), None);
    let nameless = secrets
        .create(&PostParams::default(), &Secret::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&nameless), Some((422, "Invalid".into())));

    // The test API sees the same objects.
    assert_eq!(
        kube.get("", "v1", "secrets", NS, "s1").unwrap()["metadata"]["labels"]["edited"],
        "yes"
    );
    assert!(kube.get("", "v1", "namespaces", "", NS).is_some());
    kube.shutdown().await;
}

#[tokio::test]
async fn generation_moves_on_spec_changes_only() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    let created = api
        .create(&PostParams::default(), &widget("w1", json!({"size": 1})))
        .await
        .unwrap();
    assert_eq!(generation(&created), 1);

    let labelled = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        generation(&labelled),
        1,
        "metadata changes keep the generation"
    );
    let resized = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&resized), 2);
    let status = api
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&status), 2, "status changes keep the generation");

    // A no-op write neither moves the resourceVersion nor wakes watchers.
    let again = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(again.resource_version(), status.resource_version());

    // Built-in workloads follow the same rule.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "app", "image": "busybox:1.37"}]}}}
    }))
    .unwrap();
    let d = deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    let restart =
        json!({"spec": {"template": {"metadata": {"annotations": {"restartedAt": "now"}}}}});
    let d = deployments
        .patch("app", &PatchParams::default(), &Patch::Strategic(restart))
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(2));
    kube.shutdown().await;
}

#[tokio::test]
async fn crd_schemas_prune_default_and_validate() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    let mut w = widget(
        "w1",
        json!({"size": 1, "options": {"window": "90s"}, "anything": true}),
    );
    w.data["junk"] = json!("pruned");
    let created = api.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(
        created.data["spec"]["options"]["mode"], "fast",
        "schema default applied"
    );
    assert_eq!(
        created.data["spec"]["anything"], true,
        "preserve-unknown-fields keeps it"
    );
    assert!(
        created.data.get("junk").is_none(),
        "unknown top-level fields are pruned"
    );

    for (bad, field) in [
        (json!({"size": -1}), "spec.size"),
        (json!({"size": "big"}), "spec.size"),
        (json!({"options": {"mode": "warp"}}), "spec.options.mode"),
        (
            json!({"options": {"window": "soon"}}),
            "spec.options.window",
        ),
    ] {
        let err = api
            .create(&PostParams::default(), &widget("bad", bad.clone()))
            .await
            .unwrap_err();
        let kube::Error::Api(status) = &err else {
            panic!("expected an API error for {bad}, got {err:?}");
        };
        assert_eq!(
            (status.code, status.reason.as_str()),
            (422, "Invalid"),
            "{bad}"
        );
        assert!(status.message.contains(field), "{}", status.message);
    }
    let err = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": -5}})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        api_code(&err).map(|c| c.0),
        Some(422),
        "updates are validated too"
    );
    kube.shutdown().await;
}

#[tokio::test]
async fn status_subresource_is_isolated_both_ways() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    let mut w = widget("w1", json!({"size": 1}));
    w.data["status"] = json!({"ready": true});
    let created = api.create(&PostParams::default(), &w).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create"
    );

    let mut main = created.clone();
    main.data["status"] = json!({"ready": true});
    main.data["spec"]["size"] = json!(5);
    let after_main = api
        .replace("w1", &PostParams::default(), &main)
        .await
        .unwrap();
    assert_eq!(after_main.data["spec"]["size"], 5);
    assert!(
        after_main.data.get("status").is_none(),
        "the main resource ignores .status"
    );

    let mut status_write = after_main.clone();
    status_write.data["status"] = json!({"ready": true});
    status_write.data["spec"]["size"] = json!(99);
    let after_status = api
        .replace_status("w1", &PostParams::default(), &status_write)
        .await
        .unwrap();
    assert_eq!(after_status.data["status"]["ready"], true);
    assert_eq!(
        after_status.data["spec"]["size"], 5,
        "/status ignores the spec"
    );
    assert_eq!(generation(&after_status), generation(&after_main));

    // A stale status write conflicts too.
    let err = api
        .replace_status("w1", &PostParams::default(), &status_write)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((409, "Conflict".into())));
    kube.shutdown().await;
}

#[tokio::test]
async fn finalizers_hold_deletion_until_the_last_is_removed() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    let mut w = widget("w1", json!({}));
    w.metadata.finalizers = Some(vec!["example.dev/cleanup".into()]);
    api.create(&PostParams::default(), &w).await.unwrap();

    let pending = api.delete("w1", &DeleteParams::default()).await.unwrap();
    let pending = pending
        .left()
        .expect("a finalized object is returned, not a Status");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(0));
    assert!(
        api.get("w1").await.is_ok(),
        "still there while finalizers remain"
    );

    let add = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.dev/cleanup", "other/x"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&add), Some((422, "Invalid".into())));

    let remove = json!([{"op": "remove", "path": "/metadata/finalizers/0"}]);
    api.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(remove).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(api.get_opt("w1").await.unwrap(), None);

    // Without finalizers a delete is immediate.
    api.create(&PostParams::default(), &widget("w2", json!({})))
        .await
        .unwrap();
    api.delete("w2", &DeleteParams::default()).await.unwrap();
    assert_eq!(api.get_opt("w2").await.unwrap(), None);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(&PostParams::default(), &secret("s", &[]))
        .await
        .unwrap();
    assert!(
        secrets
            .delete("s", &DeleteParams::default())
            .await
            .unwrap()
            .is_right()
    );
    kube.shutdown().await;
}

#[tokio::test]
async fn lists_filter_by_label_field_and_namespace() {
    let (kube, client) = start().await;
    for (ns, name, labels) in [
        ("a", "one", vec![("app", "web"), ("tier", "front")]),
        ("a", "two", vec![("app", "db")]),
        ("a", "three", vec![]),
        ("b", "four", vec![("app", "web")]),
    ] {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        api.create(&PostParams::default(), &secret(name, &labels))
            .await
            .unwrap();
    }
    let names = |l: kube::core::ObjectList<Secret>| {
        let mut n: Vec<String> = l.items.iter().map(|s| s.name_any()).collect();
        n.sort();
        n
    };
    let in_a: Api<Secret> = Api::namespaced(client.clone(), "a");
    let all: Api<Secret> = Api::all(client.clone());
    let cases: [(&Api<Secret>, ListParams, Vec<&str>); 7] = [
        (&in_a, ListParams::default(), vec!["one", "three", "two"]),
        (&in_a, ListParams::default().labels("app=web"), vec!["one"]),
        (
            &in_a,
            ListParams::default().labels("app!=web"),
            vec!["three", "two"],
        ),
        (&in_a, ListParams::default().labels("!app"), vec!["three"]),
        (
            &all,
            ListParams::default().labels("app"),
            vec!["four", "one", "two"],
        ),
        (
            &all,
            ListParams::default().fields("metadata.name=four"),
            vec!["four"],
        ),
        (
            &all,
            ListParams::default().fields("metadata.namespace=b"),
            vec!["four"],
        ),
    ];
    for (api, lp, want) in cases {
        let got = names(api.list(&lp).await.unwrap());
        assert_eq!(got, want, "{:?} {:?}", lp.label_selector, lp.field_selector);
    }
    let list = all.list(&ListParams::default()).await.unwrap();
    assert!(list.metadata.resource_version.is_some());

    // Paging, as kube-runtime's watcher asks for it (limit + continue), and resourceVersion=0 lists.
    let first = all.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let rest = all
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.metadata.continue_.is_none());
    let any = all
        .list(&ListParams::default().match_any().limit(500))
        .await
        .unwrap();
    assert_eq!(any.items.len(), 4);
    kube.shutdown().await;
}

/// Collects watcher events into a channel so the test can wait for particular ones.
fn spawn_watcher(api: Api<DynamicObject>) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let line = match ev {
                Ok(watcher::Event::Apply(o)) => {
                    format!("apply {} {}", o.name_any(), o.data["spec"])
                }
                Ok(watcher::Event::Delete(o)) => format!("delete {}", o.name_any()),
                Ok(watcher::Event::Init) => "init".into(),
                Ok(watcher::Event::InitApply(o)) => format!("initapply {}", o.name_any()),
                Ok(watcher::Event::InitDone) => "initdone".into(),
                Err(e) => format!("error {e}"),
            };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

async fn wait_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    want: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = rx.recv().await {
            let hit = line.starts_with(want);
            seen.push(line);
            if hit {
                return;
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "timed out waiting for {want:?}; saw {seen:?}"
    );
    seen
}

#[tokio::test]
async fn watcher_sees_changes_and_relists_after_compaction() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    api.create(&PostParams::default(), &widget("before", json!({"n": 0})))
        .await
        .unwrap();
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &widget_resource());
    let mut rx = spawn_watcher(all);
    wait_for(&mut rx, "initapply before").await;
    wait_for(&mut rx, "initdone").await;

    api.create(&PostParams::default(), &widget("w1", json!({"n": 1})))
        .await
        .unwrap();
    wait_for(&mut rx, "apply w1 {\"n\":1}").await;
    api.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"n": 2}})),
    )
    .await
    .unwrap();
    wait_for(&mut rx, "apply w1 {\"n\":2}").await;
    api.delete("w1", &DeleteParams::default()).await.unwrap();
    wait_for(&mut rx, "delete w1").await;

    // A compaction ends the watch with 410 Gone: the watcher relists and carries on.
    let lists_before = kube.request_count_for("list", "widgets");
    kube.compact();
    let seen = wait_for(&mut rx, "initdone").await;
    assert!(
        seen.iter().any(|l| l.starts_with("error")),
        "the 410 surfaces as a watcher error: {seen:?}"
    );
    assert!(kube.request_count_for("list", "widgets") > lists_before);
    api.create(&PostParams::default(), &widget("w2", json!({"n": 3})))
        .await
        .unwrap();
    wait_for(&mut rx, "apply w2").await;

    // A change made behind the client's back (like kubectl edit) is seen as well.
    kube.modify_raw("example.dev", "v1", "widgets", NS, "w2", |o| {
        o["spec"]["n"] = json!(4)
    })
    .unwrap();
    wait_for(&mut rx, "apply w2 {\"n\":4}").await;
    kube.shutdown().await;
}

#[tokio::test]
async fn streaming_list_watchers_get_initial_events_and_the_end_bookmark() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    api.create(&PostParams::default(), &widget("w1", json!({})))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
    {
        match ev.unwrap() {
            watcher::Event::InitApply(o) => seen.push(o.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["w1"]);
    assert_eq!(
        kube.request_count("list"),
        0,
        "a streaming list needs no list call"
    );
    api.create(&PostParams::default(), &widget("w2", json!({})))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
    {
        Some(Ok(watcher::Event::Apply(o))) => assert_eq!(o.name_any(), "w2"),
        other => panic!("expected w2, got {other:?}"),
    }
    kube.shutdown().await;
}

#[tokio::test]
async fn watch_from_an_expired_version_gets_410_and_bookmarks_flow() {
    let (kube, client) = start().await;
    kube.set_bookmark_interval(Duration::from_millis(50));
    let api = widgets(&client, NS);
    let created = api
        .create(&PostParams::default(), &widget("w1", json!({})))
        .await
        .unwrap();
    let old_rv = created.resource_version().unwrap();
    api.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"x": 1}})),
    )
    .await
    .unwrap();

    // From the old version the change is replayed, then bookmarks follow.
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &old_rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Modified(o)) => assert_eq!(o.data["spec"]["x"], 1),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Bookmark(b)) => assert!(!b.metadata.resource_version.is_empty()),
        other => panic!("expected BOOKMARK, got {other:?}"),
    }

    kube.compact();
    let mut expired = api
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match expired.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR, got {other:?}"),
    }

    // Watches end at timeoutSeconds.
    let now = kube.resource_version().to_string();
    let short = api
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), &now)
        .await
        .unwrap();
    let ended = tokio::time::timeout(
        Duration::from_secs(5),
        short.boxed().try_collect::<Vec<_>>(),
    )
    .await;
    assert!(
        ended
            .expect("the watch ended by itself")
            .unwrap()
            .is_empty()
    );
    kube.shutdown().await;
}

#[tokio::test]
async fn merge_json_strategic_and_apply_patches() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    let ssa = PatchParams::apply("standin-test");

    // Apply creates a missing object; another manager's apply merges into it; a manager's re-apply
    // removes what it applied before and leaves out now (unless someone else applied it too).
    let applied = json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"a": 1, "b": {"c": 2}}});
    let created = api
        .patch("w1", &ssa, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["b"]["c"], 2);
    let other = json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"b": {"d": 3}}});
    let merged = api
        .patch(
            "w1",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    assert_eq!(merged.data["spec"], json!({"a": 1, "b": {"c": 2, "d": 3}}));
    let reapplied = json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"b": {"c": 2}}});
    let merged = api
        .patch("w1", &ssa, &Patch::Apply(&reapplied))
        .await
        .unwrap();
    assert_eq!(merged.data["spec"], json!({"b": {"c": 2, "d": 3}}));

    // Status through apply, the way the operator writes conditions.
    let status = json!({"apiVersion": "example.dev/v1", "kind": "Widget", "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let with_status = api
        .patch_status("w1", &ssa, &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(with_status.data["status"]["conditions"][0]["type"], "Ready");

    let merge = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"a": null, "e": [1]}})),
        )
        .await
        .unwrap();
    assert_eq!(merge.data["spec"], json!({"b": {"c": 2, "d": 3}, "e": [1]}));

    let ops = json!([{"op": "add", "path": "/spec/e/-", "value": 2}, {"op": "test", "path": "/spec/b/c", "value": 2}]);
    let jp = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(ops).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(jp.data["spec"]["e"], json!([1, 2]));
    let failing = json!([{"op": "test", "path": "/spec/b/c", "value": 7}]);
    let err = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(failing).unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err).map(|c| c.0), Some(422));

    // A merge patch carrying a stale resourceVersion is an optimistic-lock failure.
    let stale =
        json!({"metadata": {"resourceVersion": created.resource_version()}, "spec": {"z": 1}});
    let err = api
        .patch("w1", &PatchParams::default(), &Patch::Merge(stale))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((409, "Conflict".into())));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(&PostParams::default(), &secret("s", &[("a", "1")]))
        .await
        .unwrap();
    let smp = secrets
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"b": "2"}}})),
        )
        .await
        .unwrap();
    assert_eq!(smp.labels().len(), 2);

    // Patching a missing object is a 404 (only apply creates).
    let err = api
        .patch(
            "nope",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err).map(|c| c.0), Some(404));
    kube.shutdown().await;
}

#[tokio::test]
async fn owner_deletion_collects_owned_secrets() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    let owner = api
        .create(&PostParams::default(), &widget("w1", json!({})))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut owned = secret("owned", &[]);
    owned.metadata.owner_references = Some(vec![
        owner.controller_owner_ref(&widget_resource()).unwrap(),
    ]);
    secrets
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &secret("unrelated", &[]))
        .await
        .unwrap();

    api.delete("w1", &DeleteParams::background()).await.unwrap();
    // The collector is asynchronous, as in a real cluster.
    assert!(
        kube.wait_until(Duration::from_secs(5), |k| k
            .get("", "v1", "secrets", NS, "owned")
            .is_none())
            .await
    );
    assert!(secrets.get_opt("unrelated").await.unwrap().is_some());

    // Manifests apply like `kubectl apply --server-side`, and raw patches go through the same path as PATCH.
    let manifest = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: m1\nstringData:\n  k: v\n---\napiVersion: example.dev/v1\nkind: Widget\nmetadata:\n  name: w2\n  namespace: other\nspec:\n  size: 3\n";
    let applied = kube.apply_manifest(manifest, NS).unwrap();
    assert_eq!(applied.len(), 2);
    assert_eq!(
        kube.get("", "v1", "secrets", NS, "m1").unwrap()["data"]["k"],
        "dg=="
    );
    let patched = kube
        .patch_raw(
            "example.dev",
            "v1",
            "widgets",
            "other",
            "w2",
            support::kube_api::PatchKind::Merge,
            &json!({"spec": {"size": 4}}),
        )
        .unwrap();
    assert_eq!(patched["metadata"]["generation"], 2);

    // Behind-the-back deletion goes through the same path.
    let gone = kube
        .delete_raw("", "v1", "secrets", NS, "unrelated")
        .unwrap();
    assert!(matches!(gone, DeleteOutcome::Deleted(_)));
    kube.shutdown().await;
}

#[derive(Debug)]
struct Never;
impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}
impl std::error::Error for Never {}

#[tokio::test]
async fn a_controller_reconciles_and_sees_updates() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &widget_resource());

    // Reconcile: copy spec.size into status.observedSize, with the generation it saw.
    async fn reconcile(
        obj: Arc<DynamicObject>,
        client: Arc<kube::Client>,
    ) -> Result<Action, Never> {
        let api = widgets(&client, &obj.namespace().unwrap_or_default());
        let status = json!({"status": {"observedSize": obj.data["spec"]["size"], "observedGeneration": obj.meta().generation}});
        api.patch_status(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await
        .map_err(|_| Never)?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<DynamicObject>, _: &Never, _: Arc<kube::Client>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let controller = Controller::new_with(all, watcher::Config::default(), widget_resource())
        .run(reconcile, error_policy, Arc::new(client.clone()))
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    api.create(&PostParams::default(), &widget("w1", json!({"size": 1})))
        .await
        .unwrap();
    let observed = |size: i64, generation: i64| {
        move |k: &FakeKube| {
            k.get("example.dev", "v1", "widgets", NS, "w1")
                .is_some_and(|o| {
                    o["status"]["observedSize"] == size
                        && o["status"]["observedGeneration"] == generation
                })
        }
    };
    assert!(
        kube.wait_until(Duration::from_secs(10), observed(1, 1))
            .await
    );
    api.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    assert!(
        kube.wait_until(Duration::from_secs(10), observed(2, 2))
            .await
    );
    handle.abort();
    kube.shutdown().await;
}

#[tokio::test]
async fn kube_runtime_finalizer_helper_completes_a_deletion() {
    use kube::runtime::finalizer::{Event as Finalizer, finalizer};
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &widget_resource());
    let cleaned = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    struct Ctx {
        client: kube::Client,
        cleaned: Arc<std::sync::atomic::AtomicUsize>,
    }
    async fn reconcile(
        obj: Arc<DynamicObject>,
        ctx: Arc<Ctx>,
    ) -> Result<Action, kube::runtime::finalizer::Error<Never>> {
        let api = widgets(&ctx.client, &obj.namespace().unwrap_or_default());
        finalizer(&api, "example.dev/cleanup", obj, |event| async move {
            match event {
                Finalizer::Apply(_) => Ok(Action::await_change()),
                Finalizer::Cleanup(_) => {
                    ctx.cleaned
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(Action::await_change())
                }
            }
        })
        .await
    }
    fn error_policy(
        _: Arc<DynamicObject>,
        _: &kube::runtime::finalizer::Error<Never>,
        _: Arc<Ctx>,
    ) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cleaned: cleaned.clone(),
    });
    let handle = tokio::spawn(
        Controller::new_with(all, watcher::Config::default(), widget_resource())
            .run(reconcile, error_policy, ctx)
            .for_each(|_| async {}),
    );

    api.create(&PostParams::default(), &widget("w1", json!({})))
        .await
        .unwrap();
    let has_finalizer = |k: &FakeKube| {
        k.get("example.dev", "v1", "widgets", NS, "w1")
            .is_some_and(|o| o["metadata"]["finalizers"] == json!(["example.dev/cleanup"]))
    };
    assert!(
        kube.wait_until(Duration::from_secs(10), has_finalizer)
            .await
    );
    api.delete("w1", &DeleteParams::default()).await.unwrap();
    let gone = |k: &FakeKube| k.get("example.dev", "v1", "widgets", NS, "w1").is_none();
    assert!(kube.wait_until(Duration::from_secs(10), gone).await);
    assert_eq!(cleaned.load(std::sync::atomic::Ordering::SeqCst), 1);
    handle.abort();
    kube.shutdown().await;
}

#[tokio::test]
async fn events_leases_kubeconfig_and_request_counts() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    let w = api
        .create(&PostParams::default(), &widget("w1", json!({})))
        .await
        .unwrap();

    // The Recorder creates an Event, then patches it for a repeat.
    let recorder = Recorder::new(client.clone(), Reporter::from("standin-test".to_string()));
    let ev = KEvent {
        type_: EventType::Normal,
        reason: "Tested".into(),
        note: Some("hello".into()),
        action: "Test".into(),
        secondary: None,
    };
    let reference = w.object_ref(&widget_resource());
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events = kube.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "Tested");
    assert_eq!(events[0]["series"]["count"], 2);

    // Leases: create, then replace with the right and a stale resourceVersion.
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let lease: Lease = serde_json::from_value(
        json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}}),
    )
    .unwrap();
    let first = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut taken = first.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("leader", &PostParams::default(), &taken)
        .await
        .unwrap();
    let err = leases
        .replace("leader", &PostParams::default(), &taken)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err).map(|c| c.0), Some(409));

    // A kubeconfig for the real binary.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&path).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(config.default_namespace, "default");
    let via_file = kube::Client::try_from(config).unwrap();
    let secrets: Api<Secret> = Api::default_namespaced(via_file);
    secrets
        .create(&PostParams::default(), &secret("from-file", &[]))
        .await
        .unwrap();
    assert!(
        kube.get("", "v1", "secrets", "default", "from-file")
            .is_some()
    );

    // Traffic accounting, and injected failures.
    kube.reset_request_counts();
    secrets.get("from-file").await.unwrap();
    secrets.list(&ListParams::default()).await.unwrap();
    assert_eq!(kube.request_count("get"), 1);
    assert_eq!(kube.request_count_for("list", "secrets"), 1);
    kube.inject_failure("get", "secrets", 1, 500);
    let err = secrets.get("from-file").await.unwrap_err();
    assert_eq!(api_code(&err).map(|c| c.0), Some(500));
    assert!(secrets.get("from-file").await.is_ok());
    assert_eq!(kube.request_counts()["get"], 3);
    kube.shutdown().await;
}

#[tokio::test]
async fn the_operator_crds_are_served_when_present() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let crate_crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let types = support::kube_api::load_crds(&crate_crds).unwrap();
    let kube = FakeKube::start_with_crd_dirs(&[&fixture_dir(), &crate_crds]).await;
    let client = kube.client();
    for t in &types {
        assert_eq!(t.group, "konnect-sa.dev");
        assert!(
            t.namespaced && t.status_subresource,
            "{} should be namespaced with status",
            t.plural
        );
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(&t.group, &t.versions[0], &t.kind),
            &t.plural,
        );
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
        assert!(
            api.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }
    // The samples (when present) pass the CRD schemas: what `kubectl apply -k config/samples` would do.
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    if !types.is_empty() && samples.is_dir() {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&samples)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
            })
            .collect();
        paths.sort();
        let mut accepted = 0;
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let obj = <Value as serde::Deserialize>::deserialize(doc).unwrap();
                let Some(t) = types
                    .iter()
                    .find(|t| Some(t.kind.as_str()) == obj["kind"].as_str())
                else {
                    continue;
                };
                let mut obj = obj.clone();
                obj["metadata"]["namespace"] = json!(NS);
                let created = kube
                    .create_raw(&t.group, &t.versions[0], &t.plural, obj)
                    .unwrap_or_else(|e| panic!("{} is refused: {}", path.display(), e.message));
                assert!(created["spec"].is_object());
                accepted += 1;
            }
        }
        assert!(
            accepted > 0,
            "no sample of the operator's kinds in {}",
            samples.display()
        );
    }

    // The cluster-scoped fixture kind works without a namespace.
    let gadgets: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("example.dev", "v1", "Gadget"),
            "gadgets",
        ),
    );
    let mut g = DynamicObject::new(
        "g1",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("example.dev", "v1", "Gadget"),
            "gadgets",
        ),
    );
    g.data = json!({"spec": {"x": 1}});
    let g = gadgets.create(&PostParams::default(), &g).await.unwrap();
    assert_eq!(g.metadata.namespace, None);
    assert!(kube.get("example.dev", "v1", "gadgets", "", "g1").is_some());
    kube.shutdown().await;
}

/// What a real API server refuses and the operator must not find out about only in production: label
/// and annotation syntax (422 on any kind), an immutable Secret's data, events.k8s.io notes over 1024
/// bytes; and a dry run checks all of it without storing anything.
#[tokio::test]
async fn refuses_what_the_real_server_refuses_and_dry_runs_store_nothing() {
    let (kube, client) = start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    for (key, value) in [
        ("bad key", "v"),
        ("ok", "not ok!"),
        ("Upper.com/x", "v"),
        ("x", &*"v".repeat(64)),
    ] {
        let err = secrets
            .create(&PostParams::default(), &secret("labelled", &[(key, value)]))
            .await
            .unwrap_err();
        assert_eq!(
            api_code(&err),
            Some((422, "Invalid".into())),
            "{key}={value}"
        );
        assert!(err.to_string().contains("metadata.labels"), "{err}");
    }
    let mut annotated = secret("annotated", &[]);
    annotated.metadata.annotations = Some([("not/valid/key".to_string(), "v".to_string())].into());
    let err = secrets
        .create(&PostParams::default(), &annotated)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((422, "Invalid".into())));
    // Annotation keys are checked lowercased: an upper-case prefix is fine there.
    annotated.metadata.annotations =
        Some([("Example.com/Key".to_string(), "any text".to_string())].into());
    secrets
        .create(&PostParams::default(), &annotated)
        .await
        .unwrap();

    // Dry runs: every check, nothing stored, no watch event.
    let rv = kube.resource_version();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    secrets
        .create(&dry, &secret("dry", &[("app", "x")]))
        .await
        .unwrap();
    assert!(secrets.get_opt("dry").await.unwrap().is_none());
    let err = secrets
        .create(&dry, &secret("dry", &[("bad key", "x")]))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((422, "Invalid".into())));
    let mut frozen = secrets.get("annotated").await.unwrap();
    frozen.immutable = Some(true);
    let frozen = secrets
        .replace("annotated", &PostParams::default(), &frozen)
        .await
        .unwrap();
    let rv_frozen = kube.resource_version();
    assert!(rv_frozen > rv);
    let mut changed = frozen.clone();
    changed.data = Some([("k".to_string(), k8s_openapi::ByteString(b"new".to_vec()))].into());
    let err = secrets
        .replace("annotated", &dry, &changed)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((422, "Invalid".into())));
    assert!(err.to_string().contains("immutable"), "{err}");
    let mut relabelled = frozen.clone();
    relabelled.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
    secrets
        .replace("annotated", &dry, &relabelled)
        .await
        .unwrap();
    assert_eq!(kube.resource_version(), rv_frozen, "dry runs store nothing");
    let err = secrets
        .patch(
            "annotated",
            &PatchParams {
                dry_run: true,
                ..Default::default()
            },
            &Patch::Merge(json!({})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        api_code(&err).map(|c| c.0),
        Some(400),
        "dry-run patches are refused, not committed"
    );

    // events.k8s.io: the note limit.
    let events: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
            "events",
        ),
    );
    let event = |name: &str, note: String| {
        let mut e = DynamicObject::new(
            name,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
                "events",
            ),
        );
        e.data = json!({"type": "Warning", "reason": "Tested", "action": "Test", "note": note,
                        "eventTime": "2026-11-30T12:00:00.000000Z", "reportingController": "t",
                        "reportingInstance": "t", "regarding": {"kind": "Secret", "name": "x"}});
        e
    };
    events
        .create(&PostParams::default(), &event("fits", "n".repeat(1024)))
        .await
        .unwrap();
    let err = events
        .create(&PostParams::default(), &event("long", "n".repeat(1025)))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((422, "Invalid".into())));
    assert!(err.to_string().contains("note"), "{err}");
}

/// core/v1 and events.k8s.io/v1 Events are one resource, as on a real server: written through either API, an
/// Event is read, listed and watched through both, each in its own shape (`message` / `note`, `involvedObject` /
/// `regarding`, `reportingComponent` / `reportingController`).
#[tokio::test]
async fn core_and_events_k8s_io_events_are_one_resource() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event as NewEvent;
    let (kube, client) = start().await;
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), NS);
    let new: Api<NewEvent> = Api::namespaced(client.clone(), NS);
    let watched = tokio::spawn({
        let new = new.clone();
        async move {
            use kube::runtime::WatchStreamExt;
            watcher(new, watcher::Config::default())
                .applied_objects()
                .try_filter(|e| std::future::ready(e.metadata.name.as_deref() == Some("from-core")))
                .boxed()
                .try_next()
                .await
        }
    });
    let written: NewEvent = serde_json::from_value(json!({
        "metadata": {"name": "from-new"}, "type": "Warning", "reason": "Failed", "action": "Reconcile",
        "note": "it failed", "eventTime": "2026-11-30T12:00:00.000000Z", "reportingController": "op",
        "reportingInstance": "pod-1", "regarding": {"kind": "Widget", "name": "w1", "namespace": NS}
    }))
    .unwrap();
    new.create(&PostParams::default(), &written).await.unwrap();
    let seen = core.get("from-new").await.unwrap();
    assert_eq!(seen.message.as_deref(), Some("it failed"));
    assert_eq!(seen.involved_object.name.as_deref(), Some("w1"));
    assert_eq!(seen.reporting_component.as_deref(), Some("op"));

    let legacy: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "from-core"}, "type": "Normal", "reason": "Created", "message": "made",
        "involvedObject": {"kind": "Widget", "name": "w2", "namespace": NS}, "count": 3,
        "eventTime": "2026-11-30T12:00:01.000000Z"
    }))
    .unwrap();
    core.create(&PostParams::default(), &legacy).await.unwrap();
    let listed = new.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|e| e.metadata.name.clone())
        .collect();
    assert_eq!(
        names,
        ["from-core", "from-new"],
        "one store, listed through either API"
    );
    let shown = new.get("from-core").await.unwrap();
    assert_eq!(shown.note.as_deref(), Some("made"));
    assert_eq!(
        shown.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("w2")
    );
    assert_eq!(shown.deprecated_count, Some(3));
    let via_watch = tokio::time::timeout(Duration::from_secs(10), watched)
        .await
        .expect("the events.k8s.io watch sees an Event written through core v1")
        .unwrap()
        .unwrap()
        .expect("an event");
    assert_eq!(via_watch.note.as_deref(), Some("made"));
    assert_eq!(kube.events().len(), 2);

    // A patch through events.k8s.io names its fields; the core view sees the change.
    new.patch(
        "from-new",
        &PatchParams::default(),
        &Patch::Merge(json!({"note": "it failed again"})),
    )
    .await
    .unwrap();
    assert_eq!(
        core.get("from-new").await.unwrap().message.as_deref(),
        Some("it failed again")
    );
    kube.shutdown().await;
}

/// Metadata-only requests (what `Api<PartialObjectMeta<K>>` sends) get metadata only, as from a real server.
#[tokio::test]
async fn metadata_only_requests_get_no_data() {
    let (kube, client) = start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(&PostParams::default(), &secret("s1", &[("app", "x")]))
        .await
        .unwrap();
    let meta: Api<kube::core::PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), NS);
    let listed = meta.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("s1"));
    let got = meta.get("s1").await.unwrap();
    assert_eq!(got.metadata.labels.unwrap()["app"], "x");
    let requests = kube.requests();
    assert!(requests.iter().rev().take(2).all(|r| r.metadata_only));
    // Over the wire: no data in a metadata-only answer.
    let url = format!("{}/api/v1/namespaces/{NS}/secrets/s1", kube.url());
    let body = reqwest::Client::new()
        .get(url)
        .header(
            "Accept",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("PartialObjectMetadata") && !body.contains("\"data\""),
        "{body}"
    );
}

// ---- fidelity probes: where the stand-in once differed from a real kube-apiserver (v1.36) --------------------

/// A paged list is one snapshot: later pages show the state and resourceVersion of the first, so a watch
/// from that resourceVersion sees every change made while paging (kube-runtime pages by 500).
#[tokio::test]
async fn paged_lists_are_one_snapshot_and_expire_with_compaction() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    for i in 0..5 {
        api.create(&PostParams::default(), &widget(&format!("w{i}"), json!({})))
            .await
            .unwrap();
    }
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    // Changes between pages.
    api.delete("w3", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &widget("w9", json!({})))
        .await
        .unwrap();
    let mut names: Vec<String> = first.items.iter().map(|o| o.name_any()).collect();
    let mut token = Some(token);
    while let Some(t) = token.take() {
        let page = api
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        names.extend(page.items.iter().map(|o| o.name_any()));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
    }
    assert_eq!(
        names,
        ["w0", "w1", "w2", "w3", "w4"],
        "the state at the first page"
    );
    // A watch from the snapshot's resourceVersion sees what paging did not.
    let mut stream = api
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match stream.try_next().await.unwrap() {
            Some(WatchEvent::Added(o)) => seen.push(format!("+{}", o.name_any())),
            Some(WatchEvent::Deleted(o)) => seen.push(format!("-{}", o.name_any())),
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(seen, ["-w3", "+w9"]);
    // A continue token outlives no compaction: 410, start again.
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    kube.compact();
    let err = api
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(first.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((410, "Expired".into())));
    kube.shutdown().await;
}

/// Empty finalizers, labels and annotations and null fields are not stored, so a JSON patch that tests
/// `/metadata/finalizers` for null (the operator's guard when it adds its finalizer) passes once the last
/// finalizer is gone.
#[tokio::test]
async fn empty_metadata_and_nulls_are_dropped() {
    let (kube, client) = start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let raw: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<Secret>(&()));
    let mut body: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "bare", "labels": {}, "annotations": {}, "finalizers": [], "ownerReferences": []},
        "immutable": null,
        "data": {"k": "dg=="},
    }))
    .unwrap();
    body.metadata.namespace = None;
    raw.create(&PostParams::default(), &body).await.unwrap();
    let stored = kube.get("", "v1", "secrets", NS, "bare").unwrap();
    for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
        assert!(stored["metadata"].get(field).is_none(), "{field}: {stored}");
    }
    assert!(stored.get("immutable").is_none(), "{stored}");

    let api = widgets(&client, NS);
    let mut w = widget("held", json!({}));
    w.metadata.finalizers = Some(vec!["example.dev/hold".into()]);
    api.create(&PostParams::default(), &w).await.unwrap();
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": []}})),
    )
    .await
    .unwrap();
    assert!(
        kube.get("example.dev", "v1", "widgets", NS, "held")
            .unwrap()["metadata"]
            .get("finalizers")
            .is_none()
    );
    let guarded: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.dev/again"]},
    ]))
    .unwrap();
    api.patch("held", &PatchParams::default(), &Patch::<()>::Json(guarded))
        .await
        .expect("the null test passes on a stored object without finalizers");
    let _ = secrets;
    kube.shutdown().await;
}

/// Secret data keys are config keys and values base64, or the write is refused (422 and 400).
#[tokio::test]
async fn secret_data_keys_and_base64_are_validated() {
    let (kube, client) = start().await;
    let raw: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<Secret>(&()));
    let secret_with = |name: &str, data: Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data,
        }))
        .unwrap()
    };
    let bad_key = raw
        .create(
            &PostParams::default(),
            &secret_with("k", json!({"not a key": "dg=="})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&bad_key), Some((422, "Invalid".into())));
    let bad_value = raw
        .create(
            &PostParams::default(),
            &secret_with("v", json!({"k": "not base64!"})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&bad_value).map(|c| c.0), Some(400));
    let string_data: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"a/b": "x"},
    }))
    .unwrap();
    let bad_string_key = raw
        .create(&PostParams::default(), &string_data)
        .await
        .unwrap_err();
    assert_eq!(api_code(&bad_string_key), Some((422, "Invalid".into())));
    raw.create(
        &PostParams::default(),
        &secret_with(
            "ok",
            json!({"token": "dg==", "ca.crt": "", "A_b-c.d": "dg=="}),
        ),
    )
    .await
    .expect("valid keys and values");
    kube.shutdown().await;
}

/// Nothing springs into a namespace that does not exist (404); a terminating namespace takes no new
/// object (403), has its content deleted (finalizers still hold it), and goes when empty, for good.
#[tokio::test]
async fn namespaces_must_exist_and_a_terminating_one_refuses_new_objects() {
    use k8s_openapi::api::core::v1::Namespace;
    let (kube, client) = start().await;
    let nowhere = widgets(&client, "nowhere")
        .create(&PostParams::default(), &widget("w", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_code(&nowhere), Some((404, "NotFound".into())));

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("doomed".into());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let api = widgets(&client, "doomed");
    let mut held = widget("held", json!({}));
    held.metadata.finalizers = Some(vec!["example.dev/hold".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();
    api.create(&PostParams::default(), &widget("plain", json!({})))
        .await
        .unwrap();

    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let phase = |k: &FakeKube| {
        k.get("", "v1", "namespaces", "", "doomed")
            .and_then(|n| n.pointer("/status/phase").cloned())
    };
    assert_eq!(phase(&kube), Some(json!("Terminating")));
    let refused = api
        .create(&PostParams::default(), &widget("late", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_code(&refused), Some((403, "Forbidden".into())));
    // The namespace controller deletes the content; the finalizer holds one object, and with it the namespace.
    assert!(
        kube.wait_until(Duration::from_secs(5), |k| {
            k.get("example.dev", "v1", "widgets", "doomed", "plain")
                .is_none()
                && k.get("example.dev", "v1", "widgets", "doomed", "held")
                    .is_some_and(|w| w.pointer("/metadata/deletionTimestamp").is_some())
        })
        .await
    );
    assert_eq!(phase(&kube), Some(json!("Terminating")));
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        kube.wait_until(Duration::from_secs(5), |k| k
            .get("", "v1", "namespaces", "", "doomed")
            .is_none())
            .await
    );
    let gone = api
        .create(&PostParams::default(), &widget("again", json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        api_code(&gone),
        Some((404, "NotFound".into())),
        "it does not come back"
    );
    kube.shutdown().await;
}

/// DELETE of a custom resource without finalizers answers with the object (a built-in kind: a Status); a PUT
/// carrying another object's uid (same name, recreated since) is refused with 409.
#[tokio::test]
async fn delete_answers_and_put_with_another_uid() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    api.create(&PostParams::default(), &widget("w", json!({})))
        .await
        .unwrap();
    let answer = api.delete("w", &DeleteParams::default()).await.unwrap();
    assert!(answer.left().is_some_and(|o| o.name_any() == "w"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(&PostParams::default(), &secret("s", &[]))
        .await
        .unwrap();
    let old = secrets.get("s").await.unwrap();
    let answer = secrets.delete("s", &DeleteParams::default()).await.unwrap();
    assert!(answer.right().is_some(), "a Status for a built-in kind");

    secrets
        .create(&PostParams::default(), &secret("s", &[]))
        .await
        .unwrap();
    let current = secrets.get("s").await.unwrap();
    let mut stale = old.clone();
    stale.metadata.resource_version = current.metadata.resource_version.clone();
    let err = secrets
        .replace("s", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((409, "Conflict".into())));
    assert!(err.to_string().contains("UID in precondition"), "{err}");
    kube.shutdown().await;
}

/// Garbage collection is asynchronous and honours propagationPolicy: Orphan keeps the dependents (without
/// the reference), Foreground deletes them first while the owner waits with a deletionTimestamp.
#[tokio::test]
async fn garbage_collection_honours_the_propagation_policy() {
    let (kube, client) = start().await;
    let api = widgets(&client, NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let owned_by = |owner: &DynamicObject, name: &str| {
        let mut s = secret(name, &[]);
        s.metadata.owner_references = Some(vec![
            owner.controller_owner_ref(&widget_resource()).unwrap(),
        ]);
        s
    };

    let orphaner = api
        .create(&PostParams::default(), &widget("orphaner", json!({})))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &owned_by(&orphaner, "kept"))
        .await
        .unwrap();
    api.delete("orphaner", &DeleteParams::orphan())
        .await
        .unwrap();
    assert!(
        kube.wait_until(Duration::from_secs(5), |k| k
            .get("example.dev", "v1", "widgets", NS, "orphaner")
            .is_none())
            .await
    );
    let kept = kube
        .get("", "v1", "secrets", NS, "kept")
        .expect("orphaned, not deleted");
    assert!(kept["metadata"].get("ownerReferences").is_none(), "{kept}");

    let foreground = api
        .create(&PostParams::default(), &widget("fg", json!({})))
        .await
        .unwrap();
    let mut held = owned_by(&foreground, "held");
    // A blocking dependent: the owner waits for it.
    held.metadata.owner_references.as_mut().unwrap()[0].block_owner_deletion = Some(true);
    held.metadata.finalizers = Some(vec!["example.dev/hold".into()]);
    secrets.create(&PostParams::default(), &held).await.unwrap();
    api.delete("fg", &DeleteParams::foreground()).await.unwrap();
    let owner = kube.get("example.dev", "v1", "widgets", NS, "fg").unwrap();
    assert!(owner["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        owner["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    // The blocking dependent is being deleted, its finalizer holds it, and so the owner waits.
    assert!(
        kube.wait_until(Duration::from_secs(5), |k| k
            .get("", "v1", "secrets", NS, "held")
            .is_some_and(|s| s["metadata"]["deletionTimestamp"].is_string()))
            .await
    );
    assert!(kube.get("example.dev", "v1", "widgets", NS, "fg").is_some());
    secrets
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert!(
        kube.wait_until(Duration::from_secs(5), |k| k
            .get("example.dev", "v1", "widgets", NS, "fg")
            .is_none())
            .await
    );
    kube.shutdown().await;
}

// ---- The cost model (cost.rs): what a real API server makes a client pay. ----

/// Two requests at once against one APF seat and no queue: one is served, the other gets what
/// kube-apiserver answers, 429 with `Retry-After` and a plain-text body.
#[tokio::test]
async fn apf_answers_429_text_plain_with_retry_after_when_seats_and_queue_are_full() {
    use support::kube_api::cost::CostModel;
    let (kube, _client) = start().await;
    kube.set_cost(CostModel {
        latency: Duration::from_secs(1),
        seats: 1,
        queue: 0,
        retry_after_s: 1,
        ..CostModel::calibrated()
    });
    let url = format!("{}/api/v1/namespaces/default/secrets", kube.url());
    let http = reqwest::Client::new();
    let (a, b) = tokio::join!(http.get(&url).send(), http.get(&url).send());
    let mut answers = [a.unwrap(), b.unwrap()];
    answers.sort_by_key(|r| r.status().as_u16());
    assert_eq!(answers[0].status().as_u16(), 200);
    let refused = &answers[1];
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(
        refused.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(kube.rejected_requests(), 1);
    let log = kube.cost_log();
    assert_eq!(log.iter().filter(|a| a.rejected).count(), 1, "{log:?}");
}

/// A request that finds every seat taken waits in the queue for one instead of being refused.
#[tokio::test]
async fn apf_queues_a_request_while_the_queue_has_room() {
    use support::kube_api::cost::CostModel;
    let (kube, _client) = start().await;
    kube.set_cost(CostModel {
        latency: Duration::from_millis(300),
        seats: 1,
        queue: 1,
        ..CostModel::calibrated()
    });
    let url = format!("{}/api/v1/namespaces/default/secrets", kube.url());
    let http = reqwest::Client::new();
    let (a, b) = tokio::join!(http.get(&url).send(), http.get(&url).send());
    assert_eq!(a.unwrap().status().as_u16(), 200);
    assert_eq!(b.unwrap().status().as_u16(), 200);
    assert_eq!(kube.rejected_requests(), 0);
}

/// Writes are committed one at a time (like etcd's): ten writes at once at 20 writes/s cannot
/// all be answered sooner than ten commit times (a floor, whatever the machine's speed).
#[tokio::test]
async fn writes_are_committed_one_at_a_time_at_the_set_rate() {
    use support::kube_api::cost::CostModel;
    let (kube, client) = start().await;
    assert!(kube.cost_log().is_empty(), "the model is free by default");
    kube.set_cost(CostModel {
        writes_per_second: 20.0,
        ..CostModel::default()
    });
    let api: Api<Secret> = Api::namespaced(client, "default");
    let started = std::time::Instant::now();
    let creates = (0..10).map(|i| {
        let api = api.clone();
        async move {
            let s: Secret =
                serde_json::from_value(json!({"metadata": {"name": format!("s{i}")}})).unwrap();
            api.create(&PostParams::default(), &s).await.unwrap();
        }
    });
    futures::future::join_all(creates).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "10 writes at 20/s committed in {:?}",
        started.elapsed()
    );
    assert_eq!(kube.cost_log().len(), 10);
}

/// The CRDs' CEL rules (`x-kubernetes-validations`) are evaluated like the API server does: a
/// write that breaks one is refused with 422 naming the field, and, as since Kubernetes 1.30, a
/// stored object that an upgraded CRD's rule would refuse can still take writes that leave its
/// spec as it is (its finalizer, its status), but not a spec edit that keeps breaking it.
#[tokio::test]
async fn crd_cel_rules_are_enforced_and_ratchet_on_an_unchanged_spec() {
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let kube = FakeKube::start(&crds).await;
    let token = |name: &str, spec: &str| {
        format!(
            "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccountToken\nmetadata: {{name: {name}}}\nspec:\n  systemAccountRef: {{name: a}}\n{spec}"
        )
    };
    let refused = kube
        .apply_manifest(
            &token("both", "  renewBefore: 1h\n  renewBeforePercentage: 20\n"),
            NS,
        )
        .unwrap_err();
    assert_eq!(refused.code, 422, "{refused:?}");
    assert!(refused.message.contains("spec"), "{}", refused.message);
    let refused = kube
        .apply_manifest(&token("long", "  duration: 9000h\n"), NS)
        .unwrap_err();
    assert_eq!(refused.code, 422, "{refused:?}");
    assert!(
        refused.message.contains("spec.duration"),
        "{}",
        refused.message
    );

    // Stored before the CRD gained the rule (an older CRD without rules).
    let (group, version, plural) = ("konnect-sa.dev", "v1alpha1", "systemaccounttokens");
    kube.without_cel_rules(group, version, plural, || {
        kube.apply_manifest(&token("old", "  duration: 9000h\n"), NS)
            .expect("stored while the CRD had no rule")
    });
    kube.patch_raw(
        group,
        version,
        plural,
        NS,
        "old",
        support::kube_api::PatchKind::Merge,
        &json!({"metadata": {"finalizers": ["konnect-sa.dev/cleanup"]}}),
    )
    .expect("a write that leaves the spec as it is ratchets");
    let err = kube
        .patch_raw(
            group,
            version,
            plural,
            NS,
            "old",
            support::kube_api::PatchKind::Merge,
            &json!({"spec": {"secretKey": "other"}}),
        )
        .unwrap_err();
    assert_eq!(err.code, 422, "a spec edit is checked against every rule");
    kube.patch_raw(
        group,
        version,
        plural,
        NS,
        "old",
        support::kube_api::PatchKind::Merge,
        &json!({"spec": {"duration": "90h"}}),
    )
    .expect("the edit that fixes it is taken");
    kube.shutdown().await;
}

/// apps/v1 workloads get the API server's defaults (a Deployment's default rolling update waits for
/// new pods: 25% surge and unavailable) and its validation: a selector that matches the template's
/// labels and never changes, containers with a name and an image.
#[tokio::test]
async fn workloads_get_defaults_and_validation() {
    let (kube, client) = start().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deployment = |labels: Value, containers: Value| -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}}}
        }))
        .unwrap()
    };
    let created = deployments
        .create(
            &PostParams::default(),
            &deployment(
                json!({"app": "web"}),
                json!([{"name": "web", "image": "nginx"}]),
            ),
        )
        .await
        .unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    let strategy = spec.strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.unwrap();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(rolling.max_surge, Some(IntOrString::String("25%".into())));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert_eq!(
        pod.containers[0].image_pull_policy.as_deref(),
        Some("Always"),
        "no tag: pulled every time"
    );

    for (labels, containers, field) in [
        (
            json!({"app": "other"}),
            json!([{"name": "web", "image": "nginx"}]),
            "spec.template.metadata.labels",
        ),
        (
            json!({"app": "web"}),
            json!([]),
            "spec.template.spec.containers",
        ),
        (
            json!({"app": "web"}),
            json!([{"name": "web"}]),
            "containers[0].image",
        ),
    ] {
        let mut d = deployment(labels, containers);
        d.metadata.name = Some("bad".into());
        let err = deployments
            .create(&PostParams::default(), &d)
            .await
            .unwrap_err();
        let kube::Error::Api(status) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(status.code, 422, "{}", status.message);
        assert!(status.message.contains(field), "{}", status.message);
    }
    let err = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"selector": {"matchLabels": {"app": "web", "tier": "x"}},
                "template": {"metadata": {"labels": {"tier": "x"}}}}}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(
        api_code(&err).map(|c| c.0),
        Some(422),
        "the selector is immutable"
    );
    kube.shutdown().await;
}
