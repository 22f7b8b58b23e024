//! What a volume create asks of the scheduler: a size, the extra specs of its volume type (plus inline specs),
//! and optional placement constraints.

use thiserror::Error;

use crate::capabilities::{KeyId, key_id};
use crate::expr::{self, Expr, ParseError};
use crate::pool::is_figure;

/// One extra spec: a key (optionally `capabilities:`-scoped) and its parsed value expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub key: String,
    /// The value as written.
    pub value: String,
    pub expr: Expr,
    /// The capability path the key names (`capabilities:a:b` → [a, b], `iops` → [iops]); `None` for keys in
    /// another scope (`provisioning:type`, `qos:…`, vendor specs), which the capabilities filter ignores.
    path: Option<Vec<String>>,
    /// [`key_id`] of the path's first key, so each pool's lookup compares ids, and whether that key is one of
    /// the pool figures (looked up in [`crate::PoolState::reported_figures`]).
    first_id: Option<(KeyId, bool)>,
}

/// A bad extra spec.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("spec `{key}`: value `{value}` does not parse: {error}")]
    Parse {
        key: String,
        value: String,
        error: ParseError,
    },
    #[error("spec key must not be empty (value `{value}`)")]
    EmptyKey { value: String },
    #[error("spec `{key}` is given twice")]
    Duplicate { key: String },
    #[error("spec `{arg}` has no `=` (expected KEY=VALUE)")]
    NoEquals { arg: String },
}

impl Spec {
    /// Parses `value` in Cinder's extra-spec syntax.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Result<Self, SpecError> {
        let (key, value) = (key.into(), value.into());
        if key.is_empty() {
            return Err(SpecError::EmptyKey { value });
        }
        let mut scope: Vec<&str> = key.split(':').collect();
        let path: Option<Vec<String>> = if scope.len() > 1 && scope[0] != "capabilities" {
            None
        } else {
            if scope[0] == "capabilities" {
                scope.remove(0);
            }
            Some(scope.into_iter().map(String::from).collect())
        };
        // Keys in another scope are data for someone else (`provisioning:type`, `qos:…`, vendor specs): Cinder
        // never evaluates their values, so neither does Elara; they stay literal text.
        let expr = if path.is_some() {
            expr::parse(&value).map_err(|error| SpecError::Parse {
                key: key.clone(),
                value: value.clone(),
                error,
            })?
        } else {
            Expr::Literal(value.clone())
        };
        let first_id = path.as_ref().and_then(|p| p.first()).map(|k| {
            let id = key_id(k);
            (id, is_figure(id))
        });
        Ok(Spec {
            key,
            value,
            expr,
            path,
            first_id,
        })
    }

    /// See the `path` field: what the capabilities filter looks up, or `None` when it ignores the key.
    pub fn capability_path(&self) -> Option<&[String]> {
        self.path.as_deref()
    }

    /// [`key_id`] of the first key of [`Spec::capability_path`].
    pub fn capability_id(&self) -> Option<KeyId> {
        self.first_id.map(|(id, _)| id)
    }

    /// Whether the first key of [`Spec::capability_path`] is a pool figure.
    pub(crate) fn capability_is_figure(&self) -> bool {
        self.first_id.is_some_and(|(_, figure)| figure)
    }
}

/// A placement request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    /// Size in GiB (Cinder's `size`). 0 passes every capacity check (Cinder's "manage" case).
    pub size_gb: f64,
    /// Extra specs, each key at most once.
    pub specs: Vec<Spec>,
    /// Only pools of this backend.
    pub backend: Option<String>,
    /// Only pools of this driver.
    pub driver: Option<String>,
    /// Only this pool: its name or its full id (`backend#name`).
    pub pool: Option<String>,
    /// Only pools usable on this node: bound to it, or bound to no node.
    pub node: Option<String>,
    /// Only pools in this availability zone (Cinder's AvailabilityZoneFilter).
    pub availability_zone: Option<String>,
    /// The volume type's name, for messages.
    pub volume_type: Option<String>,
}

impl Request {
    pub fn new(size_gb: f64) -> Self {
        Request {
            size_gb,
            ..Default::default()
        }
    }

    /// Adds an extra spec; refuses a value that does not parse or a key given twice.
    pub fn with_spec(mut self, key: impl Into<String>, value: impl Into<String>) -> Result<Self, SpecError> {
        self.add_spec(Spec::new(key, value)?)?;
        Ok(self)
    }

    /// Adds a parsed spec; refuses a key given twice (a volume type's extra specs are a map).
    pub fn add_spec(&mut self, spec: Spec) -> Result<(), SpecError> {
        if self.specs.iter().any(|s| s.key == spec.key) {
            return Err(SpecError::Duplicate { key: spec.key });
        }
        self.specs.push(spec);
        Ok(())
    }

    /// Builds from `(key, value)` pairs.
    pub fn with_specs<K: AsRef<str>, V: AsRef<str>>(mut self, specs: &[(K, V)]) -> Result<Self, SpecError> {
        for (k, v) in specs {
            self.add_spec(Spec::new(k.as_ref(), v.as_ref())?)?;
        }
        Ok(self)
    }

    /// False when the specs say `provisioning:type` = `thick` exactly (Cinder's test); thin otherwise.
    pub fn wants_thin(&self) -> bool {
        !self
            .specs
            .iter()
            .any(|s| s.key == "provisioning:type" && s.value == "thick")
    }
}

/// Splits a `--spec KEY=VALUE` argument at the first `=`: `iops=>= 1000` gives (`iops`, `>= 1000`).
///
/// For the shorthand of the CLI examples, a key ending in `>`, `<` or `!` gives that character to the value
/// (`iops>=1000` gives (`iops`, `>= 1000`), `iops!=3` gives (`iops`, `!= 3`)), and `KEY==V` gives (`KEY`, `== V`).
/// No other rewriting: `type=block` is (`type`, `block`), a literal.
pub fn parse_spec_arg(arg: &str) -> Result<(String, String), SpecError> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(SpecError::NoEquals { arg: arg.to_string() });
    };
    let key = key.trim();
    let (key, value) = if let Some(stem) = key.strip_suffix(['>', '<', '!']) {
        let op = &key[stem.len()..];
        (stem.trim_end(), format!("{op}= {}", value.trim_start()))
    } else if let Some(rest) = value.strip_prefix('=') {
        (key, format!("== {}", rest.trim_start()))
    } else {
        (key, value.to_string())
    };
    if key.is_empty() {
        return Err(SpecError::EmptyKey { value });
    }
    Ok((key.to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_args() {
        let p = |a: &str| parse_spec_arg(a).unwrap();
        assert_eq!(p("iops=>= 1000"), ("iops".into(), ">= 1000".into()));
        assert_eq!(p("iops>=1000"), ("iops".into(), ">= 1000".into()));
        assert_eq!(p("iops<=5"), ("iops".into(), "<= 5".into()));
        assert_eq!(p("iops!=5"), ("iops".into(), "!= 5".into()));
        assert_eq!(p("iops==5"), ("iops".into(), "== 5".into()));
        assert_eq!(p("type=block"), ("type".into(), "block".into()));
        assert_eq!(p("a=b=c"), ("a".into(), "b=c".into()));
        assert_eq!(p("k=<or> a <or> b"), ("k".into(), "<or> a <or> b".into()));
        assert_eq!(
            p("capabilities:thin=<is> True"),
            ("capabilities:thin".into(), "<is> True".into())
        );
        assert_eq!(p("k="), ("k".into(), "".into()));
        assert!(matches!(parse_spec_arg("novalue"), Err(SpecError::NoEquals { .. })));
        assert!(matches!(parse_spec_arg("=x"), Err(SpecError::EmptyKey { .. })));
    }

    #[test]
    fn duplicate_and_bad_specs_are_refused() {
        let r = Request::new(1.0).with_spec("a", "1").unwrap();
        assert_eq!(
            r.clone().with_spec("a", "2").unwrap_err(),
            SpecError::Duplicate { key: "a".into() }
        );
        let e = r.with_spec("iops", ">= lots").unwrap_err();
        assert!(e.to_string().contains("at character 3"), "{e}");
    }

    #[test]
    fn values_of_other_scopes_are_not_parsed() {
        let r = Request::new(1.0)
            .with_spec("vendor:raid", ">=5")
            .unwrap()
            .with_spec("qos:read_iops_sec", "<is> maybe")
            .unwrap();
        assert_eq!(r.specs[0].expr, Expr::Literal(">=5".into()));
        assert_eq!(r.specs[0].capability_path(), None);
        // `capabilities:` is the capabilities filter's own scope: parsed.
        assert!(Request::new(1.0).with_spec("capabilities:iops", ">=5").is_err());
    }

    #[test]
    fn thick_request() {
        assert!(Request::new(1.0).wants_thin());
        assert!(
            !Request::new(1.0)
                .with_spec("provisioning:type", "thick")
                .unwrap()
                .wants_thin()
        );
        assert!(
            Request::new(1.0)
                .with_spec("provisioning:type", "thin")
                .unwrap()
                .wants_thin()
        );
    }
}
