//! CTAP 2.1 pieces that both ends of the protocol need: Lanyard's authenticator (the FIDO
//! application of the virtual card) and its clients (the server's issuance engine, which runs the
//! PIN protocol through the agent, and the agent's transports).
//!
//! - [`client`]: a sans-IO client (request builders, answer parsers) for getInfo, ClientPIN,
//!   authenticatorConfig and Reset;
//! - [`cbor`]: canonical CBOR encoding and a strict decoder;
//! - [`consts`]: command bytes, subcommands, permissions, status codes, the NFC binding's numbers;
//! - [`pin_protocol`]: PIN/UV auth protocols 1 and 2, for either side;
//! - [`transport`]: how a client reaches an authenticator: ISO 7816 APDUs (NFC, PC/SC) and USB
//!   HID (CTAPHID, Linux hidraw).

pub mod cbor;
pub mod client;
pub mod consts;
pub mod pin_protocol;
pub mod transport;
