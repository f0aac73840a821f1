//! The vsmartcard `vpcd` wire protocol: pcscd's `libifdvpcd` listens on TCP (port 35963 for
//! reader "Virtual PCD 00 00", the next port for "… 00 01"); the card connects and then answers
//! frames of a 2-byte big-endian length and a payload. A 1-byte payload is a control code
//! (0 power off, 1 power on, 2 reset, 4 get ATR); anything longer is a command APDU.
//!
//! Closing the connection is how a card leaves the reader, so removal and insertion are
//! simulated by disconnecting and reconnecting; if pcscd restarts, the card reconnects by itself.

use crate::card::{VirtualCard, atr};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

/// Where pcscd's vpcd driver listens by default (`/etc/reader.conf.d/vpcd`: 0x8C7B).
pub const DEFAULT_PORT: u16 = 35963;
const CTRL_OFF: u8 = 0;
const CTRL_ON: u8 = 1;
const CTRL_RESET: u8 = 2;
const CTRL_ATR: u8 = 4;

/// Commands to a running card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Insert,
    Remove,
    Stop,
}

/// What the card is doing, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Inserted,
    Removed,
}

/// Runs `card` in the reader at `addr` until [`Control::Stop`] arrives or the channel closes.
/// `on_state` is told about every state change.
pub fn run(
    card: &mut VirtualCard,
    addr: &str,
    control: &Receiver<Control>,
    mut on_state: impl FnMut(State),
) -> io::Result<()> {
    let mut inserted = true;
    let mut warned = false;
    loop {
        match control.try_recv() {
            Ok(Control::Stop) | Err(TryRecvError::Disconnected) => return Ok(()),
            Ok(Control::Remove) => {
                inserted = false;
                on_state(State::Removed);
            }
            Ok(Control::Insert) => inserted = true,
            Err(TryRecvError::Empty) => {}
        }
        if !inserted {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        on_state(State::Connecting);
        let stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                if !warned {
                    tracing::warn!(%addr, error = %e, "vpcd not reachable (is pcscd running with vsmartcard-vpcd?); retrying");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        warned = false;
        tracing::info!(%addr, serial = card.serial(), "card inserted");
        on_state(State::Inserted);
        card.reset_session();
        match serve(card, stream, control)? {
            Ended::Stop => return Ok(()),
            Ended::Removed => {
                inserted = false;
                card.reset_session();
                tracing::info!(%addr, "card removed");
                on_state(State::Removed);
            }
            Ended::PeerClosed => {
                card.reset_session();
                tracing::warn!(%addr, "vpcd closed the connection (pcscd stopped?); reconnecting");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

enum Ended {
    Stop,
    Removed,
    PeerClosed,
}

fn serve(card: &mut VirtualCard, mut stream: TcpStream, control: &Receiver<Control>) -> io::Result<Ended> {
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(70_000);
    let mut chunk = vec![0u8; 65_540];
    loop {
        match control.try_recv() {
            Ok(Control::Stop) | Err(TryRecvError::Disconnected) => return Ok(Ended::Stop),
            Ok(Control::Remove) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return Ok(Ended::Removed);
            }
            Ok(Control::Insert) | Err(TryRecvError::Empty) => {}
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(Ended::PeerClosed),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                quick_ack(&stream);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {
                return Ok(Ended::PeerClosed);
            }
            Err(e) => return Err(e),
        }
        // Answer every complete frame in the buffer.
        while buf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            if buf.len() < 2 + len {
                break;
            }
            let payload: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
            if let Some(reply) = answer(card, &payload) {
                let mut frame = Vec::with_capacity(reply.len() + 2);
                let Ok(l) = u16::try_from(reply.len()) else {
                    tracing::error!(len = reply.len(), "response too long for a vpcd frame");
                    continue;
                };
                frame.extend_from_slice(&l.to_be_bytes());
                frame.extend_from_slice(&reply);
                if stream.write_all(&frame).is_err() {
                    return Ok(Ended::PeerClosed);
                }
            }
        }
    }
}

/// vpcd sends a frame's length and its payload in two writes. With Nagle on its side and delayed
/// ACKs on ours, the payload waits ~40 ms for our ACK of the length. Asking Linux to ACK at once
/// (the kernel clears the flag again, so after every read) removes the stall.
fn quick_ack(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

/// The card's reply to one vpcd payload, if it needs one.
fn answer(card: &mut VirtualCard, payload: &[u8]) -> Option<Vec<u8>> {
    match payload {
        [CTRL_OFF] | [CTRL_ON] | [CTRL_RESET] => {
            card.reset_session();
            None
        }
        [CTRL_ATR] => Some(atr()),
        [other] => {
            tracing::warn!(code = other, "unknown vpcd control code");
            None
        }
        [] => None,
        apdu => {
            let resp = card.process(apdu);
            tracing::trace!(cmd = %hex::encode(apdu), resp = %hex::encode(&resp), "apdu");
            Some(resp)
        }
    }
}
