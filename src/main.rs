use clap::{Parser, Subcommand};

/// Kubernetes operator for Kong Konnect system accounts, tokens and role bindings.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print all CustomResourceDefinitions as YAML.
    Crds,
    /// Run the Konnect simulator (Identity v3 API, in memory).
    Sim(konnect_sa_operator::sim::SimArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => {
            print!("{}", konnect_sa_operator::api::crds_yaml());
            Ok(())
        }
        Command::Sim(args) => konnect_sa_operator::sim::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
