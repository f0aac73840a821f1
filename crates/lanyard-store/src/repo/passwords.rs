//! Local account passwords.

use lanyard_core::ids::UserId;
use lanyard_core::password::UserPassword;
use lanyard_core::repo::{PasswordRepo, StoreError};

use super::id;
use crate::rows::{Cols, Reader};
use crate::sql::{Query, nanos};
use crate::tx::StoreTx;

fn decode_password(row: &dyn Cols) -> Result<UserPassword, StoreError> {
    let r = Reader::new(row, "user_passwords", "user_id");
    Ok(UserPassword { user: r.parse("user_id")?, phc: r.text("phc")?, updated_at: r.time("updated_at")? })
}

impl PasswordRepo for StoreTx {
    async fn get_password(&mut self, user: UserId) -> Result<Option<UserPassword>, StoreError> {
        let q = Query::new(
            "SELECT user_id, phc, updated_at FROM user_passwords WHERE user_id = $1",
            vec![id(user)],
        );
        self.fetch_optional(q, decode_password).await
    }

    async fn put_password(&mut self, password: &UserPassword) -> Result<(), StoreError> {
        let q = Query::new(
            "INSERT INTO user_passwords (user_id, phc, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET phc = excluded.phc, updated_at = excluded.updated_at",
            vec![
                id(password.user),
                password.phc.as_str().into(),
                nanos("user_passwords.updated_at", password.updated_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }
}
