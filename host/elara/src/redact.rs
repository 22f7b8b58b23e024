//! What is secret, and its replacement in everything Elara shows.
//!
//! Credentials live in the store (backend configs, backup targets, and the connections of
//! attached volumes: s3 keys, iSCSI CHAP secrets) and in 0600 files under the run dir for the
//! helpers that need them. They never leave the daemon in an API response, a log line or a
//! process argument: every view of a record goes through here. `SECURITY.md` lists the test that
//! sweeps all of them for known secrets.

use elara_runtime::Connection;

/// What a secret value is shown as.
pub const MASK: &str = "********";

/// Whether a config or connection key names a secret by the usual words. `access_key` is an
/// identity, not a secret (it is shown, as AWS shows it).
pub fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "key", "credential", "auth"]
        .iter()
        .any(|s| k.contains(s))
        && !matches!(k.as_str(), "access_key" | "access-key" | "auth_method" | "auth-method")
}

/// `c` with its secrets masked.
pub fn connection(c: &Connection) -> Connection {
    let mut c = c.clone();
    let mask_pairs = |pairs: &mut Vec<(String, String)>| {
        for (k, v) in pairs.iter_mut() {
            if looks_secret(k) {
                *v = MASK.into();
            }
        }
    };
    match &mut c {
        Connection::S3(s3) => s3.secret_key = MASK.into(),
        Connection::Iscsi(i) => {
            if let Some(auth) = &mut i.auth {
                auth.secret = MASK.into();
            }
            mask_pairs(&mut i.extra);
        }
        Connection::Nfs(n) => mask_pairs(&mut n.options),
        Connection::Other((_, props)) => mask_pairs(props),
        Connection::ImageFile(_) | Connection::Directory(_) => {}
    }
    c
}

/// An attachment as shown: its connection's secrets masked.
pub fn attachment(a: &crate::model::AttachmentRecord) -> crate::model::AttachmentRecord {
    let mut a = a.clone();
    a.connection = a.connection.as_ref().map(connection);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use elara_runtime::{ChapAuth, IscsiConnection, S3Connection};

    #[test]
    fn secrets_are_masked_and_identities_kept() {
        let s3 = connection(&Connection::S3(S3Connection {
            endpoint: "http://127.0.0.1:1".into(),
            region: "r".into(),
            bucket: "b".into(),
            prefix: String::new(),
            access_key: "AK".into(),
            secret_key: "SK-very-secret".into(),
            path_style: true,
        }));
        let text = format!("{s3:?}");
        assert!(!text.contains("SK-very-secret") && text.contains("AK"), "{text}");
        let i = connection(&Connection::Iscsi(IscsiConnection {
            portal: "127.0.0.1:3260".into(),
            iqn: "iqn.x".into(),
            lun: 0,
            auth: Some(ChapAuth {
                username: "u".into(),
                secret: "chap-secret".into(),
            }),
            extra: vec![
                ("auth_password".into(), "pw-in-extra".into()),
                ("target_lun".into(), "0".into()),
            ],
        }));
        let text = format!("{i:?}");
        assert!(
            !text.contains("chap-secret") && !text.contains("pw-in-extra") && text.contains("target_lun"),
            "{text}"
        );
    }
}
