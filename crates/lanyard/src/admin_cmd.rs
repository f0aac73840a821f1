//! The administration commands: `login`, `user`, `device` and `cert`, over the JSON API.
//!
//! `login` creates an API token and keeps `{server, token}` in the CLI configuration file; the
//! other commands send that token. HTTPS is verified against the CA certificate given to `login`
//! (Lanyard's own root, usually) or else the system's trust store; plain HTTP is refused unless
//! the server is on a loopback address.

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::PathBuf;

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable lines.
    #[default]
    Text,
    /// The server's JSON, pretty-printed.
    Json,
}

#[derive(Debug, Args)]
pub struct OutputArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server base URL, e.g. https://lanyard.example.org or https://127.0.0.1:8443 (plain
    /// http:// only for a server on a loopback address).
    #[arg(long)]
    server: String,
    /// PEM file with the CA certificate(s) that the server's TLS certificate must chain to, e.g.
    /// `<data_dir>/ca/root.pem` for a server using its own CA [default: the system's trust store].
    /// Kept in the CLI configuration for later commands.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    #[arg(long)]
    username: String,
    /// Name of the API token to create.
    #[arg(long, default_value = "lanyard-cli")]
    token_name: String,
    /// Days until the token expires (1–365) [default: never].
    #[arg(long)]
    expires_in_days: Option<u32>,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (administrator).
    Add {
        #[arg(long)]
        username: String,
        #[arg(long)]
        display_name: String,
        #[arg(long)]
        email: Option<String>,
        /// A role (user, operator, administrator, auditor); repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Group id or name.
        #[arg(long, default_value = "default")]
        group: String,
        /// Give the user an initial password (for portal sign-in), read like `lanyard login`'s:
        /// from $LANYARD_PASSWORD or standard input.
        #[arg(long)]
        with_password: bool,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// The devices you hold.
    List {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Register a card or USB key (operator); with --owner, issuance to that user begins.
    Add {
        /// smart_card or usb_key.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        model: String,
        #[arg(long)]
        serial: Option<String>,
        /// User id or username.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Start issuing a card you hold (cardholder): prints the one-time ticket for
    /// `lanyard agent issue --ticket …`.
    Issue {
        /// smart_card or usb_key.
        #[arg(long, default_value = "usb_key")]
        kind: String,
        /// The model, as the agent reports it (`lanyard agent readers`).
        #[arg(long)]
        model: String,
        #[arg(long)]
        serial: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// A new one-time agent ticket for a job that was created or failed (issuance, unlock, wipe):
    /// run or resume it, or with --rollback reset the card of a failed issuance.
    Ticket {
        #[arg(long)]
        job: String,
        /// Reset the card of a failed issuance instead of resuming it.
        #[arg(long)]
        rollback: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Activate a Pending card and show its initial PIN once (operator; audited).
    Activate {
        #[arg(long)]
        device: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Start unblocking a card's PIN: prints the ticket for the agent at the card.
    Unlock {
        #[arg(long)]
        device: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Revoke a device and everything on it (operator).
    Revoke {
        #[arg(long)]
        device: String,
        /// key_compromise, affiliation_changed, superseded, cessation_of_operation, …
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Mark a device lost, stolen or damaged (operator): it is revoked.
    Mark {
        #[arg(long)]
        device: String,
        /// lost, stolen or damaged.
        #[arg(long)]
        condition: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Replace a holder's card (operator): the old one is revoked, the new one starts issuance;
    /// prints the ticket for the agent at the new card.
    Replace {
        /// The card being replaced.
        #[arg(long)]
        device: String,
        /// Why: superseded, key_compromise, lost, stolen, damaged, …
        #[arg(long, default_value = "superseded")]
        reason: String,
        #[arg(long, default_value = "usb_key")]
        kind: String,
        /// The new card's model, as the agent reports it.
        #[arg(long)]
        model: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Wipe a terminated or failed card back to factory state and stock (operator); prints the
    /// ticket for the agent at the card.
    Wipe {
        #[arg(long)]
        device: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Retire a device (operator).
    Terminate {
        #[arg(long)]
        device: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Return a terminated or failed card to stock (operator).
    Recycle {
        #[arg(long)]
        device: String,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Sign a PKCS#10 request for a device (operator).
    Issue {
        #[arg(long)]
        device: String,
        /// The CSR, PEM.
        #[arg(long)]
        csr: PathBuf,
        /// A built-in profile id: piv-auth, card-auth, digital-signature, key-management, …
        #[arg(long)]
        profile: String,
        /// 9a, 9c, 9d, 9e, derived_piv or mobile.
        #[arg(long)]
        slot: String,
        #[arg(long)]
        validity_days: Option<u32>,
        /// Write the certificate (PEM) here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Revoke a certificate (operator).
    Revoke {
        #[arg(long)]
        credential: String,
        /// key_compromise, affiliation_changed, superseded, cessation_of_operation, …
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Put a certificate on hold (operator).
    Hold {
        #[arg(long)]
        credential: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Release a held certificate (operator).
    Release {
        #[arg(long)]
        credential: String,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct CliConfig {
    server: String,
    token: String,
    /// PEM trust anchors for the server's TLS certificate; `None`: the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_cert_pem: Option<String>,
}

fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LANYARD_CLI_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set LANYARD_CLI_CONFIG")?;
    Ok(PathBuf::from(home).join(".config/lanyard/cli.json"))
}

fn save_config(config: &CliConfig) -> anyhow::Result<PathBuf> {
    let path = config_path()?;
    write_private(&path, config)?;
    Ok(path)
}

/// Writes `value` as pretty JSON to `path`, readable by its owner only (mode 0600 from the
/// start, never wider), replacing the file atomically.
fn write_private(path: &std::path::Path, value: &impl Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(serde_json::to_string_pretty(value)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn load_config() -> anyhow::Result<CliConfig> {
    let path = config_path()?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run `lanyard login` first)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a CLI configuration", path.display()))
}

/// Refuses plain HTTP to anything but a loopback host: the password and token would travel in clear.
fn check_scheme(server: &str) -> anyhow::Result<()> {
    if !(server.starts_with("https://") || server.starts_with("http://")) {
        bail!("--server {server:?} must be an https:// URL");
    }
    // The same URL rules as the agent's: a host is required, plain HTTP only to loopback.
    lanyard_protocol::url::parse_server(server).map(drop).with_context(|| format!("--server {server:?}"))
}

pub(crate) fn agent(ca_cert_pem: Option<&str>) -> anyhow::Result<ureq::Agent> {
    use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
    let roots = match ca_cert_pem {
        Some(pem) => {
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(pem.as_bytes()) {
                if let PemItem::Certificate(c) = item.context("the CA certificate file is not valid PEM")? {
                    certs.push(Certificate::to_owned(&c));
                }
            }
            if certs.is_empty() {
                bail!("the CA certificate file holds no CERTIFICATE");
            }
            RootCerts::new_with_certs(&certs)
        }
        None => RootCerts::PlatformVerifier,
    };
    let tls = TlsConfig::builder()
        .root_certs(roots)
        .unversioned_rustls_crypto_provider(
            std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build();
    Ok(ureq::Agent::config_builder().http_status_as_error(false).tls_config(tls).build().into())
}

/// A server reply: the status and the JSON body (null when empty).
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
    set_cookies: Vec<String>,
}

pub(crate) fn reply(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    url: &str,
) -> anyhow::Result<Reply> {
    let mut resp = result.with_context(|| format!("calling {url}"))?;
    let status = resp.status().as_u16();
    let set_cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let text = resp.body_mut().read_to_string().with_context(|| format!("reading the answer of {url}"))?;
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok(Reply { status, body, set_cookies })
}

/// Turns an error reply into an error naming the server's message and operation id.
fn check(r: Reply) -> anyhow::Result<Value> {
    if (200..300).contains(&r.status) {
        return Ok(r.body);
    }
    let message =
        r.body.get("error").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| r.body.to_string());
    match r.body.get("operation_id").and_then(Value::as_str) {
        Some(op) => bail!("server answered {}: {message} (operation id {op})", r.status),
        None => bail!("server answered {}: {message}", r.status),
    }
}

fn url(server: &str, path: &str) -> String {
    format!("{}{path}", server.trim_end_matches('/'))
}

/// An authenticated client from the saved configuration.
struct Client {
    config: CliConfig,
    agent: ureq::Agent,
}

impl Client {
    fn new() -> anyhow::Result<Self> {
        let config = load_config()?;
        check_scheme(&config.server)?;
        let agent = agent(config.ca_cert_pem.as_deref())?;
        Ok(Client { config, agent })
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.config.token)
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let u = url(&self.config.server, path);
        check(reply(self.agent.get(&u).header("authorization", &self.bearer()).call(), &u)?)
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let u = url(&self.config.server, path);
        let request = self.agent.post(&u).header("authorization", &self.bearer());
        let result = if body.is_null() { request.send_empty() } else { request.send_json(body) };
        check(reply(result, &u)?)
    }
}

fn print(output: Output, value: &Value, text: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Text => println!("{}", text(value)),
    }
    Ok(())
}

fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn device_line(d: &Value) -> String {
    format!(
        "{}  {}  {}  {}  serial {}",
        s(d, "id"),
        s(d, "kind"),
        s(d, "model"),
        s(d, "state"),
        s(d, "serial")
    )
}

fn credential_line(c: &Value) -> String {
    let kind = &c["kind"];
    format!(
        "credential {}  {}  slot {}  profile {}  serial {}",
        s(c, "id"),
        s(c, "state"),
        s(kind, "slot"),
        s(kind, "profile"),
        s(kind, "serial_hex")
    )
}

fn read_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    if let Ok(p) = std::env::var("LANYARD_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        // Without a terminal library the input is echoed; prefer LANYARD_PASSWORD in scripts.
        eprint!("Password (will be echoed): ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("no password: set LANYARD_PASSWORD or write it on standard input");
    }
    Ok(password)
}

/// The trust anchors in `path`, as PEM. The server keeps its CA certificates as DER; accept
/// those as well as PEM.
pub(crate) fn read_ca_cert(path: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(match String::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN") => text,
        Ok(text) => lanyard_ca::pem("CERTIFICATE", text.as_bytes()),
        Err(e) => lanyard_ca::pem("CERTIFICATE", e.as_bytes()),
    }))
}

pub fn login(args: LoginArgs) -> anyhow::Result<()> {
    check_scheme(&args.server)?;
    let ca_cert_pem = read_ca_cert(args.ca_cert.as_deref())?;
    let agent = agent(ca_cert_pem.as_deref())?;
    let password = read_password()?;
    let u = url(&args.server, "/api/v1/login");
    let r = reply(agent.post(&u).send_json(json!({"username": args.username, "password": password})), &u)?;
    let cookies: Vec<String> = r
        .set_cookies
        .iter()
        .filter_map(|c| c.split(';').next().map(str::to_owned))
        .filter(|c| {
            c.starts_with(lanyard_server::auth::SESSION_COOKIE)
                && c[lanyard_server::auth::SESSION_COOKIE.len()..].starts_with("=")
        })
        .collect();
    let body = check(r)?;
    let csrf = body["csrf_token"].as_str().context("the login answer has no csrf_token")?.to_owned();
    let cookie = cookies.first().context("the login answer set no session cookie")?.clone();
    let mut request = json!({"name": args.token_name});
    if let Some(days) = args.expires_in_days {
        request["expires_in_days"] = json!(days);
    }
    let u = url(&args.server, "/api/v1/tokens");
    let created = check(reply(
        agent.post(&u).header("cookie", &cookie).header("x-csrf-token", &csrf).send_json(&request),
        &u,
    )?)?;
    let token = created["token"].as_str().context("the server answered no token")?.to_owned();
    // End the session: from now on the token is used.
    let u = url(&args.server, "/api/v1/logout");
    let _ = agent.post(&u).header("cookie", &cookie).header("x-csrf-token", &csrf).send_empty();
    let path =
        save_config(&CliConfig { server: args.server.trim_end_matches('/').to_owned(), token, ca_cert_pem })?;
    let shown = json!({"server": args.server, "user": body["user"], "api_token": created["api_token"],
        "config": path.display().to_string()});
    print(args.out.output, &shown, |v| {
        format!("logged in as {}; API token saved in {}", s(&v["user"], "username"), path.display())
    })
}

pub fn user(command: UserCommand) -> anyhow::Result<()> {
    let client = Client::new()?;
    match command {
        UserCommand::Add { username, display_name, email, roles, group, with_password, out } => {
            let mut body =
                json!({"username": username, "display_name": display_name, "roles": roles, "group": group});
            if let Some(e) = email {
                body["email"] = json!(e);
            }
            if with_password {
                body["password"] = json!(read_password()?);
            }
            let user = client.post("/api/v1/users", &body)?;
            print(out.output, &user, |u| format!("user {}  {}", s(u, "id"), s(u, "username")))
        }
    }
}

pub fn device(command: DeviceCommand) -> anyhow::Result<()> {
    let client = Client::new()?;
    match command {
        DeviceCommand::List { out } => {
            let list = client.get("/api/v1/devices")?;
            print(out.output, &list, |l| {
                l.as_array()
                    .map(|a| a.iter().map(device_line).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            })
        }
        DeviceCommand::Add { kind, model, serial, owner, out } => {
            let mut body = json!({"kind": kind, "model": model});
            if let Some(serial) = serial {
                body["serial"] = json!(serial);
            }
            if let Some(owner) = owner {
                body["owner"] = json!(owner);
            }
            let device = client.post("/api/v1/devices", &body)?;
            print(out.output, &device, device_line)
        }
        DeviceCommand::Issue { kind, model, serial, out } => {
            let mut body = json!({"kind": kind, "model": model});
            if let Some(serial) = serial {
                body["serial"] = json!(serial);
            }
            let started = client.post("/api/v1/issuance", &body)?;
            print(out.output, &started, |v| {
                format!(
                    "{}\njob {}\nticket {}",
                    device_line(&v["device"]),
                    s(&v["job"], "id"),
                    v["ticket"].as_str().unwrap_or_default()
                )
            })
        }
        DeviceCommand::Ticket { job, rollback, out } => {
            let purpose = if rollback { "rollback" } else { "run" };
            let t = client.post(&format!("/api/v1/jobs/{job}/ticket"), &json!({"purpose": purpose}))?;
            print(out.output, &t, |v| format!("ticket {}", v["ticket"].as_str().unwrap_or_default()))
        }
        DeviceCommand::Activate { device, out } => {
            let a = client.post(&format!("/api/v1/devices/{device}/activate"), &Value::Null)?;
            print(out.output, &a, |v| {
                format!(
                    "{}\ninitial PIN {} (shown once; deliver it to the holder)",
                    device_line(&v["device"]),
                    v["initial_pin"].as_str().unwrap_or_default()
                )
            })
        }
        DeviceCommand::Unlock { device, out } => {
            let t = client.post(&format!("/api/v1/devices/{device}/unlock"), &Value::Null)?;
            print(out.output, &t, |v| {
                format!("job {}\nticket {}", s(&v["job"], "id"), v["ticket"].as_str().unwrap_or_default())
            })
        }
        DeviceCommand::Revoke { device, reason, out } => {
            let d = client.post(&format!("/api/v1/devices/{device}/revoke"), &json!({"reason": reason}))?;
            print(out.output, &d, device_line)
        }
        DeviceCommand::Mark { device, condition, out } => {
            let d =
                client.post(&format!("/api/v1/devices/{device}/mark"), &json!({"condition": condition}))?;
            print(out.output, &d, device_line)
        }
        DeviceCommand::Replace { device, reason, kind, model, out } => {
            let body = json!({"reason": reason, "kind": kind, "model": model});
            let started = client.post(&format!("/api/v1/devices/{device}/replace"), &body)?;
            print(out.output, &started, |v| {
                format!(
                    "{}\njob {}\nticket {}",
                    device_line(&v["device"]),
                    s(&v["job"], "id"),
                    v["ticket"].as_str().unwrap_or_default()
                )
            })
        }
        DeviceCommand::Wipe { device, out } => {
            let t = client.post(&format!("/api/v1/devices/{device}/wipe"), &Value::Null)?;
            print(out.output, &t, |v| {
                format!("job {}\nticket {}", s(&v["job"], "id"), v["ticket"].as_str().unwrap_or_default())
            })
        }
        DeviceCommand::Terminate { device, out } => {
            let d = client.post(&format!("/api/v1/devices/{device}/terminate"), &Value::Null)?;
            print(out.output, &d, device_line)
        }
        DeviceCommand::Recycle { device, out } => {
            let d = client.post(&format!("/api/v1/devices/{device}/recycle"), &Value::Null)?;
            print(out.output, &d, device_line)
        }
    }
}

pub fn cert(command: CertCommand) -> anyhow::Result<()> {
    let client = Client::new()?;
    match command {
        CertCommand::Issue { device, csr, profile, slot, validity_days, out, output } => {
            let csr_pem =
                std::fs::read_to_string(&csr).with_context(|| format!("reading {}", csr.display()))?;
            let mut body = json!({"csr_pem": csr_pem, "profile": profile, "slot": slot});
            if let Some(days) = validity_days {
                body["validity_days"] = json!(days);
            }
            let issued = client.post(&format!("/api/v1/devices/{device}/certificates"), &body)?;
            let pem = issued["certificate_pem"].as_str().context("the server answered no certificate")?;
            if let Some(path) = &out {
                std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
            }
            print(output.output, &issued, |v| match &out {
                Some(path) => {
                    format!("{} (certificate in {})", credential_line(&v["credential"]), path.display())
                }
                None => format!("{}\n{pem}", credential_line(&v["credential"])),
            })
        }
        CertCommand::Revoke { credential, reason, out } => {
            let c = client
                .post(&format!("/api/v1/credentials/{credential}/revoke"), &json!({"reason": reason}))?;
            print(out.output, &c, credential_line)
        }
        CertCommand::Hold { credential, out } => {
            let c = client.post(&format!("/api/v1/credentials/{credential}/hold"), &Value::Null)?;
            print(out.output, &c, credential_line)
        }
        CertCommand::Release { credential, out } => {
            let c = client.post(&format!("/api/v1/credentials/{credential}/release"), &Value::Null)?;
            print(out.output, &c, credential_line)
        }
    }
}

/// What `lanyard agent pair` keeps: the agent's credential for its user on this workstation.
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentConfig {
    pub server: String,
    pub agent_id: String,
    pub user: String,
    pub host_name: String,
    pub credential: String,
    /// PEM trust anchors for the server's TLS certificate; `None`: the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_pem: Option<String>,
}

/// Where the agent's configuration lives: `$LANYARD_AGENT_CONFIG`, or
/// `~/.config/lanyard/agent.json`.
pub fn agent_config_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(crate::agent_cmd::ENV_AGENT_CONFIG) {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .with_context(|| format!("HOME is not set; set {}", crate::agent_cmd::ENV_AGENT_CONFIG))?;
    Ok(PathBuf::from(home).join(".config/lanyard/agent.json"))
}

/// Redeems a pairing code (typed, or in a `lanyard://pair` link, which names the server) for an
/// agent credential and keeps it in the agent configuration file (mode 0600). `server` is needed
/// for a typed code; with a link it must agree with the link's, if given.
pub fn pair_agent(
    input: &str,
    server: Option<&str>,
    ca_cert: Option<&std::path::Path>,
    host_name: &str,
    output: Output,
) -> anyhow::Result<()> {
    let (server, code) = if lanyard_protocol::pairing::is_link(input) {
        let link = lanyard_protocol::pairing::parse(input)?;
        match server {
            Some(s) if s.trim_end_matches('/') != link.server.trim_end_matches('/') => {
                bail!("the link names the server {} but --server is {s}; pass one or the other", link.server)
            }
            _ => (link.server, link.code),
        }
    } else {
        let server = server.context("a typed code needs --server (a lanyard://pair link names it)")?;
        (server.to_owned(), input.to_owned())
    };
    check_scheme(&server)?;
    let server = server.trim_end_matches('/').to_owned();
    let path = agent_config_path()?;
    let ca_cert_pem = read_ca_cert(ca_cert)?;
    let agent = agent(ca_cert_pem.as_deref())?;
    let u = url(&server, "/api/v1/agents/pair");
    let body = check(reply(agent.post(&u).send_json(json!({"code": code, "host_name": host_name})), &u)?)?;
    let credential = body["credential"].as_str().context("the server answered no credential")?.to_owned();
    let config = AgentConfig {
        server,
        agent_id: s(&body["agent"], "id"),
        user: s(&body["agent"], "user"),
        host_name: s(&body["agent"], "host_name"),
        credential,
        ca_cert_pem,
    };
    write_private(&path, &config)?;
    // The credential stays in the file: printed output may end up in logs.
    let shown = json!({"agent": body["agent"], "config": path.display().to_string()});
    print(output, &shown, |v| {
        format!(
            "paired agent {} for {} (credential kept in {})",
            s(&v["agent"], "id"),
            s(&v["agent"], "host_name"),
            path.display()
        )
    })
}
