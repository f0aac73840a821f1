//! Lanyard's test kit: what an end-to-end test needs, in one place.
//!
//! - [`tools`]: `openssl`, pkilint and any other command; a missing tool fails with its install
//!   step, never a skip. Always available (feature-free), so crates below the server can use it.
//! - [`TestDb`], [`Backend`], [`on_both_databases!`]: throwaway SQLite and PostgreSQL databases.
//! - [`TestServer`]: the real server in process on a real socket, with a CA, a key-encryption key,
//!   issuance enabled for the software card's attestation root, and callers with API tokens.
//! - [`VCard`], [`TestServer::plug_card`]: factory-fresh software cards the server accepts.
//! - [`TestServer::issue_with_agent`]: the real agent relay between such a card and the server.
//! - [`SoftWorkstation`], [`TestServer::run_linked_agent`]: the real linked agent (`lanyard agent
//!   run`'s code) with software cards in readers of its own.
//! - [`portal`]: the portal as a signed-in browser uses it (pages, forms with the CSRF token).
//! - [`ServeProcess`]: `lanyard serve` as a child process.
//! - [`PrivatePcscd`]: a pcscd of the test's own, with its own vpcd readers, that it may restart.
//!
//! See `docs/testing.md` for a worked example.
// A test kit fails the test that uses it by panicking, with a message that says what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// A SCEP client made of openssl commands (feature-free, like [`tools`]).
pub mod scep;
pub mod tools;

#[cfg(feature = "server")]
pub mod agent;
#[cfg(feature = "server")]
pub mod card;
#[cfg(feature = "server")]
pub mod db;
#[cfg(feature = "server")]
pub mod link;
#[cfg(feature = "server")]
pub mod pcscd;
#[cfg(feature = "server")]
pub mod portal;
pub mod process;
#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "server")]
pub use agent::AgentRun;
#[cfg(feature = "server")]
pub use card::{VCard, card_certificates, power_cycle, recorded_certificates};
#[cfg(feature = "server")]
pub use db::{Backend, TestDb};
#[cfg(feature = "server")]
pub use link::{LinkedAgent, SoftWorkstation};
#[cfg(feature = "server")]
pub use pcscd::PrivatePcscd;
pub use process::{ServeProcess, free_port};
#[cfg(feature = "server")]
pub use server::{Caller, Issuance, TestServer};
pub use tools::{openssl, pem};
