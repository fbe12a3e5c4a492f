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
    /// Check manifests offline: CRD schema and CEL rules, spec rules, and across objects (exit 1 on errors).
    Validate(konnect_sa_operator::cli::validate::ValidateArgs),
    /// Show what applying manifests would change in Konnect, read-only (exit 0 no change, 2 changes, 1 error).
    Plan(konnect_sa_operator::cli::plan::PlanArgs),
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run_cli()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that meets a locked heap an arena of its own (up to 8 per core) and
/// keeps what each one freed: a third of the operator's peak memory at 1000 objects was such slack
/// (47 MiB peak RSS, 17 MiB live heap). One arena, and memory above 128 KiB handed back, costs no
/// measurable time here: the threads are a few tokio workers that mostly wait on the network. Set
/// before the runtime starts its threads. The container image is built against musl, whose
/// allocator has no per-thread arenas; this is for glibc builds (`cargo install`, the benchmark).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

async fn run_cli() -> std::process::ExitCode {
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
        Command::Validate(args) => return exit(konnect_sa_operator::cli::validate::run(args)),
        Command::Plan(args) => return exit(konnect_sa_operator::cli::plan::run(args).await),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `validate` and `plan` choose their own exit code; an error that stops them is exit 1.
fn exit(result: Result<std::process::ExitCode, String>) -> std::process::ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::ExitCode::FAILURE
    })
}
