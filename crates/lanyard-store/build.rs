//! `sqlx::migrate!` embeds the migration files at compile time, but cargo does not know it reads
//! them: without this, a new migration file alone leaves the crate (and the binary) without it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
