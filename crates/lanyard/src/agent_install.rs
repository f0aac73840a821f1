//! `lanyard agent install`: makes the desktop hand `lanyard://pair?…` links from the portal to
//! `lanyard agent pair`, and starts `lanyard agent run` when the user logs in.
//!
//! On Linux desktops (freedesktop.org): a desktop entry in `$XDG_DATA_HOME/applications` that
//! declares the MIME type `x-scheme-handler/lanyard`, the same type made the user's default in
//! `$XDG_CONFIG_HOME/mimeapps.list` (what `xdg-mime default` writes), and an autostart entry in
//! `$XDG_CONFIG_HOME/autostart`. Everything is per user; nothing needs root. `--uninstall`
//! removes exactly what install wrote. docs/agent.md describes the Windows and macOS equivalents.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The desktop entry that handles `lanyard://` links.
pub const HANDLER_ENTRY: &str = "lanyard-pair.desktop";
/// The autostart entry that runs the agent at log-in.
pub const AUTOSTART_ENTRY: &str = "lanyard-agent.desktop";
/// The MIME type browsers look up for a `lanyard:` link.
pub const SCHEME_TYPE: &str = "x-scheme-handler/lanyard";
const DEFAULTS_SECTION: &str = "[Default Applications]";

/// Where the files go: the XDG base directories of the user.
pub struct Places {
    pub data_home: PathBuf,
    pub config_home: PathBuf,
}

impl Places {
    /// `$XDG_DATA_HOME` and `$XDG_CONFIG_HOME`, or their defaults below `$HOME`. Relative values
    /// are ignored, as the base directory specification says.
    pub fn from_env() -> anyhow::Result<Self> {
        let home = || -> anyhow::Result<PathBuf> {
            std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")
        };
        let absolute = |var: &str| std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute());
        Ok(Self {
            data_home: match absolute("XDG_DATA_HOME") {
                Some(p) => p,
                None => home()?.join(".local/share"),
            },
            config_home: match absolute("XDG_CONFIG_HOME") {
                Some(p) => p,
                None => home()?.join(".config"),
            },
        })
    }

    fn handler(&self) -> PathBuf {
        self.data_home.join("applications").join(HANDLER_ENTRY)
    }

    fn autostart(&self) -> PathBuf {
        self.config_home.join("autostart").join(AUTOSTART_ENTRY)
    }

    fn mimeapps(&self) -> PathBuf {
        self.config_home.join("mimeapps.list")
    }
}

/// The program path as one argument of a desktop entry's `Exec` key. Paths that would need the
/// specification's escaping rules (quotes, backslashes, `$`, backticks, `%`, control characters)
/// are refused rather than escaped: a mistake there would run something else.
fn exec_argument(program: &Path) -> anyhow::Result<String> {
    let text = program.to_str().with_context(|| format!("{} is not UTF-8", program.display()))?;
    if !program.is_absolute() {
        bail!("the program path {text} is not absolute");
    }
    if let Some(c) = text.chars().find(|c| matches!(c, '"' | '\\' | '$' | '`' | '%') || c.is_control()) {
        bail!(
            "the program path {text:?} holds {c:?}, which a desktop entry cannot carry safely; install lanyard elsewhere"
        );
    }
    Ok(if text.contains(' ') { format!("\"{text}\"") } else { text.to_owned() })
}

fn handler_entry(program: &str) -> String {
    format!(
        "[Desktop Entry]\n\
         Type=Application\n\
         Name=Lanyard agent pairing\n\
         Comment=Pairs this workstation's Lanyard agent with your account from a lanyard://pair link\n\
         Exec={program} agent pair %u\n\
         Terminal=true\n\
         NoDisplay=true\n\
         MimeType={SCHEME_TYPE};\n"
    )
}

fn autostart_entry(program: &str) -> String {
    // No terminal at log-in, so no PIN prompt: the holder types the new PIN in the portal, and
    // without one the card stays Pending.
    format!(
        "[Desktop Entry]\n\
         Type=Application\n\
         Name=Lanyard agent\n\
         Comment=Keeps this workstation's card readers reachable from the Lanyard portal\n\
         Exec={program} agent run --skip-pin-change\n\
         Terminal=false\n\
         NoDisplay=true\n\
         X-GNOME-Autostart-enabled=true\n"
    )
}

/// `mimeapps.list` with `x-scheme-handler/lanyard` set to our entry (`Some`) or removed (`None`)
/// in `[Default Applications]`; every other line is kept as it was.
pub fn edit_mimeapps(existing: &str, handler: Option<&str>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut in_defaults = false;
    let mut written = false;
    let mut saw_defaults = false;
    for line in existing.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            if in_defaults
                && !written
                && let Some(h) = handler
            {
                out.push(format!("{SCHEME_TYPE}={h};"));
                written = true;
            }
            in_defaults = trimmed == DEFAULTS_SECTION;
            saw_defaults |= in_defaults;
            out.push(line.to_owned());
            continue;
        }
        let is_ours = trimmed.split_once('=').is_some_and(|(k, _)| k.trim() == SCHEME_TYPE);
        if in_defaults && is_ours {
            if let Some(h) = handler
                && !written
            {
                out.push(format!("{SCHEME_TYPE}={h};"));
                written = true;
            }
            continue;
        }
        out.push(line.to_owned());
    }
    if let Some(h) = handler
        && !written
    {
        if !saw_defaults {
            if out.last().is_some_and(|l| !l.trim().is_empty()) {
                out.push(String::new());
            }
            out.push(DEFAULTS_SECTION.to_owned());
        }
        // Here either no [Default Applications] section existed (one was just added) or it is
        // the last section and the loop ended inside it.
        out.push(format!("{SCHEME_TYPE}={h};"));
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn remove_file(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn read_or_empty(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Installs (or with `uninstall`, removes) the link handler and, unless `autostart` is false, the
/// log-in entry. Returns what it did, one line each.
pub fn install(
    places: &Places,
    program: &Path,
    autostart: bool,
    uninstall: bool,
) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let mimeapps = places.mimeapps();
    if uninstall {
        for path in [places.handler(), places.autostart()] {
            if remove_file(&path)? {
                done.push(format!("removed {}", path.display()));
            }
        }
        let before = read_or_empty(&mimeapps)?;
        let after = edit_mimeapps(&before, None);
        if !before.is_empty() && after != before {
            write_file(&mimeapps, &after)?;
            done.push(format!("removed {SCHEME_TYPE} from {}", mimeapps.display()));
        }
        return Ok(done);
    }
    let program = exec_argument(program)?;
    write_file(&places.handler(), &handler_entry(&program))?;
    done.push(format!("lanyard:// links open `lanyard agent pair`: {}", places.handler().display()));
    let after = edit_mimeapps(&read_or_empty(&mimeapps)?, Some(HANDLER_ENTRY));
    write_file(&mimeapps, &after)?;
    done.push(format!("{SCHEME_TYPE} is the default in {}", mimeapps.display()));
    if autostart {
        write_file(&places.autostart(), &autostart_entry(&program))?;
        done.push(format!("`lanyard agent run` starts when you log in: {}", places.autostart().display()));
    } else if remove_file(&places.autostart())? {
        done.push(format!("removed {}", places.autostart().display()));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mimeapps_gets_our_default_and_keeps_the_rest() {
        assert_eq!(
            edit_mimeapps("", Some(HANDLER_ENTRY)),
            "[Default Applications]\nx-scheme-handler/lanyard=lanyard-pair.desktop;\n"
        );
        let existing = "[Added Associations]\ntext/plain=gedit.desktop;\n\n[Default Applications]\n\
                        x-scheme-handler/lanyard=other.desktop;\ntext/html=firefox.desktop;\n";
        let edited = edit_mimeapps(existing, Some(HANDLER_ENTRY));
        assert_eq!(
            edited,
            "[Added Associations]\ntext/plain=gedit.desktop;\n\n[Default Applications]\n\
             x-scheme-handler/lanyard=lanyard-pair.desktop;\ntext/html=firefox.desktop;\n"
        );
        assert_eq!(edit_mimeapps(&edited, Some(HANDLER_ENTRY)), edited, "installing twice changes nothing");
        assert_eq!(
            edit_mimeapps(&edited, None),
            "[Added Associations]\ntext/plain=gedit.desktop;\n\n[Default Applications]\ntext/html=firefox.desktop;\n"
        );
        // An association in another section is not ours to touch.
        let other = "[Added Associations]\nx-scheme-handler/lanyard=mine.desktop;\n";
        let edited = edit_mimeapps(other, Some(HANDLER_ENTRY));
        assert!(edited.starts_with(other), "{edited}");
        assert!(edited.ends_with("[Default Applications]\nx-scheme-handler/lanyard=lanyard-pair.desktop;\n"));
    }

    #[test]
    fn program_paths_that_need_escaping_are_refused() {
        assert_eq!(exec_argument(Path::new("/usr/bin/lanyard")).unwrap(), "/usr/bin/lanyard");
        assert_eq!(exec_argument(Path::new("/opt/my apps/lanyard")).unwrap(), "\"/opt/my apps/lanyard\"");
        for bad in
            ["relative/lanyard", "/tmp/a\"b", "/tmp/a$b", "/tmp/a%b", "/tmp/a\\b", "/tmp/a`b", "/tmp/a\nb"]
        {
            assert!(exec_argument(Path::new(bad)).is_err(), "{bad:?} was accepted");
        }
    }

    proptest! {
        /// Whatever the file held, installing leaves exactly one default for our scheme (ours),
        /// uninstalling leaves none in [Default Applications], and every other line survives both.
        #[test]
        fn edits_touch_only_our_key(lines in proptest::collection::vec(
            prop_oneof![
                Just("[Default Applications]".to_owned()),
                Just("[Added Associations]".to_owned()),
                Just("x-scheme-handler/lanyard=x.desktop;".to_owned()),
                "[a-z/=.;# ]{0,20}",
            ], 0..12)) {
            let existing = lines.join("\n");
            let installed = edit_mimeapps(&existing, Some(HANDLER_ENTRY));
            let ours = format!("{SCHEME_TYPE}={HANDLER_ENTRY};");
            let mut section = String::new();
            let mut defaults = Vec::new();
            for l in installed.lines() {
                if l.trim().starts_with('[') { section = l.trim().to_owned(); continue; }
                if section == DEFAULTS_SECTION && l.split_once('=').is_some_and(|(k, _)| k.trim() == SCHEME_TYPE) {
                    defaults.push(l.to_owned());
                }
            }
            prop_assert_eq!(defaults, vec![ours.clone()]);
            let removed = edit_mimeapps(&installed, None);
            prop_assert!(!removed.lines().any(|l| l == ours));
            for l in existing.lines() {
                let ours_in_defaults = l.split_once('=').is_some_and(|(k, _)| k.trim() == SCHEME_TYPE);
                if !ours_in_defaults {
                    prop_assert!(installed.lines().any(|x| x == l), "lost {:?}", l);
                }
            }
        }
    }
}
