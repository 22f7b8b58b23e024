//! Cinder's `connection_info` (os-brick's vocabulary) as the contract's [`Connection`], and this
//! node as Cinder's connector.

use elara_driver_sdk::prelude::*;
use serde_json::{Map, Value, json};

use crate::pools::python_str;

/// Keys of `connection_info` that hold secrets: carried in `chap-auth`, never in `extra`.
const SECRET_KEYS: &[&str] = &[
    "auth_password",
    "discovery_auth_password",
    "secret_uuid",
    "keyring",
    "auth_key",
];

/// The node's iSCSI initiator name: the `initiator` connector fact, else one derived from the
/// node name (`iqn.2004-10.io.elara:<node>`), which the host must then log in with. Cinder's
/// iSCSI drivers refuse a connector without one.
pub fn initiator(node: &NodeInfo) -> String {
    if let Some((_, iqn)) = node
        .connector
        .iter()
        .find(|(k, v)| k == "initiator" && !v.trim().is_empty())
    {
        return iqn.trim().to_string();
    }
    let name: String = node
        .name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("iqn.2004-10.io.elara:{name}")
}

/// The connector Cinder's attachments API expects, from Elara's node facts: `host` is the Elara
/// node name (Cinder records it as the attachment's `host_name`), `initiator` as [`initiator`],
/// the rest as given (`ip`, `nqn`, `wwpns`, ...), with `platform`/`os_type`/`multipath` defaulted.
pub fn connector(node: &NodeInfo) -> Value {
    let mut c = Map::new();
    for (k, v) in &node.connector {
        let value = match k.as_str() {
            "multipath" | "do_local_attach" => {
                Value::Bool(matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
            }
            "wwpns" | "wwnns" => Value::Array(v.split(',').map(|s| Value::String(s.trim().to_string())).collect()),
            _ => Value::String(v.clone()),
        };
        c.insert(k.clone(), value);
    }
    c.insert("host".into(), Value::String(node.name.clone()));
    c.insert("initiator".into(), Value::String(initiator(node)));
    for (k, default) in [
        ("platform", json!("x86_64")),
        ("os_type", json!("linux")),
        ("multipath", json!(false)),
    ] {
        c.entry(k).or_insert(default);
    }
    c.entry("ip").or_insert(json!("127.0.0.1"));
    Value::Object(c)
}

/// `connection_info` → a connection: `iscsi` with portal, iqn, lun and CHAP; any other protocol
/// (`rbd`, `nvmeof`, `fibre_channel`, ...) as `other` with its properties, which the host reports
/// as unsupported if it cannot bring it up.
pub fn from_connection_info(info: &Value) -> DriverResult<Connection> {
    let kind = info
        .get("driver_volume_type")
        .and_then(Value::as_str)
        .ok_or_else(|| DriverError::backend("Cinder's connection info names no driver_volume_type"))?
        .to_ascii_lowercase();
    // The attachments API flattens `data` into the connection info; the legacy API nests it.
    let data = info
        .get("data")
        .and_then(Value::as_object)
        .unwrap_or_else(|| info.as_object().expect("checked above"));
    let text = |k: &str| data.get(k).and_then(python_str);
    let mut extra: Vec<(String, String)> = data
        .iter()
        .filter(|(k, _)| !SECRET_KEYS.contains(&k.as_str()) && k.as_str() != "driver_volume_type")
        .filter_map(|(k, v)| python_str(v).map(|s| (k.clone(), s)))
        .collect();
    extra.sort();
    if kind != "iscsi" {
        extra.insert(0, ("driver_volume_type".into(), kind.clone()));
        return Ok(Connection::Other((kind, extra)));
    }
    let portal = text("target_portal")
        .or_else(|| first(data.get("target_portals")))
        .ok_or_else(|| DriverError::backend("Cinder's iSCSI connection info has no target_portal"))?;
    let iqn = text("target_iqn")
        .or_else(|| first(data.get("target_iqns")))
        .ok_or_else(|| DriverError::backend("Cinder's iSCSI connection info has no target_iqn"))?;
    let lun = data
        .get("target_lun")
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .or_else(|| {
            data.get("target_luns")
                .and_then(Value::as_array)
                .and_then(|l| l.first()?.as_u64())
        })
        .unwrap_or(0) as u32;
    let auth = match (text("auth_method"), text("auth_username"), text("auth_password")) {
        (Some(m), Some(username), Some(secret)) if m.eq_ignore_ascii_case("chap") => {
            Some(ChapAuth { username, secret })
        }
        _ => None,
    };
    Ok(Connection::Iscsi(IscsiConnection {
        portal,
        iqn,
        lun,
        auth,
        extra,
    }))
}

fn first(v: Option<&Value>) -> Option<String> {
    v?.as_array()?.first().and_then(python_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_with_chap() {
        let info = json!({
            "driver_volume_type": "iscsi", "target_iqn": "iqn.2010-10.org.openstack:volume-1",
            "target_portal": "127.0.0.1:3260", "target_lun": 0, "auth_method": "CHAP",
            "auth_username": "u", "auth_password": "s3cret", "encrypted": false, "qos_specs": null
        });
        match from_connection_info(&info).unwrap() {
            Connection::Iscsi(c) => {
                assert_eq!(
                    (c.portal.as_str(), c.iqn.as_str(), c.lun),
                    ("127.0.0.1:3260", "iqn.2010-10.org.openstack:volume-1", 0)
                );
                let auth = c.auth.unwrap();
                assert_eq!((auth.username.as_str(), auth.secret.as_str()), ("u", "s3cret"));
                assert!(c.extra.iter().all(|(k, v)| k != "auth_password" && v != "s3cret"));
                assert!(c.extra.contains(&("encrypted".into(), "False".into())));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rbd_is_other() {
        let info = json!({"driver_volume_type": "rbd", "data": {"name": "volumes/volume-1", "hosts": ["10.0.0.1"], "auth_key": "k"}});
        match from_connection_info(&info).unwrap() {
            Connection::Other((kind, props)) => {
                assert_eq!(kind, "rbd");
                assert!(props.contains(&("name".into(), "volumes/volume-1".into())));
                assert!(props.iter().all(|(k, _)| k != "auth_key"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connector_names_the_node() {
        let node = NodeInfo {
            name: "node1".into(),
            connector: vec![("hostname".into(), "h".into()), ("initiator".into(), "iqn.x".into())],
        };
        let c = connector(&node);
        assert_eq!(c["host"], "node1");
        assert_eq!(c["initiator"], "iqn.x");
        assert_eq!(c["multipath"], false);
        let bare = NodeInfo {
            name: "Node_1".into(),
            connector: vec![],
        };
        assert_eq!(connector(&bare)["initiator"], "iqn.2004-10.io.elara:node-1");
    }
}
