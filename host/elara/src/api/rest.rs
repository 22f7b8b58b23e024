//! The REST API (`/v1/...`) and its OpenAPI document (`/openapi.json`). Handlers only parse and
//! hand over to the operations layer.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::*;
use crate::ops::Shared;
use crate::ops::backends::{AddBackend, InstallDriver, UpdateBackend};
use crate::ops::placement::PlaceRequest;
use crate::ops::snapshots::CreateSnapshot;
use crate::ops::types::CreateType;
use crate::ops::volumes::{CreateVolume, VolumeView};

#[derive(OpenApi)]
#[openapi(
    info(title = "Elara", description = "Elara storage daemon REST API"),
    paths(
        health,
        info,
        list_volumes,
        create_volume,
        get_volume,
        delete_volume,
        volume_stats,
        mount_volume,
        unmount_volume,
        resize_volume,
        list_snapshots,
        create_snapshot,
        get_snapshot,
        delete_snapshot,
        restore_snapshot,
        list_drivers,
        install_driver,
        get_driver,
        remove_driver,
        list_backends,
        add_backend,
        get_backend,
        update_backend,
        remove_backend,
        list_nodes,
        register_node,
        get_node,
        unregister_node,
        rename_node,
        list_pools,
        refresh_pools,
        list_ops,
        list_types,
        create_type,
        get_type,
        delete_type,
        explain_placement
    ),
    components(schemas(
        ErrorBody,
        ApiError,
        VolumeView,
        VolumeRecord,
        SnapshotRecord,
        DriverRecord,
        BackendRecord,
        NodeView,
        NodeRecord,
        PoolRecord,
        OpRecord,
        CreateVolume,
        CreateSnapshot,
        AddBackend,
        UpdateBackend,
        Info,
        MountRequest,
        MountResponse,
        ResizeRequest,
        RestoreRequest,
        RenameRequest,
        RegisterNode,
        VolumeTypeRecord,
        CreateType,
        ExplainRequest
    ))
)]
pub struct ApiDoc;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route(
            "/openapi.json",
            get(|| async { Json(ApiDoc::openapi().merge_from(super::backups::BackupApi::openapi())) }),
        )
        .route("/v1/health", get(health))
        .route("/v1/ready", get(health))
        .route("/v1/info", get(info))
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/volumes/{name}", get(get_volume).delete(delete_volume))
        .route("/v1/volumes/{name}/stats", get(volume_stats))
        .route("/v1/volumes/{name}/mount", post(mount_volume))
        .route("/v1/volumes/{name}/unmount", post(unmount_volume))
        .route("/v1/volumes/{name}/resize", post(resize_volume))
        .route("/v1/snapshots", get(list_snapshots).post(create_snapshot))
        .route("/v1/snapshots/{name}", get(get_snapshot).delete(delete_snapshot))
        .route("/v1/snapshots/{name}/restore", post(restore_snapshot))
        // Real components (debug builds, interpreted languages) are far over the 2 MB default.
        .route(
            "/v1/drivers",
            get(list_drivers)
                .post(install_driver)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_DRIVER_BYTES)),
        )
        .route("/v1/drivers/{name}", get(get_driver).delete(remove_driver))
        .route("/v1/backends", get(list_backends).post(add_backend))
        .route(
            "/v1/backends/{name}",
            get(get_backend).patch(update_backend).delete(remove_backend),
        )
        .route("/v1/nodes", get(list_nodes).post(register_node))
        .route("/v1/nodes/{name}", get(get_node).delete(unregister_node))
        .route("/v1/nodes/{name}/rename", post(rename_node))
        .route("/v1/pools", get(list_pools))
        .route("/v1/pools/refresh", post(refresh_pools))
        .route("/v1/ops", get(list_ops))
        .route("/v1/types", get(list_types).post(create_type))
        .route("/v1/types/{name}", get(get_type).delete(delete_type))
        .route("/v1/scheduler/explain", post(explain_placement))
        .merge(super::backups::routes())
        .fallback(|| async { ApiError::new(404, "not-found", "no such endpoint") })
        .with_state(state)
}

/// JSON bodies that fail to parse are reported naming the field, like every other bad input.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::invalid("body", e.to_string()))?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de).map(Body).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "body".to_string() } else { path };
            ApiError::invalid(&field, e.inner().to_string())
        })
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub ready: bool,
    /// Volumes attached on this node that no longer work here (their helper process is gone),
    /// and why. The daemon still serves; the next mount of each brings it up anew.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_attachments: Vec<FailedAttachment>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct FailedAttachment {
    pub volume: String,
    pub error: String,
}

/// Readiness: the store answers. Also lists this node's failed attachments.
#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
async fn health(State(s): State<Shared>) -> ApiResult<Json<Health>> {
    s.store.get(&keys::node(s.node())).await?;
    let failed_attachments = s
        .failed_attachments()
        .await?
        .into_iter()
        .map(|(volume, error)| FailedAttachment { volume, error })
        .collect();
    Ok(Json(Health {
        ready: true,
        failed_attachments,
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Info {
    pub version: String,
    pub wit_version: String,
    pub node: String,
    pub store: String,
    pub store_location: String,
    #[schema(value_type = String)]
    pub data_dir: PathBuf,
    pub drivers: Vec<DriverRecord>,
    pub backends: Vec<BackendRecord>,
    pub pools: Vec<PoolRecord>,
    pub volumes: usize,
    pub snapshots: usize,
    /// How this node brings volumes up (loop, iSCSI, NFS, S3), and why where it cannot.
    pub data_paths: Vec<crate::attach::DataPath>,
}

#[utoipa::path(get, path = "/v1/info", responses((status = 200, body = Info)))]
async fn info(State(s): State<Shared>) -> ApiResult<Json<Info>> {
    Ok(Json(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        wit_version: elara_runtime::WIT_VERSION.into(),
        node: s.node().into(),
        store: s.store.kind().into(),
        store_location: s.store.location(),
        data_dir: s.cfg.data_dir.clone(),
        drivers: s.list_drivers().await?,
        backends: s.list_backends().await?,
        pools: s.list_pools().await?,
        volumes: s.store.list_keys(&keys::volumes()).await?.len(),
        snapshots: s.store.list_keys(&keys::snapshots()).await?.len(),
        data_paths: s.attacher.data_paths().to_vec(),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct VolumeFilter {
    pub backend: Option<String>,
    /// `key=value`, comma separated.
    pub label: Option<String>,
}

#[utoipa::path(get, path = "/v1/volumes", params(VolumeFilter), responses((status = 200, body = Vec<VolumeView>)))]
async fn list_volumes(State(s): State<Shared>, Query(f): Query<VolumeFilter>) -> ApiResult<Json<Vec<VolumeView>>> {
    let labels = f
        .label
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|l| !l.is_empty())
        .map(|l| crate::validate::parse_pair("label", l))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(s.list_volumes(f.backend.as_deref(), &labels).await?))
}

#[utoipa::path(post, path = "/v1/volumes", request_body = CreateVolume,
    responses((status = 201, body = VolumeRecord), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_volume(
    State(s): State<Shared>,
    Body(req): Body<CreateVolume>,
) -> ApiResult<(StatusCode, Json<VolumeRecord>)> {
    Ok((StatusCode::CREATED, Json(s.create_volume(req).await?)))
}

#[utoipa::path(get, path = "/v1/volumes/{name}", responses((status = 200, body = VolumeView), (status = 404, body = ErrorBody)))]
async fn get_volume(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<VolumeView>> {
    Ok(Json(s.volume(&name).await?))
}

#[utoipa::path(delete, path = "/v1/volumes/{name}", responses((status = 204), (status = 409, body = ErrorBody)))]
async fn delete_volume(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.delete_volume(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/volumes/{name}/stats", responses((status = 200, body = Object)))]
async fn volume_stats(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<Json<elara_runtime::VolumeStats>> {
    Ok(Json(s.volume_stats(&name).await?))
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
pub struct MountRequest {
    /// Also bind-mount the volume here.
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
    /// Who holds the mount (default `rest`); each holder needs its own unmount.
    pub holder: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct MountResponse {
    #[schema(value_type = String)]
    pub mountpoint: PathBuf,
}

#[utoipa::path(post, path = "/v1/volumes/{name}/mount", request_body = MountRequest, responses((status = 200, body = MountResponse)))]
async fn mount_volume(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Body(req): Body<MountRequest>,
) -> ApiResult<Json<MountResponse>> {
    let holder = holder_of(req.holder.as_deref())?;
    let mountpoint = s.mount_volume(&name, &holder, req.path).await?;
    Ok(Json(MountResponse { mountpoint }))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/unmount", request_body = MountRequest, responses((status = 204)))]
async fn unmount_volume(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Body(req): Body<MountRequest>,
) -> ApiResult<StatusCode> {
    let holder = holder_of(req.holder.as_deref())?;
    s.unmount_volume(&name, &holder).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn holder_of(h: Option<&str>) -> ApiResult<String> {
    match h {
        None => Ok("rest".into()),
        Some(h) => {
            crate::validate::check_name("holder", h)?;
            Ok(format!("rest:{h}"))
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ResizeRequest {
    /// The new size, e.g. `20G` (grow only).
    pub size: String,
}

#[utoipa::path(post, path = "/v1/volumes/{name}/resize", request_body = ResizeRequest, responses((status = 200, body = VolumeRecord)))]
async fn resize_volume(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Body(req): Body<ResizeRequest>,
) -> ApiResult<Json<VolumeRecord>> {
    Ok(Json(s.resize_volume(&name, &req.size).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct SnapshotFilter {
    pub volume: Option<String>,
}

#[utoipa::path(get, path = "/v1/snapshots", params(SnapshotFilter), responses((status = 200, body = Vec<SnapshotRecord>)))]
async fn list_snapshots(
    State(s): State<Shared>,
    Query(f): Query<SnapshotFilter>,
) -> ApiResult<Json<Vec<SnapshotRecord>>> {
    Ok(Json(s.list_snapshots(f.volume.as_deref()).await?))
}

#[utoipa::path(post, path = "/v1/snapshots", request_body = CreateSnapshot, responses((status = 201, body = SnapshotRecord)))]
async fn create_snapshot(
    State(s): State<Shared>,
    Body(req): Body<CreateSnapshot>,
) -> ApiResult<(StatusCode, Json<SnapshotRecord>)> {
    Ok((StatusCode::CREATED, Json(s.create_snapshot(req).await?)))
}

#[utoipa::path(get, path = "/v1/snapshots/{name}", responses((status = 200, body = SnapshotRecord)))]
async fn get_snapshot(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<SnapshotRecord>> {
    Ok(Json(s.snapshot(&name).await?))
}

#[utoipa::path(delete, path = "/v1/snapshots/{name}", responses((status = 204)))]
async fn delete_snapshot(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.delete_snapshot(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RestoreRequest {
    /// The new volume's name.
    pub volume: String,
    pub size: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[utoipa::path(post, path = "/v1/snapshots/{name}/restore", request_body = RestoreRequest, responses((status = 201, body = VolumeRecord)))]
async fn restore_snapshot(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Body(req): Body<RestoreRequest>,
) -> ApiResult<(StatusCode, Json<VolumeRecord>)> {
    let create = CreateVolume {
        name: req.volume,
        size: req.size,
        labels: req.labels,
        snapshot: Some(name),
        ..Default::default()
    };
    Ok((StatusCode::CREATED, Json(s.create_volume(create).await?)))
}

#[utoipa::path(get, path = "/v1/drivers", responses((status = 200, body = Vec<DriverRecord>)))]
async fn list_drivers(State(s): State<Shared>) -> ApiResult<Json<Vec<DriverRecord>>> {
    Ok(Json(s.list_drivers().await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct InstallParams {
    pub name: Option<String>,
    #[serde(default)]
    pub upgrade: bool,
}

/// The largest driver component `POST /v1/drivers` takes.
pub const MAX_DRIVER_BYTES: usize = 256 << 20;

/// Install a driver: the body is the `.wasm` component.
#[utoipa::path(post, path = "/v1/drivers", params(InstallParams), request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = DriverRecord), (status = 400, body = ErrorBody)))]
async fn install_driver(
    State(s): State<Shared>,
    Query(p): Query<InstallParams>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<DriverRecord>)> {
    let req = InstallDriver {
        name: p.name,
        bytes: body.to_vec(),
        upgrade: p.upgrade,
        builtin: false,
    };
    Ok((StatusCode::CREATED, Json(s.install_driver(req).await?)))
}

#[utoipa::path(get, path = "/v1/drivers/{name}", responses((status = 200, body = DriverRecord)))]
async fn get_driver(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<DriverRecord>> {
    Ok(Json(s.driver_record(&name).await?))
}

#[utoipa::path(delete, path = "/v1/drivers/{name}", responses((status = 204), (status = 409, body = ErrorBody)))]
async fn remove_driver(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.remove_driver(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/backends", responses((status = 200, body = Vec<BackendRecord>)))]
async fn list_backends(State(s): State<Shared>) -> ApiResult<Json<Vec<BackendRecord>>> {
    Ok(Json(s.list_backends().await?))
}

#[utoipa::path(post, path = "/v1/backends", request_body = AddBackend, responses((status = 201, body = BackendRecord)))]
async fn add_backend(
    State(s): State<Shared>,
    Body(req): Body<AddBackend>,
) -> ApiResult<(StatusCode, Json<BackendRecord>)> {
    let name = req.name.clone();
    s.add_backend(req).await?;
    Ok((StatusCode::CREATED, Json(s.backend_view(&name).await?)))
}

#[utoipa::path(get, path = "/v1/backends/{name}", responses((status = 200, body = BackendRecord)))]
async fn get_backend(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<BackendRecord>> {
    Ok(Json(s.backend_view(&name).await?))
}

#[utoipa::path(patch, path = "/v1/backends/{name}", request_body = UpdateBackend, responses((status = 200, body = BackendRecord)))]
async fn update_backend(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Body(req): Body<UpdateBackend>,
) -> ApiResult<Json<BackendRecord>> {
    s.update_backend(&name, req).await?;
    Ok(Json(s.backend_view(&name).await?))
}

#[utoipa::path(delete, path = "/v1/backends/{name}", responses((status = 204), (status = 409, body = ErrorBody)))]
async fn remove_backend(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.remove_backend(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = Vec<NodeView>)))]
async fn list_nodes(State(s): State<Shared>) -> ApiResult<Json<Vec<NodeView>>> {
    Ok(Json(s.list_nodes().await?))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegisterNode {
    pub name: String,
}

#[utoipa::path(post, path = "/v1/nodes", request_body = RegisterNode, responses((status = 201, body = NodeView)))]
async fn register_node(
    State(s): State<Shared>,
    Body(req): Body<RegisterNode>,
) -> ApiResult<(StatusCode, Json<NodeView>)> {
    Ok((StatusCode::CREATED, Json(s.register_node(&req.name).await?)))
}

/// `self` names the node that serves the request.
#[utoipa::path(get, path = "/v1/nodes/{name}", responses((status = 200, body = NodeView)))]
async fn get_node(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<NodeView>> {
    let name = if name == "self" { s.node().to_string() } else { name };
    Ok(Json(s.node_view(&name).await?))
}

#[utoipa::path(delete, path = "/v1/nodes/{name}", responses((status = 204)))]
async fn unregister_node(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.unregister_node(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RenameRequest {
    pub new_name: String,
}

#[utoipa::path(post, path = "/v1/nodes/{name}/rename", request_body = RenameRequest, responses((status = 200, body = NodeView)))]
async fn rename_node(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Body(req): Body<RenameRequest>,
) -> ApiResult<Json<NodeView>> {
    Ok(Json(s.rename_node(&name, &req.new_name).await?))
}

#[utoipa::path(get, path = "/v1/pools", responses((status = 200, body = Vec<PoolRecord>)))]
async fn list_pools(State(s): State<Shared>) -> ApiResult<Json<Vec<PoolRecord>>> {
    Ok(Json(s.list_pools().await?))
}

#[utoipa::path(post, path = "/v1/pools/refresh", responses((status = 200, body = Vec<PoolRecord>)))]
async fn refresh_pools(State(s): State<Shared>) -> ApiResult<Json<Vec<PoolRecord>>> {
    s.refresh_all_pools().await;
    Ok(Json(s.list_pools().await?))
}

#[utoipa::path(get, path = "/v1/ops", responses((status = 200, body = Vec<OpRecord>)))]
async fn list_ops(State(s): State<Shared>) -> ApiResult<Json<Vec<OpRecord>>> {
    use elara_store::StoreExt;
    Ok(Json(
        s.store
            .list_json::<OpRecord>(&keys::ops())
            .await?
            .into_iter()
            .map(|r| r.value)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/types", responses((status = 200, body = Vec<VolumeTypeRecord>)))]
async fn list_types(State(s): State<Shared>) -> ApiResult<Json<Vec<VolumeTypeRecord>>> {
    Ok(Json(s.list_types().await?))
}

#[utoipa::path(post, path = "/v1/types", request_body = CreateType, responses((status = 201, body = VolumeTypeRecord)))]
async fn create_type(
    State(s): State<Shared>,
    Body(req): Body<CreateType>,
) -> ApiResult<(StatusCode, Json<VolumeTypeRecord>)> {
    Ok((StatusCode::CREATED, Json(s.create_type(req).await?)))
}

#[utoipa::path(get, path = "/v1/types/{name}", responses((status = 200, body = VolumeTypeRecord)))]
async fn get_type(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<VolumeTypeRecord>> {
    Ok(Json(s.get_type(&name).await?))
}

#[utoipa::path(delete, path = "/v1/types/{name}", responses((status = 204)))]
async fn delete_type(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.delete_type(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A placement question: the same fields as a volume create.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// e.g. `10G` (default 1G).
    pub size: Option<String>,
    pub backend: Option<String>,
    pub driver: Option<String>,
    pub pool: Option<String>,
    #[serde(rename = "type")]
    pub volume_type: Option<String>,
    #[serde(default)]
    pub specs: BTreeMap<String, String>,
}

/// `{"chosen": pool|null, "ranked": [{"pool","weight"}], "rejected": [{"pool","filter","reason"}]}`
#[utoipa::path(post, path = "/v1/scheduler/explain", request_body = ExplainRequest, responses((status = 200, body = Object)))]
async fn explain_placement(
    State(s): State<Shared>,
    Body(req): Body<ExplainRequest>,
) -> ApiResult<Json<elara_scheduler::Explanation>> {
    let size_bytes = match &req.size {
        Some(size) => crate::validate::parse_size("size", size)?,
        None => 1 << 30,
    };
    let place = PlaceRequest {
        size_bytes,
        backend: req.backend,
        driver: req.driver,
        pool: req.pool,
        volume_type: req.volume_type,
        specs: req.specs,
    };
    Ok(Json(s.explain_placement(&place).await?))
}
