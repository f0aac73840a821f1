//! The installation record on [`StoreTx`]: one row with id 1 in `installation`, so the primary
//! key itself turns a second record into a `Conflict`.

use lanyard_core::installation::{CertFingerprint, Installation};
use lanyard_core::repo::{InstallationRepo, StoreError};

use crate::rows::{Cols, Reader};
use crate::sql::{Query, nanos};
use crate::tx::StoreTx;

fn decode_installation(row: &dyn Cols) -> Result<Installation, StoreError> {
    let r = Reader::new(row, "installation", "id");
    Ok(Installation {
        root_fingerprint: r.parse::<CertFingerprint>("root_fingerprint")?,
        kek_id: r.parse("kek_id")?,
        initialized_at: r.time("initialized_at")?,
    })
}

impl InstallationRepo for StoreTx {
    async fn get_installation(&mut self) -> Result<Option<Installation>, StoreError> {
        let q = Query::new(
            "SELECT id, root_fingerprint, kek_id, initialized_at FROM installation WHERE id = 1",
            vec![],
        );
        self.fetch_optional(q, decode_installation).await
    }

    async fn insert_installation(&mut self, installation: &Installation) -> Result<(), StoreError> {
        let q = Query::new(
            "INSERT INTO installation (id, root_fingerprint, kek_id, initialized_at) VALUES (1, $1, $2, $3)",
            vec![
                installation.root_fingerprint.to_string().into(),
                installation.kek_id.to_string().into(),
                nanos("installation.initialized_at", installation.initialized_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }
}
