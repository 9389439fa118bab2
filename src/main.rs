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
    /// Check a server name from outside, as a remote homeserver and a client would: discovery,
    /// TLS, certificates, keys, path integrity, client well-known files. Exits 0 when nothing
    /// failed, 1 when something did, 2 on usage errors.
    Check {
        /// The server name, as in user IDs: `example.com`, `example.com:8448`, `[2001:db8::1]`.
        server_name: String,
        /// Print the report as JSON (schema in docs/check.md).
        #[arg(long)]
        json: bool,
        /// Ask this DNS server instead of the system's resolvers.
        #[arg(long, value_name = "IP:PORT")]
        resolver: Option<std::net::SocketAddr>,
        /// Trust the CA certificates in this PEM file too (repeatable).
        #[arg(long, value_name = "FILE")]
        ca: Vec<PathBuf>,
        /// Limit for each DNS query, connection, handshake and request.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
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

/// clap's exit code for usage errors, used for ours too.
const EX_USAGE_CLAP: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { config },
        } => check(&config),
        Command::Check {
            server_name,
            json,
            resolver,
            ca,
            timeout,
        } => check_server(&server_name, json, resolver, &ca, timeout),
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

/// `matrix-edge check`: everything but argument handling lives in `matrix_edge::check`.
fn check_server(
    server_name: &str,
    json: bool,
    resolver: Option<std::net::SocketAddr>,
    ca: &[PathBuf],
    timeout: std::time::Duration,
) -> ExitCode {
    use matrix_edge::check;
    use matrix_edge::discovery::ResolverSource;
    let name = match matrix_edge::config::ServerName::parse(server_name) {
        Ok(name) => name,
        Err(e) => {
            eprintln!("error: invalid server name: {e}");
            return ExitCode::from(EX_USAGE_CLAP);
        }
    };
    let mut options = check::Options {
        resolver: resolver.map_or(ResolverSource::System, ResolverSource::At),
        extra_roots: Vec::new(),
        timeout,
    };
    for path in ca {
        match check::load_ca(path) {
            Ok(certs) => options.extra_roots.extend(certs),
            Err(e) => {
                eprintln!("error: --ca: {e}");
                return ExitCode::from(EX_USAGE_CLAP);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(check::check(&name, &options));
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: cannot serialise the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", check::render::text(&report));
    }
    ExitCode::from(report.exit_code())
}

/// rustls warns once per handshake about what a client did wrong (an IP address sent as SNI, an
/// unknown extension): noise an attacker controls. Such lines are off unless the filter names
/// rustls itself.
const QUIET_TLS: &str = "info,rustls=error";

fn log_directives(env: Option<&str>) -> String {
    match env.map(str::trim) {
        None | Some("") => QUIET_TLS.to_owned(),
        Some(d) if d.contains("rustls") => d.to_owned(),
        Some(d) => format!("{d},rustls=error"),
    }
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let directives = log_directives(std::env::var("MATRIX_EDGE_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(QUIET_TLS));
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
    // The control plane: signals, reloads, ACME, the admin listener. Connections are served on
    // the worker threads that `run` starts.
    let runtime = tokio::runtime::Builder::new_current_thread()
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

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(test)]
mod tests {
    use super::log_directives;

    #[test]
    fn rustls_handshake_warnings_are_off_unless_asked_for() {
        assert_eq!(log_directives(None), "info,rustls=error");
        assert_eq!(log_directives(Some("warn")), "warn,rustls=error");
        assert_eq!(
            log_directives(Some("debug,rustls=debug")),
            "debug,rustls=debug"
        );
    }
}
