use handoff_config::{Channels, Settings};

// Under load glibc's allocator cost each profiled service about a fifth of its CPU; see
// docs/architecture.md ("Crates") and docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    handoff_service::answer_arguments(
        "inlet-gateway",
        "the edge for customers' platforms: the Stella-compatible Webhook API and their Send API",
    );
    let settings = Settings::load()?;
    let _telemetry = handoff_service::init_telemetry(
        "inlet-gateway",
        &settings.telemetry.log_format,
        settings.telemetry.otlp_endpoint.as_deref(),
        &settings.telemetry.trace_filter,
    )?;
    let channels = Channels::load(&settings.channels)?;
    let app = inlet_gateway::Application::build(&settings, channels).await?;
    tracing::info!(
        port = app.port(),
        ops_port = app.ops_port(),
        "inlet-gateway listening"
    );
    app.run_until_stopped(handoff_service::shutdown_token())
        .await
}
