//! One conformance suite, run against both back ends.
//!
//! Every check is an `async fn(Arc<dyn Store>, prefix)`; the [`conformance!`] macro turns each into
//! a module with an `embedded` and an `etcd` test. The etcd tests need a running etcd: start one
//! with `scripts/services/etcd.sh start /tmp/elara-etcd` and export the `ELARA_TEST_ETCD=host:port`
//! it prints. Without it they fail, unless `ELARA_SKIP_ETCD=1` says to skip them. Every test works
//! under its own random key prefix, so the tests run in parallel on one etcd.
//!
//! Back-end-specific checks (embedded durability, SIGKILL, restart with leases, lock, watch lag;
//! etcd unreachable) are at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use elara_store::embedded::{EmbeddedOptions, EmbeddedStore};
use elara_store::etcd::{EtcdOptions, EtcdSecurity, EtcdStore};
use elara_store::{Compare, Op, Store, StoreError, StoreExt, Txn, WatchEvent, WatchStream};
use futures::StreamExt;

// ---------------------------------------------------------------------------------------------
// Harness

fn unique_prefix() -> String {
    format!("/elara-test/{}/", uuid::Uuid::new_v4())
}

/// A fresh embedded store in a temp dir (kept alive by the returned guard). The sweep is fast so
/// lease tests stay short.
fn embedded_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EmbeddedOptions {
        sweep_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let store = EmbeddedStore::open_with(dir.path().join("store.redb"), options).expect("open embedded store");
    (Arc::new(store), dir)
}

/// The etcd under test, or `None` when `ELARA_SKIP_ETCD=1`. Panics when neither is set.
async fn etcd_store() -> Option<Arc<dyn Store>> {
    let endpoint = match std::env::var("ELARA_TEST_ETCD") {
        Ok(v) if !v.trim().is_empty() => v,
        _ if std::env::var("ELARA_SKIP_ETCD").as_deref() == Ok("1") => {
            eprintln!("ELARA_SKIP_ETCD=1: skipping this etcd test");
            return None;
        }
        _ => panic!(
            "ELARA_TEST_ETCD is not set. Start etcd with `scripts/services/etcd.sh start /tmp/elara-etcd` \
             and export the ELARA_TEST_ETCD=host:port it prints (or set ELARA_SKIP_ETCD=1 to skip the \
             etcd tests explicitly)"
        ),
    };
    let endpoints: Vec<String> = endpoint.split(',').map(str::to_string).collect();
    let security = etcd_security();
    let (tls, auth) = security
        .load(security.ca.is_some(), None)
        .expect("the ELARA_TEST_ETCD_* TLS and auth settings");
    let options = EtcdOptions {
        tls,
        auth,
        ..Default::default()
    };
    Some(Arc::new(
        EtcdStore::connect_with(&endpoints, options)
            .await
            .expect("connect to ELARA_TEST_ETCD"),
    ))
}

/// TLS and credentials of the etcd under test, from what `ETCD_TLS=1 scripts/services/etcd.sh`
/// prints (`ELARA_TEST_ETCD_CA`, `_CERT`, `_KEY`, `_USER`, `_PASSWORD_FILE`); none for a plain one.
fn etcd_security() -> EtcdSecurity {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    EtcdSecurity {
        ca: var("ELARA_TEST_ETCD_CA").map(Into::into),
        cert: var("ELARA_TEST_ETCD_CERT").map(Into::into),
        key: var("ELARA_TEST_ETCD_KEY").map(Into::into),
        user: var("ELARA_TEST_ETCD_USER"),
        password_file: var("ELARA_TEST_ETCD_PASSWORD_FILE").map(Into::into),
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                let (store, _dir) = super::embedded_store();
                super::$name(store, super::unique_prefix()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn etcd() {
                if let Some(store) = super::etcd_store().await {
                    super::$name(store, super::unique_prefix()).await;
                }
            }
        }
    )*};
}

conformance!(
    get_put_delete,
    revisions_increase,
    list_is_sorted_and_prefix_bounded,
    cas_create_update_exists,
    txn_is_all_or_nothing,
    txn_refuses_duplicate_keys,
    concurrent_cas_counter,
    lease_expiry_deletes_keys,
    lease_keep_alive_keeps_keys,
    lease_revoke_deletes_keys,
    watch_sees_puts_and_deletes_in_order,
    too_large_values_are_refused,
    corrupt_json_names_the_key,
);

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("watch event within 10 s")
        .expect("watch stream still open")
        .expect("watch event, not an error")
}

/// Poll until `key` is gone (a readiness check, not a sleep); returns when it vanished.
async fn wait_gone(store: &dyn Store, key: &str, deadline: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if store.get(key).await.unwrap().is_none() {
            return start.elapsed();
        }
        assert!(start.elapsed() < deadline, "{key} still present after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Shared checks

async fn get_put_delete(s: Arc<dyn Store>, p: String) {
    let k = format!("{p}vol");
    assert_eq!(s.get(&k).await.unwrap(), None);
    let r1 = s.put(&k, b"one".to_vec(), None).await.unwrap();
    assert!(r1 > 0);
    let kv = s.get(&k).await.unwrap().expect("present");
    assert_eq!(
        (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision, kv.lease),
        (k.as_str(), &b"one"[..], r1, None)
    );
    let r2 = s.put(&k, b"two".to_vec(), None).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(s.get(&k).await.unwrap().unwrap().value, b"two");
    assert!(s.delete(&k).await.unwrap());
    assert_eq!(s.get(&k).await.unwrap(), None);
    assert!(!s.delete(&k).await.unwrap(), "second delete reports absent");
    assert!(matches!(s.put("", b"x".to_vec(), None).await, Err(StoreError::Other(m)) if m.contains("key")));
}

async fn revisions_increase(s: Arc<dyn Store>, p: String) {
    let mut last = 0;
    for i in 0..5 {
        let r = s.put(&format!("{p}{i}"), vec![i], None).await.unwrap();
        assert!(r > last, "revision {r} after {last}");
        last = r;
    }
    assert!(s.delete(&format!("{p}0")).await.unwrap());
    let after_delete = s.put(&format!("{p}x"), vec![], None).await.unwrap();
    assert!(after_delete > last + 1, "the delete took a revision of its own");
    // A failed txn leaves the revision alone; a successful one moves it.
    let failed = s
        .txn(Txn {
            compares: vec![Compare::Revision {
                key: format!("{p}1"),
                revision: 0,
            }],
            ops: vec![Op::Put {
                key: format!("{p}1"),
                value: vec![],
                lease: None,
            }],
        })
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert!(failed.revision >= after_delete);
    let ok = s
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: format!("{p}y"),
                value: vec![],
                lease: None,
            }],
        })
        .await
        .unwrap();
    assert!(ok.succeeded && ok.revision > after_delete);
    assert_eq!(
        s.get(&format!("{p}y")).await.unwrap().unwrap().mod_revision,
        ok.revision
    );
}

async fn list_is_sorted_and_prefix_bounded(s: Arc<dyn Store>, p: String) {
    for k in ["vol/b", "vol/a", "vol/a/x", "vol/c", "volume", "vol0", "other/z"] {
        s.put(&format!("{p}{k}"), k.as_bytes().to_vec(), None).await.unwrap();
    }
    // A key that shares the string prefix of `p` without its trailing `/`.
    let outside = format!("{}x", p.trim_end_matches('/'));
    s.put(&outside, b"outside".to_vec(), None).await.unwrap();

    let keys = |v: Vec<String>| v.into_iter().map(|k| k[p.len()..].to_string()).collect::<Vec<_>>();
    let all = s.list(&p).await.unwrap();
    assert_eq!(
        keys(all.iter().map(|kv| kv.key.clone()).collect()),
        ["other/z", "vol/a", "vol/a/x", "vol/b", "vol/c", "vol0", "volume"]
    );
    assert!(
        all.iter()
            .all(|kv| kv.value == kv.key.as_bytes()[p.len()..] && kv.mod_revision > 0)
    );
    // The prefix is a plain string prefix: "vol" covers "vol0" and "volume"; "vol/" only the segment.
    assert_eq!(
        keys(s.list_keys(&format!("{p}vol/")).await.unwrap()),
        ["vol/a", "vol/a/x", "vol/b", "vol/c"]
    );
    assert_eq!(
        keys(s.list_keys(&format!("{p}vol")).await.unwrap()),
        ["vol/a", "vol/a/x", "vol/b", "vol/c", "vol0", "volume"]
    );
    let with_values: Vec<String> = s
        .list(&format!("{p}vol/"))
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(with_values, s.list_keys(&format!("{p}vol/")).await.unwrap());
    assert!(s.list(&format!("{p}nothing/")).await.unwrap().is_empty());
    assert!(!s.list_keys(&p).await.unwrap().contains(&outside));
}

async fn cas_create_update_exists(s: Arc<dyn Store>, p: String) {
    let k = format!("{p}vol");
    let create = |v: &str| Txn {
        compares: vec![Compare::Revision {
            key: k.clone(),
            revision: 0,
        }],
        ops: vec![Op::Put {
            key: k.clone(),
            value: v.into(),
            lease: None,
        }],
    };
    let first = s.txn(create("first")).await.unwrap();
    assert!(first.succeeded, "create-if-absent on an absent key");
    let second = s.txn(create("second")).await.unwrap();
    assert!(!second.succeeded, "create-if-absent on a present key");
    assert_eq!(second.revision, first.revision, "nothing happened in between");
    assert_eq!(s.get(&k).await.unwrap().unwrap().value, b"first");

    let update = |rev, v: &str| Txn {
        compares: vec![Compare::Revision {
            key: k.clone(),
            revision: rev,
        }],
        ops: vec![Op::Put {
            key: k.clone(),
            value: v.into(),
            lease: None,
        }],
    };
    let updated = s.txn(update(first.revision, "updated")).await.unwrap();
    assert!(updated.succeeded, "revision compare with the current revision");
    let stale = s.txn(update(first.revision, "stale")).await.unwrap();
    assert!(!stale.succeeded, "revision compare with a stale revision");
    assert_eq!(s.get(&k).await.unwrap().unwrap().value, b"updated");

    let absent = format!("{p}absent");
    let exists = |key: &str| Txn {
        compares: vec![Compare::Exists { key: key.to_string() }],
        ops: vec![Op::Put {
            key: format!("{p}marker"),
            value: key.into(),
            lease: None,
        }],
    };
    assert!(
        !s.txn(exists(&absent)).await.unwrap().succeeded,
        "Exists on an absent key"
    );
    assert_eq!(s.get(&format!("{p}marker")).await.unwrap(), None);
    assert!(s.txn(exists(&k)).await.unwrap().succeeded, "Exists on a present key");
    // A revision compare on an absent key fails for any non-zero revision.
    s.delete(&k).await.unwrap();
    assert!(!s.txn(update(updated.revision, "x")).await.unwrap().succeeded);
    assert_eq!(s.get(&k).await.unwrap(), None);
}

async fn txn_is_all_or_nothing(s: Arc<dyn Store>, p: String) {
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    let rc = s.put(&c, b"c".to_vec(), None).await.unwrap();
    let ops = vec![
        Op::Put {
            key: a.clone(),
            value: b"a".to_vec(),
            lease: None,
        },
        Op::Put {
            key: b.clone(),
            value: b"b".to_vec(),
            lease: None,
        },
        Op::Delete { key: c.clone() },
    ];
    // One compare holds, one does not: nothing is applied.
    let failed = s
        .txn(Txn {
            compares: vec![
                Compare::Revision {
                    key: c.clone(),
                    revision: rc,
                },
                Compare::Exists { key: a.clone() },
            ],
            ops: ops.clone(),
        })
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(s.get(&a).await.unwrap(), None);
    assert_eq!(s.get(&b).await.unwrap(), None);
    assert_eq!(s.get(&c).await.unwrap().unwrap().mod_revision, rc);

    // An op that fails (unknown lease) after a valid one: an error, and nothing applied.
    let err = s
        .txn(Txn {
            compares: vec![],
            ops: vec![
                Op::Put {
                    key: a.clone(),
                    value: b"a".to_vec(),
                    lease: None,
                },
                Op::Put {
                    key: b.clone(),
                    value: b"b".to_vec(),
                    lease: Some(0x7ead_beef),
                },
            ],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "{err:?}");
    assert_eq!(
        s.get(&a).await.unwrap(),
        None,
        "the first op of a failed txn is not applied"
    );

    // All compares hold: every op applies, at one revision.
    let ok = s
        .txn(Txn {
            compares: vec![Compare::Revision {
                key: c.clone(),
                revision: rc,
            }],
            ops,
        })
        .await
        .unwrap();
    assert!(ok.succeeded);
    assert_eq!(s.get(&a).await.unwrap().unwrap().mod_revision, ok.revision);
    assert_eq!(s.get(&b).await.unwrap().unwrap().mod_revision, ok.revision);
    assert_eq!(s.get(&c).await.unwrap(), None);
}

async fn txn_refuses_duplicate_keys(s: Arc<dyn Store>, p: String) {
    let k = format!("{p}dup");
    let err = s
        .txn(Txn {
            compares: vec![],
            ops: vec![
                Op::Put {
                    key: k.clone(),
                    value: b"1".to_vec(),
                    lease: None,
                },
                Op::Delete { key: k.clone() },
            ],
        })
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::Other(m) if m.contains("twice")), "{err:?}");
    assert_eq!(s.get(&k).await.unwrap(), None);
}

async fn concurrent_cas_counter(s: Arc<dyn Store>, p: String) {
    const TASKS: usize = 20;
    const PER_TASK: usize = 5;
    let k = format!("{p}counter");
    s.put(&k, b"0".to_vec(), None).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (s, k) = (s.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            while won.len() < PER_TASK {
                let cur = s.get(&k).await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                let res = s
                    .txn(Txn {
                        compares: vec![Compare::Revision {
                            key: k.clone(),
                            revision: cur.mod_revision,
                        }],
                        ops: vec![Op::Put {
                            key: k.clone(),
                            value: (n + 1).to_string().into_bytes(),
                            lease: None,
                        }],
                    })
                    .await
                    .unwrap();
                if res.succeeded {
                    won.push((cur.mod_revision, res.revision));
                }
            }
            won
        }));
    }
    let mut wins = Vec::new();
    for t in tasks {
        wins.extend(t.await.unwrap());
    }
    let total = TASKS * PER_TASK;
    assert_eq!(s.get(&k).await.unwrap().unwrap().value, total.to_string().into_bytes());
    // Exactly one winner per base revision, and every new revision is distinct.
    let mut bases: Vec<_> = wins.iter().map(|w| w.0).collect();
    let mut news: Vec<_> = wins.iter().map(|w| w.1).collect();
    bases.sort();
    bases.dedup();
    news.sort();
    news.dedup();
    assert_eq!((bases.len(), news.len()), (total, total));
}

async fn lease_expiry_deletes_keys(s: Arc<dyn Store>, p: String) {
    let ttl = Duration::from_secs(2);
    let lease = s.grant_lease(ttl).await.unwrap();
    assert!(s.lease_alive(lease).await.unwrap());
    let (k, plain) = (format!("{p}leased"), format!("{p}plain"));
    let mut watch = s.watch(&p).await.unwrap();
    let granted_at = Instant::now();
    let rev = s.put(&k, b"v".to_vec(), Some(lease)).await.unwrap();
    s.put(&plain, b"v".to_vec(), None).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap().unwrap().lease, Some(lease));

    // ttl + sweep interval + etcd's expiry granularity (500 ms checks, one raft round) + slack.
    wait_gone(&*s, &k, ttl + Duration::from_secs(3)).await;
    assert!(
        granted_at.elapsed() >= ttl - Duration::from_millis(300),
        "expired early: {:?}",
        granted_at.elapsed()
    );
    assert!(s.get(&plain).await.unwrap().is_some(), "a key without a lease stays");
    assert!(!s.lease_alive(lease).await.unwrap());
    assert!(matches!(s.keep_alive(lease).await, Err(StoreError::LeaseNotFound(_))));
    assert!(matches!(
        s.put(&k, b"v".to_vec(), Some(lease)).await,
        Err(StoreError::LeaseNotFound(_))
    ));

    // The watch saw the put, the plain put, then the expiry's delete.
    assert!(matches!(next_event(&mut watch).await, WatchEvent::Put(kv) if kv.key == k && kv.mod_revision == rev));
    assert!(matches!(next_event(&mut watch).await, WatchEvent::Put(kv) if kv.key == plain));
    match next_event(&mut watch).await {
        WatchEvent::Delete { key, revision } => assert!(key == k && revision > rev),
        other => panic!("expected the expiry's delete, got {other:?}"),
    }
}

async fn lease_keep_alive_keeps_keys(s: Arc<dyn Store>, p: String) {
    let ttl = Duration::from_secs(2);
    let lease = s.grant_lease(ttl).await.unwrap();
    let k = format!("{p}kept");
    s.put(&k, b"v".to_vec(), Some(lease)).await.unwrap();
    let start = Instant::now();
    while start.elapsed() < ttl * 2 {
        s.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            s.get(&k).await.unwrap().is_some(),
            "gone at {:?} despite keep-alives",
            start.elapsed()
        );
    }
    assert!(s.lease_alive(lease).await.unwrap());
    // Stop refreshing: it goes.
    wait_gone(&*s, &k, ttl + Duration::from_secs(3)).await;
}

async fn lease_revoke_deletes_keys(s: Arc<dyn Store>, p: String) {
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    s.put(&a, b"a".to_vec(), Some(lease)).await.unwrap();
    s.put(&b, b"b".to_vec(), Some(lease)).await.unwrap();
    s.put(&c, b"c".to_vec(), None).await.unwrap();
    // Re-putting a without the lease detaches it.
    s.put(&a, b"a2".to_vec(), None).await.unwrap();
    assert_eq!(s.get(&a).await.unwrap().unwrap().lease, None);
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(
        s.get(&b).await.unwrap(),
        None,
        "revoke deletes the lease's keys at once"
    );
    assert_eq!(s.get(&a).await.unwrap().unwrap().value, b"a2");
    assert!(s.get(&c).await.unwrap().is_some());
    assert!(!s.lease_alive(lease).await.unwrap());
    assert!(matches!(s.revoke_lease(lease).await, Err(StoreError::LeaseNotFound(_))));
    assert!(matches!(s.keep_alive(lease).await, Err(StoreError::LeaseNotFound(_))));
    assert!(matches!(
        s.put(&c, vec![], Some(lease)).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

async fn watch_sees_puts_and_deletes_in_order(s: Arc<dyn Store>, p: String) {
    let before = format!("{p}w/before");
    s.put(&before, b"old".to_vec(), None).await.unwrap();
    let mut watch = s.watch(&format!("{p}w/")).await.unwrap();
    let (a, b, c) = (format!("{p}w/a"), format!("{p}w/b"), format!("{p}w/c"));
    let ra = s.put(&a, b"1".to_vec(), None).await.unwrap();
    s.put(&format!("{p}elsewhere"), b"x".to_vec(), None).await.unwrap();
    let rb = s.put(&b, b"2".to_vec(), None).await.unwrap();
    assert!(s.delete(&a).await.unwrap());
    let t = s
        .txn(Txn {
            compares: vec![],
            ops: vec![
                Op::Put {
                    key: c.clone(),
                    value: b"3".to_vec(),
                    lease: None,
                },
                Op::Delete { key: b.clone() },
            ],
        })
        .await
        .unwrap();

    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(match next_event(&mut watch).await {
            WatchEvent::Put(kv) => (format!("put {}", &kv.key[p.len()..]), kv.mod_revision),
            WatchEvent::Delete { key, revision } => (format!("delete {}", &key[p.len()..]), revision),
        });
    }
    let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(names, ["put w/a", "put w/b", "delete w/a", "put w/c", "delete w/b"]);
    assert_eq!((got[0].1, got[1].1), (ra, rb));
    assert!(got[2].1 > rb);
    assert_eq!((got[3].1, got[4].1), (t.revision, t.revision), "one txn, one revision");
    // Nothing else is pending (not the earlier put, not the key outside the prefix).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.next())
            .await
            .is_err()
    );
}

async fn too_large_values_are_refused(s: Arc<dyn Store>, p: String) {
    let max = s.max_value_size();
    assert!(max >= 1024 * 1024, "at least 1 MiB: {max}");
    let k = format!("{p}big");
    match s.put(&k, vec![b'x'; max + 1], None).await {
        Err(StoreError::TooLarge { key, size, limit }) => {
            assert_eq!((key, size, limit), (k.clone(), max + 1, max))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(s.get(&k).await.unwrap(), None);
    // Exactly the limit is accepted (etcd's request limit leaves room for it).
    s.put(&k, vec![b'y'; max], None).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap().unwrap().value.len(), max);
    // A transaction's values count together.
    let half = max / 2 + 1;
    let err = s
        .txn(Txn {
            compares: vec![],
            ops: vec![
                Op::Put {
                    key: format!("{p}h1"),
                    value: vec![0; half],
                    lease: None,
                },
                Op::Put {
                    key: format!("{p}h2"),
                    value: vec![0; half],
                    lease: None,
                },
            ],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
    assert_eq!(s.get(&format!("{p}h1")).await.unwrap(), None);
}

async fn corrupt_json_names_the_key(s: Arc<dyn Store>, p: String) {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Rec {
        name: String,
    }
    let good = format!("{p}a-good");
    let bad = format!("{p}b-bad");
    s.put(&good, br#"{"name":"ok"}"#.to_vec(), None).await.unwrap();
    s.put(&bad, b"{not json".to_vec(), None).await.unwrap();
    let rec = s.get_json::<Rec>(&good).await.unwrap().unwrap();
    assert_eq!(rec.value.name, "ok");
    assert!(rec.revision > 0);
    match s.get_json::<Rec>(&bad).await {
        Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, bad),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match s.list_json::<Rec>(&p).await {
        Err(e @ StoreError::Corrupt { .. }) => assert!(e.to_string().contains(&bad), "{e}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Embedded only

mod embedded_only {
    use super::*;

    fn open(path: &std::path::Path) -> EmbeddedStore {
        EmbeddedStore::open_with(
            path,
            EmbeddedOptions {
                sweep_interval: Duration::from_millis(100),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn open_creates_parent_dirs_and_refuses_a_second_opener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c/store.redb");
        let first = open(&path);
        match EmbeddedStore::open(&path) {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("locked") && m.contains("store.redb"), "{m}")
            }
            Err(other) => panic!("expected Unavailable, got {other:?}"),
            Ok(_) => panic!("a second opener must be refused"),
        }
        assert_eq!(first.kind(), "embedded");
        drop(first);
        open(&path); // the lock goes with the store
    }

    #[tokio::test]
    async fn writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let mut revisions = Vec::new();
        {
            let s = open(&path);
            for i in 0..100 {
                revisions.push(s.put(&format!("/k/{i:03}"), vec![i as u8; 100], None).await.unwrap());
            }
            s.delete("/k/050").await.unwrap();
        }
        let s = open(&path);
        let all = s.list("/k/").await.unwrap();
        assert_eq!(all.len(), 99);
        for kv in &all {
            let i: usize = kv.key[3..].parse().unwrap();
            assert_eq!((kv.mod_revision, kv.value.clone()), (revisions[i], vec![i as u8; 100]));
        }
        let next = s.put("/k/new", vec![], None).await.unwrap();
        assert!(
            next > revisions[99] + 1,
            "the revision counter survived too (the delete took one)"
        );
    }

    /// The child half of `sigkill_loses_no_acknowledged_write`: puts keys and prints each
    /// acknowledgement. Does nothing when run as a plain test.
    #[tokio::test]
    async fn sigkill_child() {
        let Ok(path) = std::env::var("ELARA_STORE_SIGKILL_CHILD") else {
            return;
        };
        use std::io::Write;
        let s = EmbeddedStore::open(&path).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0.. {
            let rev = s
                .put(&format!("/k/{i:06}"), format!("value-{i}").into_bytes(), None)
                .await
                .unwrap();
            writeln!(out, "ACK {i} {rev}").unwrap();
            out.flush().unwrap();
        }
    }

    #[tokio::test]
    async fn sigkill_loses_no_acknowledged_write() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "embedded_only::sigkill_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ELARA_STORE_SIGKILL_CHILD", &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut acked = Vec::new();
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let (i, rev) = rest.split_once(' ').unwrap();
            acked.push((i.parse::<usize>().unwrap(), rev.parse::<i64>().unwrap()));
            if acked.len() == 200 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(acked.len(), 200, "the child acknowledged 200 puts before the kill");
        let s = open(&path);
        for (i, rev) in acked {
            let kv = s
                .get(&format!("/k/{i:06}"))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged put {i} lost"));
            assert_eq!((kv.mod_revision, kv.value), (rev, format!("value-{i}").into_bytes()));
        }
    }

    #[tokio::test]
    async fn lease_survives_reopen_and_still_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let ttl = Duration::from_secs(2);
        let (lease, granted_at) = {
            let s = open(&path);
            let lease = s.grant_lease(ttl).await.unwrap();
            let at = Instant::now();
            s.put("/k/owned", b"mine".to_vec(), Some(lease)).await.unwrap();
            (lease, at)
        };
        let s = open(&path);
        assert!(
            s.lease_alive(lease).await.unwrap(),
            "the lease outlives the process that took it"
        );
        assert_eq!(s.get("/k/owned").await.unwrap().unwrap().lease, Some(lease));
        let mut watch = s.watch("/k/").await.unwrap();
        wait_gone(&s, "/k/owned", ttl + Duration::from_secs(2)).await;
        assert!(granted_at.elapsed() >= ttl - Duration::from_millis(50));
        assert!(!s.lease_alive(lease).await.unwrap());
        assert!(matches!(next_event(&mut watch).await, WatchEvent::Delete { key, .. } if key == "/k/owned"));
        // A new lease never reuses an old id.
        assert!(s.grant_lease(ttl).await.unwrap() > lease);
    }

    #[tokio::test]
    async fn a_lagging_watcher_gets_an_error_not_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open_with(
            dir.path().join("s.redb"),
            EmbeddedOptions {
                watch_buffer: 8,
                ..Default::default()
            },
        )
        .unwrap();
        let mut watch = s.watch("/k/").await.unwrap();
        for i in 0..50 {
            s.put(&format!("/k/{i}"), vec![], None).await.unwrap();
        }
        let item = watch.next().await.expect("an item");
        assert!(
            matches!(&item, Err(StoreError::Other(m)) if m.contains("behind")),
            "{item:?}"
        );
        assert!(watch.next().await.is_none(), "the stream ends after the error");
    }
}

// ---------------------------------------------------------------------------------------------
// etcd only

#[tokio::test]
async fn etcd_unreachable_is_unavailable() {
    let options = EtcdOptions {
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let start = Instant::now();
    match EtcdStore::connect_with(&["127.0.0.1:1".to_string()], options).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("127.0.0.1:1"), "{m}"),
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "bounded by the connect timeout"
    );
}

#[tokio::test]
async fn open_picks_the_back_end_from_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x/store.redb");
    let s = elara_store::open(&format!("file://{}", path.display())).await.unwrap();
    assert_eq!((s.kind(), s.location()), ("embedded", path.display().to_string()));
    if let Ok(ep) = std::env::var("ELARA_TEST_ETCD") {
        let security = etcd_security();
        let url = match (&security.ca, &security.user) {
            (Some(_), Some(user)) => format!("etcds://{user}@{ep}"),
            (Some(_), None) => format!("etcds://{ep}"),
            (None, Some(user)) => format!("etcd://{user}@{ep}"),
            (None, None) => format!("etcd://{ep}"),
        };
        let s = elara_store::open_with(&url, &security).await.unwrap();
        assert_eq!((s.kind(), s.location()), ("etcd", url));
    }
}
