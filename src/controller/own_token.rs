//! The operator's own credential, when it is a SystemAccountToken this operator manages: the
//! token whose Secret is `--konnect-token-secret` (mounted as `--konnect-token-file`). Rotation
//! must never lock the operator out, so a previous token of that object is revoked only once the
//! operator itself sends the current one and Konnect has accepted it (`GET /v3/organizations/me`).
//! Until then the revoke waits (the kubelet takes up to a minute or so to update the mount), and
//! the `OperatorCredential` condition says which of the two is the case. The token controller
//! calls this from one place; everything else about rotation stays in `token`/`token_plan`.
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

use super::context::Context;
use crate::api::SystemAccountToken;
use crate::k8s::conditions::{self, OPERATOR_CREDENTIAL, Reason};
use crate::konnect::TokenValue;

/// How soon a held revoke is looked at again (a Secret read each time; the file watch itself
/// polls every second).
pub const RECHECK: Duration = Duration::from_millis(500);

/// Of the previous tokens `ids`, those already expired: revoking them cannot lock anyone out, so
/// they go even while the others are held (the status does not keep growing).
pub fn expired(
    st: &crate::api::SystemAccountTokenStatus,
    ids: &[String],
    now: Timestamp,
) -> Vec<String> {
    st.previous_tokens
        .iter()
        .filter(|p| ids.contains(&p.id))
        .filter(|p| {
            p.expires_at
                .as_deref()
                .and_then(|e| e.parse::<Timestamp>().ok())
                .is_some_and(|e| e <= now)
        })
        .map(|p| p.id.clone())
        .collect()
}

/// Is the Secret `namespace/secret_name` the operator's own token Secret?
pub fn is_own(ctx: &Context, namespace: &str, secret_name: &str) -> bool {
    ctx.config
        .own_token_secret
        .as_ref()
        .is_some_and(|(ns, name)| ns == namespace && name == secret_name)
}

/// `Ok` when the previous tokens of this object may be revoked: it is not the operator's own, or
/// the operator runs on the token now in the Secret and Konnect accepts it. `Err` says why not.
pub async fn may_revoke_previous(
    ctx: &Context,
    namespace: &str,
    secret_name: &str,
    secret_key: &str,
) -> Result<(), String> {
    if !is_own(ctx, namespace, secret_name) {
        return Ok(());
    }
    // Read fresh: the Secret is what the kubelet mounts, and what a restarted operator starts on.
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), namespace);
    let current = match secrets.get_opt(secret_name).await {
        Ok(Some(s)) => s
            .data
            .and_then(|d| d.get(secret_key).cloned())
            .and_then(|v| String::from_utf8(v.0).ok())
            .map(|v| TokenValue::new(v.trim())),
        Ok(None) => None,
        Err(e) => {
            return Err(format!(
                "cannot read the operator's token Secret ({}); the previous token is kept",
                crate::k8s::error_summary(&e)
            ));
        }
    };
    let Some(current) = current else {
        return Err(
            "the operator's token Secret holds no token; the previous token is kept".into(),
        );
    };
    let client = &ctx.connections.default_connection().client;
    if !client.uses_token(&current) {
        return Err(
            "the operator has not loaded the current token from its token file yet (the kubelet updates a \
             mounted Secret within a minute or two); the previous token is kept until it has"
                .into(),
        );
    }
    client.me().await.map(|_| ()).map_err(|e| {
        format!(
            "Konnect did not accept the operator's current token ({e}); the previous token is kept"
        )
    })
}

/// Sets the `OperatorCredential` condition (and the expiry gauge of the token the operator runs
/// on) for the operator's own token; removes the condition from any other. `held`: why a revoke
/// was held back this pass. True when the operator does not run on the current token yet (the
/// caller looks again soon).
pub async fn note(
    ctx: &Context,
    obj: &mut SystemAccountToken,
    secret_name: &str,
    secret_key: &str,
    held: Option<String>,
) -> bool {
    let ns = obj.namespace().unwrap_or_default();
    let own = is_own(ctx, &ns, secret_name);
    let generation = obj.metadata.generation;
    if !own {
        if let Some(st) = obj.status.as_mut() {
            conditions::remove(&mut st.conditions, OPERATOR_CREDENTIAL);
        }
        return false;
    }
    // Nothing to revoke this pass: still say whether the operator runs on the current token
    // (right after the first issue it runs on whatever started it).
    let held = match held {
        Some(why) => Some(why),
        None => may_revoke_previous(ctx, &ns, secret_name, secret_key)
            .await
            .err(),
    };
    let held = held.as_deref();
    let st = obj.status.get_or_insert_with(Default::default);
    // While a revoke is held, the operator still runs on the newest previous token.
    let in_use_expiry = match held {
        None => st.expires_at.clone(),
        Some(_) => st
            .previous_tokens
            .iter()
            .filter_map(|p| p.expires_at.clone())
            .max()
            .or_else(|| st.expires_at.clone()),
    };
    if let Some(at) = in_use_expiry.and_then(|e| e.parse::<Timestamp>().ok()) {
        ctx.metrics.set_operator_token_expiry(at.as_second() as f64);
    }
    let (reason, message) = match held {
        None => (
            Reason::InUse,
            format!(
                "This is the operator's own Konnect token (Secret {ns}/{secret_name}); the operator runs on the current one"
            ),
        ),
        Some(why) => (
            Reason::Loading,
            format!("This is the operator's own Konnect token (Secret {ns}/{secret_name}): {why}"),
        ),
    };
    conditions::set(
        &mut st.conditions,
        OPERATOR_CREDENTIAL,
        true,
        reason,
        message,
        generation,
        Timestamp::now(),
    );
    held.is_some()
}
