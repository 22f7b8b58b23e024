//! Where volumes and snapshots live in S3, and where the driver keeps what it knows about them.
//!
//! Two layouts, chosen by the backend's configuration:
//!
//! * **A bucket per volume** (no `bucket` configured): volume `ID` is the bucket
//!   `<bucket_prefix>v-ID`, snapshot `ID` the bucket `<bucket_prefix>s-ID`. The record (Elara's id,
//!   name, size, pool, origin) is the bucket's **tags**, written last: a bucket without them is an
//!   unfinished create that a retry completes.
//! * **A prefix per volume** (`bucket=B`): volume data under `B/<prefix>volumes/ID/`, snapshots
//!   under `B/<prefix>snapshots/ID/`, and the records as small JSON objects under
//!   `B/<prefix>meta/{volumes,snapshots}/ID.json`, outside the data prefixes so the s3fs mount of
//!   a volume never shows them.
//!
//! Names and keys derive from Elara's ids alone, so every call can find what an earlier, crashed
//! attempt made. Deletes empty the data first (pages of 1 000 keys, incomplete multipart uploads
//! aborted) and drop the record last.

use elara_driver_sdk::info;
use elara_driver_sdk::prelude::*;
use serde::{Deserialize, Serialize};

use crate::s3::{Copy, Object, S3, S3Error};

/// A volume or a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Volume,
    Snapshot,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Volume => "volume",
            Kind::Snapshot => "snapshot",
        }
    }
    /// The infix of bucket names (`v-`, `s-`).
    fn bucket_infix(self) -> &'static str {
        match self {
            Kind::Volume => "v-",
            Kind::Snapshot => "s-",
        }
    }
    /// The folder of data prefixes (`volumes/`, `snapshots/`).
    fn folder(self) -> &'static str {
        match self {
            Kind::Volume => "volumes/",
            Kind::Snapshot => "snapshots/",
        }
    }
}

/// What the driver records about a volume or snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: Kind,
    /// Elara's id.
    pub id: String,
    /// The user's name (for operators browsing the bucket).
    pub name: String,
    /// The soft quota (volumes) or the source's size (snapshots).
    pub size_bytes: u64,
    /// Volumes: the pool.
    #[serde(default)]
    pub pool: String,
    /// Volumes: the snapshot they were created from.
    #[serde(default)]
    pub from: Option<String>,
    /// Snapshots: the volume they were taken of.
    #[serde(default)]
    pub volume_id: Option<String>,
}

/// A bucket and a key prefix (empty, or ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub bucket: String,
    pub prefix: String,
}

impl Place {
    /// `s3://bucket/prefix`, for operators.
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// How the backend lays volumes out (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A bucket per volume and per snapshot, named `<name_prefix>v-<id>` / `<name_prefix>s-<id>`.
    Buckets { name_prefix: String },
    /// One bucket; `prefix` is empty or ends in `/`.
    Prefix { bucket: String, prefix: String },
}

/// Tag keys of a record in the bucket-per-volume layout.
const TAG_KIND: &str = "elara-kind";
const TAG_ID: &str = "elara-id";
const TAG_NAME: &str = "elara-name";
const TAG_SIZE: &str = "elara-size";
const TAG_POOL: &str = "elara-pool";
const TAG_FROM: &str = "elara-from";
const TAG_VOLUME: &str = "elara-volume";

/// Records read at once when listing.
const READ_CONCURRENCY: usize = 16;

impl Layout {
    /// The longest Elara id this layout can name (bucket names stop at 63 characters).
    pub fn max_id_len(&self) -> usize {
        match self {
            Layout::Buckets { name_prefix } => 63 - name_prefix.len() - 2,
            // S3 keys may be 1 024 bytes long.
            Layout::Prefix { prefix, .. } => 1024 - prefix.len() - "snapshots/".len() - 1,
        }
    }

    /// Where the data of `kind` `id` lives.
    pub fn place(&self, kind: Kind, id: &str) -> Place {
        match self {
            Layout::Buckets { name_prefix } => Place {
                bucket: format!("{name_prefix}{}{id}", kind.bucket_infix()),
                prefix: String::new(),
            },
            Layout::Prefix { bucket, prefix } => Place {
                bucket: bucket.clone(),
                prefix: format!("{prefix}{}{id}/", kind.folder()),
            },
        }
    }

    fn meta_key(prefix: &str, kind: Kind, id: &str) -> String {
        format!("{prefix}meta/{}{id}.json", kind.folder())
    }

    /// The record of `kind` `id`, or `None` if there is none (never made, deleted, or a create
    /// that did not finish).
    pub fn read(&self, s3: &S3, kind: Kind, id: &str) -> DriverResult<Option<Record>> {
        let mut records = self.read_many(s3, kind, &[id.to_string()], 1)?;
        Ok(records.pop().flatten())
    }

    /// [`Layout::read`] of many ids, `concurrency` requests at a time, in their order.
    pub fn read_many(
        &self,
        s3: &S3,
        kind: Kind,
        ids: &[String],
        concurrency: usize,
    ) -> DriverResult<Vec<Option<Record>>> {
        match self {
            Layout::Buckets { .. } => {
                let places: Vec<Place> = ids.iter().map(|id| self.place(kind, id)).collect();
                let buckets: Vec<&str> = places.iter().map(|p| p.bucket.as_str()).collect();
                let tags = s3.get_bucket_taggings(&buckets, concurrency);
                ids.iter()
                    .zip(places.iter().zip(tags))
                    .map(|(id, (place, tags))| {
                        let tags = match tags {
                            Ok(Some(tags)) => tags,
                            Ok(None) => return Ok(None),
                            // A bucket deleted since it was listed is simply gone.
                            Err(e) if e.code() == Some("NoSuchBucket") => return Ok(None),
                            Err(e) => return Err(err(s3, e)),
                        };
                        record_from_tags(&tags, kind, id).map_err(|why| {
                            DriverError::backend(format!(
                                "bucket {} carries tags Elara cannot read: {why}",
                                place.bucket
                            ))
                        })
                    })
                    .collect()
            }
            Layout::Prefix { bucket, prefix } => {
                let keys: Vec<String> = ids.iter().map(|id| Self::meta_key(prefix, kind, id)).collect();
                let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                let bodies = s3.get_objects(bucket, &key_refs, concurrency);
                ids.iter()
                    .zip(keys.iter().zip(bodies))
                    .map(|(id, (key, body))| {
                        let body = match body {
                            Ok(Some(body)) => body,
                            Ok(None) => return Ok(None),
                            Err(e) if e.code() == Some("NoSuchBucket") => return Ok(None),
                            Err(e) => return Err(err(s3, e)),
                        };
                        let record: Record = serde_json::from_slice(&body).map_err(|e| {
                            DriverError::backend(format!("s3://{bucket}/{key} is not an Elara record: {e}"))
                        })?;
                        if record.id != *id || record.kind != kind {
                            return Err(DriverError::backend(format!(
                                "s3://{bucket}/{key} holds the record of {} {}",
                                record.kind.name(),
                                record.id
                            )));
                        }
                        Ok(Some(record))
                    })
                    .collect()
            }
        }
    }

    /// Make the container of a new volume or snapshot: its bucket, or (one-bucket layout) the
    /// configured bucket if it does not exist yet.
    pub fn prepare(&self, s3: &S3, place: &Place) -> DriverResult<()> {
        match self {
            Layout::Buckets { .. } => s3.create_bucket(&place.bucket).map_err(|e| err(s3, e)),
            Layout::Prefix { bucket, .. } => {
                if !s3.bucket_exists(bucket).map_err(|e| err(s3, e))? {
                    s3.create_bucket(bucket).map_err(|e| err(s3, e))?;
                    info!("created bucket {bucket}");
                }
                Ok(())
            }
        }
    }

    /// Write the record: the last step of a create.
    pub fn write(&self, s3: &S3, record: &Record) -> DriverResult<()> {
        match self {
            Layout::Buckets { .. } => {
                let place = self.place(record.kind, &record.id);
                s3.put_bucket_tagging(&place.bucket, &tags_of(record))
                    .map_err(|e| err(s3, e))
            }
            Layout::Prefix { bucket, prefix } => {
                let key = Self::meta_key(prefix, record.kind, &record.id);
                let body = serde_json::to_vec_pretty(record)?;
                s3.put_object(bucket, &key, body, "application/json")
                    .map_err(|e| err(s3, e))
            }
        }
    }

    /// Remove `kind` `id` entirely: every object of its data (pages of 1 000), unfinished
    /// uploads, then the record (and the bucket). Succeeds if nothing is there.
    pub fn remove(&self, s3: &S3, kind: Kind, id: &str) -> DriverResult<u64> {
        let place = self.place(kind, id);
        let label = format!("{} {id}", kind.name());
        let deleted = match empty(s3, &place, &label) {
            Err(e) if e.code() == Some("NoSuchBucket") => 0,
            other => other.map_err(|e| err(s3, e))?,
        };
        match self {
            Layout::Buckets { .. } => s3.delete_bucket(&place.bucket).map_err(|e| err(s3, e))?,
            Layout::Prefix { bucket, prefix } => match s3.delete_object(bucket, &Self::meta_key(prefix, kind, id)) {
                Err(e) if e.code() == Some("NoSuchBucket") => {}
                other => other.map_err(|e| err(s3, e))?,
            },
        }
        Ok(deleted)
    }

    /// Empty the data of a create that did not finish, so a retry starts from nothing.
    pub fn clear(&self, s3: &S3, place: &Place, label: &str) -> DriverResult<()> {
        match empty(s3, place, label) {
            Err(e) if e.code() == Some("NoSuchBucket") => Ok(()),
            other => other.map(drop).map_err(|e| err(s3, e)),
        }
    }

    /// Every record of `kind` this backend holds.
    pub fn list(&self, s3: &S3, kind: Kind) -> DriverResult<Vec<Record>> {
        let ids: Vec<String> = match self {
            Layout::Buckets { name_prefix } => {
                let start = format!("{name_prefix}{}", kind.bucket_infix());
                let buckets = s3.list_buckets().map_err(|e| err(s3, e))?;
                buckets
                    .iter()
                    .filter_map(|b| b.strip_prefix(&start))
                    .map(str::to_string)
                    .collect()
            }
            Layout::Prefix { bucket, prefix } => {
                let folder = format!("{prefix}meta/{}", kind.folder());
                let mut ids = Vec::new();
                let walked = walk(s3, bucket, &folder, |o| {
                    if let Some(id) = o.key.strip_prefix(&folder).and_then(|k| k.strip_suffix(".json")) {
                        ids.push(id.to_string());
                    }
                    Ok(())
                });
                match walked {
                    Err(e) if e.code() == Some("NoSuchBucket") => return Ok(Vec::new()),
                    other => other.map_err(|e| err(s3, e))?,
                }
                ids
            }
        };
        Ok(self
            .read_many(s3, kind, &ids, READ_CONCURRENCY)?
            .into_iter()
            .flatten()
            .collect())
    }
}

/// S3 errors of this backend, in the contract's terms.
pub fn err(s3: &S3, e: S3Error) -> DriverError {
    e.into_driver(&s3.fields)
}

/// Call `each` for every object under `prefix`, page by page.
pub fn walk(
    s3: &S3,
    bucket: &str,
    prefix: &str,
    mut each: impl FnMut(&Object) -> Result<(), S3Error>,
) -> Result<(), S3Error> {
    let mut token: Option<String> = None;
    loop {
        let page = s3.list_objects(bucket, prefix, token.as_deref())?;
        for o in &page.objects {
            each(o)?;
        }
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(()),
        }
    }
}

/// Objects and bytes under a place (its root directory object excluded).
pub fn usage(s3: &S3, place: &Place) -> Result<(u64, u64), S3Error> {
    let (mut objects, mut bytes) = (0u64, 0u64);
    walk(s3, &place.bucket, &place.prefix, |o| {
        if o.key != place.prefix {
            objects += 1;
            bytes += o.size;
        }
        Ok(())
    })?;
    Ok((objects, bytes))
}

/// Delete every object under a place, 1 000 keys per call, and abort unfinished multipart
/// uploads there. Returns how many objects were deleted.
fn empty(s3: &S3, place: &Place, label: &str) -> Result<u64, S3Error> {
    let mut deleted = 0u64;
    loop {
        // Always the first page: what was listed before is gone.
        let page = s3.list_objects(&place.bucket, &place.prefix, None)?;
        if page.objects.is_empty() {
            break;
        }
        let keys: Vec<String> = page.objects.into_iter().map(|o| o.key).collect();
        s3.delete_objects(&place.bucket, &keys)?;
        deleted += keys.len() as u64;
        info!("{label}: deleted {deleted} objects from {}", place.uri());
    }
    loop {
        let uploads = s3.list_uploads(&place.bucket, &place.prefix)?;
        if uploads.is_empty() {
            break;
        }
        for (key, id) in &uploads {
            s3.abort_upload(&place.bucket, key, id)?;
        }
        info!(
            "{label}: aborted {} unfinished uploads in {}",
            uploads.len(),
            place.uri()
        );
    }
    Ok(deleted)
}

/// Server-side copy of every object under `from` to the same relative key under `to`, a page
/// (1 000 objects) at a time with `concurrency` copies in flight. Returns (objects, bytes).
/// Progress goes to the host after each page: bytes copied of `size_hint` (the volume's size:
/// the listing comes a page at a time, so the data's own total is known only at the end). The
/// total stays the same in every report, as the host counts only a fixed one.
pub fn copy_all(
    s3: &S3,
    from: &Place,
    to: &Place,
    concurrency: usize,
    size_hint: u64,
    label: &str,
) -> DriverResult<(u64, u64)> {
    let (mut objects, mut bytes) = (0u64, 0u64);
    let mut token: Option<String> = None;
    loop {
        let page = s3
            .list_objects(&from.bucket, &from.prefix, token.as_deref())
            .map_err(|e| err(s3, e))?;
        let copies: Vec<Copy> = page
            .objects
            .iter()
            // Skip the directory object of the place itself.
            .filter(|o| o.key.len() > from.prefix.len())
            .map(|o| Copy {
                src_bucket: from.bucket.clone(),
                src_key: o.key.clone(),
                dst_bucket: to.bucket.clone(),
                dst_key: format!("{}{}", to.prefix, &o.key[from.prefix.len()..]),
                size: o.size,
            })
            .collect();
        s3.copy_objects(&copies, concurrency).map_err(|e| err(s3, e))?;
        objects += copies.len() as u64;
        bytes += copies.iter().map(|c| c.size).sum::<u64>();
        info!(
            "{label}: copied {objects} objects ({bytes} bytes) from {} to {}",
            from.uri(),
            to.uri()
        );
        match page.next {
            Some(t) => {
                elara_driver_sdk::log::progress(bytes.min(size_hint), size_hint);
                token = Some(t);
            }
            None => {
                elara_driver_sdk::log::progress(size_hint, size_hint);
                return Ok((objects, bytes));
            }
        }
    }
}

fn tags_of(r: &Record) -> Vec<(String, String)> {
    let mut tags = vec![
        (TAG_KIND.to_string(), r.kind.name().to_string()),
        (TAG_ID.to_string(), r.id.clone()),
        (TAG_NAME.to_string(), r.name.clone()),
        (TAG_SIZE.to_string(), r.size_bytes.to_string()),
    ];
    if !r.pool.is_empty() {
        tags.push((TAG_POOL.to_string(), r.pool.clone()));
    }
    if let Some(f) = &r.from {
        tags.push((TAG_FROM.to_string(), f.clone()));
    }
    if let Some(v) = &r.volume_id {
        tags.push((TAG_VOLUME.to_string(), v.clone()));
    }
    tags
}

/// The record in a bucket's tags; `Ok(None)` if the tags are not Elara's (no `elara-id`).
fn record_from_tags(tags: &[(String, String)], kind: Kind, id: &str) -> Result<Option<Record>, String> {
    let get = |k: &str| tags.iter().find(|(tk, _)| tk == k).map(|(_, v)| v.clone());
    let Some(tag_id) = get(TAG_ID) else { return Ok(None) };
    if tag_id != id {
        return Err(format!("{TAG_ID}={tag_id}, expected {id}"));
    }
    if get(TAG_KIND).as_deref() != Some(kind.name()) {
        return Err(format!("{TAG_KIND}={:?}, expected {}", get(TAG_KIND), kind.name()));
    }
    let size = get(TAG_SIZE).unwrap_or_default();
    let size_bytes = size
        .parse()
        .map_err(|_| format!("{TAG_SIZE}={size:?} is not a number"))?;
    Ok(Some(Record {
        kind,
        id: tag_id,
        name: get(TAG_NAME).unwrap_or_default(),
        size_bytes,
        pool: get(TAG_POOL).unwrap_or_default(),
        from: get(TAG_FROM),
        volume_id: get(TAG_VOLUME),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places() {
        let b = Layout::Buckets {
            name_prefix: "elara-".into(),
        };
        assert_eq!(
            b.place(Kind::Volume, "abc"),
            Place {
                bucket: "elara-v-abc".into(),
                prefix: String::new()
            }
        );
        assert_eq!(b.place(Kind::Snapshot, "abc").bucket, "elara-s-abc");
        assert_eq!(b.max_id_len(), 55);
        let p = Layout::Prefix {
            bucket: "data".into(),
            prefix: "elara/".into(),
        };
        assert_eq!(
            p.place(Kind::Volume, "abc"),
            Place {
                bucket: "data".into(),
                prefix: "elara/volumes/abc/".into()
            }
        );
        assert_eq!(
            Layout::meta_key("elara/", Kind::Snapshot, "s1"),
            "elara/meta/snapshots/s1.json"
        );
    }

    #[test]
    fn tags_round_trip() {
        let r = Record {
            kind: Kind::Volume,
            id: "v1".into(),
            name: "data".into(),
            size_bytes: 1 << 30,
            pool: "default".into(),
            from: Some("s1".into()),
            volume_id: None,
        };
        assert_eq!(
            record_from_tags(&tags_of(&r), Kind::Volume, "v1").unwrap(),
            Some(r.clone())
        );
        assert!(record_from_tags(&tags_of(&r), Kind::Volume, "v2").is_err());
        assert!(record_from_tags(&tags_of(&r), Kind::Snapshot, "v1").is_err());
        assert_eq!(
            record_from_tags(&[("owner".into(), "x".into())], Kind::Volume, "v1").unwrap(),
            None
        );
    }
}
