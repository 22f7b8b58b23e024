//! Daemon configuration: defaults, overridden by a TOML file, overridden by environment variables
//! and flags (clap reads both; a flag beats its variable).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::attach::PathChoice;

/// `elara daemon` flags. Every flag also reads `ELARA_<NAME>` from the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct DaemonArgs {
    /// TOML configuration file (default: /etc/elara/elara.toml if it exists).
    #[arg(long, env = "ELARA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where Elara keeps its embedded store, pool directories, compiled drivers and mounts.
    #[arg(long, env = "ELARA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Metadata store: `etcd://h1:2379,h2:2379[/namespace]`, `etcds://[user@]h1:2379,...` (TLS),
    /// or a file path for the embedded store (default: DATA_DIR/store.redb). Never a password.
    #[arg(long, env = "ELARA_STORE")]
    pub store: Option<String>,
    /// etcds://: the CA certificate (PEM) that signed the etcd servers' certificates.
    #[arg(long, env = "ELARA_STORE_CA")]
    pub store_ca: Option<PathBuf>,
    /// etcds://: this node's client certificate (PEM), for etcd's --client-cert-auth.
    #[arg(long, env = "ELARA_STORE_CERT")]
    pub store_cert: Option<PathBuf>,
    /// etcds://: the key of --store-cert (PEM; mode 0600 or stricter).
    #[arg(long, env = "ELARA_STORE_KEY")]
    pub store_key: Option<PathBuf>,
    /// etcd user (or `user@` in the store URL).
    #[arg(long, env = "ELARA_STORE_USER")]
    pub store_user: Option<String>,
    /// File holding the etcd user's password (mode 0600 or stricter; one trailing newline is
    /// ignored). The password is never taken from the command line or the URL.
    #[arg(long, env = "ELARA_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<PathBuf>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, env = "ELARA_NODE")]
    pub node: Option<String>,
    /// Directory holding the built-in driver components (local.wasm, nfs.wasm, ...).
    #[arg(long, env = "ELARA_DRIVERS_DIR")]
    pub drivers_dir: Option<PathBuf>,
    /// Docker plugin socket directory; the socket is PLUGIN_DIR/elara.sock. `none` disables it.
    #[arg(long, env = "ELARA_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Optional TCP listener for the REST API (requires --tls-cert, --tls-key and --token-file
    /// unless --insecure-tcp).
    #[arg(long, env = "ELARA_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "ELARA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "ELARA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// File holding the bearer token TCP clients must send.
    #[arg(long, env = "ELARA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve the TCP listener without TLS. Dangerous: anyone on the network can read the token.
    #[arg(long, env = "ELARA_INSECURE_TCP")]
    pub insecure_tcp: bool,
    /// Seconds between pool capacity refreshes.
    #[arg(long, env = "ELARA_POOL_REFRESH")]
    pub pool_refresh_secs: Option<u64>,
    /// Seconds a node stays "up" without renewing its lease.
    #[arg(long, env = "ELARA_NODE_TTL")]
    pub node_ttl_secs: Option<u64>,
    /// Which iSCSI initiator attaches LUNs: the kernel's (open-iscsi), the user-space one
    /// (qemu-storage-daemon over FUSE), or `auto` (the kernel's where this node has one).
    #[arg(long, env = "ELARA_ATTACH_ISCSI", value_enum)]
    pub attach_iscsi: Option<PathChoice>,
    /// Which NFS client mounts exports: the kernel's, the user-space one (`elara nfs-fuse`), or `auto`.
    #[arg(long, env = "ELARA_ATTACH_NFS", value_enum)]
    pub attach_nfs: Option<PathChoice>,
    /// Seconds an iSCSI target or NFS server may leave a request unanswered before it fails (EIO).
    #[arg(long, env = "ELARA_ATTACH_IO_TIMEOUT")]
    pub attach_io_timeout_secs: Option<u64>,
    /// A directory under which REST clients may ask for a volume to be bind-mounted
    /// (`mount --path`); repeat for several. Default: only Elara's own mount root.
    #[arg(long = "mount-path-root", env = "ELARA_MOUNT_PATH_ROOTS", value_delimiter = ',')]
    pub mount_path_roots: Vec<PathBuf>,
    /// Most TCP connections served at once; more are closed on accept.
    #[arg(long, env = "ELARA_TCP_MAX_CONNECTIONS")]
    pub tcp_max_connections: Option<usize>,
    /// Seconds a TCP client has to finish its TLS handshake, and to send a request's headers.
    #[arg(long, env = "ELARA_TCP_HEADER_TIMEOUT")]
    pub tcp_header_timeout_secs: Option<u64>,
}

/// `[attach]` in the TOML file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachFileConfig {
    pub iscsi: Option<PathChoice>,
    pub nfs: Option<PathChoice>,
    pub io_timeout_secs: Option<u64>,
}

/// `[store]` in the TOML file; `store = "URL"` is the same as `[store] url = "URL"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFileConfig {
    pub url: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl StoreFileConfig {
    /// `store = "URL"` or a `[store]` table (whose unknown keys are refused by name).
    fn from_string_or_table<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<StoreFileConfig>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Option<StoreFileConfig>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a store URL or a [store] table")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<Self::Value, E> {
                Ok(Some(StoreFileConfig {
                    url: Some(url.to_string()),
                    ..Default::default()
                }))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                StoreFileConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The same settings as in the TOML file (every key optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "StoreFileConfig::from_string_or_table")]
    pub store: Option<StoreFileConfig>,
    pub node: Option<String>,
    pub drivers_dir: Option<PathBuf>,
    pub plugin_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub insecure_tcp: Option<bool>,
    pub pool_refresh_secs: Option<u64>,
    pub node_ttl_secs: Option<u64>,
    pub mount_path_roots: Option<Vec<PathBuf>>,
    pub tcp_max_connections: Option<usize>,
    pub tcp_header_timeout_secs: Option<u64>,
    pub attach: Option<AttachFileConfig>,
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The store URL, checked: no password in it, so it may be shown.
    pub store: String,
    /// etcd TLS files and credentials (read and checked when the store is opened).
    pub store_security: elara_store::etcd::EtcdSecurity,
    pub node: String,
    pub drivers_dir: Option<PathBuf>,
    pub plugin_dir: Option<PathBuf>,
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub insecure_tcp: bool,
    pub pool_refresh_secs: u64,
    pub node_ttl_secs: u64,
    pub attach_iscsi: PathChoice,
    pub attach_nfs: PathChoice,
    pub attach_io_timeout_secs: u64,
    /// Canonical directories REST bind paths must be under.
    pub mount_path_roots: Vec<PathBuf>,
    pub tcp_max_connections: usize,
    pub tcp_header_timeout_secs: u64,
}

pub const DEFAULT_DATA_DIR: &str = "/var/lib/elara";
pub const DEFAULT_SOCKET: &str = "/run/elara/elara.sock";
pub const DEFAULT_PLUGIN_DIR: &str = "/run/docker/plugins";
pub const DEFAULT_CONFIG: &str = "/etc/elara/elara.toml";

impl Config {
    pub fn resolve(args: &DaemonArgs, socket: &Path) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => load_file(Path::new(DEFAULT_CONFIG))?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let file_store = file.store.clone().unwrap_or_default();
        let store = args
            .store
            .clone()
            .or(file_store.url)
            .unwrap_or_else(|| data_dir.join("store.redb").display().to_string());
        // Checked here, before anything shows it: a password in the URL is refused without
        // echoing the URL.
        let store_url = elara_store::StoreUrl::parse(&store).map_err(|e| anyhow::anyhow!("{e}"))?;
        let store_security = elara_store::etcd::EtcdSecurity {
            ca: args.store_ca.clone().or(file_store.ca),
            cert: args.store_cert.clone().or(file_store.cert),
            key: args.store_key.clone().or(file_store.key),
            user: args.store_user.clone().or(file_store.user),
            password_file: args.store_password_file.clone().or(file_store.password_file),
        };
        if !store_url.is_cluster() && !store_security.is_empty() {
            bail!(
                "store: TLS and etcd credentials (--store-ca, --store-cert, --store-key, --store-user, \
                 --store-password-file) need an etcd:// or etcds:// store, not the embedded {store_url}"
            );
        }
        let node = match args.node.clone().or(file.node) {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .context("reading the host name for the node name (set --node)")?
                .to_string_lossy()
                .into_owned(),
        };
        crate::validate::check_name("node", &node).map_err(|e| anyhow::anyhow!("{e}"))?;
        let plugin_dir = match args.plugin_dir.clone().or(file.plugin_dir) {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(p),
            None => Some(DEFAULT_PLUGIN_DIR.into()),
        };
        // The global --socket flag wins unless it was left at its default and the file sets one.
        let socket = match file.socket {
            Some(s) if socket == Path::new(DEFAULT_SOCKET) => s,
            _ => socket.to_path_buf(),
        };
        let attach = file.attach.clone().unwrap_or_default();
        let cfg = Config {
            drivers_dir: args
                .drivers_dir
                .clone()
                .or(file.drivers_dir)
                .or_else(default_drivers_dir),
            plugin_dir,
            socket,
            listen: args.listen.or(file.listen),
            tls_cert: args.tls_cert.clone().or(file.tls_cert),
            tls_key: args.tls_key.clone().or(file.tls_key),
            token_file: args.token_file.clone().or(file.token_file),
            insecure_tcp: args.insecure_tcp || file.insecure_tcp.unwrap_or(false),
            pool_refresh_secs: args.pool_refresh_secs.or(file.pool_refresh_secs).unwrap_or(30),
            node_ttl_secs: args.node_ttl_secs.or(file.node_ttl_secs).unwrap_or(10),
            attach_iscsi: args.attach_iscsi.or(attach.iscsi).unwrap_or_default(),
            attach_nfs: args.attach_nfs.or(attach.nfs).unwrap_or_default(),
            attach_io_timeout_secs: args.attach_io_timeout_secs.or(attach.io_timeout_secs).unwrap_or(30),
            mount_path_roots: match (&args.mount_path_roots, file.mount_path_roots) {
                (a, _) if !a.is_empty() => a.clone(),
                (_, Some(f)) => f,
                _ => vec![data_dir.join("mounts")],
            },
            tcp_max_connections: args.tcp_max_connections.or(file.tcp_max_connections).unwrap_or(256),
            tcp_header_timeout_secs: args
                .tcp_header_timeout_secs
                .or(file.tcp_header_timeout_secs)
                .unwrap_or(10),
            data_dir,
            store,
            store_security,
            node,
        };
        if cfg.listen.is_some() {
            if cfg.token_file.is_none() {
                bail!("--listen needs --token-file: the TCP listener always requires a bearer token");
            }
            if !cfg.insecure_tcp && (cfg.tls_cert.is_none() || cfg.tls_key.is_none()) {
                bail!(
                    "--listen needs --tls-cert and --tls-key (or --insecure-tcp to serve plain TCP, which exposes the token)"
                );
            }
        }
        for root in &cfg.mount_path_roots {
            if !root.is_absolute()
                || root
                    .components()
                    .any(|c| !matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)))
            {
                bail!(
                    "mount_path_roots: {} must be an absolute path without `.` or `..`",
                    root.display()
                );
            }
        }
        if cfg.tcp_max_connections == 0 {
            bail!("tcp_max_connections: must be at least 1");
        }
        if !(1..=600).contains(&cfg.tcp_header_timeout_secs) {
            bail!(
                "tcp_header_timeout_secs: must be 1 to 600 seconds, not {}",
                cfg.tcp_header_timeout_secs
            );
        }
        if cfg.node_ttl_secs < 2 {
            bail!("node_ttl_secs: must be at least 2");
        }
        if !(1..=3600).contains(&cfg.attach_io_timeout_secs) {
            bail!(
                "attach.io_timeout_secs: must be 1 to 3600 seconds, not {}",
                cfg.attach_io_timeout_secs
            );
        }
        Ok(cfg)
    }

    pub fn pools_dir(&self) -> PathBuf {
        self.data_dir.join("pools")
    }
    pub fn mounts_dir(&self) -> PathBuf {
        self.data_dir.join("mounts")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("cache")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
    pub fn attach_config(&self) -> crate::attach::AttachConfig {
        crate::attach::AttachConfig {
            iscsi: self.attach_iscsi,
            nfs: self.attach_nfs,
            io_timeout: std::time::Duration::from_secs(self.attach_io_timeout_secs),
            pools_root: Some(self.pools_dir()),
            ..crate::attach::AttachConfig::new(self.mounts_dir(), self.run_dir())
        }
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// Built-in drivers: beside the binary (`../lib/elara/drivers`, as installed by scripts/setup.sh),
/// or the build output of a source checkout.
fn default_drivers_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?;
    let candidates = [
        bin.join("../lib/elara/drivers"),
        bin.join("../drivers"), // target/{debug,release}/elara → target/drivers
        PathBuf::from("/usr/local/lib/elara/drivers"),
    ];
    candidates.into_iter().find(|p| p.join("local.wasm").exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(toml: &str, args: DaemonArgs) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("elara.toml");
        std::fs::write(&path, toml)?;
        let args = DaemonArgs {
            config: Some(path),
            node: Some("n1".into()),
            ..args
        };
        Config::resolve(&args, Path::new(DEFAULT_SOCKET))
    }

    #[test]
    fn store_is_a_url_or_a_table() {
        let cfg = resolve_with("store = \"etcd://h1:2379/ns\"\n", DaemonArgs::default()).unwrap();
        assert_eq!(cfg.store, "etcd://h1:2379/ns");
        assert!(cfg.store_security.is_empty());

        let table = "[store]\nurl = \"etcds://elara@h1:2379,h2:2379/ns\"\nca = \"/etc/elara/ca.pem\"\n\
                     cert = \"/etc/elara/node.pem\"\nkey = \"/etc/elara/node.key\"\n\
                     password_file = \"/etc/elara/etcd.password\"\n";
        let cfg = resolve_with(table, DaemonArgs::default()).unwrap();
        assert_eq!(cfg.store, "etcds://elara@h1:2379,h2:2379/ns");
        assert_eq!(cfg.store_security.ca.as_deref(), Some(Path::new("/etc/elara/ca.pem")));
        assert_eq!(
            cfg.store_security.key.as_deref(),
            Some(Path::new("/etc/elara/node.key"))
        );
        assert_eq!(
            cfg.store_security.password_file.as_deref(),
            Some(Path::new("/etc/elara/etcd.password"))
        );

        // A flag beats the file.
        let args = DaemonArgs {
            store_ca: Some("/other/ca.pem".into()),
            ..Default::default()
        };
        let cfg = resolve_with(table, args).unwrap();
        assert_eq!(cfg.store_security.ca.as_deref(), Some(Path::new("/other/ca.pem")));
    }

    #[test]
    fn an_unknown_store_key_is_refused_by_name() {
        let err = resolve_with(
            "[store]\nurl = \"etcd://h1:2379\"\npassword = \"x\"\n",
            DaemonArgs::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `password`"), "{err:#}");
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        let args = DaemonArgs {
            store: Some("etcds://elara:s3cret@h1:2379".into()),
            ..Default::default()
        };
        let err = resolve_with("", args).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("--store-password-file"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn etcd_settings_with_the_embedded_store_are_refused() {
        let args = DaemonArgs {
            store: Some("/var/lib/elara/store.redb".into()),
            store_user: Some("elara".into()),
            ..Default::default()
        };
        let err = resolve_with("", args).unwrap_err();
        assert!(
            format!("{err:#}").contains("need an etcd:// or etcds:// store"),
            "{err:#}"
        );
    }
}
