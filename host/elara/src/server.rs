//! `elara daemon`: open the store and the runtime, register the node, install built-in drivers,
//! settle what a previous run left in flight, then serve REST (unix socket, optional TLS TCP) until
//! SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use tokio::sync::watch;

use crate::attach::Attacher;
use crate::config::Config;
use crate::ops::Elara;
use crate::ops::backends::Registry;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    // Before anything is created: the store, images and run files are root's alone.
    crate::data_dir::set_private_umask();
    crate::data_dir::prepare(&cfg)?;
    // Drivers' files and sockets are the daemon's descriptors (each instance capped at its
    // `max_open_resources`): take the whole hard limit, not the default soft 1024.
    match elara_runtime::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(?limit, "open-files limit raised to the hard limit"),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    let (stop_tx, stop_rx) = watch::channel(false);

    // The Docker plugin socket answers Plugin.Activate before the store is up.
    let docker = match &cfg.plugin_dir {
        Some(dir) => Some(
            crate::api::docker::Listener::bind(dir, &cfg.store)
                .await?
                .start(stop_rx.clone()),
        ),
        None => None,
    };

    let store = elara_store::open_with(&cfg.store, &cfg.store_security)
        .await
        .with_context(|| format!("opening the metadata store {}", cfg.store))?;
    // A new embedded store exists only now; an old one was checked above.
    crate::data_dir::prepare(&cfg)?;
    let runtime = elara_runtime::Runtime::new(elara_runtime::RuntimeConfig {
        cache_dir: cfg.cache_dir(),
        ..Default::default()
    })
    .context("starting the driver runtime")?;
    let attacher = Attacher::new(cfg.attach_config());
    for p in attacher.data_paths() {
        tracing::info!(protocol = %p.protocol, mode = %p.mode, available = p.available, selected = p.selected, "data path: {}", p.detail);
    }
    let elara = Arc::new(Elara {
        backends: Registry::new(store.clone(), runtime.clone(), cfg.pools_dir()),
        cfg: cfg.clone(),
        store,
        runtime,
        attacher,
        incarnation: uuid::Uuid::new_v4().to_string(),
        lease: Default::default(),
        consumed: Default::default(),
    });
    elara.register_self().await.context("registering this node")?;
    // Renew the node lease from now on: installing the built-in drivers can outlast its TTL.
    tokio::spawn(elara.clone().keep_alive_loop(stop_rx.clone()));
    elara
        .install_builtin()
        .await
        .context("installing the built-in drivers")?;
    match elara.reconcile_once().await {
        Ok(0) => {}
        Ok(n) => tracing::info!("settled {n} operation(s) left by a previous run"),
        Err(e) => tracing::warn!("first reconciler pass failed: {e}"),
    }

    tokio::spawn(elara.clone().reconcile_loop(stop_rx.clone()));
    tokio::spawn(pool_refresh_loop(elara.clone(), stop_rx.clone()));

    let app = crate::api::rest::router(elara.clone());
    let unix = crate::api::bind_unix(&cfg.socket)?;
    let mut servers = tokio::task::JoinSet::new();
    {
        let app = app.clone();
        let mut stop = stop_rx.clone();
        servers.spawn(async move {
            axum::serve(unix, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
                .context("REST on the unix socket")
        });
    }
    if let Some(addr) = cfg.listen {
        servers.spawn(crate::api::tcp::serve(addr, cfg.clone(), app.clone(), stop_rx.clone()));
    }
    if let Some((ready, task)) = docker {
        ready.send_replace(Some(elara.clone()));
        servers.spawn(async move { task.await.context("Docker plugin task")? });
    }
    tracing::info!(
        socket = %cfg.socket.display(),
        store = %elara.store.location(),
        node = %cfg.node,
        "elara ready in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        Some(res) = servers.join_next() => {
            let _ = stop_tx.send(true);
            res??;
            bail!("a listener stopped unexpectedly");
        }
    }
    let _ = stop_tx.send(true);
    let drain = async { while servers.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain).await.is_err() {
        tracing::warn!("requests still running after 30 s; stopping anyway");
    }
    elara.deregister_self().await;
    let _ = std::fs::remove_file(&cfg.socket);
    tracing::info!("stopped");
    Ok(())
}

async fn pool_refresh_loop(elara: Arc<Elara>, mut stop: watch::Receiver<bool>) {
    let period = Duration::from_secs(elara.cfg.pool_refresh_secs.max(1));
    loop {
        elara.refresh_all_pools().await;
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}
