//! External judges: `openssl`, pkilint and any other command a test runs.
//!
//! A missing tool fails the test with the step that installs it (`scripts/test` installs them
//! all); nothing is skipped. A tool that runs but fails fails the test with its output.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What a command printed, and whether it succeeded.
#[derive(Debug, Clone)]
pub struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Standard output followed by standard error: openssl prints some verdicts ("verify OK")
    /// on one and some (": OK") on the other.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// How to install the tools the tests use, by program name.
pub fn install_hint(program: &str) -> &'static str {
    match program {
        "openssl" => "apt-get install openssl (./scripts/test installs it)",
        "curl" => "apt-get install curl (./scripts/test installs it)",
        "pkcs11-tool" | "opensc-tool" => {
            "apt-get install opensc opensc-pkcs11 (./scripts/test installs them)"
        }
        "yubico-piv-tool" => "apt-get install yubico-piv-tool (./scripts/test installs it)",
        "desktop-file-validate" => "apt-get install desktop-file-utils (./scripts/test installs it)",
        "xdg-mime" => "apt-get install xdg-utils (./scripts/test installs it)",
        "ykman" => "run ./scripts/test, which installs yubikey-manager 5 into target/test-venv",
        "certmonger" | "getcert" => "apt-get install certmonger (./scripts/test installs it)",
        "dbus-run-session" => "apt-get install dbus (./scripts/test installs it)",
        "scepclient" => "apt-get install scep (./scripts/test installs it)",
        "python3" => "apt-get install python3-venv (./scripts/test installs it)",
        "unshare" => "apt-get install util-linux",
        p if p.starts_with("lint_") => "run ./scripts/test, which installs pkilint into target/test-venv",
        "pyscep" => {
            "run ./scripts/test, which installs pyscep 0.0.14 (with oscrypto patched) into target/test-venv"
        }
        _ => "./scripts/test installs every tool the tests use",
    }
}

/// Runs `program` with `args` in `dir` (the current directory when `None`) and returns what it
/// printed, whether or not it succeeded. Panics when the program cannot be started, naming the
/// install step.
pub fn command(program: impl AsRef<OsStr>, args: &[&str], dir: Option<&Path>) -> Ran {
    let program = program.as_ref();
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        let name = Path::new(program).file_name().unwrap_or(program).to_string_lossy().into_owned();
        panic!("cannot run {}: {e}. Install it: {}", program.to_string_lossy(), install_hint(&name))
    });
    Ran {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// [`command`] that must succeed; answers its standard output.
pub fn command_ok(program: impl AsRef<OsStr>, args: &[&str], dir: Option<&Path>) -> String {
    let program = program.as_ref();
    let ran = command(program, args, dir);
    assert!(ran.success, "{} {args:?} failed:\n{}{}", program.to_string_lossy(), ran.stdout, ran.stderr);
    ran.stdout
}

/// `openssl args…`, which must succeed; answers standard output followed by standard error (see
/// [`Ran::text`]).
pub fn openssl(args: &[&str]) -> String {
    openssl_in(None, args)
}

/// [`openssl`] in `dir`, for arguments that name files relative to it.
pub fn openssl_in(dir: Option<&Path>, args: &[&str]) -> String {
    let ran = command("openssl", args, dir);
    assert!(ran.success, "openssl {args:?} failed:\n{}", ran.text());
    ran.text()
}

/// `der` as PEM with `label` ("CERTIFICATE", "X509 CRL", …), 64 characters a line.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is a whole string.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `der` as PEM to `path` and answers the path as a string, ready for a command line.
pub fn write_pem(path: &Path, label: &str, der: &[u8]) -> String {
    std::fs::write(path, pem(label, der)).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

/// pkilint's command-line linters, from the venv `scripts/test` makes.
pub mod pkilint {
    use super::*;

    /// The venv's `bin` directory: `$LANYARD_TEST_VENV` (the venv or its `bin`), else the
    /// workspace's `target/test-venv`.
    pub fn bin() -> &'static Path {
        static BIN: OnceLock<PathBuf> = OnceLock::new();
        BIN.get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin");
            let candidates: Vec<PathBuf> = match std::env::var_os("LANYARD_TEST_VENV") {
                Some(v) => vec![PathBuf::from(&v).join("bin"), PathBuf::from(v)],
                None => vec![workspace],
            };
            candidates.iter().find(|d| d.join("lint_pkix_cert").is_file()).cloned().unwrap_or_else(|| {
                panic!(
                    "pkilint's lint_pkix_cert was not found in {candidates:?}: {} (or set LANYARD_TEST_VENV \
                     to a venv that has pkilint)",
                    install_hint("lint_pkix_cert")
                )
            })
        })
    }

    fn program(name: &str) -> PathBuf {
        let p = bin().join(name);
        assert!(p.is_file(), "{name} missing from {}: {}", bin().display(), install_hint(name));
        p
    }

    /// Findings at ERROR or FATAL from the linter `name` (`lint_pkix_cert`, `lint_crl`, …) with
    /// `extra` options, minus one documented false positive: pkilint's URI parser rejects the
    /// `urn:uuid:` URIs FIPS 201 requires in PIV SANs (`pkix.invalid_uri_syntax`).
    pub fn errors(name: &str, extra: &[&str], files: &[&Path]) -> Vec<String> {
        let program = program(name);
        let mut args = vec!["lint"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-s", "ERROR", "-f", "JSON"]);
        let names: Vec<String> = files.iter().map(|f| f.to_string_lossy().into_owned()).collect();
        args.extend(names.iter().map(String::as_str));
        let ran = command(&program, &args, files.first().and_then(|f| f.parent()));
        let json: serde_json::Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("{name} printed no JSON ({e}):\n{}", ran.text()));
        let mut errors = Vec::new();
        let results = json["results"].as_array().unwrap_or_else(|| panic!("{name}: no results in {json}"));
        for result in results {
            let findings = result["finding_descriptions"].as_array().into_iter().flatten();
            for finding in findings {
                let code = finding["code"].as_str().unwrap_or("?");
                let message = finding["message"].as_str().unwrap_or("");
                let severity = finding["severity"].as_str().unwrap_or("?");
                if code == "pkix.invalid_uri_syntax" && message.contains("\"urn:uuid:") {
                    continue;
                }
                errors.push(format!("{severity} {code} at {}: {message}", result["node_path"]));
            }
        }
        errors
    }

    fn assert_clean(errors: Vec<String>, what: &str, file: &Path) {
        assert!(errors.is_empty(), "pkilint {what} findings for {}:\n{}", file.display(), errors.join("\n"));
    }

    /// The certificate in `file` (PEM or DER) passes `lint_pkix_cert`.
    pub fn assert_cert(file: &Path) {
        assert_clean(errors("lint_pkix_cert", &[], &[file]), "certificate", file);
    }

    /// `subject` and its `issuer` pass the pair checks (name chaining, AKI/SKI, validity nesting).
    pub fn assert_pair(issuer: &Path, subject: &Path) {
        assert_clean(errors("lint_pkix_signer_signee_cert_chain", &[], &[issuer, subject]), "chain", subject);
    }

    /// The CRL in `file` passes `lint_crl` as a PKIX CRL.
    pub fn assert_crl(file: &Path) {
        assert_clean(errors("lint_crl", &["-t", "CRL", "-p", "PKIX"], &[file]), "CRL", file);
    }

    /// The OCSP response in `file` passes `lint_ocsp_response`.
    pub fn assert_ocsp_response(file: &Path) {
        assert_clean(errors("lint_ocsp_response", &[], &[file]), "OCSP response", file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_wraps_at_64_and_round_trips_through_openssl_framing() {
        let der: Vec<u8> = (0..=255u8).collect();
        let p = pem("CERTIFICATE", &der);
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(*lines.last().unwrap(), "-----END CERTIFICATE-----");
        assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 64));
        assert_eq!(lines[1].len(), 64);
        use base64::Engine;
        let body: String = lines[1..lines.len() - 1].concat();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(body).unwrap(), der);
    }

    #[test]
    #[should_panic(expected = "Install it: ./scripts/test installs every tool")]
    fn a_missing_tool_names_the_install_step() {
        command("lanyard-no-such-tool", &[], None);
    }
}
