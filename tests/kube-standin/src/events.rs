//! core/v1 and events.k8s.io/v1 Events are one resource on a real API server: stored once (as the
//! core kind), served in both shapes, so an Event written through either API is listed and watched
//! through both. The stand-in does the same: events.k8s.io requests use the core store, their
//! bodies converted on the way in and the objects on the way out (the renames of Kubernetes'
//! `pkg/apis/events/v1` conversion). Not converted: field selectors (an events.k8s.io request
//! selects on the core field names).

use serde_json::{Map, Value};

pub const GROUP: &str = "events.k8s.io";

/// (events.k8s.io/v1 field, core/v1 field).
const RENAMES: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// A request for `group`/`plural` that the core Event store answers in the events.k8s.io shape.
pub fn is_events_v1(group: &str, plural: &str) -> bool {
    group == GROUP && plural == "events"
}

fn renamed(value: Value, from_v1: bool, api_version: &str) -> Value {
    let Value::Object(map) = value else {
        return value;
    };
    let mut out = Map::new();
    for (k, v) in map {
        let key = RENAMES
            .iter()
            .find_map(|(v1, core)| match from_v1 {
                true if k == *v1 => Some(*core),
                false if k == *core => Some(*v1),
                _ => None,
            })
            .map(str::to_string)
            .unwrap_or(k);
        out.insert(key, v);
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    Value::Object(out)
}

/// An events.k8s.io/v1 Event as the core store keeps it.
pub fn to_core(v1: Value) -> Value {
    renamed(v1, true, "v1")
}

/// A stored (core/v1) Event as events.k8s.io/v1 shows it.
pub fn from_core(core: Value) -> Value {
    renamed(core, false, &format!("{GROUP}/v1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_two_shapes_convert_both_ways() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "type": "Warning", "reason": "Failed", "note": "it failed", "action": "Reconcile",
            "eventTime": "2026-11-30T12:00:00.000000Z", "reportingController": "konnect-sa-operator",
            "reportingInstance": "pod-1", "regarding": {"kind": "SystemAccount", "name": "ci"},
            "series": {"count": 2, "lastObservedTime": "2026-11-30T12:01:00.000000Z"}});
        let core = to_core(v1.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["message"], "it failed");
        assert_eq!(core["involvedObject"]["name"], "ci");
        assert_eq!(core["reportingComponent"], "konnect-sa-operator");
        assert_eq!(core["series"]["count"], 2);
        assert!(core.get("note").is_none() && core.get("regarding").is_none());
        assert_eq!(from_core(core), v1);
    }
}
