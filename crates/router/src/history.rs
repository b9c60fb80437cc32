//! `GET /history/{token}`: the member's transcript behind an unguessable, expiring link
//! (`chatHistoryURL`). HTML for people, JSON for `Accept: application/json`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::store;

/// The most a transcript page holds: its newest lines up to this many bytes of content…
const MAX_PAGE_BYTES: i64 = 1024 * 1024;
/// …and this many lines.
const MAX_LINES: i64 = 5_000;

pub(crate) fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/history/{token}", get(history))
        .with_state(pool)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn history(
    State(pool): State<PgPool>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let conv = store::conversations::by_history_token(&pool, &token).await;
    let row = match conv {
        Ok(Some(row)) => row,
        Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", "no such transcript"),
        Err(e) => {
            tracing::error!(error = %e, "transcript lookup failed");
            return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try again");
        }
    };
    if !row.valid {
        return error(
            StatusCode::GONE,
            "expired",
            "this transcript link has expired",
        );
    }
    let store::conversations::HistoryLink {
        id: conversation,
        member_id: member,
        closed_at,
        external_id,
        profile,
        ..
    } = row;
    let lines = match store::messages::page(
        &pool,
        member,
        conversation,
        closed_at,
        MAX_PAGE_BYTES,
        MAX_LINES,
    )
    .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "transcript read failed");
            return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try again");
        }
    };
    // The oldest line shown knows how many lines come before it.
    let omitted: i64 = lines.last().map_or(0, |r| r.omitted);
    let messages: Vec<Value> = lines
        .iter()
        .rev()
        .map(|r| {
            json!({
                "author": r.author.as_str(),
                "content": r.content,
                "conversationId": r.conversation_id,
                "withheld": r.withheld,
                "at": r.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            })
        })
        .collect();
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        return Json(json!({
            "member": {"_id": member, "externalId": external_id, "profile": profile},
            "messages": messages,
            "omittedOlder": omitted,
        }))
        .into_response();
    }
    Html(render(&external_id, &messages, omitted)).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What a person reads for one transcript line.
pub(crate) fn line_text(content: &Value) -> String {
    let kind = content["type"].as_str().unwrap_or_default();
    let text = content["text"].as_str().unwrap_or_default();
    match kind {
        "TEXT" => text.to_string(),
        "PAYLOAD" => format!(
            "[button] {}",
            if text.is_empty() {
                content["payload"].as_str().unwrap_or_default()
            } else {
                text
            }
        ),
        "EVENT" => {
            let event = format!(
                "— {} {}",
                content["event"]
                    .as_str()
                    .unwrap_or_default()
                    .replace('_', " ")
                    .to_lowercase(),
                content["reason"].as_str().unwrap_or_default()
            );
            // A notice, or a withheld answer, says what the customer was (not) told.
            match text {
                "" => event,
                text => format!("{}: {text}", event.trim_end()),
            }
        }
        "IMAGE" | "AUDIO" | "VIDEO" | "FILE" => {
            format!(
                "[{}] {}",
                kind.to_lowercase(),
                content["url"].as_str().unwrap_or_default()
            )
        }
        _ if !text.is_empty() => text.to_string(),
        other => format!("[{}]", other.to_lowercase()),
    }
}

fn render(external_id: &str, messages: &[Value], omitted: i64) -> String {
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Transcript — {id}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;color:#222}}\
         .m{{margin:.4rem 0;padding:.5rem .8rem;border-radius:.6rem;max-width:80%}}\
         .customer{{background:#e8f0fe}}.bot{{background:#f1f3f4;margin-left:auto}}\
         .agent{{background:#e6f4ea;margin-left:auto}}.system{{color:#777;font-size:.85rem;text-align:center;max-width:100%}}\
         .who{{font-size:.75rem;color:#666}}</style></head><body><h1>Transcript</h1>\
         <p>Customer <code>{id}</code></p>",
        id = escape(external_id)
    );
    if omitted > 0 {
        html.push_str(&format!(
            "<p class=\"m system\">{omitted} older lines are not shown.</p>"
        ));
    }
    for m in messages {
        let author = m["author"].as_str().unwrap_or_default();
        let withheld = if m["withheld"] == true {
            " (not sent: a human had the chat)"
        } else {
            ""
        };
        html.push_str(&format!(
            "<div class=\"m {author}\"><div class=\"who\">{author}{withheld} · {at}</div>{text}</div>",
            author = escape(author),
            at = escape(m["at"].as_str().unwrap_or_default()),
            text = escape(&line_text(&m["content"])),
        ));
    }
    html.push_str("</body></html>");
    html
}
