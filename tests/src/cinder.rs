//! The real OpenStack Cinder the cinder driver's tests use (`scripts/services/cinder.sh`: Cinder 29
//! api + scheduler + volume on 127.0.0.1, noauth), and a client of its API (curl) for checking
//! independently what Cinder holds.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

/// A public volume type of the `multi` backend, made by the tests when missing.
pub const MULTI_TYPE: &str = "elara-test-multi";

/// The Cinder that `scripts/services/cinder.sh start` runs, and a client of its API (curl).
pub struct Cinder {
    /// `http://127.0.0.1:8776/v3/<project>`.
    pub endpoint: String,
    pub project: String,
    pub token: String,
}

impl Cinder {
    pub fn from_env() -> Cinder {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is not set: start Cinder with `scripts/services/cinder.sh start .work/cinder` and export \
                     the lines it prints (scripts/test.sh does)"
                )
            })
        };
        Cinder {
            endpoint: var("ELARA_TEST_CINDER"),
            project: var("ELARA_TEST_CINDER_PROJECT"),
            token: var("ELARA_TEST_CINDER_TOKEN"),
        }
    }

    pub fn host_port(&self) -> String {
        let rest = self.endpoint.trim_start_matches("http://");
        rest.split('/').next().unwrap_or(rest).to_string()
    }

    /// `--config` and `--allow-host` arguments of `elara driver check` on the cinder driver with
    /// noauth for this Cinder, the unique `tag`, and `extra` config keys.
    pub fn driver_check_args(&self, tag: &str, extra: &[(&str, &str)]) -> Vec<String> {
        let mut args = vec![];
        let base = [
            ("endpoint", self.endpoint.as_str()),
            ("auth", "noauth"),
            ("project_id", self.project.as_str()),
            ("tag", tag),
        ];
        for (k, v) in base.iter().chain(extra) {
            args.push("--config".to_string());
            args.push(format!("{k}={v}"));
        }
        args.push("--allow-host".into());
        args.push(self.host_port());
        args
    }

    /// `backend add NAME --driver cinder` with noauth for this Cinder, the unique `tag`, and `extra`.
    pub fn backend_add(&self, name: &str, tag: &str, extra: &[(&str, &str)]) -> Vec<String> {
        let mut args: Vec<String> = ["backend", "add", name, "--driver", "cinder"]
            .map(String::from)
            .to_vec();
        let mut config = vec![
            ("endpoint".to_string(), self.endpoint.clone()),
            ("auth".into(), "noauth".into()),
            ("project_id".into(), self.project.clone()),
            ("tag".into(), tag.to_string()),
        ];
        for (k, v) in extra {
            config.retain(|(ck, _)| ck != k);
            config.push((k.to_string(), v.to_string()));
        }
        for (k, v) in config {
            args.push("--config".into());
            args.push(format!("{k}={v}"));
        }
        args.push("--allow-host".into());
        args.push(self.host_port());
        args
    }

    /// One API call with curl: (HTTP status, JSON body or null). `query` pairs are URL-encoded by curl.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let (token, endpoint) = (&self.token, &self.endpoint);
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-m",
            "30",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("X-Auth-Token: {token}"),
        ]);
        cmd.args([
            "-H",
            "Accept: application/json",
            "-H",
            "OpenStack-API-Version: volume 3.71",
        ]);
        if !query.is_empty() {
            cmd.arg("-G");
            for (k, v) in query {
                cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
            }
        } else {
            cmd.args(["-X", method]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", &b.to_string()]);
        }
        cmd.arg(format!("{endpoint}{path}"));
        let out = cmd.output().context("running curl")?;
        ensure!(
            out.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code: u16 = code
            .trim()
            .parse()
            .with_context(|| format!("curl status of {path}: {text:?}"))?;
        let value = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or(Value::String(body.into()))
        };
        Ok((code, value))
    }

    pub fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let (code, v) = self.call("GET", path, query, None)?;
        ensure!((200..300).contains(&code), "GET {path}: HTTP {code}: {v}");
        Ok(v)
    }

    /// Volumes whose metadata has `key=value`.
    pub fn volumes_where(&self, key: &str, value: &str) -> anyhow::Result<Vec<Value>> {
        let v = self.get("/volumes/detail", &[("metadata", json!({ key: value }).to_string())])?;
        Ok(v["volumes"].as_array().cloned().unwrap_or_default())
    }

    pub fn snapshots_where(&self, key: &str, value: &str) -> anyhow::Result<Vec<Value>> {
        let v = self.get("/snapshots/detail", &[("metadata", json!({ key: value }).to_string())])?;
        Ok(v["snapshots"].as_array().cloned().unwrap_or_default())
    }

    /// The one Cinder volume carrying Elara's id (fails on none or several).
    pub fn volume_of(&self, elara_id: &str) -> anyhow::Result<Value> {
        let vols = self.volumes_where("elara-id", elara_id)?;
        ensure!(
            vols.len() == 1,
            "expected exactly one Cinder volume with elara-id={elara_id}, found {}: {vols:?}",
            vols.len()
        );
        Ok(vols[0].clone())
    }

    pub fn volume(&self, uuid: &str) -> anyhow::Result<Value> {
        Ok(self.get(&format!("/volumes/{uuid}"), &[])?["volume"].clone())
    }

    pub fn attachments(&self, volume_uuid: &str) -> anyhow::Result<Vec<Value>> {
        let v = self.get("/attachments/detail", &[("volume_id", volume_uuid.to_string())])?;
        Ok(v["attachments"].as_array().cloned().unwrap_or_default())
    }

    /// Make the public type [`MULTI_TYPE`] (volume_backend_name=multi) if it is missing.
    pub fn ensure_multi_type(&self) -> anyhow::Result<()> {
        let types = self.get("/types", &[])?;
        if types["volume_types"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["name"] == MULTI_TYPE)
        {
            return Ok(());
        }
        let body = json!({ "volume_type": { "name": MULTI_TYPE, "extra_specs": { "volume_backend_name": "multi" } } });
        let (code, v) = self.call("POST", "/types", &[], Some(&body))?;
        // 409: a parallel test made it first.
        ensure!(
            code == 200 || code == 409,
            "creating type {MULTI_TYPE}: HTTP {code}: {v}"
        );
        Ok(())
    }

    /// Wait (bounded) until `check` holds, reading Cinder each time.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if check()? {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("Cinder: {what} not reached within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
