//! Which Konnect organisation an object talks to: the operator-wide default, or the Secret named in
//! `spec.konnect.authSecretRef` (read on every reconcile, so rotating it needs no restart).
//! Clients are cached per (server URL, token identity) so connection pools and limits are shared
//! and organisations never mix.
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::error::ReconcileError;
use crate::konnect::{ClientConfig, KonnectClient, TokenValue};

/// Key `token` (required) and `serverURL` (optional) of an auth Secret.
use crate::api::common::{
    AUTH_SECRET_SERVER_URL_KEY as AUTH_SERVER_URL_KEY, AUTH_SECRET_TOKEN_KEY as AUTH_TOKEN_KEY,
};

/// A Konnect client and the key identifying its organisation connection.
#[derive(Clone)]
pub struct Connection {
    pub client: KonnectClient,
    /// (server URL, token identity hash); caches are keyed by it.
    pub key: ConnectionKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    pub url: String,
    token_hash: u64,
}

/// Builds and caches clients.
pub struct Connections {
    kube: kube::Client,
    default: Connection,
    template: ClientConfig,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    clients: HashMap<ConnectionKey, KonnectClient>,
    /// Which connection each auth Secret (namespace/name) used last: when its token is replaced,
    /// the old client (and its pool) goes unless another Secret still holds that token.
    by_secret: HashMap<String, ConnectionKey>,
}

impl Connections {
    pub fn new(kube: kube::Client, default_config: ClientConfig) -> crate::konnect::Result<Self> {
        let client = KonnectClient::new(default_config.clone())?;
        let key = key_for(client.base_url(), &default_config.token);
        let mut template = default_config;
        // Per-object tokens are re-read from their Secret on every reconcile, not from the file.
        template.token_source = None;
        Ok(Self {
            kube,
            default: Connection { client, key },
            template,
            cache: Mutex::new(Cache::default()),
        })
    }

    pub fn default_connection(&self) -> &Connection {
        &self.default
    }

    /// The connection for an object in `namespace` with an optional auth Secret override.
    pub async fn for_object(
        &self,
        namespace: &str,
        auth_secret: Option<&str>,
    ) -> Result<Connection, ReconcileError> {
        let Some(secret_name) = auth_secret else {
            return Ok(self.default.clone());
        };
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), namespace);
        let secret = secrets
            .get_opt(secret_name)
            .await
            .map_err(ReconcileError::kube(format!("reading auth Secret {namespace}/{secret_name}")))?
            .ok_or_else(|| {
                ReconcileError::Auth(format!(
                    "Secret {namespace}/{secret_name} named in spec.konnect.authSecretRef does not exist: \
                     create it with key '{AUTH_TOKEN_KEY}' holding a Konnect token"
                ))
            })?;
        let read = |key: &str| -> Option<String> {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let token = read(AUTH_TOKEN_KEY).ok_or_else(|| {
            ReconcileError::Auth(format!(
                "Secret {namespace}/{secret_name} has no non-empty key '{AUTH_TOKEN_KEY}' with a Konnect token"
            ))
        })?;
        let url = read(AUTH_SERVER_URL_KEY).unwrap_or_else(|| self.template.base_url.clone());
        self.get_or_build(
            &format!("{namespace}/{secret_name}"),
            url,
            TokenValue::new(token),
        )
    }

    /// Clients held for per-object auth Secrets (not the default one).
    pub fn cached_clients(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clients
            .len()
    }

    fn get_or_build(
        &self,
        secret: &str,
        url: String,
        token: TokenValue,
    ) -> Result<Connection, ReconcileError> {
        let mut config = self.template.clone();
        config.base_url = url;
        config.token = token;
        let probe_key = key_for(&config.base_url, &config.token);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let replaced = cache
            .by_secret
            .insert(secret.to_string(), probe_key.clone())
            .filter(|old| *old != probe_key);
        if let Some(old) = replaced
            && !cache.by_secret.values().any(|k| *k == old)
        {
            cache.clients.remove(&old);
        }
        if let Some(client) = cache.clients.get(&probe_key) {
            return Ok(Connection {
                client: client.clone(),
                key: probe_key,
            });
        }
        let client = KonnectClient::new(config.clone())
            .map_err(|e| ReconcileError::InvalidSpec(format!("auth Secret serverURL: {e}")))?;
        let key = key_for(client.base_url(), &config.token);
        cache.clients.insert(probe_key, client.clone());
        Ok(Connection { client, key })
    }
}

fn key_for(url: &str, token: &TokenValue) -> ConnectionKey {
    let mut h = DefaultHasher::new();
    token.expose().hash(&mut h);
    ConnectionKey {
        url: url.to_string(),
        token_hash: h.finish(),
    }
}

/// Shared across controllers.
pub type SharedConnections = Arc<Connections>;

#[cfg(test)]
mod tests {
    use super::*;

    fn connections() -> Connections {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kube_config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let kube = kube::Client::try_from(kube_config).unwrap();
        let config = ClientConfig::new("http://127.0.0.1:2", TokenValue::new("kpat_default"));
        Connections::new(kube, config).unwrap()
    }

    #[tokio::test]
    async fn a_replaced_auth_token_drops_its_client_unless_another_secret_uses_it() {
        let c = connections();
        let url = "http://127.0.0.1:3".to_string();
        let a1 = c
            .get_or_build("ns/a", url.clone(), TokenValue::new("spat_a1"))
            .unwrap();
        let again = c
            .get_or_build("ns/a", url.clone(), TokenValue::new("spat_a1"))
            .unwrap();
        assert_eq!(a1.key, again.key);
        assert_eq!(c.cached_clients(), 1);
        // Rotated: the old client goes.
        c.get_or_build("ns/a", url.clone(), TokenValue::new("spat_a2"))
            .unwrap();
        assert_eq!(c.cached_clients(), 1);
        // Two Secrets sharing a token: replacing it in one keeps the client for the other.
        c.get_or_build("ns/b", url.clone(), TokenValue::new("spat_a2"))
            .unwrap();
        c.get_or_build("ns/a", url.clone(), TokenValue::new("spat_a3"))
            .unwrap();
        assert_eq!(c.cached_clients(), 2);
        c.get_or_build("ns/b", url, TokenValue::new("spat_a3"))
            .unwrap();
        assert_eq!(c.cached_clients(), 1);
    }
}
