//! The Konnect simulator (`konnect-sa-operator sim`).

/// Command-line flags of `konnect-sa-operator sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {}

/// Runs the simulator until SIGINT/SIGTERM.
pub async fn run(_args: SimArgs) -> anyhow_free::Result {
    Ok(())
}

mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;
}
