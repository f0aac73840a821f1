//! Where the agent reaches a card's FIDO authenticator for the server's `ctap` frames.
//!
//! First through PC/SC on the session's own connection: SELECT of the FIDO application, then the
//! ISO 7816 binding NFC readers use ([`lanyard_ctap::transport::nfc`]). The virtual card, NFC
//! readers and YubiKeys from firmware 5.8 answer there. A YubiKey before 5.8 has FIDO on its USB
//! HID interface only, so when SELECT FIDO fails on a Yubico reader the agent looks for the key's
//! HID interface instead ([`FidoHid`]): the one FIDO HID device of USB vendor `0x1050`. None, or
//! several (the agent cannot tell which is the key in the reader), is an error that says so.

use std::path::PathBuf;

use lanyard_ctap::transport::CtapTransport;
#[cfg(target_os = "linux")]
use lanyard_ctap::transport::hidraw::{self, YUBICO_VENDOR_ID};

/// A CTAP transport the relay can keep for the session.
pub type BoxedTransport = Box<dyn CtapTransport + Send>;

/// Finds and opens the USB HID FIDO interface of the key in a PC/SC reader.
pub trait FidoHid: Send {
    /// The key in `reader`'s FIDO HID interface, with a CTAPHID channel allocated; or why there
    /// is none to use.
    fn open_for(&mut self, reader: &str) -> Result<BoxedTransport, String>;
}

/// Whether a PC/SC reader is a YubiKey's own CCID interface (its name names the maker).
pub fn is_yubikey_reader(reader: &str) -> bool {
    let lower = reader.to_ascii_lowercase();
    lower.contains("yubico") || lower.contains("yubikey")
}

/// The FIDO HID devices Linux lists in sysfs (`/sys/class/hidraw`), opened as `/dev/hidrawN`.
#[derive(Debug, Clone)]
pub struct SysfsHid {
    pub sysfs: PathBuf,
    pub dev: PathBuf,
}

impl Default for SysfsHid {
    fn default() -> Self {
        Self { sysfs: PathBuf::from("/sys/class/hidraw"), dev: PathBuf::from("/dev") }
    }
}

#[cfg(target_os = "linux")]
impl FidoHid for SysfsHid {
    fn open_for(&mut self, reader: &str) -> Result<BoxedTransport, String> {
        let all = hidraw::list_fido_devices_in(&self.sysfs, &self.dev);
        let yubico: Vec<_> = all.iter().filter(|d| d.vendor_id == YUBICO_VENDOR_ID).collect();
        match yubico.as_slice() {
            [] => {
                let others = if all.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> = all.iter().map(|d| d.describe()).collect();
                    format!(" (other FIDO HID devices: {})", list.join(", "))
                };
                Err(format!(
                    "the key in reader {reader:?} has no FIDO application over CCID (YubiKeys before \
                     firmware 5.8 offer FIDO over USB HID only), and no Yubico FIDO HID device (USB \
                     vendor 1050) is listed in {}{others}",
                    self.sysfs.display()
                ))
            }
            [one] => match hidraw::open(one) {
                Ok(t) => Ok(Box::new(t)),
                Err(e) => Err(format!("the FIDO HID interface of the key in reader {reader:?}: {e}")),
            },
            several => {
                let list: Vec<String> = several.iter().map(|d| d.describe()).collect();
                Err(format!(
                    "{} Yubico FIDO HID devices are plugged in ({}), and the agent cannot tell which \
                     one is the key in reader {reader:?}: unplug the other keys for this session",
                    several.len(),
                    list.join(", ")
                ))
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl FidoHid for SysfsHid {
    fn open_for(&mut self, reader: &str) -> Result<BoxedTransport, String> {
        Err(format!(
            "the key in reader {reader:?} has no FIDO application over CCID, and this agent reaches \
             FIDO HID devices on Linux only"
        ))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const FIDO_DESCRIPTOR: &[u8] = &[
        0x06, 0xD0, 0xF1, 0x09, 0x01, 0xA1, 0x01, 0x09, 0x20, 0x15, 0x00, 0x26, 0xFF, 0x00, 0x75, 0x08, 0x95,
        0x40, 0x81, 0x02, 0x09, 0x21, 0x15, 0x00, 0x26, 0xFF, 0x00, 0x75, 0x08, 0x95, 0x40, 0x91, 0x02, 0xC0,
    ];

    fn add(root: &std::path::Path, name: &str, vendor: &str, product: &str) {
        let d = root.join("sys").join(name).join("device");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("report_descriptor"), FIDO_DESCRIPTOR).unwrap();
        std::fs::write(d.join("uevent"), format!("HID_ID=0003:0000{vendor}:00000407\nHID_NAME={product}\n"))
            .unwrap();
    }

    fn hid(root: &std::path::Path) -> SysfsHid {
        SysfsHid { sysfs: root.join("sys"), dev: root.join("dev") }
    }

    #[test]
    fn yubikey_readers_are_recognised_by_name() {
        assert!(is_yubikey_reader("Yubico YubiKey OTP+FIDO+CCID 00 00"));
        assert!(is_yubikey_reader("Yubico YubiKey CCID 01 00"));
        assert!(!is_yubikey_reader("Virtual PCD 00 00"));
        assert!(!is_yubikey_reader("ACS ACR122U PICC Interface 00 00"));
    }

    #[test]
    fn no_yubico_device_is_an_error_naming_what_is_there() {
        let root = tempfile::tempdir().unwrap();
        let e = hid(root.path()).open_for("Yubico YubiKey CCID 00 00").err().unwrap();
        assert!(e.contains("no Yubico FIDO HID device (USB vendor 1050)"), "{e}");
        assert!(!e.contains("other FIDO HID devices"), "{e}");
        add(root.path(), "hidraw4", "20A0", "Nitrokey 3");
        let e = hid(root.path()).open_for("Yubico YubiKey CCID 00 00").err().unwrap();
        assert!(
            e.contains("other FIDO HID devices: ") && e.contains("hidraw4 (Nitrokey 3, 20a0:0407)"),
            "{e}"
        );
    }

    #[test]
    fn several_yubico_devices_are_an_error_listing_them() {
        let root = tempfile::tempdir().unwrap();
        add(root.path(), "hidraw1", "1050", "Yubico YubiKey OTP+FIDO+CCID");
        add(root.path(), "hidraw2", "1050", "Yubico YubiKey FIDO+CCID");
        let e = hid(root.path()).open_for("Yubico YubiKey OTP+FIDO+CCID 00 00").err().unwrap();
        assert!(e.starts_with("2 Yubico FIDO HID devices are plugged in ("), "{e}");
        assert!(e.contains("hidraw1 (Yubico YubiKey OTP+FIDO+CCID, 1050:0407)"), "{e}");
        assert!(e.contains("unplug the other keys"), "{e}");
    }

    #[test]
    fn the_one_yubico_device_is_opened_and_its_failure_named() {
        let root = tempfile::tempdir().unwrap();
        add(root.path(), "hidraw1", "1050", "Yubico YubiKey OTP+FIDO+CCID");
        // No device file: opening it fails, and the error names the device.
        let e = hid(root.path()).open_for("Yubico YubiKey OTP+FIDO+CCID 00 00").err().unwrap();
        assert!(e.starts_with("the FIDO HID interface of the key in reader"), "{e}");
        assert!(e.contains("dev/hidraw1"), "{e}");
    }
}
