//! Volume types (Cinder's volume types, SODA's profiles): named sets of extra specs that the
//! scheduler matches against pool capabilities. `volume create --type gold` places by them.

use std::collections::BTreeMap;

use elara_scheduler::Spec;
use elara_store::StoreExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Elara, absent, put};
use crate::error::{ApiError, ApiResult};
use crate::model::{SCHEMA, VolumeRecord, VolumeTypeRecord, keys, now};
use crate::validate::check_name;

/// `type create` as the API takes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateType {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// key → value in Cinder's extra-spec syntax.
    #[serde(default)]
    pub specs: BTreeMap<String, String>,
}

/// Parse every spec; the first bad one is refused naming `spec <key>`, the position and why.
/// A `true`/`false` spec the host itself reads (`mount:nosuid`), checked at `type create`.
pub fn flag_spec(key: &str, value: &str) -> ApiResult<bool> {
    match value.trim() {
        "true" | "<is> True" => Ok(true),
        "false" | "<is> False" => Ok(false),
        other => Err(ApiError::invalid(
            &format!("spec {key}"),
            format!("{other:?} is not true or false"),
        )),
    }
}

pub fn parse_specs(specs: &BTreeMap<String, String>) -> ApiResult<Vec<Spec>> {
    for key in [
        crate::attach::MountSecurity::SPEC_NOSUID,
        crate::attach::MountSecurity::SPEC_NODEV,
    ] {
        if let Some(v) = specs.get(key) {
            flag_spec(key, v)?;
        }
    }
    specs
        .iter()
        .map(|(k, v)| {
            Spec::new(k.as_str(), v.as_str()).map_err(|e| ApiError::invalid(&format!("spec {k}"), e.to_string()))
        })
        .collect()
}

impl Elara {
    pub async fn create_type(&self, req: CreateType) -> ApiResult<VolumeTypeRecord> {
        check_name("name", &req.name)?;
        if req.specs.is_empty() {
            return Err(ApiError::invalid(
                "spec",
                "a volume type needs at least one spec (--spec KEY=VALUE)",
            ));
        }
        parse_specs(&req.specs)?;
        let rec = VolumeTypeRecord {
            v: SCHEMA,
            name: req.name.clone(),
            description: req.description,
            specs: req.specs,
            created_at: now(),
        };
        let key = keys::volume_type(&rec.name);
        if !self.txn(vec![absent(key.clone())], vec![put(key, &rec)]).await? {
            return Err(ApiError::conflict(format!("volume type {:?} already exists", rec.name)));
        }
        tracing::info!(volume_type = %rec.name, "volume type created");
        Ok(rec)
    }

    pub async fn list_types(&self) -> ApiResult<Vec<VolumeTypeRecord>> {
        Ok(self
            .store
            .list_json::<VolumeTypeRecord>(&keys::volume_types())
            .await?
            .into_iter()
            .map(|r| r.value)
            .collect())
    }

    pub async fn get_type(&self, name: &str) -> ApiResult<VolumeTypeRecord> {
        Ok(self
            .get::<VolumeTypeRecord>(&keys::volume_type(name))
            .await?
            .ok_or_else(|| ApiError::not_found("volume type", name))?
            .value)
    }

    /// Refused while a volume uses the type (as Cinder does).
    pub async fn delete_type(&self, name: &str) -> ApiResult<()> {
        let cur = self
            .get::<VolumeTypeRecord>(&keys::volume_type(name))
            .await?
            .ok_or_else(|| ApiError::not_found("volume type", name))?;
        let users: Vec<String> = self
            .store
            .list_json::<VolumeRecord>(&keys::volumes())
            .await?
            .into_iter()
            .filter(|v| v.value.volume_type.as_deref() == Some(name))
            .map(|v| v.value.name)
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "volume type {name:?} is used by volumes {users:?}"
            )));
        }
        if !self
            .txn(
                vec![super::rev(keys::volume_type(name), cur.revision)],
                vec![super::del(keys::volume_type(name))],
            )
            .await?
        {
            return Err(ApiError::busy("volume type", name, "changed meanwhile"));
        }
        Ok(())
    }
}
