//! Progress bars in the CLI: one style for every long operation, and a bar for requests that
//! wait on a driver's copy (snapshot create, create from a snapshot), drawn from the op record's
//! `params.progress` (`GET /v1/ops`) while the request is outstanding.

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client::Client;

/// How often a bar asks the daemon for new figures.
pub const REFRESH: Duration = Duration::from_millis(250);

/// A bar in Elara's style: phase, bar, bytes, rate, ETA. Drawn on stderr, and only on a terminal.
pub fn bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar
}

/// Show `figures` (a `ProgressView`: phase, bytes_done, bytes_total) on `bar`.
pub fn draw(bar: &ProgressBar, figures: &Value) {
    bar.set_length(figures["bytes_total"].as_u64().unwrap_or(0));
    bar.set_position(figures["bytes_done"].as_u64().unwrap_or(0));
    bar.set_message(figures["phase"].as_str().unwrap_or("").to_string());
}

/// Run `request` (one that makes `volume`'s op copy data in a driver); on a terminal, draw the
/// op's progress until the request answers.
pub async fn while_copying<T>(
    c: &Client,
    volume: &str,
    request: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    if !std::io::stderr().is_terminal() {
        return request.await;
    }
    let bar = bar();
    tokio::pin!(request);
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            answer = &mut request => {
                bar.finish_and_clear();
                return answer;
            }
            _ = tick.tick() => {
                let Ok(ops) = c.get::<Value>("/v1/ops").await else { continue };
                let figures = ops.as_array().and_then(|ops| ops.iter().find(|op| op["volume"] == volume)).map(|op| &op["params"]["progress"]);
                if let Some(figures) = figures.filter(|f| f.is_object()) {
                    draw(&bar, figures);
                }
            }
        }
    }
}
