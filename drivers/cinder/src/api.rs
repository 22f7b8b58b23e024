//! A small client of the Cinder v3 API: authentication (see [`crate::auth`]), microversion
//! negotiation, Cinder's error bodies mapped to [`DriverError`], and bounded polling of objects
//! in transitional states.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use elara_driver_sdk::http::{Client, RequestBuilder, Response};
use elara_driver_sdk::prelude::*;
use elara_driver_sdk::{debug, info};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth;
use crate::settings::CinderSettings;

/// The newest microversion this driver was written and tested against (Cinder 29 answers 3.71).
pub const MAX_MICROVERSION: Microversion = Microversion(3, 71);
/// The attachments API (create with a connector, delete).
pub const MV_ATTACHMENTS: Microversion = Microversion(3, 27);
/// `os-complete` of an attachment (the volume becomes `in-use`).
pub const MV_ATTACHMENT_COMPLETE: Microversion = Microversion(3, 44);
/// User messages (`GET /messages`), where Cinder explains asynchronous failures.
pub const MV_MESSAGES: Microversion = Microversion(3, 3);

/// A Cinder API microversion, e.g. `3.54`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Microversion(pub u32, pub u32);

impl Microversion {
    /// Parse `3.71`.
    pub fn parse(s: &str) -> Option<Microversion> {
        let (major, minor) = s.trim().split_once('.')?;
        Some(Microversion(major.parse().ok()?, minor.parse().ok()?))
    }
}

impl std::fmt::Display for Microversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Volume states that end by themselves: a caller waits them out. (`attaching`, `reserved` and
/// `detaching` do not: they last until an attachment is completed or deleted, which attach and
/// detach do themselves.)
pub const VOLUME_BUSY: &[&str] = &[
    "creating",
    "downloading",
    "extending",
    "deleting",
    "backing-up",
    "restoring-backup",
    "uploading",
    "retyping",
];
/// Snapshot states that end by themselves.
pub const SNAPSHOT_BUSY: &[&str] = &["creating", "deleting", "backing-up", "restoring"];

/// A Cinder volume, as `GET /volumes/{id}` shows it (the fields the driver uses).
#[derive(Debug, Clone, Deserialize)]
pub struct CinderVolume {
    pub id: String,
    pub status: String,
    /// GiB.
    pub size: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// `host@backend#pool` (admin only).
    #[serde(default, rename = "os-vol-host-attr:host")]
    pub host: Option<String>,
    #[serde(default)]
    pub volume_type: Option<String>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Completed attachments.
    #[serde(default)]
    pub attachments: Vec<VolumeAttachment>,
}

/// One entry of a volume's `attachments` (completed attachments only).
#[derive(Debug, Clone, Deserialize)]
pub struct VolumeAttachment {
    pub attachment_id: String,
    #[serde(default)]
    pub host_name: Option<String>,
}

/// A Cinder snapshot.
#[derive(Debug, Clone, Deserialize)]
pub struct CinderSnapshot {
    pub id: String,
    pub status: String,
    /// GiB.
    pub size: u64,
    pub volume_id: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// An attachment record of the attachments API.
#[derive(Debug, Clone, Deserialize)]
pub struct CinderAttachment {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub connection_info: Option<Value>,
}

/// The Cinder API of one configured backend.
#[derive(Clone)]
pub struct Api {
    pub settings: Arc<CinderSettings>,
}

/// What a failed call was doing, for its error: the words of the message, and the field a
/// `400 Bad Request` is blamed on when Cinder does not name one.
#[derive(Debug, Clone, Copy)]
pub struct Doing<'a> {
    pub what: &'a str,
    pub field: &'a str,
}

impl Api {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.settings.timeout_secs)
    }

    /// One request with the session's token and microversion; a 401 renews a Keystone token
    /// once. Any status comes back as `Ok`; transport failures are `unavailable`.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        mv: Option<Microversion>,
    ) -> DriverResult<Response> {
        let mut renewed = false;
        loop {
            let session = auth::session(&self.settings)?;
            let mv = mv.unwrap_or(session.microversion).min(session.microversion);
            let url = format!("{}{path}", session.base);
            let client = Client::new().response_timeout(Duration::from_secs(60));
            let mut req = client
                .request(method, &url)
                .header("x-auth-token", &session.token)
                .header("accept", "application/json")
                .header("openstack-api-version", &format!("volume {mv}"));
            if let Some(b) = body {
                req = with_json(req, b);
            }
            let resp = req.send().map_err(DriverError::from)?;
            debug!("{method} {path} -> {}", resp.status);
            if resp.status == 401 && !renewed && auth::renewable(&self.settings) {
                info!("Cinder refused the Keystone token (HTTP 401 on {method} {path}): logging in again");
                auth::forget();
                renewed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// A request that must succeed; its JSON body (`null` for an empty one).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        mv: Option<Microversion>,
        doing: Doing,
    ) -> DriverResult<Value> {
        let resp = self.raw(method, path, body, mv)?;
        if !resp.is_success() {
            return Err(status_error(resp.status, &resp.text(), doing));
        }
        if resp.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        resp.json::<Value>()
            .map_err(|e| DriverError::backend(format!("{}: Cinder answered {e}", doing.what)))
    }

    /// `GET` that may answer 404: `None` then.
    pub fn get_opt(&self, path: &str, mv: Option<Microversion>, doing: Doing) -> DriverResult<Option<Value>> {
        let resp = self.raw("GET", path, None, mv)?;
        if resp.status == 404 {
            return Ok(None);
        }
        if !resp.is_success() {
            return Err(status_error(resp.status, &resp.text(), doing));
        }
        resp.json::<Value>()
            .map(Some)
            .map_err(|e| DriverError::backend(format!("{}: {e}", doing.what)))
    }

    /// The microversion the session negotiated.
    pub fn microversion(&self) -> DriverResult<Microversion> {
        Ok(auth::session(&self.settings)?.microversion)
    }

    // ---- volumes ---------------------------------------------------------------------------

    /// Every volume whose metadata has all of `metadata` (all pages).
    pub fn volumes_with(&self, metadata: &[(&str, &str)]) -> DriverResult<Vec<CinderVolume>> {
        let filter: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let filter = encode(&Value::Object(filter).to_string());
        let doing = Doing {
            what: "listing volumes",
            field: "endpoint",
        };
        let mut out: Vec<CinderVolume> = Vec::new();
        const PAGE: usize = 500;
        loop {
            let marker = out.last().map(|v| format!("&marker={}", v.id)).unwrap_or_default();
            let path = format!("/volumes/detail?metadata={filter}&limit={PAGE}&sort=created_at:asc{marker}");
            let page: Vec<CinderVolume> = parse_list(self.call("GET", &path, None, None, doing)?, "volumes", doing)?;
            let n = page.len();
            out.extend(page);
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    /// The Cinder volumes made for Elara's volume `id` (normally one).
    pub fn volumes_of(&self, id: &str) -> DriverResult<Vec<CinderVolume>> {
        self.volumes_with(&[("elara-id", id)])
    }

    pub fn volume(&self, uuid: &str) -> DriverResult<Option<CinderVolume>> {
        let doing = Doing {
            what: "reading a volume",
            field: "volume-id",
        };
        self.get_opt(&format!("/volumes/{uuid}"), None, doing)?
            .map(|v| parse_one(v, "volume", doing))
            .transpose()
    }

    /// Poll the volume until its status is not one of `busy`; `None` if it disappeared.
    pub fn wait_volume(&self, uuid: &str, busy: &[&str], what: &str) -> DriverResult<Option<CinderVolume>> {
        self.poll(what, || {
            Ok(match self.volume(uuid)? {
                Some(v) if busy.contains(&v.status.as_str()) => Poll::Pending(v.status),
                other => Poll::Ready(other),
            })
        })
    }

    /// Delete the volume (and wait until it is gone).
    pub fn delete_volume(&self, uuid: &str, what: &str) -> DriverResult<()> {
        let Some(v) = self.wait_volume(uuid, VOLUME_BUSY, what)? else {
            return Ok(());
        };
        if v.status != "deleting" {
            let resp = self.raw("DELETE", &format!("/volumes/{uuid}"), None, None)?;
            if resp.status != 404 && !resp.is_success() {
                return Err(status_error(
                    resp.status,
                    &resp.text(),
                    Doing {
                        what,
                        field: "volume-id",
                    },
                ));
            }
        }
        // The API moves the volume to `deleting` before it answers; the volume service removes it.
        match self.wait_volume(uuid, &["deleting"], what)? {
            None => Ok(()),
            Some(v) => Err(self.failure(&v.id, &format!("{what}: Cinder left it {}", v.status))),
        }
    }

    /// A `backend` error for an object Cinder put into an error state, with Cinder's own user
    /// message (`GET /messages`) when it left one.
    pub fn failure(&self, uuid: &str, what: &str) -> DriverError {
        match self.user_message(uuid) {
            Some(m) => DriverError::backend(format!("{what}: Cinder says: {m}")),
            None => DriverError::backend(format!("{what} (Cinder left no user message for {uuid})")),
        }
    }

    /// The newest user message about a resource (`GET /messages?resource_uuid=`), if any.
    pub fn user_message(&self, uuid: &str) -> Option<String> {
        if self.microversion().ok()? < MV_MESSAGES {
            return None;
        }
        let doing = Doing {
            what: "reading user messages",
            field: "endpoint",
        };
        let v = self
            .call(
                "GET",
                &format!("/messages?resource_uuid={uuid}"),
                None,
                Some(MV_MESSAGES),
                doing,
            )
            .ok()?;
        let mut messages: Vec<&Value> = v.get("messages")?.as_array()?.iter().collect();
        messages.sort_by_key(|m| m.get("created_at").and_then(Value::as_str).unwrap_or("").to_string());
        let m = messages.last()?;
        let text = m.get("user_message")?.as_str()?;
        let event = m.get("event_id").and_then(Value::as_str).unwrap_or("");
        Some(if event.is_empty() {
            text.to_string()
        } else {
            format!("{text} ({event})")
        })
    }

    // ---- snapshots -------------------------------------------------------------------------

    /// The Cinder snapshots made for Elara's snapshot `id`.
    pub fn snapshots_of(&self, id: &str) -> DriverResult<Vec<CinderSnapshot>> {
        let filter = encode(&json!({ "elara-id": id }).to_string());
        let doing = Doing {
            what: "listing snapshots",
            field: "snapshot-id",
        };
        parse_list(
            self.call(
                "GET",
                &format!("/snapshots/detail?metadata={filter}"),
                None,
                None,
                doing,
            )?,
            "snapshots",
            doing,
        )
    }

    pub fn snapshot(&self, uuid: &str) -> DriverResult<Option<CinderSnapshot>> {
        let doing = Doing {
            what: "reading a snapshot",
            field: "snapshot-id",
        };
        self.get_opt(&format!("/snapshots/{uuid}"), None, doing)?
            .map(|v| parse_one(v, "snapshot", doing))
            .transpose()
    }

    pub fn wait_snapshot(&self, uuid: &str, busy: &[&str], what: &str) -> DriverResult<Option<CinderSnapshot>> {
        self.poll(what, || {
            Ok(match self.snapshot(uuid)? {
                Some(s) if busy.contains(&s.status.as_str()) => Poll::Pending(s.status),
                other => Poll::Ready(other),
            })
        })
    }

    /// Delete the snapshot (and wait until it is gone).
    pub fn delete_snapshot(&self, uuid: &str, what: &str) -> DriverResult<()> {
        let Some(s) = self.wait_snapshot(uuid, SNAPSHOT_BUSY, what)? else {
            return Ok(());
        };
        if s.status != "deleting" {
            let resp = self.raw("DELETE", &format!("/snapshots/{uuid}"), None, None)?;
            if resp.status != 404 && !resp.is_success() {
                return Err(status_error(
                    resp.status,
                    &resp.text(),
                    Doing {
                        what,
                        field: "snapshot-id",
                    },
                ));
            }
        }
        match self.wait_snapshot(uuid, &["deleting"], what)? {
            None => Ok(()),
            Some(s) => Err(self.failure(&s.id, &format!("{what}: Cinder left it {}", s.status))),
        }
    }

    // ---- attachments -----------------------------------------------------------------------

    /// Every attachment of a volume, with connection info.
    pub fn attachments_of(&self, volume_uuid: &str) -> DriverResult<Vec<CinderAttachment>> {
        let doing = Doing {
            what: "listing attachments",
            field: "volume-id",
        };
        let path = format!("/attachments/detail?volume_id={volume_uuid}");
        parse_list(self.call("GET", &path, None, None, doing)?, "attachments", doing)
    }

    pub fn attachment(&self, id: &str) -> DriverResult<Option<CinderAttachment>> {
        let doing = Doing {
            what: "reading an attachment",
            field: "volume-id",
        };
        self.get_opt(&format!("/attachments/{id}"), None, doing)?
            .map(|v| parse_one(v, "attachment", doing))
            .transpose()
    }

    /// Delete an attachment; an attachment already gone is fine.
    pub fn delete_attachment(&self, id: &str) -> DriverResult<()> {
        let resp = self.raw("DELETE", &format!("/attachments/{id}"), None, None)?;
        if resp.status == 404 || resp.is_success() {
            return Ok(());
        }
        Err(status_error(
            resp.status,
            &resp.text(),
            Doing {
                what: "deleting an attachment",
                field: "volume-id",
            },
        ))
    }

    // ---- polling ---------------------------------------------------------------------------

    /// Call `check` until it is ready, with a growing pause (0.1 s to 1 s) between calls, for at
    /// most `timeout_secs`. Each call reads the object's state from Cinder: a readiness check.
    pub fn poll<T>(&self, what: &str, mut check: impl FnMut() -> DriverResult<Poll<T>>) -> DriverResult<T> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            match check()? {
                Poll::Ready(v) => return Ok(v),
                Poll::Pending(state) => {
                    if start.elapsed() >= self.timeout() {
                        return Err(DriverError::unavailable(format!(
                            "{what}: still {state} after {} s (timeout_secs); the call may be retried",
                            self.settings.timeout_secs
                        )));
                    }
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 3 / 2).min(Duration::from_secs(1));
        }
    }
}

/// A poll's outcome: done, or still in the named state.
pub enum Poll<T> {
    Ready(T),
    Pending(String),
}

/// A JSON body with an explicit `content-length`: without one the request goes out chunked, and
/// Cinder's WSGI server (eventlet + webob) then reads an empty body (`KeyError: 'body'`, HTTP 500).
pub fn with_json(req: RequestBuilder, body: &Value) -> RequestBuilder {
    let bytes = body.to_string().into_bytes();
    req.header("content-type", "application/json")
        .header("content-length", &bytes.len().to_string())
        .body(bytes)
}

fn parse_one<T: serde::de::DeserializeOwned>(mut v: Value, key: &str, doing: Doing) -> DriverResult<T> {
    let inner = v
        .get_mut(key)
        .map(Value::take)
        .ok_or_else(|| DriverError::backend(format!("{}: Cinder's answer has no `{key}`", doing.what)))?;
    serde_json::from_value(inner)
        .map_err(|e| DriverError::backend(format!("{}: unexpected `{key}` from Cinder: {e}", doing.what)))
}

fn parse_list<T: serde::de::DeserializeOwned>(v: Value, key: &str, doing: Doing) -> DriverResult<Vec<T>> {
    parse_one(v, key, doing)
}

/// Percent-encode a query value.
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Cinder's error body `{"badRequest": {"code": 400, "message": "..."}}` → the message.
pub fn cinder_message(body: &str) -> String {
    let parsed: Option<String> = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let obj = v.as_object()?;
        obj.values()
            .find_map(|inner| inner.get("message").and_then(Value::as_str).map(str::to_string))
    });
    parsed.unwrap_or_else(|| {
        let t = body.trim();
        if t.len() > 300 {
            format!("{}...", &t[..t.char_indices().nth(300).map_or(t.len(), |(i, _)| i)])
        } else {
            t.to_string()
        }
    })
}

/// Cinder's names of request fields → the field as Elara's user knows it.
fn elara_field(cinder_field: &str) -> Option<&'static str> {
    Some(match cinder_field {
        "size" | "new_size" => "size",
        "name" | "display_name" => "name",
        "volume_type" => "volume_type",
        "availability_zone" => "availability_zone",
        "snapshot_id" => "snapshot-id",
        "metadata" => "labels",
        _ => return None,
    })
}

/// The field a Cinder 400 message names (`Invalid input for field/attribute size. ...`,
/// `Availability zone 'x' is invalid`, `Volume type with name x could not be found`).
fn blamed_field(message: &str) -> Option<&'static str> {
    if let Some(rest) = message.split("field/attribute ").nth(1) {
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if let Some(f) = elara_field(&name) {
            return Some(f);
        }
    }
    let lower = message.to_ascii_lowercase();
    if lower.contains("availability zone") {
        Some("availability_zone")
    } else if lower.contains("volume type") {
        Some("volume_type")
    } else if lower.contains("size") || lower.contains("gigabytes") {
        Some("size")
    } else {
        None
    }
}

/// Map a failed Cinder response to the contract's error, keeping Cinder's message.
pub fn status_error(status: u16, body: &str, doing: Doing) -> DriverError {
    let msg = cinder_message(body);
    let what = doing.what;
    match status {
        400 => DriverError::invalid(
            blamed_field(&msg).unwrap_or(doing.field),
            format!("Cinder refused {what}: {msg}"),
        ),
        401 => DriverError::backend(format!("{what}: Cinder refused the credentials (HTTP 401): {msg}")),
        403 => DriverError::backend(format!(
            "{what}: forbidden by Cinder's policy for these credentials (HTTP 403): {msg}"
        )),
        404 => DriverError::not_found(format!("{what}: {msg}")),
        409 => DriverError::backend(format!("{what}: conflict in Cinder (HTTP 409): {msg}")),
        413 => DriverError::backend(format!("{what}: Cinder quota exceeded (HTTP 413): {msg}")),
        429 | 502..=504 => DriverError::unavailable(format!("{what}: Cinder is unavailable (HTTP {status}): {msg}")),
        _ => DriverError::backend(format!("{what}: Cinder answered HTTP {status}: {msg}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOING: Doing = Doing {
        what: "creating volume v",
        field: "spec",
    };

    #[test]
    fn maps_cinder_errors() {
        let e = status_error(
            400,
            r#"{"badRequest": {"code": 400, "message": "Invalid input for field/attribute size. Value: -1. -1 is less than the minimum of 1"}}"#,
            DOING,
        );
        match e {
            DriverError::Invalid(f) => {
                assert_eq!(f.field, "size");
                assert!(f.reason.contains("less than the minimum"), "{}", f.reason);
            }
            other => panic!("{other:?}"),
        }
        let e = status_error(
            404,
            r#"{"itemNotFound": {"code": 404, "message": "Volume x could not be found."}}"#,
            DOING,
        );
        assert_eq!(e.kind(), "not-found");
        let e = status_error(
            413,
            r#"{"overLimit": {"code": 413, "message": "VolumeLimitExceeded: Maximum number of volumes allowed (0) exceeded for quota 'volumes'."}}"#,
            DOING,
        );
        assert_eq!(e.kind(), "backend");
        assert!(
            e.message().contains("quota exceeded") && e.message().contains("Maximum number of volumes"),
            "{}",
            e.message()
        );
        assert_eq!(status_error(503, "down", DOING).kind(), "unavailable");
    }

    #[test]
    fn microversions() {
        assert_eq!(Microversion::parse("3.71"), Some(Microversion(3, 71)));
        assert!(Microversion(3, 9) < Microversion(3, 27));
        assert_eq!(Microversion(3, 54).to_string(), "3.54");
    }
}
