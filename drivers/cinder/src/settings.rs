//! The backend's configuration: the keys `info()` declares and their parsing in `configure`.
//!
//! Every key is validated without I/O; a bad value is `invalid` naming the key. Keys that only
//! matter for one auth mode are refused with the others, so a typo'd mode does not pass silently.

use elara_driver_sdk::prelude::*;

/// How the driver authenticates to Cinder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Cinder with `auth_strategy = noauth`: the token `<user>:<project_id>` (an admin of it).
    NoAuth { user: String, project_id: String },
    /// A token issued elsewhere (e.g. `openstack token issue`), sent as is until it is refused.
    Token { token: String, project_id: Option<String> },
    /// Keystone v3 password authentication, scoped to a project.
    Password {
        auth_url: String,
        username: String,
        password: String,
        user_domain_name: String,
        project: ProjectScope,
    },
    /// A Keystone v3 application credential (scoped by the credential itself).
    ApplicationCredential {
        auth_url: String,
        id: String,
        secret: String,
    },
}

/// The project a Keystone password token is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectScope {
    Id(String),
    Name { name: String, domain_name: String },
}

/// Where `pools()` takes the pools from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSource {
    /// Cinder's pools (`scheduler-stats/get_pools`, admin); without the right, one pool per type.
    Auto,
    /// Cinder's pools only; an error without admin rights.
    Cinder,
    /// One pool per volume type, capacity unknown: Cinder's scheduler places within the type.
    Types,
}

/// Everything `configure` accepted.
#[derive(Debug, Clone)]
pub struct CinderSettings {
    /// The block-storage endpoint as configured (may still need the project id appended).
    pub endpoint: String,
    pub auth: Auth,
    pub volume_type: Option<String>,
    pub availability_zone: Option<String>,
    pub pools: PoolSource,
    /// Value of the `elara-tag` metadata on every volume this backend makes.
    pub tag: String,
    /// How long a call waits for Cinder to leave a transitional state (`creating`, ...).
    pub timeout_secs: u64,
}

/// The configuration keys, shared by `info` and `configure`.
pub fn config_keys() -> Vec<ConfigKey> {
    vec![
        ConfigKey::required(
            "endpoint",
            "Cinder block-storage v3 URL, e.g. http://cinder:8776/v3/<project_id>; when it ends in /v3 the \
             project id (from project_id or the Keystone token) is appended",
        ),
        ConfigKey::optional(
            "auth",
            "noauth (Cinder's auth_strategy=noauth, tests), token (a fixed token), password (Keystone v3) or \
             application_credential (Keystone v3)",
            Some("password"),
        ),
        ConfigKey::optional(
            "project_id",
            "the project: required with auth=noauth; with auth=password it scopes the token (else project_name)",
            None,
        ),
        ConfigKey::optional(
            "noauth_user",
            "the user part of the noauth token <user>:<project_id>",
            Some("admin"),
        ),
        ConfigKey::optional("token", "auth=token: the X-Auth-Token to send", None).secret(),
        ConfigKey::optional(
            "auth_url",
            "Keystone v3 URL, e.g. http://keystone:5000/v3 (password, application_credential)",
            None,
        ),
        ConfigKey::optional("username", "auth=password: the Keystone user name", None),
        ConfigKey::optional("password", "auth=password: the user's password", None).secret(),
        ConfigKey::optional("user_domain_name", "auth=password: the user's domain", Some("Default")),
        ConfigKey::optional(
            "project_name",
            "auth=password: the project to scope to, by name (or give project_id)",
            None,
        ),
        ConfigKey::optional(
            "project_domain_name",
            "auth=password: the domain of project_name",
            Some("Default"),
        ),
        ConfigKey::optional(
            "application_credential_id",
            "auth=application_credential: the credential's id",
            None,
        ),
        ConfigKey::optional(
            "application_credential_secret",
            "auth=application_credential: the credential's secret",
            None,
        )
        .secret(),
        ConfigKey::optional(
            "volume_type",
            "Cinder volume type of new volumes; with Cinder's pools only the pools of its volume_backend_name are \
             reported",
            None,
        ),
        ConfigKey::optional("availability_zone", "Cinder availability zone of new volumes", None),
        ConfigKey::optional(
            "pools",
            "where pools come from: auto (Cinder's pools if the credentials may list them, else one pool per volume \
             type), cinder, or types",
            Some("auto"),
        ),
        ConfigKey::optional(
            "tag",
            "value of the elara-tag metadata on this backend's volumes; list-volumes shows only volumes with it, so \
             several Elara clusters can share one project",
            Some("elara"),
        ),
        ConfigKey::optional(
            "timeout_secs",
            "how long a call waits for Cinder to finish a create, extend, snapshot, attach or delete",
            Some("120"),
        ),
    ]
}

/// Keys that belong to one auth mode only: (key, modes that use it).
const MODE_KEYS: &[(&str, &[&str])] = &[
    ("noauth_user", &["noauth"]),
    ("token", &["token"]),
    ("auth_url", &["password", "application_credential"]),
    ("username", &["password"]),
    ("password", &["password"]),
    ("user_domain_name", &["password"]),
    ("project_name", &["password"]),
    ("project_domain_name", &["password"]),
    ("application_credential_id", &["application_credential"]),
    ("application_credential_secret", &["application_credential"]),
];

/// Parse and check the configuration pairs.
pub fn parse(pairs: Vec<(String, String)>) -> DriverResult<CinderSettings> {
    // The keys the user gave (before defaults are applied), to refuse those of another auth mode.
    let given: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
    let cfg = Config::parse(pairs, &config_keys())?;
    let endpoint = cfg.required("endpoint")?.trim().trim_end_matches('/').to_string();
    check_url("endpoint", &endpoint)?;
    let mode = cfg.required("auth")?.trim().to_ascii_lowercase();
    for (key, modes) in MODE_KEYS {
        if given.iter().any(|g| g == key) && !modes.contains(&mode.as_str()) {
            return Err(DriverError::invalid(
                *key,
                format!(
                    "is not used with auth={mode} (it belongs to auth={})",
                    modes.join(" or auth=")
                ),
            ));
        }
    }
    let opt = |key: &str| -> Option<String> {
        cfg.get(key)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let need = |key: &str| -> DriverResult<String> {
        opt(key).ok_or_else(|| DriverError::invalid(key, format!("is required with auth={mode}")))
    };
    let auth = match mode.as_str() {
        "noauth" => {
            let project_id = need("project_id")?;
            let user = need("noauth_user")?;
            if user.contains(':') || project_id.contains(':') {
                let field = if user.contains(':') {
                    "noauth_user"
                } else {
                    "project_id"
                };
                return Err(DriverError::invalid(
                    field,
                    "must not contain `:` (the noauth token is <user>:<project_id>)",
                ));
            }
            Auth::NoAuth { user, project_id }
        }
        "token" => Auth::Token {
            token: need("token")?,
            project_id: opt("project_id"),
        },
        "password" => {
            let auth_url = need("auth_url")?;
            check_url("auth_url", &auth_url)?;
            let project = match (opt("project_id"), opt("project_name")) {
                (Some(_), Some(_)) => {
                    return Err(DriverError::invalid(
                        "project_name",
                        "give project_id or project_name, not both",
                    ));
                }
                (Some(id), None) => ProjectScope::Id(id),
                (None, Some(name)) => ProjectScope::Name {
                    name,
                    domain_name: need("project_domain_name")?,
                },
                (None, None) => {
                    return Err(DriverError::invalid(
                        "project_name",
                        "auth=password needs project_name or project_id",
                    ));
                }
            };
            Auth::Password {
                auth_url,
                username: need("username")?,
                password: need("password")?,
                user_domain_name: need("user_domain_name")?,
                project,
            }
        }
        "application_credential" => {
            if opt("project_id").is_some() {
                return Err(DriverError::invalid(
                    "project_id",
                    "is not used with auth=application_credential (the credential is scoped to its project)",
                ));
            }
            let auth_url = need("auth_url")?;
            check_url("auth_url", &auth_url)?;
            Auth::ApplicationCredential {
                auth_url,
                id: need("application_credential_id")?,
                secret: need("application_credential_secret")?,
            }
        }
        other => {
            return Err(DriverError::invalid(
                "auth",
                format!("{other:?} is not an auth mode: use noauth, token, password or application_credential"),
            ));
        }
    };
    if endpoint_needs_project(&endpoint) && matches!(auth, Auth::Token { project_id: None, .. }) {
        return Err(DriverError::invalid(
            "project_id",
            "is required with auth=token when the endpoint does not name the project (it ends in /v3)",
        ));
    }
    let pools = match cfg.required("pools")?.trim() {
        "auto" => PoolSource::Auto,
        "cinder" => PoolSource::Cinder,
        "types" => PoolSource::Types,
        other => {
            return Err(DriverError::invalid(
                "pools",
                format!("{other:?} is not one of auto, cinder, types"),
            ));
        }
    };
    let tag = cfg.required("tag")?.trim().to_string();
    if tag.len() > 255 {
        return Err(DriverError::invalid(
            "tag",
            "must be at most 255 characters (a Cinder metadata value)",
        ));
    }
    let timeout_secs = cfg.u64("timeout_secs")?.unwrap_or(120);
    if !(1..=3600).contains(&timeout_secs) {
        return Err(DriverError::invalid(
            "timeout_secs",
            format!("{timeout_secs} is not between 1 and 3600"),
        ));
    }
    Ok(CinderSettings {
        endpoint,
        auth,
        volume_type: opt("volume_type"),
        availability_zone: opt("availability_zone"),
        pools,
        tag,
        timeout_secs,
    })
}

/// An absolute http(s) URL.
fn check_url(key: &str, url: &str) -> DriverResult<()> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| DriverError::invalid(key, format!("{url:?} is not an http:// or https:// URL")))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(DriverError::invalid(key, format!("{url:?} has no host")));
    }
    Ok(())
}

/// Whether the endpoint ends in `/v3` (the project id is appended) or has a project placeholder.
pub fn endpoint_needs_project(endpoint: &str) -> bool {
    endpoint.ends_with("/v3") || endpoint.contains("%(project_id)s") || endpoint.contains("$(project_id)s")
}

/// The endpoint with the project id in place.
pub fn project_endpoint(endpoint: &str, project_id: &str) -> String {
    if endpoint.ends_with("/v3") {
        format!("{endpoint}/{project_id}")
    } else {
        endpoint
            .replace("%(project_id)s", project_id)
            .replace("$(project_id)s", project_id)
    }
}

/// The URL of the v3 version document (`.../v3/`), which carries the highest microversion.
pub fn version_url(endpoint: &str) -> String {
    match endpoint.find("/v3") {
        Some(i) => format!("{}/v3/", &endpoint[..i]),
        None => format!("{endpoint}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn field(r: DriverResult<CinderSettings>) -> String {
        match r {
            Err(DriverError::Invalid(f)) => f.field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn noauth() {
        let s = parse(pairs(&[
            ("endpoint", "http://127.0.0.1:8776/v3/"),
            ("auth", "noauth"),
            ("project_id", "p1"),
        ]))
        .unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:8776/v3");
        assert_eq!(
            s.auth,
            Auth::NoAuth {
                user: "admin".into(),
                project_id: "p1".into()
            }
        );
        assert_eq!(project_endpoint(&s.endpoint, "p1"), "http://127.0.0.1:8776/v3/p1");
        assert_eq!(version_url("http://h:8776/v3/p1"), "http://h:8776/v3/");
        assert_eq!(
            field(parse(pairs(&[("endpoint", "http://h/v3"), ("auth", "noauth")]))),
            "project_id"
        );
    }

    #[test]
    fn refuses_keys_of_other_modes_and_bad_values() {
        let base = [
            ("endpoint", "http://h:8776/v3"),
            ("auth", "noauth"),
            ("project_id", "p"),
        ];
        let mut p = pairs(&base);
        p.push(("password".into(), "x".into()));
        assert_eq!(field(parse(p)), "password");
        assert_eq!(
            field(parse(pairs(&[
                ("endpoint", "ftp://h"),
                ("auth", "noauth"),
                ("project_id", "p")
            ]))),
            "endpoint"
        );
        assert_eq!(
            field(parse(pairs(&[("endpoint", "http://h"), ("auth", "kerberos")]))),
            "auth"
        );
        let mut p = pairs(&base);
        p.push(("pools".into(), "some".into()));
        assert_eq!(field(parse(p)), "pools");
        assert_eq!(
            field(parse(pairs(&[
                ("endpoint", "http://h/v3"),
                ("auth", "password"),
                ("auth_url", "http://k:5000/v3")
            ]))),
            "project_name"
        );
    }

    #[test]
    fn password_scope() {
        let s = parse(pairs(&[
            ("endpoint", "http://h:8776/v3"),
            ("auth_url", "http://k:5000/v3"),
            ("username", "u"),
            ("password", "pw"),
            ("project_name", "demo"),
        ]))
        .unwrap();
        match s.auth {
            Auth::Password {
                project: ProjectScope::Name { name, domain_name },
                user_domain_name,
                ..
            } => {
                assert_eq!(
                    (name.as_str(), domain_name.as_str(), user_domain_name.as_str()),
                    ("demo", "Default", "Default")
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
