//! REST routes of backups (merged into the main router):
//!
//! * `GET/POST /v1/backup-targets`, `GET/DELETE /v1/backup-targets/{name}`
//! * `GET/POST /v1/backups` (POST starts a backup job: 202 with the job, or 201 when `wait`),
//!   `GET/DELETE /v1/backups/{id}`, `POST /v1/backups/{id}/restore`, `POST /v1/backups/{id}/verify`
//! * `GET /v1/backup-jobs/{id}`: a job's phase, bytes, blocks, rate and ETA, then its result.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::records::{BackupRecord, TargetRecord};
use crate::api::rest::Body;
use crate::error::ApiResult;
use crate::ops::Shared;
use crate::ops::backups::{self, AddTarget, CreateBackup, JobView, RestoreBackup};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/backup-targets", get(list_targets).post(add_target))
        .route("/v1/backup-targets/{name}", get(get_target).delete(remove_target))
        .route("/v1/backups", get(list_backups).post(create_backup))
        .route("/v1/backups/{id}", get(get_backup).delete(delete_backup))
        .route("/v1/backups/{id}/restore", post(restore_backup))
        .route("/v1/backups/{id}/verify", post(verify_backup))
        .route("/v1/backup-jobs/{id}", get(get_job))
}

async fn list_targets(State(s): State<Shared>) -> ApiResult<Json<Vec<TargetRecord>>> {
    Ok(Json(s.backup_targets().await?))
}

async fn add_target(State(s): State<Shared>, Body(req): Body<AddTarget>) -> ApiResult<(StatusCode, Json<TargetRecord>)> {
    Ok((StatusCode::CREATED, Json(s.add_backup_target(req).await?)))
}

async fn get_target(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<TargetRecord>> {
    Ok(Json(s.backup_target(&name).await?))
}

async fn remove_target(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.remove_backup_target(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct BackupFilter {
    volume: Option<String>,
    target: Option<String>,
}

async fn list_backups(State(s): State<Shared>, Query(f): Query<BackupFilter>) -> ApiResult<Json<Vec<BackupRecord>>> {
    Ok(Json(s.list_backups(f.volume.as_deref(), f.target.as_deref()).await?))
}

fn job_status(j: &JobView) -> StatusCode {
    if j.state == "running" { StatusCode::ACCEPTED } else { StatusCode::OK }
}

async fn create_backup(State(s): State<Shared>, Body(req): Body<CreateBackup>) -> ApiResult<(StatusCode, Json<JobView>)> {
    let j = backups::start_backup(s, req).await?;
    Ok((job_status(&j), Json(j)))
}

async fn get_backup(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<BackupRecord>> {
    Ok(Json(s.backup(&id).await?))
}

async fn delete_backup(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.delete_backup(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restore_backup(State(s): State<Shared>, Path(id): Path<String>, Body(req): Body<RestoreBackup>) -> ApiResult<(StatusCode, Json<JobView>)> {
    let j = backups::start_restore(s, id, req).await?;
    Ok((job_status(&j), Json(j)))
}

#[derive(Deserialize, Default)]
struct VerifyRequest {
    #[serde(default)]
    wait: bool,
}

async fn verify_backup(State(s): State<Shared>, Path(id): Path<String>, Body(req): Body<Option<VerifyRequest>>) -> ApiResult<(StatusCode, Json<JobView>)> {
    let j = backups::start_verify(s, id, req.unwrap_or_default().wait).await?;
    Ok((job_status(&j), Json(j)))
}

async fn get_job(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    Ok(Json(backups::job(&s, &id).await?))
}
