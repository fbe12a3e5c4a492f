//! Logging, metrics and the health server.
