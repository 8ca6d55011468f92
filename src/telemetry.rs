//! Logging to stderr (stdout stays for command output): human-readable or JSON lines,
//! filtered by `RUST_LOG` or the config; and OpenTelemetry traces (docs/operations.md,
//! "Tracing").
//!
//! Every span of ours (target `sessiongate`, level INFO and up) is also an OpenTelemetry span,
//! whatever the log filter says: the request span continues an incoming W3C `traceparent`
//! ([`continue_trace`]) or starts a new trace, every upstream call carries the current span's
//! `traceparent` ([`inject`]), and JSON log lines inside a span carry its `trace_id`. Spans
//! are exported only when `[telemetry.otlp]` is configured; without it nothing is recorded
//! beyond the ids (the sampler drops every new trace), so the trace id still ties the log
//! lines, the audit events and the upstream calls of one request together.

pub mod otlp;

use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{BatchSpanProcessor, Sampler, SdkTracerProvider},
};
use serde::Deserialize;
use std::sync::{Arc, OnceLock};
use tracing::{Dispatch, Subscriber, dispatcher::WeakDispatch};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::Targets,
    fmt::{self, FmtContext, FormatEvent, FormatFields, format::Writer, writer::BoxMakeWriter},
    prelude::*,
    registry::LookupSpan,
};

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `[telemetry.otlp]`: export traces to an OpenTelemetry collector (off when absent).
    pub otlp: Option<otlp::OtlpConfig>,
}

impl TelemetryConfig {
    /// Checks the export settings (reading secret headers); `None` when export is off.
    pub fn settings(&self) -> Result<Option<otlp::OtlpSettings>, crate::config::ConfigError> {
        self.otlp
            .as_ref()
            .map(otlp::OtlpConfig::settings)
            .transpose()
    }
}

/// The tracer provider behind the subscriber: flush and stop it before the process exits.
#[derive(Clone, Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Tracing {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports every finished span now (waits on a blocking thread; the export itself runs on
    /// the runtime).
    pub async fn flush(&self) {
        if self.exporting {
            let p = self.provider.clone();
            let _ = tokio::task::spawn_blocking(move || p.force_flush()).await;
        }
    }

    /// Exports what is left and stops the exporter.
    pub async fn shutdown(&self) {
        if self.exporting {
            let p = self.provider.clone();
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

/// Builds the subscriber: log lines (JSON or text, by `filter`) and OpenTelemetry spans
/// (exported when `otlp` is given; then this must run inside the Tokio runtime).
pub fn build(
    json: bool,
    filter: &str,
    otlp: Option<&otlp::OtlpSettings>,
) -> Result<(Dispatch, Tracing), String> {
    let out = if json {
        BoxMakeWriter::new(std::io::stdout)
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    build_writing(json, filter, otlp, out)
}

/// [`build`], writing log lines to `out`.
fn build_writing(
    json: bool,
    filter: &str,
    otlp: Option<&otlp::OtlpSettings>,
    out: BoxMakeWriter,
) -> Result<(Dispatch, Tracing), String> {
    let mut builder = SdkTracerProvider::builder();
    let exporting = otlp.is_some();
    match otlp {
        Some(s) => {
            let exporter = otlp::exporter(s)?;
            builder = builder
                .with_span_processor(BatchSpanProcessor::builder(exporter).build())
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    s.sampling,
                ))))
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(s.service_name.clone())
                        .with_attribute(opentelemetry::KeyValue::new(
                            "service.version",
                            env!("CARGO_PKG_VERSION"),
                        ))
                        .build(),
                );
        }
        // Ids only: a new trace is not recorded; a caller's sampled trace still is (and is
        // dropped for want of an exporter), so its sampled flag travels on upstream.
        None => builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))),
    }
    let provider = builder.build();
    let tracer = provider.tracer("sessiongate");
    let log_filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(Targets::new().with_target("sessiongate", tracing::Level::INFO));
    let me: Arc<OnceLock<WeakDispatch>> = Arc::default();
    let logs = if json {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(out)
            .map_event_format(|f| WithTraceId {
                inner: f,
                dispatch: me.clone(),
            })
            .with_filter(log_filter)
            .boxed()
    } else {
        fmt::layer()
            .with_target(true)
            .with_writer(out)
            .with_filter(log_filter)
            .boxed()
    };
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(spans).with(logs));
    let _ = me.set(dispatch.downgrade());
    Ok((
        dispatch,
        Tracing {
            provider,
            exporting,
        },
    ))
}

/// Installs the global subscriber without export. Safe to call once; later calls are ignored.
pub fn init(json: bool, default_filter: &str) {
    drop(init_with(json, default_filter, None));
}

/// Installs the global subscriber with the configured export (inside the Tokio runtime).
/// `None` when a global subscriber was installed already (then it stays as it was).
pub fn init_with(
    json: bool,
    default_filter: &str,
    otlp: Option<&otlp::OtlpSettings>,
) -> Result<Option<Tracing>, String> {
    let (d, t) = build(json, default_filter, otlp)?;
    if tracing::dispatcher::set_global_default(d).is_err() {
        return Ok(None);
    }
    // Dependencies that log through the `log` crate.
    drop(tracing_log::LogTracer::init());
    Ok(Some(t))
}

/// Makes `span` continue the trace of an incoming W3C `traceparent` / `tracestate`; an absent
/// or invalid header leaves it the root of a new trace. Call before anything reads the span's
/// context.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent =
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Adds the current span's `traceparent` (and `tracestate`) to an outgoing request's headers.
pub fn inject(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new()
            .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
    }
}

/// The trace id (32 lowercase hex digits) of `span`, when it belongs to a trace.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id of the current span.
pub fn current_trace_id() -> Option<String> {
    trace_id_of(&tracing::Span::current())
}

/// JSON log lines inside a span start with its `"trace_id"`.
struct WithTraceId<F> {
    inner: F,
    /// The subscriber this formatter belongs to (set right after it is built).
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The innermost span that is an OpenTelemetry span (a dependency's or a DEBUG span
        // is not; its parents may be).
        let trace_id = ctx.event_scope().and_then(|scope| {
            let d = self.dispatch.get()?.upgrade()?;
            scope.into_iter().find_map(|span| {
                let cx = tracing_opentelemetry::get_otel_context(&span.id(), &d)?;
                let sc = cx.span().span_context().clone();
                sc.is_valid().then(|| sc.trace_id().to_string())
            })
        });
        let Some(t) = trace_id else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"trace_id\":\"{t}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_and_passed_on() {
        let (d, _t) = build(false, "off", None).unwrap();
        tracing::dispatcher::with_default(&d, || {
            let mut h = http::HeaderMap::new();
            h.insert("traceparent", PARENT.parse().unwrap());
            let span = tracing::info_span!("request");
            continue_trace(&span, &h);
            assert_eq!(
                trace_id_of(&span).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            let mut out = http::HeaderMap::new();
            span.in_scope(|| inject(&mut out));
            let tp = out["traceparent"].to_str().unwrap();
            assert!(
                tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{tp}"
            );
            assert!(!tp.contains("00f067aa0ba902b7"), "a span of ours: {tp}");
            // The caller's sampled flag travels on.
            assert!(tp.ends_with("-01"), "{tp}");
        });
    }

    #[test]
    fn json_lines_inside_a_span_carry_its_trace_id() {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let (d, _t) =
            build_writing(true, "debug", None, BoxMakeWriter::new(move || w.clone())).unwrap();
        tracing::dispatcher::with_default(&d, || {
            tracing::info!("outside");
            let mut h = http::HeaderMap::new();
            h.insert("traceparent", PARENT.parse().unwrap());
            let span = tracing::info_span!("request", request_id = "r1");
            continue_trace(&span, &h);
            span.in_scope(|| {
                tracing::info!(n = 1, "inside");
                // Not an OpenTelemetry span (DEBUG): the line takes its parent's trace.
                tracing::debug_span!("detail").in_scope(|| tracing::info!("deeper"));
            });
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["message"], "outside");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[1]["span"]["request_id"], "r1");
        assert_eq!(lines[2]["message"], "deeper");
        assert_eq!(lines[2]["span"]["name"], "detail", "{text}");
        assert_eq!(lines[2]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace() {
        let (d, _t) = build(false, "off", None).unwrap();
        tracing::dispatcher::with_default(&d, || {
            let mut h = http::HeaderMap::new();
            h.insert("traceparent", "00-zz-yy-01".parse().unwrap());
            let span = tracing::info_span!("request");
            continue_trace(&span, &h);
            let id = trace_id_of(&span).unwrap();
            assert_eq!(id.len(), 32);
            assert_ne!(id, "00000000000000000000000000000000");
        });
    }
}
