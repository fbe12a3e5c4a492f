//! What the operator sent to Konnect, read from the simulator's journal (`TestEnv` turns it on). Assertions
//! here hold even where the simulator would refuse the request itself (a duplicate create answers 409, a
//! change to a `konnect_managed` account 400): they count what was sent, not what was stored.
use konnect_sa_operator::sim::{JournalEntry, RunningSim};

/// The requests of one operation (OpenAPI operationId, e.g. `post-system-accounts`), in order.
pub fn of(sim: &RunningSim, operation: &str) -> Vec<JournalEntry> {
    sim.journal()
        .into_iter()
        .filter(|e| e.operation == operation)
        .collect()
}

/// Creates (`operation`) sent again for a key after one for that key was delivered as 201: each is a
/// duplicate the operator would have made had Konnect not refused it. `key` names what was created.
pub fn creates_after_success(
    sim: &RunningSim,
    operation: &str,
    key: impl Fn(&JournalEntry) -> String,
) -> Vec<String> {
    let mut created = std::collections::BTreeSet::new();
    let mut again = Vec::new();
    for e in of(sim, operation) {
        let k = key(&e);
        if created.contains(&k) {
            again.push(format!("{k} (answered {})", e.status));
        }
        if e.status == 201 && e.delivered {
            created.insert(k);
        }
    }
    again
}

/// The key of an assignment create: the account (from the path) and the role tuple (the body).
pub fn assignment_key(e: &JournalEntry) -> String {
    format!(
        "{} {}",
        e.path,
        e.request_body
            .as_ref()
            .map(|b| b.to_string())
            .unwrap_or_default()
    )
}

/// Requests whose path names `id` (an account, token or assignment id), as `METHOD path -> status`.
pub fn touching(sim: &RunningSim, id: &str) -> Vec<String> {
    sim.journal()
        .into_iter()
        .filter(|e| e.path.contains(id))
        .map(|e| format!("{} {} -> {}", e.method, e.path, e.status))
        .collect()
}
