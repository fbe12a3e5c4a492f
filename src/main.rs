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
    /// Run the operator (the controller manager).
    Run(konnect_sa_operator::run::RunArgs),
    /// Move the operator from a personal token to a system account it manages itself (run once).
    Bootstrap(konnect_sa_operator::bootstrap::BootstrapArgs),
    /// Print all CustomResourceDefinitions as YAML.
    Crds,
    /// Run the Konnect simulator (Identity v3 API, in memory).
    Sim(konnect_sa_operator::sim::SimArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = match cli.command {
        Command::Run(args) => {
            konnect_sa_operator::telemetry::init_logging(args.log_format);
            konnect_sa_operator::run::run(args, konnect_sa_operator::run::shutdown_signal())
                .await
                .map_err(Into::into)
        }
        Command::Bootstrap(args) => konnect_sa_operator::bootstrap::run(args)
            .await
            .map_err(Into::into),
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
