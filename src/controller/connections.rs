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
    cache: Mutex<HashMap<ConnectionKey, KonnectClient>>,
}

impl Connections {
    pub fn new(kube: kube::Client, default_config: ClientConfig) -> crate::konnect::Result<Self> {
        let client = KonnectClient::new(default_config.clone())?;
        let key = key_for(client.base_url(), &default_config.token);
        Ok(Self {
            kube,
            default: Connection { client, key },
            template: default_config,
            cache: Mutex::new(HashMap::new()),
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
        self.get_or_build(url, TokenValue::new(token))
    }

    fn get_or_build(&self, url: String, token: TokenValue) -> Result<Connection, ReconcileError> {
        let mut config = self.template.clone();
        config.base_url = url;
        config.token = token;
        let probe_key = key_for(&config.base_url, &config.token);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = cache.get(&probe_key) {
            return Ok(Connection {
                client: client.clone(),
                key: probe_key,
            });
        }
        let client = KonnectClient::new(config.clone())
            .map_err(|e| ReconcileError::InvalidSpec(format!("auth Secret serverURL: {e}")))?;
        let key = key_for(client.base_url(), &config.token);
        cache.insert(probe_key, client.clone());
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
