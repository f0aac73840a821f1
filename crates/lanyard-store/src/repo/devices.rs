//! Devices and their links.

use std::collections::BTreeMap;

use lanyard_core::ids::DeviceId;
use lanyard_core::model::{Device, DeviceLink};
use lanyard_core::repo::{DeviceQuery, DeviceRepo, StoreError};

use super::{found, id, opt_id};
use crate::rows::{Cols, Reader};
use crate::sql::{Arg, Query, limit, nanos, opt_nanos};
use crate::tx::StoreTx;

macro_rules! device_cols {
    () => {
        "id, owner_id, kind, model, serial, card_guid, state, suspended_from, revocation_reason, \
         created_at, updated_at, card_expires_at"
    };
}

/// Bind parameters per statement when loading the links of a page of devices; well under
/// SQLite's and PostgreSQL's limits.
const LINK_BATCH: usize = 500;

fn device_args(device: &Device) -> Result<Vec<Arg>, StoreError> {
    Ok(vec![
        id(device.id),
        opt_id(device.owner),
        device.kind.as_str().into(),
        device.model.as_str().into(),
        device.serial.as_deref().into(),
        device.card_guid.map(|g| g.to_vec()).into(),
        device.state.as_str().into(),
        device.suspended_from.map(|s| s.as_str()).into(),
        device.revocation_reason.map(|r| r.as_str()).into(),
        nanos("devices.created_at", device.created_at)?.into(),
        nanos("devices.updated_at", device.updated_at)?.into(),
        opt_nanos("devices.card_expires_at", device.card_expires_at)?.into(),
    ])
}

/// A device without its links (they live in `device_links`).
fn decode_device(row: &dyn Cols) -> Result<Device, StoreError> {
    let r = Reader::new(row, "devices", "id");
    Ok(Device {
        id: r.parse("id")?,
        owner: r.opt_parse("owner_id")?,
        kind: r.parse("kind")?,
        model: r.text("model")?,
        serial: r.opt_text("serial")?,
        card_guid: r.opt_array("card_guid")?,
        card_expires_at: r.opt_time("card_expires_at")?,
        state: r.parse("state")?,
        suspended_from: r.opt_parse("suspended_from")?,
        revocation_reason: r.opt_parse("revocation_reason")?,
        links: Vec::new(),
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn decode_link(row: &dyn Cols) -> Result<(DeviceId, DeviceLink), StoreError> {
    let r = Reader::new(row, "device_links", "device_id");
    Ok((r.parse("device_id")?, DeviceLink { kind: r.parse("kind")?, target: r.parse("target_id")? }))
}

impl StoreTx {
    /// Fills in the links of `devices`, in their stored order.
    async fn load_links(&mut self, devices: &mut [Device]) -> Result<(), StoreError> {
        let mut links: BTreeMap<DeviceId, Vec<DeviceLink>> = BTreeMap::new();
        for batch in devices.chunks(LINK_BATCH) {
            let mut q =
                Query::build("SELECT device_id, kind, target_id FROM device_links WHERE device_id IN (");
            for (i, device) in batch.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.arg(id(device.id));
            }
            q.push(") ORDER BY device_id, position");
            for (device, link) in self.fetch_all(q, decode_link).await? {
                links.entry(device).or_default().push(link);
            }
        }
        for device in devices {
            device.links = links.remove(&device.id).unwrap_or_default();
        }
        Ok(())
    }

    async fn insert_links(&mut self, device: &Device) -> Result<(), StoreError> {
        for (position, link) in device.links.iter().enumerate() {
            let position = i64::try_from(position)
                .map_err(|_| StoreError::Backend("device_links.position: too many links".into()))?;
            let q = Query::new(
                "INSERT INTO device_links (device_id, position, kind, target_id) VALUES ($1, $2, $3, $4)",
                vec![id(device.id), position.into(), link.kind.as_str().into(), id(link.target)],
            );
            self.execute(q).await?;
        }
        Ok(())
    }

    async fn insert_device_rows(&mut self, device: &Device) -> Result<(), StoreError> {
        let q = Query::new(
            concat!(
                "INSERT INTO devices (",
                device_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            device_args(device)?,
        );
        self.execute(q).await?;
        self.insert_links(device).await
    }

    async fn update_device_rows(&mut self, device: &Device) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE devices SET owner_id = $2, kind = $3, model = $4, serial = $5, card_guid = $6, state = $7, \
             suspended_from = $8, revocation_reason = $9, created_at = $10, updated_at = $11, \
             card_expires_at = $12 WHERE id = $1",
            device_args(device)?,
        );
        found(self.execute(q).await?)?;
        let q = Query::new("DELETE FROM device_links WHERE device_id = $1", vec![id(device.id)]);
        self.execute(q).await?;
        self.insert_links(device).await
    }

    async fn one_device(&mut self, q: Query) -> Result<Option<Device>, StoreError> {
        let Some(device) = self.fetch_optional(q, decode_device).await? else {
            return Ok(None);
        };
        let mut devices = [device];
        self.load_links(&mut devices).await?;
        let [device] = devices;
        Ok(Some(device))
    }
}

impl DeviceRepo for StoreTx {
    async fn get_device(&mut self, device: DeviceId) -> Result<Option<Device>, StoreError> {
        let q =
            Query::new(concat!("SELECT ", device_cols!(), " FROM devices WHERE id = $1"), vec![id(device)]);
        self.one_device(q).await
    }

    async fn get_device_by_serial(
        &mut self,
        model: &str,
        serial: &str,
    ) -> Result<Option<Device>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", device_cols!(), " FROM devices WHERE model = $1 AND serial = $2"),
            vec![model.into(), serial.into()],
        );
        self.one_device(q).await
    }

    async fn list_devices(&mut self, query: &DeviceQuery) -> Result<Vec<Device>, StoreError> {
        let mut q = Query::build(concat!("SELECT ", device_cols!(), " FROM devices WHERE 1 = 1"));
        if let Some(owner) = query.owner {
            q.push(" AND owner_id = ").arg(id(owner));
        }
        if let Some(kind) = query.kind {
            q.push(" AND kind = ").arg(kind.as_str());
        }
        if !query.states.is_empty() {
            q.push(" AND state IN (");
            for (i, state) in query.states.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.arg(state.as_str());
            }
            q.push(")");
        }
        if let Some(target) = query.linked_to {
            q.push(
                " AND EXISTS (SELECT 1 FROM device_links l WHERE l.device_id = devices.id AND l.target_id = ",
            )
            .arg(id(target))
            .push(")");
        }
        if !query.serials.is_empty() {
            // Serials are ASCII (what the operator typed was checked by `SerialSearch`), so
            // LOWER means the same on both databases.
            q.push(" AND LOWER(serial) IN (");
            for (i, serial) in query.serials.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.arg(serial.to_ascii_lowercase());
            }
            q.push(")");
        }
        if let Some(after) = query.after {
            q.push(" AND id > ").arg(id(after));
        }
        q.push(" ORDER BY id LIMIT ").arg(limit(query.limit));
        let mut devices = self.fetch_all(q, decode_device).await?;
        self.load_links(&mut devices).await?;
        Ok(devices)
    }

    async fn insert_device(&mut self, device: &Device) -> Result<(), StoreError> {
        self.begin_call().await?;
        let result = self.insert_device_rows(device).await;
        self.end_call(result).await
    }

    async fn update_device(&mut self, device: &Device) -> Result<(), StoreError> {
        self.begin_call().await?;
        let result = self.update_device_rows(device).await;
        self.end_call(result).await
    }
}
