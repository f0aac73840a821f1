//! `lanyard`: one binary for the whole credential management system.

// Standard output is often a pipe whose reader stops early (`lanyard piv info | head`). Rust
// ignores SIGPIPE, so the next write fails with EPIPE, and std's `println!` panics on that. The
// macros below shadow std's print macros in every module of this binary (the modules are
// declared after them, and a `macro_rules!` in scope wins over the prelude's): once the reader
// has gone, the rest of the output is dropped and the command finishes its work and exits with
// its own status, without a message. Restoring SIGPIPE's default action instead would be shorter
// but is not safe here: the signal would kill `serve`, `agent serve`, `agent issue` or `vcard run`
// when a peer of one of their other descriptors goes away (not every write in them, libpcsclite's
// included, passes MSG_NOSIGNAL), possibly in the middle of writing a card.
#[allow(unused_macros)] // no `print!` today; this keeps a later one covered
macro_rules! print {
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*)) };
}
macro_rules! println {
    () => { $crate::output::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*)) };
}
macro_rules! eprintln {
    () => { $crate::output::stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

mod admin_cmd;
mod agent_cmd;
mod agent_install;
mod bench;
mod bench_issuance;
mod bench_portal;
mod bench_report;
mod bench_server;
mod config;
mod init_cmd;
mod keystore;
mod mobile_cmd;
mod piv_cmd;
mod pkcs12;
mod serve;
mod vcard_cmd;

use clap::{Parser, Subcommand};

/// Where the print macros above write.
mod output {
    use std::io::{ErrorKind, Write};

    /// Writes to standard output. A reader that went away (EPIPE) is not an error: the output
    /// is dropped. Any other failure (a full disk under a redirection) ends the process with a
    /// message, as std's `println!` would, but without a panic.
    pub fn stdout(args: std::fmt::Arguments<'_>) {
        let result = std::io::stdout().lock().write_fmt(args);
        if let Err(e) = result
            && e.kind() != ErrorKind::BrokenPipe
        {
            stderr(format_args!("error: writing to standard output: {e}\n"));
            std::process::exit(1);
        }
    }

    /// Writes to standard error; a failure there has nowhere to be reported, so it is ignored.
    pub fn stderr(args: std::fmt::Arguments<'_>) {
        let _ = std::io::stderr().lock().write_fmt(args);
    }
}

/// Lanyard: issue and manage PIV smart cards and USB keys.
///
/// One binary holds the server (API, built-in CA, card issuance), the workstation agent that
/// relays issuance to a card, the administration commands, and a software PIV card for trying it
/// all without hardware.
// No bare `about` here: it would take Cargo's one-line package description instead of the text
// above.
#[derive(Debug, Parser)]
#[command(name = "lanyard", version)]
struct Cli {
    /// Log filter (also `RUST_LOG`), e.g. `info` or `lanyard_vcard=trace` to see every APDU.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// A software PIV card that plugs into pcscd through the vsmartcard vpcd reader driver.
    #[command(subcommand)]
    Vcard(vcard_cmd::VcardCommand),
    /// Talk to a PIV card in a PC/SC reader (a YubiKey, a PIV card, or a virtual card).
    #[command(subcommand)]
    Piv(piv_cmd::PivCommand),
    /// Make a new installation: database, key-encryption key, CA, and the administrator `admin`.
    ///
    /// Creates the data directory, the database schema, the key-encryption key,
    /// the CA hierarchy and the administrator `admin` (its password is printed once), and records
    /// the root CA's fingerprint and the key-encryption key's id in the database. Refuses a
    /// database that is initialised already; never overwrites a key-encryption key or a CA (an
    /// intact existing one is kept and recorded).
    Init {
        /// Configuration file [default: $LANYARD_CONFIG, else ./lanyard.toml if present].
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Run the server: the JSON API, the agents' card sessions and the CA's CRLs and OCSP, over
    /// HTTPS.
    ///
    /// It serves the JSON API under /api/v1 (with its OpenAPI document), the WebSocket agents
    /// connect to for issuance, unlock and wipe sessions, and the CA's publication points (/pki/:
    /// CA certificates, CRLs, OCSP), over HTTPS with a certificate from Lanyard's own CA unless
    /// configured otherwise; optionally a second, plain-HTTP listener for /pki/ only
    /// (pki_listen). Refuses to start unless the CA and the key-encryption key are the ones
    /// recorded by `lanyard init`, naming what differs. With the embedded defaults (SQLite and the
    /// key-encryption key in the data directory) on a fresh data directory, it runs `lanyard init`
    /// itself first.
    Serve {
        /// Configuration file [default: $LANYARD_CONFIG, else ./lanyard.toml if present].
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Inspect the server configuration (defaults → lanyard.toml → LANYARD_* variables).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Log in to a server's API and keep an API token for the commands below.
    ///
    /// The token is kept in ~/.config/lanyard/cli.json, or $LANYARD_CLI_CONFIG. The password comes from
    /// $LANYARD_PASSWORD or standard input. HTTPS, trusting --ca-cert (for a server with its own
    /// CA, `<data_dir>/ca/root.pem`) or the system's trust store; plain http:// only to a loopback
    /// address.
    Login(admin_cmd::LoginArgs),
    /// Users, through the API (after `lanyard login`): create one.
    #[command(subcommand)]
    User(admin_cmd::UserCommand),
    /// Devices, through the API (after `lanyard login`): register, start issuance, get tickets to
    /// resume or roll back a card session, activate, unlock, revoke, replace, wipe, retire.
    #[command(subcommand)]
    Device(admin_cmd::DeviceCommand),
    /// Certificates, through the API (after `lanyard login`): issue from a CSR, revoke, hold,
    /// release.
    #[command(subcommand)]
    Cert(admin_cmd::CertCommand),
    /// The workstation agent: lists cards in PC/SC readers, pairs with a user's account, keeps an
    /// outbound link to the server and relays server-driven card sessions (issuance, PIN unlock,
    /// wipe, rollback) to a card; an opt-in loopback API for pages allowed to call it
    /// (docs/agent.md).
    #[command(subcommand)]
    Agent(agent_cmd::AgentCommand),
    /// The reference client of the app enrolment protocol (docs/mobile-protocol.md): enrol a
    /// derived PIV credential from a one-time link like a phone app, keep it in an encrypted
    /// keystore, list, delete, export as PKCS#12.
    #[command(subcommand)]
    Mobile(mobile_cmd::MobileCommand),
    /// Benchmarks: card operations through PC/SC, issuance, portal pages, and the server at
    /// scale side by side with cfssl and openssl (see docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain from the first event to the last; names the first
    /// event that was altered, removed or reordered.
    Verify {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

fn load_config(file: Option<&std::path::Path>) -> anyhow::Result<config::Config> {
    config::Config::load(file, std::env::vars()).map_err(|errors| {
        for e in &errors {
            eprintln!("config error: {e}");
        }
        anyhow::anyhow!("{} configuration error(s); see `lanyard config check`", errors.len())
    })
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load the configuration, explain every problem, and print the result (secrets hidden).
    Check {
        /// Configuration file [default: $LANYARD_CONFIG, else ./lanyard.toml if present].
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

fn config_check(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    match config::Config::load(file, std::env::vars()) {
        Ok(c) => {
            for (k, v) in c.redacted() {
                println!("{k:<18} {v}");
            }
            Ok(())
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("config error: {e}");
            }
            anyhow::bail!("{} configuration error(s)", errors.len())
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Commands::Vcard(c) => vcard_cmd::run(c),
        Commands::Piv(c) => piv_cmd::run(c),
        Commands::Bench(c) => bench::run(c),
        Commands::Agent(c) => agent_cmd::run(c),
        Commands::Mobile(c) => mobile_cmd::run(c),
        Commands::Login(a) => admin_cmd::login(a),
        Commands::User(c) => admin_cmd::user(c),
        Commands::Device(c) => admin_cmd::device(c),
        Commands::Cert(c) => admin_cmd::cert(c),
        Commands::Config(ConfigCommand::Check { config }) => config_check(config.as_deref()),
        Commands::Init { config } => load_config(config.as_deref()).and_then(init_cmd::init),
        Commands::Serve { config } => load_config(config.as_deref()).and_then(serve::serve),
        Commands::Audit(AuditCommand::Verify { config }) => {
            load_config(config.as_deref()).and_then(serve::audit_verify)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
