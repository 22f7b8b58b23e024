//! The network endpoints a connection names, held against the backend's grants before the host
//! connects anywhere. A driver's sandbox reaches only the hosts it was granted; without this check
//! it could still aim the host's own clients (the iSCSI initiator, the NFS client, s3fs) at any
//! host and port, from the host's network position. Also: the connection's strings that reach a
//! helper's options or files are checked, so none can add an option or a line of its own.

use elara_runtime::{Connection, HostGrant};

use super::{AttachError, Result, iscsi::Target};

/// Refuse a connection whose endpoints are not all granted, naming the first that is not.
pub fn check(connection: &Connection, grants: &[HostGrant]) -> Result<()> {
    for (field, host, port) in endpoints(connection)? {
        if !grants.iter().any(|g| g.matches(&host, port)) {
            let shown = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let granted = if grants.is_empty() {
                "none".to_string()
            } else {
                grants.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")
            };
            return Err(AttachError::BadConnection {
                field,
                reason: format!(
                    "{shown} is not among the backend's granted hosts ({granted}); the host connects only where the backend may (--allow-host)"
                ),
            });
        }
    }
    if let Connection::S3(s3) = connection {
        // s3fs options are `,`-separated `key=value`s, and its passwd file is `key:secret` lines.
        let plain = |field: &'static str, v: &str, extra: &[char]| {
            if v.chars().any(|c| c.is_control() || c == ',' || extra.contains(&c)) {
                return Err(AttachError::BadConnection {
                    field,
                    reason: "must not hold control characters, ',' or the separators of s3fs' options".into(),
                });
            }
            Ok(())
        };
        plain("s3.endpoint", &s3.endpoint, &[])?;
        plain("s3.region", &s3.region, &['='])?;
        plain("s3.bucket", &s3.bucket, &['=', ':', '/'])?;
        plain("s3.prefix", &s3.prefix, &['=', ':'])?;
        plain("s3.access-key", &s3.access_key, &[':'])?;
        plain("s3.secret-key", &s3.secret_key, &[])?;
    }
    Ok(())
}

/// `(field, host, port)` of every endpoint the host would connect to for `connection`.
fn endpoints(connection: &Connection) -> Result<Vec<(&'static str, String, u16)>> {
    Ok(match connection {
        Connection::Iscsi(c) => {
            let t = Target::parse(c)?;
            vec![("iscsi.portal", t.host, t.port)]
        }
        Connection::Nfs(c) => {
            let host = c.server.trim_start_matches('[').trim_end_matches(']').to_string();
            let mut v = vec![("nfs.server", host.clone(), c.port.unwrap_or(2049))];
            // The MOUNT protocol: the given port, else the portmapper that names it.
            match c.options.iter().find(|(k, _)| k == "mountport") {
                Some((_, p)) => {
                    let port = p.parse().map_err(|_| AttachError::BadConnection {
                        field: "nfs.options",
                        reason: format!("mountport={p:?} is not a port"),
                    })?;
                    v.push(("nfs.options.mountport", host, port));
                }
                None => v.push(("nfs.server (portmapper)", host, 111)),
            }
            v
        }
        Connection::S3(s3) => {
            let uri: http::Uri = s3.endpoint.parse().map_err(|e| AttachError::BadConnection {
                field: "s3.endpoint",
                reason: format!("{:?} is not a URL: {e}", s3.endpoint),
            })?;
            let host = uri.host().ok_or_else(|| AttachError::BadConnection {
                field: "s3.endpoint",
                reason: format!("{:?} names no host", s3.endpoint),
            })?;
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
            vec![(
                "s3.endpoint",
                host.trim_start_matches('[').trim_end_matches(']').to_string(),
                port,
            )]
        }
        Connection::ImageFile(_) | Connection::Directory(_) | Connection::Other(_) => vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use elara_runtime::{IscsiConnection, NfsConnection, S3Connection};

    fn grants(list: &[&str]) -> Vec<HostGrant> {
        list.iter().map(|g| g.parse().unwrap()).collect()
    }

    #[test]
    fn an_endpoint_outside_the_grants_is_refused_by_name() {
        let iscsi = Connection::Iscsi(IscsiConnection {
            portal: "10.9.9.9:3260".into(),
            iqn: "iqn.x:y".into(),
            lun: 1,
            auth: None,
            extra: vec![],
        });
        let err = check(&iscsi, &grants(&["127.0.0.1:3260"])).unwrap_err().to_string();
        assert!(err.contains("10.9.9.9:3260") && err.contains("iscsi.portal"), "{err}");
        assert!(check(&iscsi, &grants(&["10.9.9.9:3260"])).is_ok());
        assert!(
            check(&iscsi, &grants(&["10.9.9.9:3261"])).is_err(),
            "another port of the same host"
        );

        let nfs = |opts: Vec<(String, String)>| {
            Connection::Nfs(NfsConnection {
                server: "127.0.0.1".into(),
                port: Some(2049),
                export: "/e".into(),
                version: "3".into(),
                options: opts,
            })
        };
        assert!(
            check(
                &nfs(vec![("mountport".into(), "20048".into())]),
                &grants(&["127.0.0.1"])
            )
            .is_ok()
        );
        let err = check(
            &nfs(vec![("mountport".into(), "22".into())]),
            &grants(&["127.0.0.1:2049"]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("127.0.0.1:22") && err.contains("mountport"), "{err}");
        assert!(
            check(&nfs(vec![]), &grants(&["127.0.0.1:2049"]))
                .unwrap_err()
                .to_string()
                .contains(":111"),
            "the portmapper"
        );

        let s3 = |endpoint: &str, bucket: &str| {
            Connection::S3(S3Connection {
                endpoint: endpoint.into(),
                region: "us-east-1".into(),
                bucket: bucket.into(),
                prefix: "".into(),
                access_key: "a".into(),
                secret_key: "s".into(),
                path_style: true,
            })
        };
        assert!(check(&s3("http://127.0.0.1:7480", "b"), &grants(&["127.0.0.1:7480"])).is_ok());
        assert!(
            check(&s3("http://169.254.169.254", "b"), &grants(&["127.0.0.1:7480"]))
                .unwrap_err()
                .to_string()
                .contains("169.254.169.254:80")
        );
        let err = check(
            &s3("http://127.0.0.1:7480", "b,allow_other,passwd_file=/etc/shadow"),
            &grants(&["127.0.0.1:7480"]),
        )
        .unwrap_err();
        assert!(
            matches!(err, AttachError::BadConnection { field: "s3.bucket", .. }),
            "{err}"
        );
    }
}
