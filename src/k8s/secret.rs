//! The one place that writes token values: the Secret a SystemAccountToken fills.
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::controller::token_plan::SecretView;
use crate::konnect::TokenValue;

pub use crate::api::common::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
pub const ANN_TOKEN_ID: &str = crate::api::common::SECRET_TOKEN_ID_ANNOTATION;
pub const ANN_TOKEN_NAME: &str = "konnect-sa.dev/token-name";
pub const ANN_ACCOUNT_ID: &str = "konnect-sa.dev/account-id";
pub const ANN_REVISION: &str = crate::api::common::SECRET_REVISION_ANNOTATION;
pub const ANN_EXPIRES_AT: &str = crate::api::common::SECRET_EXPIRES_AT_ANNOTATION;
pub const ANN_ISSUED_AT: &str = "konnect-sa.dev/issued-at";
/// The CR's `konnect-sa.dev/rotate` value when this token was issued.
pub const ANN_ROTATED_FOR: &str = "konnect-sa.dev/rotated-for";
/// The data key the token these annotations describe was written under (after a `secretKey` move
/// the Secret holds more than one key for a while).
pub const ANN_TOKEN_KEY: &str = "konnect-sa.dev/token-key";

/// Everything the Secret records about one issued token.
pub struct IssuedToken<'a> {
    pub value: &'a TokenValue,
    pub token_id: &'a str,
    pub token_name: &'a str,
    pub account_id: &'a str,
    pub revision: i64,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// The CR's `konnect-sa.dev/rotate` value at issue time, if any.
    pub rotated_for: Option<&'a str>,
}

/// Where and how to write it.
pub struct SecretTarget<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub key: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub owner: OwnerReference,
    /// `deletionPolicy: Orphan`: the Secret carries no ownerReference (garbage collection, foreground
    /// or background, never takes it); the owner annotation marks it as the object's instead.
    pub orphan: bool,
    /// Other keys of the existing Secret that keep their value: they hold a replaced token still
    /// within its retention (a `secretKey` move).
    pub keep: &'a [String],
}

/// The template keys the operator last put on the Secret (`l:<label>` and `a:<annotation>`, comma
/// separated): a key dropped from the template is removed from the Secret, and nothing else that
/// another tool put there is touched.
pub const ANN_TEMPLATE_KEYS: &str = "konnect-sa.dev/template-keys";
/// The uid of the SystemAccountToken the Secret belongs to (ownership without an ownerReference).
pub const ANN_OWNER_UID: &str = "konnect-sa.dev/owner-uid";
/// The name of that SystemAccountToken (in the Secret's namespace): its watch maps Secret events to it.
pub const ANN_OWNER_NAME: &str = "konnect-sa.dev/owner-name";

fn template_keys(target: &SecretTarget) -> String {
    let labels = target.labels.keys().map(|k| format!("l:{k}"));
    let annotations = target.annotations.keys().map(|k| format!("a:{k}"));
    labels.chain(annotations).collect::<Vec<_>>().join(",")
}

/// Metadata of `existing` that is neither ours nor put there by an earlier template: another tool's
/// (Argo CD's tracking annotation, a backup label), kept across rotations.
fn foreign_metadata(
    existing: Option<&Secret>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let Some(s) = existing else {
        return Default::default();
    };
    let annotations = s.metadata.annotations.clone().unwrap_or_default();
    let applied = annotations
        .get(ANN_TEMPLATE_KEYS)
        .cloned()
        .unwrap_or_default();
    let applied: Vec<&str> = applied.split(',').collect();
    let labels = s
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != MANAGED_BY_LABEL && !applied.contains(&format!("l:{k}").as_str()))
        .collect();
    let annotations = annotations
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with(crate::api::metadata::RESERVED_PREFIX)
                && !applied.contains(&format!("a:{k}").as_str())
        })
        .collect();
    (labels, annotations)
}

/// The labels and the non-token annotations the operator wants on the Secret.
fn wanted_metadata(target: &SecretTarget) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = target.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let mut annotations = target.annotations.clone();
    annotations.insert(ANN_TEMPLATE_KEYS.into(), template_keys(target));
    annotations.insert(ANN_OWNER_UID.into(), target.owner.uid.clone());
    annotations.insert(ANN_OWNER_NAME.into(), target.owner.name.clone());
    (labels, annotations)
}

/// The ownerReferences the Secret should carry: another owner's kept, ours only unless orphaned.
fn wanted_owners(existing: Option<&Secret>, target: &SecretTarget) -> Vec<OwnerReference> {
    let mut owners: Vec<OwnerReference> = existing
        .and_then(|s| s.metadata.owner_references.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != target.owner.uid)
        .collect();
    if !target.orphan {
        owners.push(target.owner.clone());
    }
    owners
}

/// The Secret for `token`: value, our annotations and the template fresh (so a stale key or
/// annotation of ours never survives a rotation); what other tools put on `existing` is kept.
pub fn build(target: &SecretTarget, token: &IssuedToken, existing: Option<&Secret>) -> Secret {
    let (mut labels, mut annotations) = foreign_metadata(existing);
    let (wanted_labels, wanted_annotations) = wanted_metadata(target);
    labels.extend(wanted_labels);
    annotations.extend(wanted_annotations);
    for (k, v) in [
        (ANN_TOKEN_ID, token.token_id.to_string()),
        (ANN_TOKEN_NAME, token.token_name.to_string()),
        (ANN_ACCOUNT_ID, token.account_id.to_string()),
        (ANN_REVISION, token.revision.to_string()),
        (ANN_ISSUED_AT, token.issued_at.to_string()),
        (ANN_EXPIRES_AT, token.expires_at.to_string()),
        (ANN_TOKEN_KEY, target.key.to_string()),
    ] {
        annotations.insert(k.into(), v);
    }
    match token.rotated_for {
        Some(v) => annotations.insert(ANN_ROTATED_FOR.into(), v.to_string()),
        None => annotations.remove(ANN_ROTATED_FOR),
    };
    let mut data: BTreeMap<String, ByteString> = target
        .keep
        .iter()
        .filter_map(|k| {
            let v = existing?.data.as_ref()?.get(k)?;
            Some((k.clone(), v.clone()))
        })
        .collect();
    data.insert(
        target.key.to_string(),
        ByteString(token.value.expose().as_bytes().to_vec()),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(target.name.to_string()),
            namespace: Some(target.namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(wanted_owners(existing, target)),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Creates the Secret, or replaces `existing` guarded by its resourceVersion (a concurrent edit
/// makes this fail with 409 rather than be overwritten unseen).
pub async fn write(
    api: &Api<Secret>,
    existing: Option<&Secret>,
    target: &SecretTarget<'_>,
    token: &IssuedToken<'_>,
) -> Result<Secret, kube::Error> {
    put(api, existing, build(target, token, existing), false).await
}

/// A merge patch that brings `existing`'s labels and template annotations to what the spec asks,
/// without a rotation: template keys added or changed, keys the template dropped removed, our
/// managed-by label restored. None when nothing differs (a quiet pass writes nothing). Guarded by
/// the resourceVersion, and touching no key another tool put there.
pub fn metadata_patch(existing: &Secret, target: &SecretTarget) -> Option<serde_json::Value> {
    let (wanted_labels, wanted_annotations) = wanted_metadata(target);
    let labels = existing.metadata.labels.clone().unwrap_or_default();
    let annotations = existing.metadata.annotations.clone().unwrap_or_default();
    let applied = annotations
        .get(ANN_TEMPLATE_KEYS)
        .cloned()
        .unwrap_or_default();
    let mut label_patch = serde_json::Map::new();
    let mut annotation_patch = serde_json::Map::new();
    for (k, v) in &wanted_labels {
        if labels.get(k) != Some(v) {
            label_patch.insert(k.clone(), v.clone().into());
        }
    }
    for (k, v) in &wanted_annotations {
        if annotations.get(k) != Some(v) {
            annotation_patch.insert(k.clone(), v.clone().into());
        }
    }
    for key in applied.split(',').filter(|k| !k.is_empty()) {
        match key.split_once(':') {
            Some(("l", k)) if !wanted_labels.contains_key(k) && labels.contains_key(k) => {
                label_patch.insert(k.to_string(), serde_json::Value::Null);
            }
            Some(("a", k))
                if !wanted_annotations.contains_key(k) && annotations.contains_key(k) =>
            {
                annotation_patch.insert(k.to_string(), serde_json::Value::Null);
            }
            _ => {}
        }
    }
    let owners = wanted_owners(Some(existing), target);
    let owners_differ = existing
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        != owners;
    if label_patch.is_empty() && annotation_patch.is_empty() && !owners_differ {
        return None;
    }
    let mut patch = serde_json::json!({
        "metadata": {
            "resourceVersion": existing.metadata.resource_version,
            "labels": label_patch,
            "annotations": annotation_patch,
        }
    });
    if owners_differ {
        // A merge patch replaces the list: ours added or dropped, another owner's kept.
        patch["metadata"]["ownerReferences"] = serde_json::json!(owners);
    }
    Some(patch)
}

/// Applies [`metadata_patch`] to `existing`, when there is anything to change.
pub async fn sync_metadata(
    api: &Api<Secret>,
    existing: &Secret,
    target: &SecretTarget<'_>,
) -> Result<Option<Secret>, kube::Error> {
    let Some(patch) = metadata_patch(existing, target) else {
        return Ok(None);
    };
    api.patch(target.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(Some)
}

/// Asks the API server (dry run: nothing is stored) whether it would take the Secret for the next
/// token, with a placeholder in place of the value. Admission webhooks and policies see it too.
pub async fn probe(
    api: &Api<Secret>,
    existing: Option<&Secret>,
    target: &SecretTarget<'_>,
) -> Result<(), kube::Error> {
    let placeholder = TokenValue::new("dry-run");
    let token = IssuedToken {
        value: &placeholder,
        token_id: "dry-run",
        token_name: "dry-run",
        account_id: "dry-run",
        revision: 0,
        issued_at: Timestamp::UNIX_EPOCH,
        expires_at: Timestamp::UNIX_EPOCH,
        rotated_for: None,
    };
    put(api, existing, build(target, &token, existing), true)
        .await
        .map(|_| ())
}

async fn put(
    api: &Api<Secret>,
    existing: Option<&Secret>,
    mut secret: Secret,
    dry_run: bool,
) -> Result<Secret, kube::Error> {
    let params = PostParams {
        dry_run,
        ..Default::default()
    };
    match existing {
        None => api.create(&params, &secret).await,
        Some(old) => {
            secret.metadata.resource_version = old.metadata.resource_version.clone();
            secret.metadata.uid = old.metadata.uid.clone();
            let name = secret.metadata.name.clone().unwrap_or_default();
            api.replace(&name, &params, &secret).await
        }
    }
}

/// Why the next token cannot go into `existing`, when that is certain without asking the API
/// server: an immutable Secret keeps its data for good.
pub fn unwritable(existing: Option<&Secret>) -> Option<String> {
    let s = existing.filter(|s| s.immutable == Some(true))?;
    Some(format!(
        "Secret {} is immutable, so the next token cannot be written into it; the current token stays in \
         use until it expires. Delete the Secret (a new token is written at once) or set spec.secretName \
         to another name",
        s.metadata.name.as_deref().unwrap_or_default()
    ))
}

/// Whether `secret` holds the token `token_id` (a write whose answer was lost may have landed).
pub fn holds_token(secret: &Secret, token_id: &str) -> bool {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_TOKEN_ID))
        .is_some_and(|id| id == token_id)
}

/// Reads what a Secret says about its token, for the CR with uid `owner_uid` whose spec writes under
/// `key` (the key the annotations name wins: it is where their token is).
pub fn view(secret: &Secret, owner_uid: &str, key: &str) -> SecretView {
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    let get = |k: &str| ann.get(k).cloned().filter(|v| !v.is_empty());
    let time = |k: &str| get(k).and_then(|v| v.parse::<Timestamp>().ok());
    let token_key = get(ANN_TOKEN_KEY);
    SecretView {
        owned: is_controlled_by(secret, owner_uid),
        has_value: secret
            .data
            .as_ref()
            .and_then(|d| d.get(token_key.as_deref().unwrap_or(key)))
            .is_some_and(|v| !v.0.is_empty()),
        key: token_key,
        token_id: get(ANN_TOKEN_ID),
        token_name: get(ANN_TOKEN_NAME),
        account_id: get(ANN_ACCOUNT_ID),
        revision: get(ANN_REVISION).and_then(|v| v.parse().ok()),
        expires_at: time(ANN_EXPIRES_AT),
        issued_at: time(ANN_ISSUED_AT),
        rotated_for: get(ANN_ROTATED_FOR),
    }
}

/// Whether the Secret belongs to the SystemAccountToken with uid `owner_uid`: its controller
/// ownerReference, or (`deletionPolicy: Orphan`, no ownerReference) our owner annotation and no
/// other controller.
pub fn is_controlled_by(secret: &Secret, owner_uid: &str) -> bool {
    let refs = secret.metadata.owner_references.clone().unwrap_or_default();
    let controller = refs.iter().find(|r| r.controller == Some(true));
    match controller {
        Some(r) => r.uid == owner_uid,
        None => secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANN_OWNER_UID))
            .is_some_and(|uid| uid == owner_uid),
    }
}

/// The SystemAccountToken a managed Secret belongs to, by name: its controller ownerReference, or
/// the owner annotation of an orphan-policy Secret (for the watch that wakes the token).
pub fn owner_name(meta: &ObjectMeta) -> Option<String> {
    let refs = meta.owner_references.clone().unwrap_or_default();
    if let Some(r) = refs
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == "SystemAccountToken")
    {
        return Some(r.name.clone());
    }
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ANN_OWNER_NAME))
        .cloned()
}

/// Removes `key` from Secret `name`, if the Secret is `owner_uid`'s and has the key (its token was
/// revoked; the key is no longer where the spec writes). Guarded by the resourceVersion read.
pub async fn remove_key(
    api: &Api<Secret>,
    name: &str,
    key: &str,
    owner_uid: &str,
) -> Result<(), kube::Error> {
    let Some(secret) = api.get_opt(name).await? else {
        return Ok(());
    };
    let has_key = secret.data.as_ref().is_some_and(|d| d.contains_key(key));
    if !is_controlled_by(&secret, owner_uid) || !has_key {
        return Ok(());
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": secret.metadata.resource_version},
        "data": {key: null},
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Deletes Secret `name` (the spec moved to another Secret and the tokens it held are revoked now)
/// if it is `owner_uid`'s and does not hold the `current` token: preconditions on uid and
/// resourceVersion, so a Secret written again meanwhile is left alone.
pub async fn delete_unless_holding(
    api: &Api<Secret>,
    name: &str,
    current: Option<&str>,
    owner_uid: &str,
) -> Result<bool, kube::Error> {
    let Some(secret) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !is_controlled_by(&secret, owner_uid) || current.is_some_and(|c| holds_token(&secret, c)) {
        return Ok(false);
    }
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(e) if crate::k8s::error_code(&e) == Some(404) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `deletionPolicy: Orphan`: drop our ownerReference so garbage collection keeps the Secret.
pub async fn release(
    api: &Api<Secret>,
    secret: &Secret,
    owner_uid: &str,
) -> Result<(), kube::Error> {
    let Some(name) = secret.metadata.name.as_deref() else {
        return Ok(());
    };
    let remaining: Vec<&OwnerReference> = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner_uid)
        .collect();
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": secret.metadata.resource_version,
            "ownerReferences": remaining,
        }
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "konnect-sa.dev/v1alpha1".into(),
            kind: "SystemAccountToken".into(),
            name: "t".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn template_follows_the_spec_without_touching_other_tools_metadata() {
        let owner = owner();
        let value = TokenValue::new("spat_abc");
        let token = IssuedToken {
            value: &value,
            token_id: "tok-1",
            token_name: "ns.t.u.r1",
            account_id: "acc-1",
            revision: 1,
            issued_at: Timestamp::from_second(1000).unwrap(),
            expires_at: Timestamp::from_second(1090).unwrap(),
            rotated_for: None,
        };
        let none = BTreeMap::new();
        let first = SecretTarget {
            namespace: "ns",
            name: "s",
            key: "token",
            labels: &none,
            annotations: &none,
            owner: owner.clone(),
            orphan: false,
            keep: &[],
        };
        let mut s = build(&first, &token, None);
        assert_eq!(
            metadata_patch(&s, &first),
            None,
            "a quiet pass writes nothing"
        );
        // Another tool annotates the Secret; the spec gains a template label.
        s.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("argocd.argoproj.io/tracking-id".into(), "x".into());
        let labels = BTreeMap::from([("konghq.com/credential".to_string(), "konnect".to_string())]);
        let second = SecretTarget {
            labels: &labels,
            owner: owner.clone(),
            ..first
        };
        let patch = metadata_patch(&s, &second).expect("the new label is applied");
        assert_eq!(
            patch["metadata"]["labels"]["konghq.com/credential"],
            "konnect"
        );
        assert!(
            patch["metadata"]["annotations"]
                .get("argocd.argoproj.io/tracking-id")
                .is_none()
        );
        // After it landed (and at the next rotation) the foreign annotation is still there.
        let mut s2 = build(&second, &token, Some(&s));
        assert_eq!(
            s2.metadata.annotations.as_ref().unwrap()["argocd.argoproj.io/tracking-id"],
            "x"
        );
        assert_eq!(metadata_patch(&s2, &second), None);
        // The label leaves the template: it is removed, the foreign annotation stays.
        let third = SecretTarget {
            labels: &none,
            owner: owner.clone(),
            ..second
        };
        let patch = metadata_patch(&s2, &third).expect("the dropped label is removed");
        assert_eq!(
            patch["metadata"]["labels"]["konghq.com/credential"],
            serde_json::Value::Null
        );
        // A stripped managed-by label comes back.
        s2.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(MANAGED_BY_LABEL);
        let patch = metadata_patch(&s2, &second).unwrap();
        assert_eq!(
            patch["metadata"]["labels"][MANAGED_BY_LABEL],
            MANAGED_BY_VALUE
        );
    }

    #[test]
    fn built_secret_carries_value_annotations_labels_and_owner() {
        let labels = BTreeMap::from([("konghq.com/credential".to_string(), "konnect".to_string())]);
        let annotations = BTreeMap::from([(ANN_REVISION.to_string(), "999".to_string())]);
        let target = SecretTarget {
            namespace: "ns",
            name: "s",
            key: "token",
            labels: &labels,
            annotations: &annotations,
            owner: owner(),
            orphan: false,
            keep: &[],
        };
        let value = TokenValue::new("spat_abc");
        let token = IssuedToken {
            value: &value,
            token_id: "tok-1",
            token_name: "ns.t.r2",
            account_id: "acc-1",
            revision: 2,
            issued_at: Timestamp::from_second(1000).unwrap(),
            expires_at: Timestamp::from_second(1090).unwrap(),
            rotated_for: Some("now"),
        };
        let s = build(&target, &token, None);
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(s.data.as_ref().unwrap()["token"].0, b"spat_abc");
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(labels["konghq.com/credential"], "konnect");
        let v = view(&s, "uid-1", "token");
        assert!(v.owned && v.has_value);
        assert_eq!(
            v.revision,
            Some(2),
            "our annotations win over template annotations"
        );
        assert_eq!(v.token_id.as_deref(), Some("tok-1"));
        assert_eq!(v.rotated_for.as_deref(), Some("now"));
        assert_eq!(v.expires_at, Some(Timestamp::from_second(1090).unwrap()));
        assert!(!view(&s, "other-uid", "token").owned);

        // secretKey moved to "api-token": the old key keeps the replaced token (listed in keep),
        // any other key of the old Secret does not survive.
        let mut old = s.clone();
        old.data
            .as_mut()
            .unwrap()
            .insert("stale".into(), ByteString(b"x".to_vec()));
        let kept = vec!["token".to_string()];
        let moved = SecretTarget {
            key: "api-token",
            keep: &kept,
            owner: owner(),
            ..target
        };
        let next = TokenValue::new("spat_def");
        let s2 = build(
            &moved,
            &IssuedToken {
                value: &next,
                revision: 3,
                ..token
            },
            Some(&old),
        );
        let data = s2.data.as_ref().unwrap();
        assert_eq!(data["api-token"].0, b"spat_def");
        assert_eq!(data["token"].0, b"spat_abc", "the old key keeps its token");
        assert!(!data.contains_key("stale"));
        assert!(view(&s2, "uid-1", "api-token").has_value);
        // The annotations name the key their token is under; the key the spec now asks for does
        // not change what they describe (a secretKey move is decided from the status and this key).
        assert_eq!(
            view(&s2, "uid-1", "token").key.as_deref(),
            Some("api-token")
        );
        let mut legacy = s.clone();
        legacy
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANN_TOKEN_KEY);
        assert!(view(&legacy, "uid-1", "token").has_value);
        assert!(
            !view(&legacy, "uid-1", "other-key").has_value,
            "without the annotation, the spec's key is looked at"
        );
    }
}
