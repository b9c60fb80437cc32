use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Flushes pending spans and metrics when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
        if let Some(meters) = self.meters.take() {
            let _ = meters.shutdown();
        }
    }
}

/// The registry the Prometheus exporter fills; `/metrics` renders it.
fn registry() -> &'static prometheus::Registry {
    static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();
    REGISTRY.get_or_init(prometheus::Registry::new)
}

/// This process's OpenTelemetry metrics in Prometheus' text format (empty before
/// `init_telemetry`).
pub fn metrics_text() -> String {
    use prometheus::Encoder as _;
    let mut out = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&registry().gather(), &mut out) {
        tracing::warn!(error = %e, "metrics not encoded");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Metrics are read two ways: Prometheus scrapes `/metrics` (no collector needed), and,
/// when an OTLP endpoint is configured, they are pushed there with the traces.
fn meter_provider(
    resource: opentelemetry_sdk::Resource,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<SdkMeterProvider> {
    let prometheus = opentelemetry_prometheus::exporter()
        .with_registry(registry().clone())
        .scope_info_enabled(false)
        .build()?;
    let mut builder = SdkMeterProvider::builder()
        .with_reader(prometheus)
        .with_resource(resource);
    if let Some(endpoint) = otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/metrics", endpoint.trim_end_matches('/')))
            .build()?;
        builder = builder.with_periodic_exporter(exporter);
    }
    Ok(builder.build())
}

/// Structured logs (`RUST_LOG` filters, default `info`), metrics (see `meter_provider`)
/// and, when `otlp_endpoint` is set, OpenTelemetry traces over OTLP/HTTP of the spans
/// `trace_filter` lets through. W3C trace context is always propagated.
pub fn init_telemetry(
    service: &'static str,
    log_format: &str,
    otlp_endpoint: Option<&str>,
    trace_filter: &str,
) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = if log_format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };

    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let meters = meter_provider(resource.clone(), otlp_endpoint)?;
    opentelemetry::global::set_meter_provider(meters.clone());

    let provider = match otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };

    // Without an exporter spans still get valid ids, so trace context flows through NATS
    // and outbound calls even when nothing collects it.
    let provider = provider.unwrap_or_else(|| SdkTracerProvider::builder().build());
    let tracer = provider.tracer(service);
    opentelemetry::global::set_tracer_provider(provider.clone());
    // Nothing here reads the ambient OpenTelemetry context (propagation asks the span), and
    // busy/idle timings and thread attributes cost two clock reads per poll and allocations
    // per span on the hot path for figures the dashboards do not use.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false);

    tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel.with_filter(EnvFilter::try_new(trace_filter)?))
        .try_init()
        .ok();
    Ok(TelemetryGuard {
        provider: Some(provider),
        meters: Some(meters),
    })
}
