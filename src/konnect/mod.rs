//! The Konnect Identity v3 client: the only place that speaks HTTP to Konnect.
pub mod client;
pub mod error;
pub mod models;
mod response;
pub mod retry;
pub mod token_file;
pub mod url;

pub use client::{
    AccountFilter, ClientConfig, Created, KonnectClient, RequestObserver, RetryWait, TokenSource,
    WriteGate,
};
pub use error::{IgnoreNotFound, KonnectError, Result};
pub use models::*;
pub use token_file::TokenFile;
