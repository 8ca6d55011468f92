//! Logging to stderr (stdout stays for command output): human-readable or JSON lines,
//! filtered by `RUST_LOG` or the config.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Safe to call once; later calls are ignored.
pub fn init(json: bool, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let res = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_target(true).with_writer(std::io::stderr))
            .try_init()
    };
    drop(res);
}
