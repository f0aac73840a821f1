//! `lanyard agent …`: the workstation agent (docs/agent.md).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use lanyard_agent::AgentError;
use lanyard_agent::cards::{Compatibility, ReaderInfo, list_cards};
use lanyard_agent::link::{Agent, LinkEvent, LinkOptions, Pcsc, PinSources};
use lanyard_agent::relay::{
    FixedPin, Outcome, PinOutcome, PinPrompt, PinSource, Progress, SessionOptions, SkipPinChange, run_session,
};
use zeroize::Zeroizing;

use crate::piv_cmd::Output;

/// Environment variables the agent reads; `lanyard serve` ignores them.
pub const ENV_SERVER: &str = "LANYARD_AGENT_SERVER";
pub const ENV_ORIGIN: &str = "LANYARD_AGENT_ORIGIN";
pub const ENV_NEW_PIN: &str = "LANYARD_NEW_PIN";
/// Where `agent pair` keeps the agent's credential [default: ~/.config/lanyard/agent.json].
pub const ENV_AGENT_CONFIG: &str = "LANYARD_AGENT_CONFIG";

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List PC/SC readers and their cards: ATR, YubiKey version and serial, CHUID, and whether
    /// Lanyard can issue the card (`compatible`, `already_issued`, `unsupported`, `unreadable`).
    /// Only reads: no PIN or management-key try is spent.
    Readers {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Agent version, whether pcscd is reachable, how many readers it sees, and the configured
    /// server ($LANYARD_AGENT_SERVER) and portal origin ($LANYARD_AGENT_ORIGIN).
    Status {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Pair this workstation's agent with your account, using the one-time code (or the
    /// `lanyard://pair?…` link) the portal shows. The agent's credential is kept in
    /// $LANYARD_AGENT_CONFIG (default ~/.config/lanyard/agent.json, mode 0600); the code works once
    /// and only for two minutes.
    Pair {
        /// The code as shown (e.g. ABCDE-FGHJK; case, hyphens and spaces do not matter), or the
        /// whole lanyard://pair link.
        code: String,
        /// The server's base URL, e.g. https://lanyard.example (a link names it already).
        /// http:// only to a loopback address.
        #[arg(long)]
        server: Option<String>,
        /// PEM (or DER) file with the CA certificate(s) to trust for the server (Lanyard's root).
        /// Without it, the system's trust anchors. Kept with the credential.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// The name the portal shows for this workstation [default: the system's host name].
        #[arg(long)]
        host_name: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run the paired agent (after `lanyard agent pair`): keep one outbound, authenticated
    /// connection to the server, report this workstation's readers and cards whenever they
    /// change, and run the card sessions the server asks for (started in the portal or with
    /// POST /api/v1/agents/{id}/sessions). Listens on no port; reconnects with a growing pause
    /// after any loss, and stops when the server refuses the credential (the agent was revoked).
    /// The new PIN comes from the server when the holder typed it in the portal, otherwise from
    /// --new-pin-file, $LANYARD_NEW_PIN, or a prompt on this terminal.
    Run {
        /// Most card sessions at once (each on its own reader).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        max_sessions: u16,
        /// A file holding the new PIN (first line), for unattended agents.
        #[arg(long, conflicts_with = "skip_pin_change")]
        new_pin_file: Option<PathBuf>,
        /// Keep the initial PIN unless the server sends one: the device stays Pending until an
        /// operator activates it.
        #[arg(long)]
        skip_pin_change: bool,
    },
    /// Make this desktop open `lanyard://pair` links from the portal with `lanyard agent pair`,
    /// and start `lanyard agent run` when you log in. Per user, no root: on Linux a freedesktop
    /// desktop entry for x-scheme-handler/lanyard (made the default in mimeapps.list) and an
    /// autostart entry, below $XDG_DATA_HOME and $XDG_CONFIG_HOME.
    Install {
        /// Remove what install wrote.
        #[arg(long)]
        uninstall: bool,
        /// Only the link handler: do not start the agent at log-in.
        #[arg(long)]
        no_autostart: bool,
    },
    /// Opt-in, for pages whose browser policy allows loopback access (Lanyard's portal does not
    /// use it; it reaches the agent through the server): serve a loopback API (docs/agent.md) to
    /// list cards, start a session, follow it, pass the new PIN. Only requests whose Origin is --origin and whose Host
    /// is a loopback name are answered.
    Serve {
        /// The portal's origin, e.g. https://portal.example [default: $LANYARD_AGENT_ORIGIN].
        #[arg(long)]
        origin: Option<String>,
        /// Loopback address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:7180")]
        listen: std::net::SocketAddr,
    },
    /// Relay a server-driven issuance to the card in one reader, with a ticket the server gave
    /// for the job. The new PIN comes from --new-pin-file, $LANYARD_NEW_PIN, or a prompt; it is
    /// sent to the card only, never to the server.
    Issue {
        /// The server's base URL, e.g. https://lanyard.example [default: $LANYARD_AGENT_SERVER].
        /// http:// only to a loopback address.
        #[arg(long)]
        server: Option<String>,
        /// PEM file with the CA certificate(s) to trust for the server (Lanyard's root).
        /// Without it, the system's trust anchors.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// The one-time agent ticket.
        #[arg(long, conflicts_with = "ticket_file", required_unless_present = "ticket_file")]
        ticket: Option<String>,
        /// A file holding the ticket (keeps it out of the process list).
        #[arg(long)]
        ticket_file: Option<PathBuf>,
        /// The reader's exact name, as `lanyard agent readers` prints it.
        #[arg(long)]
        reader: String,
        /// A file holding the new PIN (first line).
        #[arg(long, conflicts_with = "skip_pin_change")]
        new_pin_file: Option<PathBuf>,
        /// Keep the initial PIN: the device stays Pending until an operator activates it.
        #[arg(long)]
        skip_pin_change: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

pub fn run(cmd: AgentCommand) -> anyhow::Result<()> {
    match cmd {
        AgentCommand::Readers { output } => readers(output),
        AgentCommand::Pair { code, server, ca_cert, host_name, output } => {
            let host_name = match host_name {
                Some(h) => h,
                None => system_host_name()?,
            };
            let output = match output {
                Output::Text => crate::admin_cmd::Output::Text,
                Output::Json => crate::admin_cmd::Output::Json,
            };
            crate::admin_cmd::pair_agent(&code, server.as_deref(), ca_cert.as_deref(), &host_name, output)
        }
        AgentCommand::Status { output } => status(output),
        AgentCommand::Run { max_sessions, new_pin_file, skip_pin_change } => {
            let fixed = match new_pin_file {
                Some(f) => Some(first_line(&f).context("reading --new-pin-file")?),
                None => std::env::var(ENV_NEW_PIN).ok().map(Zeroizing::new),
            };
            let pins: PinSources = Arc::new(move || -> Box<dyn PinSource + Send> {
                if skip_pin_change {
                    Box::new(SkipPinChange)
                } else if let Some(pin) = &fixed {
                    Box::new(FixedPin(pin.clone()))
                } else {
                    Box::new(PromptPin)
                }
            });
            run_linked(usize::from(max_sessions), pins)
        }
        AgentCommand::Install { uninstall, no_autostart } => {
            let places = crate::agent_install::Places::from_env()?;
            let program = std::env::current_exe().context("finding this program's path")?;
            let program = program.canonicalize().unwrap_or(program);
            for line in crate::agent_install::install(&places, &program, !no_autostart, uninstall)? {
                println!("{line}");
            }
            Ok(())
        }
        AgentCommand::Serve { origin, listen } => {
            let Some(origin) = origin.or_else(|| std::env::var(ENV_ORIGIN).ok()) else {
                bail!("no portal origin: pass --origin or set {ENV_ORIGIN}");
            };
            serve(origin, listen)
        }
        AgentCommand::Issue {
            server,
            ca_cert,
            ticket,
            ticket_file,
            reader,
            new_pin_file,
            skip_pin_change,
            output,
        } => {
            let server = match server.or_else(|| std::env::var(ENV_SERVER).ok()) {
                Some(s) => s,
                None => bail!("no server: pass --server or set {ENV_SERVER}"),
            };
            let ticket = match (ticket, ticket_file) {
                (Some(t), _) => Zeroizing::new(t),
                (None, Some(f)) => first_line(&f).context("reading --ticket-file")?,
                (None, None) => bail!("pass --ticket or --ticket-file"),
            };
            let mut opts = SessionOptions::new(server, String::new(), reader);
            opts.ticket = ticket;
            if let Some(f) = ca_cert {
                opts.ca_pem = Some(std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
            }
            let mut pins: Box<dyn PinSource> = if skip_pin_change {
                Box::new(SkipPinChange)
            } else if let Some(f) = new_pin_file {
                Box::new(FixedPin(first_line(&f).context("reading --new-pin-file")?))
            } else if let Ok(pin) = std::env::var(ENV_NEW_PIN) {
                Box::new(FixedPin(Zeroizing::new(pin)))
            } else {
                Box::new(PromptPin)
            };
            issue(&opts, pins.as_mut(), output)
        }
    }
}

/// This machine's host name: the kernel's on Linux, `/etc/hostname` elsewhere on Unix,
/// `%COMPUTERNAME%` on Windows.
fn system_host_name() -> anyhow::Result<String> {
    let from_file = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .filter(|h| !h.is_empty())
        .context("cannot tell this machine's host name; pass --host-name")
}

fn first_line(path: &std::path::Path) -> anyhow::Result<Zeroizing<String>> {
    let text =
        Zeroizing::new(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?);
    Ok(Zeroizing::new(text.lines().next().unwrap_or_default().trim().to_owned()))
}

fn verdict(c: &Compatibility) -> String {
    match c {
        Compatibility::Compatible => "compatible".into(),
        Compatibility::AlreadyIssued => "already issued".into(),
        Compatibility::Unsupported { reason } => format!("unsupported: {reason}"),
        Compatibility::Unreadable { reason } => format!("unreadable: {reason}"),
    }
}

fn readers(output: Output) -> anyhow::Result<()> {
    let list = list_cards()?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        Output::Text => {
            if list.is_empty() {
                println!("no readers: connect a reader or a YubiKey");
            }
            for r in &list {
                print_reader(r);
            }
        }
    }
    Ok(())
}

fn print_reader(r: &ReaderInfo) {
    println!("{}", r.reader);
    let Some(card) = &r.card else {
        println!("  no card");
        return;
    };
    println!("  ATR       {}", r.atr);
    if let Some(v) = &card.yubikey_version {
        println!("  YubiKey   {v}");
    }
    if let Some(s) = card.serial {
        println!("  serial    {s}");
    }
    if let Some(g) = &card.chuid_guid {
        println!("  GUID      {g}");
    }
    println!("  verdict   {}", verdict(&card.compatibility));
}

fn status(output: Output) -> anyhow::Result<()> {
    let readers = lanyard_piv::transport::reader_states();
    let server = std::env::var(ENV_SERVER).ok();
    let origin = std::env::var(ENV_ORIGIN).ok();
    match output {
        Output::Json => {
            let v = serde_json::json!({
                "agent": lanyard_agent::AGENT_NAME,
                "pcsc": readers.as_ref().map(|_| "reachable").unwrap_or("unreachable"),
                "pcsc_error": readers.as_ref().err().map(|e| e.to_string()),
                "install_hint": readers.as_ref().err().map(|_| lanyard_agent::PCSCD_INSTALL_HINT),
                "readers": readers.as_ref().ok().map(Vec::len),
                "cards": readers.as_ref().ok().map(|r| r.iter().filter(|s| s.card_present).count()),
                "server": server,
                "portal_origin": origin,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            println!("agent          {}", lanyard_agent::AGENT_NAME);
            match &readers {
                Ok(r) => {
                    println!("PC/SC          reachable");
                    let cards = r.iter().filter(|s| s.card_present).count();
                    println!("readers        {} ({cards} with a card)", r.len());
                }
                Err(e) => {
                    println!("PC/SC          unreachable: {e}");
                    println!("               {}", lanyard_agent::PCSCD_INSTALL_HINT);
                }
            }
            println!("server         {}", server.as_deref().unwrap_or("(not set: LANYARD_AGENT_SERVER)"));
            println!("portal origin  {}", origin.as_deref().unwrap_or("(not set: LANYARD_AGENT_ORIGIN)"));
        }
    }
    Ok(())
}

fn serve(origin: String, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() {
        bail!("--listen {listen}: the agent listens on a loopback address only");
    }
    if !(origin.starts_with("https://") || origin.starts_with("http://"))
        || origin.trim_end_matches('/').matches('/').count() != 2
    {
        bail!("--origin {origin:?} must be a scheme and host, like https://portal.example");
    }
    let state = lanyard_agent::portal::PortalState::new(
        origin.clone(),
        std::sync::Arc::new(lanyard_agent::portal::Pcsc),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        println!("agent listening on http://{listen} for {origin}");
        axum::serve(listener, lanyard_agent::portal::router(state)).await?;
        Ok(())
    })
}

/// `lanyard agent run`: the paired agent's link, until the server refuses it.
fn run_linked(max_sessions: usize, pins: PinSources) -> anyhow::Result<()> {
    let path = crate::admin_cmd::agent_config_path()?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (pair the agent first: lanyard agent pair)", path.display()))?;
    let config: crate::admin_cmd::AgentConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an agent configuration", path.display()))?;
    let host = system_host_name().unwrap_or_else(|_| config.host_name.clone());
    let mut opts = LinkOptions::new(config.server.clone(), config.credential.as_str(), host);
    opts.ca_pem = config.ca_cert_pem.as_ref().map(|p| p.as_bytes().to_vec());
    opts.max_sessions = max_sessions;
    println!("agent {} linking to {} as {}", config.agent_id, config.server, opts.host);
    let events = Arc::new(|e: LinkEvent| match e {
        LinkEvent::Connected => println!("connected"),
        LinkEvent::Disconnected { reason, retry_in } => {
            println!("disconnected ({reason}); trying again in {} s", retry_in.as_secs())
        }
        LinkEvent::Reported { readers, cards } => println!("reported {readers} readers, {cards} with a card"),
        LinkEvent::ReadersFailed(why) => println!("cannot read the readers: {why}"),
        LinkEvent::SessionStarted { job, reader, purpose } => println!("job {job}: {purpose} on {reader}"),
        LinkEvent::SessionEnded { job, reader, error: None } => println!("job {job} on {reader}: done"),
        LinkEvent::SessionEnded { job, reader, error: Some(e) } => {
            println!("job {job} on {reader}: failed: {e}")
        }
        LinkEvent::SessionRefused { job, reason } => println!("job {job} refused: {reason}"),
        LinkEvent::ServerError(message) => println!("server: {message}"),
    });
    let agent = Agent::new(opts, Arc::new(Pcsc::default()), pins, events);
    agent.run().map_err(|e| match e {
        AgentError::Refused { status: 401, .. } => {
            anyhow::anyhow!(
                "{e}\nthe server no longer accepts this agent: pair it again (lanyard agent pair)"
            )
        }
        other => anyhow::Error::new(other),
    })
}

fn issue(opts: &SessionOptions, pins: &mut dyn PinSource, output: Output) -> anyhow::Result<()> {
    let mut progress = |p: &Progress| match output {
        Output::Json => {
            if let Ok(line) = serde_json::to_string(p) {
                println!("{line}");
            }
        }
        Output::Text => match p {
            Progress::Connected => println!("connected to the server"),
            Progress::Step { step, done, total } => println!("[{done}/{total}] {step}"),
            Progress::FidoReached { via } => println!("FIDO authenticator: {via}"),
            Progress::Ctap { command, status } => println!("  {command}: {status}"),
            Progress::PinRequested => println!("set the new PIN"),
            Progress::PinChanged => println!("PIN changed"),
            Progress::PinChangeSkipped => println!("PIN change skipped: the device stays pending"),
            Progress::PinTooLate => println!("the new PIN came too late and was not written"),
        },
    };
    let outcome: Outcome = run_session(opts, pins, &mut progress).map_err(|e| match e {
        AgentError::Pcsc(_) => anyhow::Error::new(e),
        other => anyhow::anyhow!("issuance failed: {other}"),
    })?;
    match output {
        Output::Json => println!("{}", serde_json::json!({"event": "done", "outcome": outcome})),
        Output::Text => {
            let pin = match &outcome.pin {
                PinOutcome::NotAsked => "not asked".to_owned(),
                PinOutcome::Changed => "changed".to_owned(),
                PinOutcome::Skipped => "initial PIN kept".to_owned(),
                PinOutcome::Failed(why) => format!("not changed ({why})"),
                PinOutcome::TooLate(why) => format!("not changed ({why})"),
            };
            println!("device {} is {:?}; PIN: {pin}", outcome.device, outcome.state);
        }
    }
    Ok(())
}

/// Asks on the terminal, twice, without echo (through `stty`, so no unsafe code is needed).
struct PromptPin;

impl PromptPin {
    fn read(prompt: &str) -> Result<Zeroizing<String>, AgentError> {
        let io = |e: std::io::Error| AgentError::Pin(format!("cannot read the terminal: {e}"));
        let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").map_err(io)?;
        let stty = |arg: &str| {
            std::process::Command::new("stty")
                .arg(arg)
                .stdin(tty.try_clone().map_err(io)?)
                .status()
                .map_err(io)
        };
        let mut out = tty.try_clone().map_err(io)?;
        write!(out, "{prompt}").map_err(io)?;
        out.flush().map_err(io)?;
        let silenced = stty("-echo").is_ok_and(|s| s.success());
        let mut line = Zeroizing::new(String::new());
        let read = std::io::BufReader::new(tty.try_clone().map_err(io)?).read_line(&mut line);
        if silenced {
            let _ = stty("echo");
            let _ = writeln!(out);
        }
        read.map_err(io)?;
        Ok(Zeroizing::new(line.trim().to_owned()))
    }
}

impl PinSource for PromptPin {
    /// The terminal cannot be interrupted at the deadline; the relay refuses a PIN typed after it.
    fn new_pin(&mut self, ask: &PinPrompt<'_>) -> Result<Option<Zeroizing<String>>, AgentError> {
        if let Some(why) = ask.rejected {
            eprintln!("{why}");
        }
        let (rules, left) = (ask.rules, ask.time_left().as_secs());
        let prompt = format!(
            "New PIN ({}-{} digits; empty to keep the initial PIN; within {}:{:02}): ",
            rules.min_len,
            rules.max_len,
            left / 60,
            left % 60
        );
        let pin = Self::read(&prompt)?;
        if pin.is_empty() {
            return Ok(None);
        }
        if *Self::read("Repeat the new PIN: ")? != *pin {
            return Err(AgentError::Pin("the two PINs differ".into()));
        }
        Ok(Some(pin))
    }
}
