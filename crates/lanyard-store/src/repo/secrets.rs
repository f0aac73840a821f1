//! Card secrets, sealed under the KEK.

use lanyard_core::ids::DeviceId;
use lanyard_core::repo::{SecretRepo, StoreError};
use lanyard_core::secrets::SealedCardSecrets;

use super::{found, id};
use crate::rows::{Cols, Reader};
use crate::sql::Query;
use crate::tx::StoreTx;

fn decode_sealed(row: &dyn Cols) -> Result<SealedCardSecrets, StoreError> {
    let r = Reader::new(row, "card_secrets", "device_id");
    Ok(SealedCardSecrets::from_bytes(r.bytes("sealed")?))
}

impl SecretRepo for StoreTx {
    async fn put_card_secrets(
        &mut self,
        device: DeviceId,
        sealed: &SealedCardSecrets,
    ) -> Result<(), StoreError> {
        let q = Query::new(
            "INSERT INTO card_secrets (device_id, sealed) VALUES ($1, $2) \
             ON CONFLICT (device_id) DO UPDATE SET sealed = excluded.sealed",
            vec![id(device), sealed.as_bytes().into()],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn get_card_secrets(&mut self, device: DeviceId) -> Result<Option<SealedCardSecrets>, StoreError> {
        let q =
            Query::new("SELECT device_id, sealed FROM card_secrets WHERE device_id = $1", vec![id(device)]);
        self.fetch_optional(q, decode_sealed).await
    }

    async fn delete_card_secrets(&mut self, device: DeviceId) -> Result<(), StoreError> {
        let q = Query::new("DELETE FROM card_secrets WHERE device_id = $1", vec![id(device)]);
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }
}
