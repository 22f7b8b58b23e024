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

use crate::api::rest::Body;
use crate::backup::progress::ProgressView;
use crate::backup::records::{BackupRecord, BadBlock, TargetLocation, TargetRecord, VerifyReport};
use crate::error::{ApiResult, ErrorBody};
use crate::ops::Shared;
use crate::ops::backups::{self, AddTarget, CreateBackup, JobView, RestoreBackup};

/// The backup endpoints' part of the OpenAPI document (merged into `/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list_targets,
        add_target,
        get_target,
        remove_target,
        list_backups,
        create_backup,
        get_backup,
        delete_backup,
        restore_backup,
        verify_backup,
        get_job
    ),
    components(schemas(
        TargetRecord,
        TargetLocation,
        AddTarget,
        BackupRecord,
        CreateBackup,
        RestoreBackup,
        JobView,
        ProgressView,
        VerifyReport,
        BadBlock,
        ErrorBody
    ))
)]
pub struct BackupApi;

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

#[utoipa::path(get, path = "/v1/backup-targets", responses((status = 200, body = Vec<TargetRecord>)))]
async fn list_targets(State(s): State<Shared>) -> ApiResult<Json<Vec<TargetRecord>>> {
    Ok(Json(s.backup_targets().await?))
}

#[utoipa::path(post, path = "/v1/backup-targets", request_body = AddTarget, responses((status = 201, body = TargetRecord), (status = 400, body = ErrorBody)))]
async fn add_target(
    State(s): State<Shared>,
    Body(req): Body<AddTarget>,
) -> ApiResult<(StatusCode, Json<TargetRecord>)> {
    Ok((StatusCode::CREATED, Json(s.add_backup_target(req).await?)))
}

#[utoipa::path(get, path = "/v1/backup-targets/{name}", responses((status = 200, body = TargetRecord), (status = 404, body = ErrorBody)))]
async fn get_target(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<TargetRecord>> {
    Ok(Json(s.backup_target(&name).await?))
}

#[utoipa::path(delete, path = "/v1/backup-targets/{name}", responses((status = 204), (status = 409, body = ErrorBody)))]
async fn remove_target(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.remove_backup_target(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct BackupFilter {
    volume: Option<String>,
    target: Option<String>,
}

#[utoipa::path(get, path = "/v1/backups", responses((status = 200, body = Vec<BackupRecord>)))]
async fn list_backups(State(s): State<Shared>, Query(f): Query<BackupFilter>) -> ApiResult<Json<Vec<BackupRecord>>> {
    Ok(Json(s.list_backups(f.volume.as_deref(), f.target.as_deref()).await?))
}

fn job_status(j: &JobView) -> StatusCode {
    if j.state == "running" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    }
}

/// Start a backup: 202 with the job to poll (`GET /v1/backup-jobs/{id}`), or 200 when `wait` and done.
#[utoipa::path(post, path = "/v1/backups", request_body = CreateBackup, responses((status = 202, body = JobView), (status = 200, body = JobView), (status = 400, body = ErrorBody)))]
async fn create_backup(
    State(s): State<Shared>,
    Body(req): Body<CreateBackup>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let j = backups::start_backup(s, req).await?;
    Ok((job_status(&j), Json(j)))
}

#[utoipa::path(get, path = "/v1/backups/{id}", responses((status = 200, body = BackupRecord), (status = 404, body = ErrorBody)))]
async fn get_backup(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<BackupRecord>> {
    Ok(Json(s.backup(&id).await?))
}

#[utoipa::path(delete, path = "/v1/backups/{id}", responses((status = 204), (status = 409, body = ErrorBody)))]
async fn delete_backup(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.delete_backup(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/backups/{id}/restore", request_body = RestoreBackup, responses((status = 202, body = JobView), (status = 200, body = JobView)))]
async fn restore_backup(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Body(req): Body<RestoreBackup>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let j = backups::start_restore(s, id, req).await?;
    Ok((job_status(&j), Json(j)))
}

#[derive(Deserialize, Default)]
struct VerifyRequest {
    #[serde(default)]
    wait: bool,
}

#[utoipa::path(post, path = "/v1/backups/{id}/verify", responses((status = 202, body = JobView), (status = 200, body = JobView)))]
async fn verify_backup(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Body(req): Body<Option<VerifyRequest>>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let j = backups::start_verify(s, id, req.unwrap_or_default().wait).await?;
    Ok((job_status(&j), Json(j)))
}

/// A job's phase, bytes, blocks, rate and ETA; its result once done.
#[utoipa::path(get, path = "/v1/backup-jobs/{id}", responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
async fn get_job(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    Ok(Json(backups::job(&s, &id).await?))
}
