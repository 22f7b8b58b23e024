//! The session with Cinder: a token (noauth, fixed, or from Keystone v3 and renewed before it
//! expires or when Cinder answers 401), the project endpoint, and the negotiated microversion.
//! Cached per driver instance; an instance can always rebuild it from its settings.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use elara_driver_sdk::http::Client;
use elara_driver_sdk::prelude::*;
use elara_driver_sdk::{debug, info};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::{MAX_MICROVERSION, Microversion};
use crate::settings::{Auth, CinderSettings, ProjectScope, endpoint_needs_project, project_endpoint, version_url};

/// A Keystone token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// What every request needs.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    /// The project's block-storage endpoint, without a trailing `/`.
    pub base: String,
    pub microversion: Microversion,
    /// When a Keystone token expires (`None`: never, as far as the driver knows).
    expires_at: Option<OffsetDateTime>,
}

static SESSION: Mutex<Option<Arc<Session>>> = Mutex::new(None);

/// Drop the cached session (new settings, or a token Cinder refused).
pub fn forget() {
    *SESSION.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// Whether a refused token can be renewed (Keystone auth).
pub fn renewable(s: &CinderSettings) -> bool {
    matches!(s.auth, Auth::Password { .. } | Auth::ApplicationCredential { .. })
}

/// The cached session, or a new one (log in, negotiate the microversion).
pub fn session(s: &CinderSettings) -> DriverResult<Arc<Session>> {
    if let Some(cur) = SESSION.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        let fresh = cur
            .expires_at
            .is_none_or(|t| OffsetDateTime::now_utc() + RENEW_BEFORE < t);
        if fresh {
            return Ok(cur);
        }
        debug!("the Keystone token expires at {:?}: renewing", cur.expires_at);
    }
    let (token, project_id, expires_at) = match &s.auth {
        Auth::NoAuth { user, project_id } => (format!("{user}:{project_id}"), Some(project_id.clone()), None),
        Auth::Token { token, project_id } => (token.clone(), project_id.clone(), None),
        Auth::Password { .. } | Auth::ApplicationCredential { .. } => {
            let t = keystone_token(&s.auth)?;
            (t.token, Some(t.project_id), t.expires_at)
        }
    };
    let base = if endpoint_needs_project(&s.endpoint) {
        let project_id = project_id.ok_or_else(|| {
            DriverError::invalid(
                "project_id",
                "the endpoint ends in /v3, so the project id is needed to complete it",
            )
        })?;
        project_endpoint(&s.endpoint, &project_id)
    } else {
        s.endpoint.clone()
    };
    let microversion = negotiate(&s.endpoint, &token)?;
    let session = Arc::new(Session {
        token,
        base,
        microversion,
        expires_at,
    });
    *SESSION.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
    Ok(session)
}

/// The highest microversion both sides speak: Cinder's from its v3 version document, capped at
/// [`MAX_MICROVERSION`]. The token goes along: with `noauth`, Cinder answers an unauthenticated
/// `GET /v3/` with an empty 204 instead of the document.
fn negotiate(endpoint: &str, token: &str) -> DriverResult<Microversion> {
    let url = version_url(endpoint);
    let resp = Client::new()
        .get(&url)
        .header("accept", "application/json")
        .header("x-auth-token", token)
        .send()
        .map_err(DriverError::from)?;
    let doc: Value = resp
        .error_for_status()
        .map_err(|e| DriverError::unavailable(format!("reading Cinder's API versions at {url}: {e}")))?
        .json()
        .map_err(|e| DriverError::backend(format!("Cinder's API versions at {url}: {e}")))?;
    // `{"versions": [...]}` at the root, `{"version": {...}}` or a one-entry list at /v3/.
    let entries: Vec<&Value> = match (doc.get("versions"), doc.get("version")) {
        (Some(Value::Array(list)), _) => list.iter().collect(),
        (_, Some(v)) => vec![v],
        _ => vec![],
    };
    let max = entries
        .iter()
        .filter(|v| {
            v.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with("v3"))
        })
        .filter_map(|v| v.get("version").and_then(Value::as_str).and_then(Microversion::parse))
        .max()
        .ok_or_else(|| {
            DriverError::backend(format!(
                "{url} lists no v3 API with microversions: is it Cinder's endpoint?"
            ))
        })?;
    let chosen = max.min(MAX_MICROVERSION);
    info!("Cinder at {url} speaks up to {max}; using {chosen}");
    Ok(chosen)
}

/// A token from Keystone.
struct KeystoneToken {
    token: String,
    project_id: String,
    expires_at: Option<OffsetDateTime>,
}

/// `POST {auth_url}/auth/tokens` with a password or an application credential.
fn keystone_token(auth: &Auth) -> DriverResult<KeystoneToken> {
    let (auth_url, identity, scope, field) = match auth {
        Auth::Password {
            auth_url,
            username,
            password,
            user_domain_name,
            project,
        } => {
            let identity = json!({
                "methods": ["password"],
                "password": { "user": { "name": username, "domain": { "name": user_domain_name }, "password": password } }
            });
            let scope = match project {
                ProjectScope::Id(id) => json!({ "project": { "id": id } }),
                ProjectScope::Name { name, domain_name } => {
                    json!({ "project": { "name": name, "domain": { "name": domain_name } } })
                }
            };
            (auth_url, identity, Some(scope), "password")
        }
        Auth::ApplicationCredential { auth_url, id, secret } => {
            let identity = json!({ "methods": ["application_credential"], "application_credential": { "id": id, "secret": secret } });
            (auth_url, identity, None, "application_credential_secret")
        }
        _ => unreachable!("only Keystone modes log in"),
    };
    let mut body = json!({ "auth": { "identity": identity } });
    if let Some(scope) = scope {
        body["auth"]["scope"] = scope;
    }
    let base = auth_url.trim_end_matches('/');
    let url = if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    };
    let resp = crate::api::with_json(Client::new().post(&url), &body)
        .send()
        .map_err(DriverError::from)?;
    match resp.status {
        201 | 200 => {}
        401 => {
            return Err(DriverError::invalid(
                field,
                format!("Keystone at {url} refused the credentials: {}", resp.text()),
            ));
        }
        s => {
            return Err(DriverError::backend(format!(
                "Keystone at {url} answered HTTP {s}: {}",
                resp.text()
            )));
        }
    }
    let token = resp
        .header("x-subject-token")
        .ok_or_else(|| DriverError::backend(format!("Keystone at {url} issued no X-Subject-Token")))?
        .to_string();
    let doc: Value = resp
        .json()
        .map_err(|e| DriverError::backend(format!("Keystone's token at {url}: {e}")))?;
    let project_id = doc
        .pointer("/token/project/id")
        .and_then(Value::as_str)
        .ok_or_else(|| DriverError::backend("the Keystone token is not scoped to a project"))?
        .to_string();
    let expires_at = doc
        .pointer("/token/expires_at")
        .and_then(Value::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    info!("Keystone token for project {project_id}, expires {expires_at:?}");
    Ok(KeystoneToken {
        token,
        project_id,
        expires_at,
    })
}
