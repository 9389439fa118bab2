//! The `matrix-edge` command: parses arguments, loads the config, sets up logging, binds, runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use matrix_edge::config::{Config, ConfigError};
use matrix_edge::{Listeners, StartError, run, supervisor};

/// The TLS front door of a Matrix homeserver.
#[derive(Parser)]
#[command(name = "matrix-edge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The configuration file. SIGHUP re-reads it.
        #[arg(long, short)]
        config: PathBuf,
        /// Log format: human-readable text, or one JSON object per line.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file: prints its errors (with their lines) and warnings.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// sysexits EX_CONFIG: the configuration is wrong.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { config },
        } => check(&config),
        Command::Run { config, log_format } => {
            init_logging(log_format);
            match serve(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("matrix-edge: {e:#}");
                    let config_error = e.downcast_ref::<ConfigError>().is_some()
                        || matches!(
                            e.downcast_ref::<StartError>(),
                            Some(StartError::Tls(_) | StartError::Acme(_))
                        );
                    if config_error {
                        ExitCode::from(EX_CONFIG)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

/// Validates the file and loads the certificates it names, as `run` would, without binding.
fn check(path: &std::path::Path) -> ExitCode {
    let loaded = match Config::load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    for w in &loaded.warnings {
        println!("warning: {}: {w}", path.display());
    }
    match matrix_edge::tls::load(&loaded.config.tls) {
        Ok(Some(certs)) => {
            let now = std::time::SystemTime::now();
            for w in matrix_edge::tls::warnings(&certs, &loaded.config.tls, now) {
                println!("warning: {}: {w}", path.display());
            }
        }
        // ACME: certificates come at run time; the cache directory is checked then.
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(EX_CONFIG);
        }
    }
    println!("{}: ok", path.display());
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("MATRIX_EDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_target(true).flatten_event(true).init(),
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let loaded = Config::load(path)?;
    for w in &loaded.warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&loaded.config)?;
        let commands = supervisor::spawn_signal_handler(path.to_owned())
            .context("cannot install signal handlers")?;
        run(loaded.config, listeners, commands).await?;
        Ok(())
    })
}
