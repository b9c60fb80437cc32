use handoff_config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = handoff_service::init_telemetry(
        "zendesk-agent",
        &settings.telemetry.log_format,
        settings.telemetry.otlp_endpoint.as_deref(),
    )?;
    let app = zendesk_agent::Application::build(&settings).await?;
    tracing::info!(
        port = app.port(),
        "zendesk-agent listening (no Zendesk accounts yet)"
    );
    app.run_until_stopped(handoff_service::shutdown_token())
        .await
}
