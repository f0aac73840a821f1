//! Seeds certificates for benchmarks: `cargo run --release -p lanyard-store --example seed --
//! <database_url> <count> [revoke_every] [certificate.der] [batch]`. Prints the serial of a good
//! and of a revoked certificate (lowercase hex) for load generators.
#![allow(clippy::print_stdout)]

use lanyard_store::Db;
use lanyard_store::seed::{SeedSpec, seed_certificates, seeded_serial};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: seed <database_url> <count> [revoke_every=10] [certificate.der] [batch=0]";
    let url = args.get(1).ok_or(usage)?;
    let count: u64 = args.get(2).ok_or(usage)?.parse()?;
    let revoke_every: u64 = args.get(3).map_or(Ok(10), |v| v.parse())?;
    let certificate_der = match args.get(4) {
        Some(path) => std::fs::read(path)?,
        None => vec![0x30, 0x00],
    };
    let batch: u32 = args.get(5).map_or(Ok(0), |v| v.parse())?;
    let db = Db::connect(url).await?;
    db.migrate().await?;
    let started = std::time::Instant::now();
    let spec = SeedSpec {
        certificates: count,
        revoke_every,
        certificate_der,
        at: lanyard_core::clock::Clock::now(&lanyard_core::clock::SystemClock),
        batch,
    };
    let n = seed_certificates(&db, &spec).await?;
    println!("seeded {n} certificates in {:.1} s", started.elapsed().as_secs_f64());
    println!("good {}", seeded_serial(batch, 1));
    println!("revoked {}", seeded_serial(batch, 0));
    Ok(())
}
