//! The real S3 server the s3 driver's tests and benchmark use (Ceph RADOS Gateway, started by
//! `scripts/services/s3.sh`), and an independent client to check what is in it: boto3, from the
//! venv that script makes. The driver's own word is never taken for what S3 holds.

use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// The S3 endpoint and credentials from `scripts/services/s3.sh start` (env `ELARA_TEST_S3_*`).
#[derive(Debug, Clone)]
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// A Python with boto3.
    pub python: String,
}

/// boto3 one-liners: `python -c SCRIPT OP ARGS...` prints JSON.
const BOTO: &str = r#"
import json, os, sys
import boto3
from botocore.client import Config
from botocore.exceptions import ClientError
ep, region, op, *args = sys.argv[1:]
# Credentials come in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, not in the process list.
s3 = boto3.client("s3", endpoint_url=ep, region_name=region,
                  config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 2}))
def objects(bucket, prefix):
    out = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [[o["Key"], o["Size"]] for o in page.get("Contents", [])]
    except ClientError as e:
        if e.response["Error"]["Code"] != "NoSuchBucket":
            raise
        return None
    return out
if op == "buckets":
    print(json.dumps([b["Name"] for b in s3.list_buckets()["Buckets"]]))
elif op == "objects":
    print(json.dumps(objects(args[0], args[1])))
elif op == "get":
    try:
        print(json.dumps(s3.get_object(Bucket=args[0], Key=args[1])["Body"].read().decode("utf-8", "replace")))
    except ClientError as e:
        print(json.dumps(None))
elif op == "put":
    s3.put_object(Bucket=args[0], Key=args[1], Body=args[2].encode())
    print(json.dumps(True))
elif op == "put-random":
    import hashlib
    body = os.urandom(int(args[2]))
    s3.put_object(Bucket=args[0], Key=args[1], Body=body)
    print(json.dumps(hashlib.sha256(body).hexdigest()))
elif op == "sha256":
    import hashlib
    print(json.dumps(hashlib.sha256(s3.get_object(Bucket=args[0], Key=args[1])["Body"].read()).hexdigest()))
elif op == "etag":
    print(json.dumps(s3.head_object(Bucket=args[0], Key=args[1])["ETag"].strip('"')))
elif op == "put-many":
    bucket, prefix, n, size = args[0], args[1], int(args[2]), int(args[3])
    from concurrent.futures import ThreadPoolExecutor
    body = b"x" * size
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda i: s3.put_object(Bucket=bucket, Key="%sf%05d" % (prefix, i), Body=body), range(n)))
    print(json.dumps(n))
elif op == "purge":
    # Remove every bucket whose name starts with args[0], with its objects.
    for b in s3.list_buckets()["Buckets"]:
        if b["Name"].startswith(args[0]):
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=b["Name"], Delete={"Objects": keys})
            s3.delete_bucket(Bucket=b["Name"])
    print(json.dumps(True))
elif op == "create-bucket":
    s3.create_bucket(Bucket=args[0])
    print(json.dumps(True))
else:
    sys.exit("unknown op " + op)
"#;

impl S3Server {
    /// The server `scripts/test.sh` started; panics with how to start one if the env is not set.
    pub fn from_env() -> S3Server {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is not set: start the S3 server with `scripts/services/s3.sh start .work/s3` \
                     and export the lines it prints (scripts/test.sh does)"
                )
            })
        };
        S3Server {
            endpoint: var("ELARA_TEST_S3_ENDPOINT"),
            region: var("ELARA_TEST_S3_REGION"),
            access_key: var("ELARA_TEST_S3_ACCESS_KEY"),
            secret_key: var("ELARA_TEST_S3_SECRET_KEY"),
            python: var("ELARA_TEST_S3_PYTHON"),
        }
    }

    /// `host:port` of the endpoint, for `--allow-host`.
    pub fn host_port(&self) -> String {
        self.endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string()
    }

    /// `elara backend add NAME --driver s3 ...` arguments with this server's endpoint, region,
    /// credentials and grant, then `extra` config pairs (which override the defaults by key).
    pub fn backend_add_args(&self, name: &str, extra: &[(&str, &str)]) -> Vec<String> {
        let mut config: Vec<(String, String)> = vec![
            ("endpoint".into(), self.endpoint.clone()),
            ("region".into(), self.region.clone()),
            ("access_key".into(), self.access_key.clone()),
            ("secret_key".into(), self.secret_key.clone()),
        ];
        for (k, v) in extra {
            config.retain(|(ck, _)| ck != k);
            config.push((k.to_string(), v.to_string()));
        }
        let mut args: Vec<String> = vec![
            "backend".into(),
            "add".into(),
            name.into(),
            "--driver".into(),
            "s3".into(),
        ];
        for (k, v) in config {
            args.push("--config".into());
            args.push(format!("{k}={v}"));
        }
        args.push("--allow-host".into());
        args.push(self.host_port());
        args
    }

    /// Run one boto3 operation and parse its JSON output.
    pub fn boto(&self, op: &str, args: &[&str]) -> anyhow::Result<Value> {
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(BOTO)
            .args([&self.endpoint, &self.region, op])
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .args(args)
            .output()
            .with_context(|| format!("running {} (boto3)", self.python))?;
        if !out.status.success() {
            bail!("boto3 {op} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("boto3 {op}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Every bucket the test credentials own.
    pub fn buckets(&self) -> anyhow::Result<Vec<String>> {
        Ok(serde_json::from_value(self.boto("buckets", &[])?)?)
    }

    /// (key, size) of every object under `prefix`, or `None` if the bucket does not exist.
    pub fn objects(&self, bucket: &str, prefix: &str) -> anyhow::Result<Option<Vec<(String, u64)>>> {
        Ok(serde_json::from_value(self.boto("objects", &[bucket, prefix])?)?)
    }

    /// An object's body as text, or `None`.
    pub fn get(&self, bucket: &str, key: &str) -> anyhow::Result<Option<String>> {
        Ok(serde_json::from_value(self.boto("get", &[bucket, key])?)?)
    }

    /// Write a small text object.
    pub fn put(&self, bucket: &str, key: &str, text: &str) -> anyhow::Result<()> {
        self.boto("put", &[bucket, key, text]).map(drop)
    }

    /// Write `size` random bytes; returns their SHA-256 (hex).
    pub fn put_random(&self, bucket: &str, key: &str, size: usize) -> anyhow::Result<String> {
        Ok(serde_json::from_value(
            self.boto("put-random", &[bucket, key, &size.to_string()])?,
        )?)
    }

    /// The SHA-256 (hex) of an object's body.
    pub fn sha256(&self, bucket: &str, key: &str) -> anyhow::Result<String> {
        Ok(serde_json::from_value(self.boto("sha256", &[bucket, key])?)?)
    }

    /// An object's ETag (a multipart object's ends in `-<parts>`).
    pub fn etag(&self, bucket: &str, key: &str) -> anyhow::Result<String> {
        Ok(serde_json::from_value(self.boto("etag", &[bucket, key])?)?)
    }

    /// Write `n` objects of `size` bytes named `<prefix>fNNNNN` (16 at a time).
    pub fn put_many(&self, bucket: &str, prefix: &str, n: usize, size: usize) -> anyhow::Result<()> {
        self.boto("put-many", &[bucket, prefix, &n.to_string(), &size.to_string()])
            .map(drop)
    }

    /// Make a bucket.
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.boto("create-bucket", &[bucket]).map(drop)
    }

    /// Remove every bucket whose name starts with `bucket_prefix`, with its objects.
    pub fn purge(&self, bucket_prefix: &str) -> anyhow::Result<()> {
        self.boto("purge", &[bucket_prefix]).map(drop)
    }
}
