//! Two servers (two `AppState`s with their own instance ids) on one database, in process: a PIN
//! typed through one reaches a card session waiting on the other, checked against the session's
//! rules on the way and never in the database in clear; the notes are gone afterwards. (Two real
//! `lanyard serve` processes on PostgreSQL: `crates/lanyard/tests/cluster.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use lanyard_ca::KeyAlgorithm;
use lanyard_core::clock::{Clock, SystemClock};
use lanyard_core::ids::{InstanceId, JobId};
use lanyard_core::model::PinRules;
use lanyard_core::repo::prelude::*;
use lanyard_core::secrets::Kek;
use lanyard_protocol::Secret;
use lanyard_server::cluster::{pin_expect, pin_give, pin_wanted};
use lanyard_server::issuance::IssuanceConfig;
use lanyard_server::portal_pin::{GiveError, PortalPin};
use lanyard_server::{AppState, Pki};
use lanyard_store::Db;
use zeroize::Zeroizing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_given_on_one_server_reaches_the_session_waiting_on_another_sealed_on_the_way() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}", dir.path().join("lanyard.db").display())).await.unwrap();
    db.migrate().await.unwrap();
    let db = Arc::new(db);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let pki = Arc::new(
        Pki::create(
            &dir.path().join("ca"),
            "Lanyard Test",
            KeyAlgorithm::EcP256,
            "http://127.0.0.1",
            clock.now(),
        )
        .unwrap(),
    );
    let key = Zeroizing::new([7u8; 32]);
    let server = |key: &Zeroizing<[u8; 32]>| {
        AppState::new(Arc::clone(&db), Arc::clone(&pki), Arc::clone(&clock))
            .with_instance(InstanceId::new())
            .with_issuance(IssuanceConfig::new(Kek::from_bytes(key.clone()), vec![]))
            .with_shared_pins()
    };
    let (a, b) = (server(&key), server(&key));
    let job = JobId::new();

    // Started through B; the session waits on A.
    pin_expect(&b, job).await;
    let waiter = {
        let pins = Arc::clone(&a.pins);
        tokio::spawn(async move { pins.wait(job, PinRules::default(), Duration::from_secs(600)).await })
    };
    let asking = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(asking) = pin_wanted(&b, job).await {
                return asking;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("B sees the question of the session on A");
    assert!(!asking.current && !asking.verify && asking.fido.is_none());
    assert_eq!(asking.rules, PinRules::default());

    // B checks against the session's rules; a refusal leaves the session waiting.
    assert!(matches!(pin_give(&b, job, None, Some(Secret::new("111111"))).await, Err(GiveError::Rules(_))));
    assert_eq!(
        pin_give(&b, job, Some(Secret::new("123456")), Some(Secret::new("975319"))).await,
        Err(GiveError::CurrentNotAsked)
    );
    pin_give(&b, job, None, Some(Secret::new("975319"))).await.unwrap();
    // Whatever the database holds about the job now, the PIN is not in it in clear.
    {
        let mut tx = db.read().await.unwrap();
        let notes = tx.list_notes("portal_pin", &job.to_string(), clock.now(), 10).await.unwrap();
        for note in &notes {
            assert!(!note.value.windows(6).any(|w| w == b"975319"), "{} holds the PIN in clear", note.key);
        }
    }
    match waiter.await.unwrap() {
        PortalPin::Given(pin) => assert_eq!(pin.expose(), "975319"),
        other => panic!("{other:?}"),
    }
    // Asked once; nothing is left behind.
    assert_eq!(pin_give(&b, job, None, Some(Secret::new("975319"))).await, Err(GiveError::NotWaiting));
    assert!(pin_wanted(&b, job).await.is_none());
    let mut tx = db.read().await.unwrap();
    assert!(tx.list_notes("portal_pin", &job.to_string(), clock.now(), 10).await.unwrap().is_empty());
    drop(tx);

    // Declining through B crosses too: the session on A keeps the initial PIN.
    let other = JobId::new();
    pin_expect(&b, other).await;
    let waiter = {
        let pins = Arc::clone(&a.pins);
        tokio::spawn(async move { pins.wait(other, PinRules::default(), Duration::from_secs(600)).await })
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while pin_wanted(&b, other).await.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("B sees the second question");
    pin_give(&b, other, None, None).await.unwrap();
    assert!(matches!(waiter.await.unwrap(), PortalPin::Declined));
}
