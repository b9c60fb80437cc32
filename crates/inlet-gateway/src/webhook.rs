//! `POST /v2.4/customWebhook` for inlet channels.

use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use handoff_config::Role;
use handoff_platforms::custom::WebhookRequest;
use handoff_platforms::custom::edge::{
    ApiError, WEBHOOK_PATH, WebhookQuery, authorize, parse_body, read_body,
};
use handoff_platforms::hub::{Edge, Hub, Incoming, accept};
use handoff_proto::{Body, InboundMessage};
use serde_json::{Value, json};

pub(crate) fn router<H: Hub>(edge: Edge<H>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive::<H>))
        .with_state(edge)
}

/// A customer message. 200 means JetStream has stored it; a re-post of the same message
/// (same `messageId` from the same member, or the same body within the duplicate window)
/// is answered 200 again and handled once.
async fn receive<H: Hub>(
    State(edge): State<Edge<H>>,
    Query(query): Query<WebhookQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let channel = authorize(&edge.catalog.load().channels, &query, Role::Inlet)?;
    let bytes = read_body(&headers, body, edge.body_limit).await?;
    let (request, parsed) = parse_body(bytes, true)?;
    let WebhookRequest::SendToBot {
        external_id: Some(external_id),
        profile,
        content,
        source_message_id,
        timestamp_ms,
        ..
    } = request
    else {
        return Err(ApiError::Internal(
            "inlet request without sendToBot passed validation".into(),
        ));
    };
    let member_id = channel.member_id(&external_id).to_string();
    let incoming = Incoming {
        member_id: member_id.clone(),
        conversation_id: String::new(),
        purpose: "inbound",
        source_id: source_message_id,
        occurred_at_ms: timestamp_ms,
        body: Body::InboundMessage(InboundMessage {
            external_id,
            profile_json: Value::Object(profile).to_string(),
            content: Some(content),
        }),
    };
    let accepted = accept(&edge.hub, &channel, incoming, parsed.to_string().as_bytes()).await?;
    if accepted.duplicate {
        return Ok(Json(
            json!({"ok": true, "duplicate": true, "memberId": member_id}),
        ));
    }
    Ok(Json(
        json!({"ok": true, "eventId": accepted.event_id, "memberId": member_id}),
    ))
}

#[cfg(test)]
mod tests {
    //! The edge alone, over `oneshot`: what a request becomes, and every refusal, which
    //! must store nothing. The bus is a recorder (see `Recorder`); the system tests run the
    //! same edge against NATS.

    use axum::body::Body as HttpBody;
    use axum::http::{Request, StatusCode, header};
    use handoff_bus::PublishError;
    use handoff_config::Channels;
    use handoff_platforms::Catalog;
    use handoff_platforms::hub::Recorder;
    use tower::ServiceExt as _;

    use super::*;

    const CHANNELS: &str = "
channels:
  - id: web
    org: acme
    platform: custom
    role: inlet
    accessToken: inlet-token
    info:
      sendResponseApi: http://127.0.0.1:9/send
    bot: bot
  - id: bot
    org: acme
    platform: webhook-bot
    role: bot
    accessToken: bot-token
    info:
      url: http://127.0.0.1:9/bot
";

    fn edge(body_limit: usize) -> (Router, Recorder) {
        let catalog = Catalog::new(Channels::parse(CHANNELS).unwrap()).unwrap();
        let hub = Recorder::default();
        let router = router(Edge {
            hub: hub.clone(),
            catalog,
            body_limit,
        });
        (router, hub)
    }

    fn customer_says(text: &str, message_id: Option<&str>) -> Value {
        let mut event = json!({"from": "ann", "to": "web", "type": "TEXT", "data": {"text": text}, "timestamp": 1_700_000_000_000_i64});
        if let Some(id) = message_id {
            event["messageId"] = json!(id);
        }
        json!({"externalId": "ann", "profile": {"firstName": "Ann"}, "sendToBot": {"messageEvent": event}})
    }

    async fn post(router: &Router, query: &str, body: String) -> (StatusCode, Value) {
        let request = Request::post(format!("{WEBHOOK_PATH}?{query}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(HttpBody::from(body))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    const OK: &str = "c=web&a=acme&accessToken=inlet-token";

    #[tokio::test]
    async fn a_customer_message_becomes_one_inbound_event_of_its_member() {
        let (router, hub) = edge(64 * 1024);

        let (status, answer) =
            post(&router, OK, customer_says("hi", Some("m-1")).to_string()).await;

        assert_eq!(status, StatusCode::OK, "{answer}");
        let stored = hub.accepted();
        assert_eq!(stored.len(), 1);
        let event = &stored[0];
        let member = handoff_config::member_id("web", "ann").to_string();
        assert_eq!(event.member_id, member);
        assert_eq!(answer["memberId"], json!(member));
        assert_eq!(answer["eventId"], json!(event.event_id));
        assert_eq!(
            (event.channel.as_str(), event.org.as_str()),
            ("web", "acme")
        );
        assert_eq!(event.source_message_id, "m-1");
        let Some(Body::InboundMessage(m)) = &event.body else {
            panic!("not an inbound message: {event:?}");
        };
        assert_eq!(m.external_id, "ann");
        assert!(m.profile_json.contains("Ann"), "{}", m.profile_json);
    }

    #[tokio::test]
    async fn the_same_message_posted_twice_is_stored_once_and_answered_as_a_duplicate() {
        let (router, hub) = edge(64 * 1024);
        let body = customer_says("hi", Some("m-1")).to_string();

        let first = post(&router, OK, body.clone()).await;
        let second = post(&router, OK, body).await;

        assert_eq!((first.0, second.0), (StatusCode::OK, StatusCode::OK));
        assert_eq!(second.1["duplicate"], json!(true));
        assert_eq!(hub.accepted().len(), 1);
    }

    #[tokio::test]
    async fn refusals_answer_a_specific_status_and_json_error_and_store_nothing() {
        let (router, hub) = edge(1024);
        let good = customer_says("hi", None).to_string();
        let cases = [
            (
                "c=web&a=acme&accessToken=wrong",
                good.clone(),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                "c=web&a=acme",
                good.clone(),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                "c=nope&a=acme&accessToken=inlet-token",
                good.clone(),
                StatusCode::NOT_FOUND,
                "unknown_channel",
            ),
            (
                "c=web&a=other&accessToken=inlet-token",
                good.clone(),
                StatusCode::NOT_FOUND,
                "unknown_channel",
            ),
            (
                "a=acme&accessToken=inlet-token",
                good.clone(),
                StatusCode::BAD_REQUEST,
                "missing_parameter",
            ),
            (
                OK,
                "{not json".into(),
                StatusCode::BAD_REQUEST,
                "malformed_json",
            ),
            (
                OK,
                json!({"externalId": "ann"}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
            ),
            (
                OK,
                customer_says(&"x".repeat(2000), None).to_string(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
            ),
        ];
        for (query, body, status, code) in cases {
            let (got, answer) = post(&router, query, body).await;
            assert_eq!(got, status, "{query}: {answer}");
            assert_eq!(answer["error"]["code"], json!(code), "{query}: {answer}");
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
        assert!(hub.accepted().is_empty());
    }

    #[tokio::test]
    async fn a_full_bus_is_503_busy_with_retry_after() {
        let (router, hub) = edge(64 * 1024);
        hub.refuse_with(|| PublishError::Full { percent: 95 });

        let request = Request::post(format!("{WEBHOOK_PATH}?{OK}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(HttpBody::from(customer_says("hi", None).to_string()))
            .unwrap();
        let response = router.oneshot(request).await.unwrap();

        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(answer["error"]["code"], json!("busy"));
    }

    #[tokio::test]
    async fn an_unreachable_bus_is_503_and_its_detail_stays_in_the_log() {
        let (router, hub) = edge(64 * 1024);
        hub.refuse_with(|| {
            PublishError::Unavailable("nats://user:hunter2@10.0.0.7:4222 refused".into())
        });

        let (status, answer) = post(&router, OK, customer_says("hi", None).to_string()).await;

        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer["error"]["code"], json!("unavailable"));
        assert!(!answer.to_string().contains("hunter2"), "{answer}");
        assert!(!answer.to_string().contains("10.0.0.7"), "{answer}");
    }
}
