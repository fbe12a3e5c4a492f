//! Kubernetes-side effects: conditions, status, Secrets, events, restarts.
