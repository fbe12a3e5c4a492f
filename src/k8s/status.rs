//! Status writes. A full replace of the status subresource guarded by resourceVersion: a reconcile
//! working from a stale copy gets 409 and starts over instead of overwriting newer bookkeeping
//! (the token controller's crash-safety depends on it), and fields set to None are really cleared.
use std::fmt::Debug;

use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub async fn replace<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    api.replace_status(&obj.name_any(), &PostParams::default(), obj)
        .await
}
