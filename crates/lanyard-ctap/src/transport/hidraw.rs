//! FIDO HID devices on Linux through hidraw, with the standard library only (no ioctl: the
//! workspace forbids unsafe code).
//!
//! Discovery reads sysfs: every `/sys/class/hidraw/hidrawN/device/report_descriptor` is parsed,
//! and a device whose report descriptor has a top-level collection of usage page `0xF1D0`
//! (FIDO Alliance), usage `0x01` (CTAPHID) is a FIDO authenticator; its `uevent` gives the
//! vendor and product ids (`HID_ID`), the product name (`HID_NAME`) and the serial number
//! (`HID_UNIQ`, often empty). I/O writes and reads `/dev/hidrawN`: each write is the report-id
//! byte `0` followed by the 64-byte report, each read one 64-byte report. The file is opened
//! non-blocking, so a read can give up at a deadline.
//!
//! Opening `/dev/hidrawN` needs read and write access to it, which distributions give the user
//! at the seat through a udev rule (`docs/agent.md` has one).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CtapTransportError;
use super::hid::{HidCtap, REPORT_LEN, ReportIo};

/// The FIDO Alliance usage page and the CTAPHID usage (CTAP 2.1 §11.2.8.1).
pub const FIDO_USAGE_PAGE: u32 = 0xF1D0;
pub const FIDO_USAGE_CTAPHID: u32 = 0x01;
/// Yubico's USB vendor id.
pub const YUBICO_VENDOR_ID: u16 = 0x1050;

/// Where sysfs lists hidraw devices.
pub const SYSFS_HIDRAW: &str = "/sys/class/hidraw";

/// Why a report descriptor could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    #[error("report descriptor item at byte {at} needs {need} bytes, {left} are left")]
    Truncated { at: usize, need: usize, left: usize },
    #[error("report descriptor ends a collection at byte {0} that was never opened")]
    UnbalancedEnd(usize),
    #[error("report descriptor pops a global state at byte {0} that was never pushed")]
    UnbalancedPop(usize),
}

/// The (usage page, usage) of each top-level collection in a HID report descriptor.
pub fn top_level_usages(desc: &[u8]) -> Result<Vec<(u32, u32)>, DescriptorError> {
    let mut out = Vec::new();
    let mut page: u32 = 0;
    let mut pushed: Vec<u32> = Vec::new();
    // The first usage of the current main item, with the page it names, if any.
    let mut usage: Option<(Option<u32>, u32)> = None;
    let mut depth = 0usize;
    let mut i = 0;
    while i < desc.len() {
        let prefix = desc[i];
        if prefix == 0xFE {
            // A long item: size, tag, data. None is defined; skip it.
            let size = *desc.get(i + 1).ok_or(DescriptorError::Truncated {
                at: i,
                need: 3,
                left: desc.len() - i,
            })?;
            let need = 3 + usize::from(size);
            if desc.len() - i < need {
                return Err(DescriptorError::Truncated { at: i, need, left: desc.len() - i });
            }
            i += need;
            continue;
        }
        let size = [0usize, 1, 2, 4][usize::from(prefix & 0x03)];
        if desc.len() - i < 1 + size {
            return Err(DescriptorError::Truncated { at: i, need: 1 + size, left: desc.len() - i });
        }
        let data = desc[i + 1..i + 1 + size].iter().rev().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        match ((prefix >> 2) & 0x03, prefix >> 4) {
            // Main items: Collection, End Collection; every main item ends the local state.
            (0, tag) => {
                if tag == 0x0A {
                    if depth == 0 {
                        let (named, u) = usage.unwrap_or((None, 0));
                        out.push((named.unwrap_or(page), u));
                    }
                    depth += 1;
                } else if tag == 0x0C {
                    depth = depth.checked_sub(1).ok_or(DescriptorError::UnbalancedEnd(i))?;
                }
                usage = None;
            }
            // Global items: Usage Page, Push, Pop.
            (1, 0x00) => page = data,
            (1, 0x0A) => pushed.push(page),
            (1, 0x0B) => page = pushed.pop().ok_or(DescriptorError::UnbalancedPop(i))?,
            // Local Usage: a 4-byte usage carries its own page in the upper half.
            (2, 0x00) if usage.is_none() => {
                usage = Some(if size == 4 { (Some(data >> 16), data & 0xFFFF) } else { (None, data) });
            }
            _ => {}
        }
        i += 1 + size;
    }
    Ok(out)
}

/// Whether a report descriptor describes a CTAPHID interface.
pub fn is_fido(desc: &[u8]) -> Result<bool, DescriptorError> {
    Ok(top_level_usages(desc)?.contains(&(FIDO_USAGE_PAGE, FIDO_USAGE_CTAPHID)))
}

/// A FIDO HID device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HidDeviceInfo {
    /// `/dev/hidrawN`.
    pub path: PathBuf,
    pub vendor_id: u16,
    pub product_id: u16,
    /// `HID_NAME`, e.g. `Yubico YubiKey OTP+FIDO+CCID`.
    pub product: String,
    /// `HID_UNIQ`, when the device has one.
    pub serial: Option<String>,
}

impl HidDeviceInfo {
    /// `/dev/hidraw3 (Yubico YubiKey OTP+FIDO+CCID, 1050:0407)`.
    pub fn describe(&self) -> String {
        format!("{} ({}, {:04x}:{:04x})", self.path.display(), self.product, self.vendor_id, self.product_id)
    }
}

/// Reads the ids and names from a hid device's `uevent` text. `None` without a well-formed
/// `HID_ID`.
pub fn parse_uevent(text: &str) -> Option<(u16, u16, String, Option<String>)> {
    let mut ids = None;
    let (mut name, mut uniq) = (String::new(), None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        match key {
            "HID_ID" => {
                // bus:vendor:product, each in hex (`0003:00001050:00000407`).
                let mut parts = value.split(':');
                let (_bus, vendor, product) = (parts.next()?, parts.next()?, parts.next()?);
                let vendor = u32::from_str_radix(vendor, 16).ok()?;
                let product = u32::from_str_radix(product, 16).ok()?;
                ids = Some((u16::try_from(vendor).ok()?, u16::try_from(product).ok()?));
            }
            "HID_NAME" => name = value.chars().filter(|c| !c.is_control()).take(128).collect(),
            "HID_UNIQ" if !value.trim().is_empty() => {
                uniq = Some(value.trim().chars().filter(|c| !c.is_control()).take(64).collect());
            }
            _ => {}
        }
    }
    let (vendor, product) = ids?;
    Some((vendor, product, name, uniq))
}

/// The FIDO devices among the hidraw devices in `/sys/class/hidraw`, in name order.
pub fn list_fido_devices() -> Vec<HidDeviceInfo> {
    list_fido_devices_in(Path::new(SYSFS_HIDRAW), Path::new("/dev"))
}

/// Like [`list_fido_devices`] with another sysfs directory and `/dev` (tests). A directory that
/// does not exist (no hidraw driver) lists nothing; an entry whose descriptor or `uevent`
/// cannot be read or parsed is not a device this client can use, and is left out.
pub fn list_fido_devices_in(sysfs: &Path, dev: &Path) -> Vec<HidDeviceInfo> {
    let Ok(entries) = std::fs::read_dir(sysfs) else { return Vec::new() };
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort_by_key(|n| (n.len(), n.clone()));
    let mut found = Vec::new();
    for name in names {
        let device = sysfs.join(&name).join("device");
        let Ok(desc) = std::fs::read(device.join("report_descriptor")) else { continue };
        if !is_fido(&desc).unwrap_or(false) {
            continue;
        }
        let Ok(uevent) = std::fs::read_to_string(device.join("uevent")) else { continue };
        let Some((vendor_id, product_id, product, serial)) = parse_uevent(&uevent) else { continue };
        found.push(HidDeviceInfo { path: dev.join(&name), vendor_id, product_id, product, serial });
    }
    found
}

/// What a hidraw device needs on Linux, for the error when it cannot be opened.
pub const PERMISSION_HINT: &str = "the desktop user needs read and write access to FIDO hidraw devices: \
     install a udev rule that tags them uaccess (see docs/agent.md, \"CTAP over USB HID\")";

/// A hidraw device file.
pub struct Hidraw {
    file: File,
    path: PathBuf,
}

impl Hidraw {
    /// Opens the device for reading and writing, non-blocking.
    pub fn open(path: &Path) -> Result<Self, CtapTransportError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.kind() {
                ErrorKind::PermissionDenied => CtapTransportError::Io(format!(
                    "{}: permission denied; {PERMISSION_HINT}",
                    path.display()
                )),
                _ => CtapTransportError::Io(format!("{}: {e}", path.display())),
            })?;
        Ok(Self { file, path: path.to_owned() })
    }

    fn io_error(&self, e: std::io::Error) -> CtapTransportError {
        CtapTransportError::Io(format!("{}: {e}", self.path.display()))
    }
}

/// How long to sleep between two reads of a device that has nothing to say.
const READ_POLL: Duration = Duration::from_millis(2);
/// How many times a write the device is not ready for is tried again.
const WRITE_TRIES: usize = 500;

impl ReportIo for Hidraw {
    fn write_report(&mut self, report: &[u8; REPORT_LEN]) -> Result<(), CtapTransportError> {
        // Report id 0 first: FIDO devices use no numbered reports.
        let mut out = [0u8; REPORT_LEN + 1];
        out[1..].copy_from_slice(report);
        for _ in 0..WRITE_TRIES {
            match self.file.write(&out) {
                Ok(n) if n == out.len() => return Ok(()),
                Ok(n) => {
                    return Err(CtapTransportError::Io(format!(
                        "{}: wrote {n} of {} bytes of a report",
                        self.path.display(),
                        out.len()
                    )));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                    std::thread::sleep(READ_POLL);
                }
                Err(e) => return Err(self.io_error(e)),
            }
        }
        Err(CtapTransportError::Io(format!(
            "{}: the device took no report for a second",
            self.path.display()
        )))
    }

    fn read_report(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, CtapTransportError> {
        let until = Instant::now() + wait;
        let mut buf = [0u8; REPORT_LEN + 1];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => {
                    return Err(CtapTransportError::Io(format!(
                        "{}: the device went away",
                        self.path.display()
                    )));
                }
                Ok(n) => return Ok(Some(buf[..n].to_vec())),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                    let now = Instant::now();
                    if now >= until {
                        return Ok(None);
                    }
                    std::thread::sleep(READ_POLL.min(until - now));
                }
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }
}

/// Opens a FIDO device found by [`list_fido_devices`] and allocates a CTAPHID channel on it.
pub fn open(device: &HidDeviceInfo) -> Result<HidCtap<Hidraw>, CtapTransportError> {
    let io = Hidraw::open(&device.path)?;
    HidCtap::open(io, format!("USB HID {}", device.describe()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    /// The report descriptor of a YubiKey 5's FIDO interface.
    const YUBIKEY_FIDO: &[u8] = &[
        0x06, 0xD0, 0xF1, 0x09, 0x01, 0xA1, 0x01, 0x09, 0x20, 0x15, 0x00, 0x26, 0xFF, 0x00, 0x75, 0x08, 0x95,
        0x40, 0x81, 0x02, 0x09, 0x21, 0x15, 0x00, 0x26, 0xFF, 0x00, 0x75, 0x08, 0x95, 0x40, 0x91, 0x02, 0xC0,
    ];
    /// A boot keyboard's (the YubiKey's OTP interface looks like this).
    const KEYBOARD: &[u8] = &[
        0x05, 0x01, 0x09, 0x06, 0xA1, 0x01, 0x05, 0x07, 0x19, 0xE0, 0x29, 0xE7, 0x15, 0x00, 0x25, 0x01, 0x75,
        0x01, 0x95, 0x08, 0x81, 0x02, 0xC0,
    ];

    #[test]
    fn the_fido_usage_page_is_recognised() {
        assert_eq!(top_level_usages(YUBIKEY_FIDO).unwrap(), vec![(0xF1D0, 0x01)]);
        assert!(is_fido(YUBIKEY_FIDO).unwrap());
        assert_eq!(top_level_usages(KEYBOARD).unwrap(), vec![(0x01, 0x06)]);
        assert!(!is_fido(KEYBOARD).unwrap());
        // A 4-byte usage names its page; Push/Pop restore the page around it.
        let extended = [0x05, 0x01, 0xA4, 0x0B, 0x01, 0x00, 0xD0, 0xF1, 0xA1, 0x01, 0xC0, 0xB4];
        assert_eq!(top_level_usages(&extended).unwrap(), vec![(0xF1D0, 0x01)]);
        // Nested collections are not top level; a long item is skipped.
        let nested = [
            0x05, 0x01, 0x09, 0x02, 0xA1, 0x01, 0x06, 0xD0, 0xF1, 0x09, 0x01, 0xA1, 0x00, 0xC0, 0xFE, 0x01,
            0x00, 0xAA, 0xC0,
        ];
        assert_eq!(top_level_usages(&nested).unwrap(), vec![(0x01, 0x02)]);
    }

    #[test]
    fn malformed_descriptors_get_precise_errors() {
        assert_eq!(
            top_level_usages(&[0x06, 0xD0]).unwrap_err(),
            DescriptorError::Truncated { at: 0, need: 3, left: 2 }
        );
        assert_eq!(top_level_usages(&[0x09, 0x01, 0xC0]).unwrap_err(), DescriptorError::UnbalancedEnd(2));
        assert_eq!(top_level_usages(&[0xB4]).unwrap_err(), DescriptorError::UnbalancedPop(0));
        assert_eq!(
            top_level_usages(&[0xFE, 0x05, 0x00]).unwrap_err(),
            DescriptorError::Truncated { at: 0, need: 8, left: 3 }
        );
    }

    #[test]
    fn uevent_gives_ids_and_names() {
        let text = "DRIVER=hid-generic\nHID_ID=0003:00001050:00000407\nHID_NAME=Yubico YubiKey OTP+FIDO+CCID\nHID_PHYS=usb-0000:00:14.0-1/input1\nHID_UNIQ=\nMODALIAS=hid:b0003g0001v00001050p00000407\n";
        assert_eq!(parse_uevent(text), Some((0x1050, 0x0407, "Yubico YubiKey OTP+FIDO+CCID".into(), None)));
        let with_serial = "HID_ID=0003:000020A0:000042B1\nHID_NAME=Nitrokey 3\nHID_UNIQ=ABC123\n";
        assert_eq!(
            parse_uevent(with_serial),
            Some((0x20A0, 0x42B1, "Nitrokey 3".into(), Some("ABC123".into())))
        );
        assert_eq!(parse_uevent("HID_NAME=x\n"), None);
        assert_eq!(parse_uevent("HID_ID=0003:XYZ:0407\n"), None);
        assert_eq!(parse_uevent("HID_ID=0003:000110500:0407\n"), None, "a vendor id wider than 16 bits");
    }

    #[test]
    fn sysfs_lists_only_fido_devices() {
        let root = tempfile::tempdir().unwrap();
        let add = |name: &str, desc: &[u8], uevent: &str| {
            let d = root.path().join(name).join("device");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("report_descriptor"), desc).unwrap();
            std::fs::write(d.join("uevent"), uevent).unwrap();
        };
        add("hidraw0", KEYBOARD, "HID_ID=0003:00001050:00000407\nHID_NAME=Yubico YubiKey OTP+FIDO+CCID\n");
        add(
            "hidraw1",
            YUBIKEY_FIDO,
            "HID_ID=0003:00001050:00000407\nHID_NAME=Yubico YubiKey OTP+FIDO+CCID\n",
        );
        add("hidraw10", YUBIKEY_FIDO, "HID_ID=0003:000020A0:000042B1\nHID_NAME=Nitrokey 3\nHID_UNIQ=N1\n");
        add("hidraw2", &[0x06, 0xD0], "HID_ID=0003:00001050:00000407\n");
        add("hidraw3", YUBIKEY_FIDO, "HID_NAME=no ids\n");
        let found = list_fido_devices_in(root.path(), Path::new("/dev"));
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].path, Path::new("/dev/hidraw1"));
        assert_eq!(found[0].describe(), "/dev/hidraw1 (Yubico YubiKey OTP+FIDO+CCID, 1050:0407)");
        assert_eq!(found[1].serial.as_deref(), Some("N1"));
        assert!(list_fido_devices_in(&root.path().join("absent"), Path::new("/dev")).is_empty());
    }

    #[test]
    fn a_missing_device_file_is_named() {
        let e = Hidraw::open(Path::new("/nonexistent/hidraw9")).err().unwrap();
        assert!(e.to_string().starts_with("/nonexistent/hidraw9: "), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_descriptors_never_panic(desc in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = top_level_usages(&desc);
        }

        #[test]
        fn a_fido_collection_is_found_among_others(before in 0usize..4, after in 0usize..4) {
            let mut desc = Vec::new();
            for _ in 0..before {
                desc.extend_from_slice(KEYBOARD);
            }
            desc.extend_from_slice(YUBIKEY_FIDO);
            for _ in 0..after {
                desc.extend_from_slice(KEYBOARD);
            }
            let usages = top_level_usages(&desc).unwrap();
            prop_assert_eq!(usages.len(), before + after + 1);
            prop_assert!(is_fido(&desc).unwrap());
        }

        #[test]
        fn arbitrary_uevents_never_panic(text in ".{0,200}") {
            let _ = parse_uevent(&text);
        }
    }
}
