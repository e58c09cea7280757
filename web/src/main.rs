//! The `weir` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir_web::config::ServerConfig;

/// weir: a streaming SQL engine in one binary.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: HTTP API, console and pipelines.
    Serve {
        /// TOML configuration file; every setting has a default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8080; port 0 picks a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Directory for weir's files (default ./weir-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Start a live Nexmark demo source with two views.
        #[arg(long)]
        demo: bool,
        /// Serve the console and API under this path (e.g. /weir, behind a proxy).
        #[arg(long)]
        base_path: Option<String>,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key); reloaded when it changes.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// API tokens (once one exists, every API request needs one).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Wasm plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Measure throughput, CPU per event, memory and latency in this process.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// A Nexmark query over the built-in generator (ceiling: the generator alone).
    Nexmark {
        /// q0, q1, q2, q3, q4, q5, q7, q8, session or all.
        #[arg(long, default_value = "all")]
        query: String,
        /// Nexmark events per source.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Cores to spread the work over (default: every core).
        #[arg(long)]
        parallelism: Option<usize>,
        /// One JSON object per query instead of a line of text.
        #[arg(long)]
        json: bool,
    },
    /// A view over a newline-delimited JSON file of Nexmark rows (ceiling: the JSON
    /// decoder alone over the file).
    File {
        /// The file.
        #[arg(long)]
        input: PathBuf,
        /// A query name (q0, q1, q2, q5, q7, session) or a SELECT over the table.
        #[arg(long, default_value = "q0")]
        sql: String,
        /// The Nexmark table the file holds: bid, person or auction.
        #[arg(long, default_value = "bid")]
        table: String,
        /// Cores to spread the work over (default: every core).
        #[arg(long)]
        parallelism: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token and print it (only its hash is kept: it cannot be shown again).
    Create {
        /// admin (everything), writer (also ingest) or reader (views, SELECT, status).
        #[arg(long)]
        role: String,
        /// The server's data dir (default ./weir-data, or the config file's).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The server's configuration file, for its data dir.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Create a plugin crate NAME (one function, one transform, tests) to build for wasm32.
    New {
        /// The plugin's name: lower-case letters, digits and _.
        name: String,
        /// Directory to create it in (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path to weir's sdk/ directory (default: the checkout weir was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // First, while this is the only thread: glibc reads its tunables only at start.
    if let Err(e) = weir_web::malloc::run_with_tunables() {
        eprintln!("weir: {e}");
        return ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            demo,
            base_path,
            tls_cert,
            tls_key,
        } => {
            let tls = tls_cert
                .zip(tls_key)
                .map(|(cert, key)| weir_web::tls::TlsFiles { cert, key });
            run_serve(config, listen, data_dir, demo, base_path, tls)
        }
        Command::Bench {
            command:
                BenchCommand::Nexmark {
                    query,
                    events,
                    parallelism,
                    json,
                },
        } => weir_web::bench::nexmark(&query, events, parallelism, json),
        Command::Bench {
            command:
                BenchCommand::File {
                    input,
                    sql,
                    table,
                    parallelism,
                    json,
                },
        } => weir_web::bench::file(&input, &table, &sql, parallelism, json),
        Command::Token {
            command:
                TokenCommand::Create {
                    role,
                    data_dir,
                    config,
                },
        } => create_token(&role, data_dir, config),
        Command::Plugin {
            command: PluginCommand::New { name, dir, sdk },
        } => weir_web::scaffold::new_plugin(&name, &dir, sdk).map(|root| {
            println!(
                "created {root}\nnext:\n  cd {root}\n  cargo test\n  cargo build --release --target wasm32-unknown-unknown\n  curl --data-binary @target/wasm32-unknown-unknown/release/{name}.wasm 'http://127.0.0.1:8080/api/v1/plugins?name={name}'",
                root = root.display()
            )
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn create_token(
    role: &str,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    let role = weir_web::auth::Role::parse(role)?;
    let data_dir = match (data_dir, config) {
        (Some(d), _) => d,
        (None, Some(path)) => ServerConfig::load(&path)?.runtime.data_dir,
        (None, None) => ServerConfig::default().runtime.data_dir,
    };
    let token = weir_web::auth::create(&data_dir, role)?;
    println!("{token}");
    eprintln!(
        "a {} token for the server of {}; it is shown only now. Send it as \
         Authorization: Bearer <token>; every API request now needs one",
        format!("{role:?}").to_lowercase(),
        data_dir.display()
    );
    Ok(())
}

fn run_serve(
    config: Option<PathBuf>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    demo: bool,
    base_path: Option<String>,
    tls: Option<weir_web::tls::TlsFiles>,
) -> anyhow::Result<()> {
    let mut cfg = match config {
        Some(path) => ServerConfig::load(&path)?,
        None => ServerConfig::default(),
    };
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(d) = data_dir {
        cfg.runtime.data_dir = d;
    }
    cfg.demo |= demo;
    if tls.is_some() {
        cfg.server.tls = tls;
    }
    if let Some(b) = base_path {
        cfg.base_path = b;
    }
    if !(cfg.base_path.is_empty() || cfg.base_path.starts_with('/')) {
        anyhow::bail!("base path {} must start with /", cfg.base_path);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(weir_web::serve::serve(cfg))
}
