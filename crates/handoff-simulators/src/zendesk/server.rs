//! HTTP `POST /graphql/request` and the WebSocket `/stream/0.1/graphql/{session}:{client}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Shared;
use super::frames::{self, ErrorName, Failure};
use super::state::{Origin, Out, UNEXPECTED_REASON};

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/graphql/request", post(http_request))
        .route("/stream/0.1/graphql/{key}", any(socket_upgrade))
        .with_state(shared)
}

async fn http_request(AxumState(shared): AxumState<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        let failure = Failure::exec("POST body sent invalid JSON.");
        return (StatusCode::BAD_REQUEST, Json(failure.payload())).into_response();
    };
    let (result, bad_token_status) = {
        let mut state = shared.lock();
        let result = state.run(Origin::Http, &payload);
        state.flush();
        (result, state.faults.bad_token_status)
    };
    shared.notify.notify_waiters();
    match result {
        Ok(data) => Json(json!({ "data": data })).into_response(),
        Err(failure) => {
            // A document that never ran is the client's fault (400); a login refused while
            // running answers as SAMPLE expects it (`body.errors` on a 2xx), configurable.
            let status = match (failure.name, failure.executed) {
                (ErrorName::Unauthorized, _) => bad_token_status,
                (_, true) => 200,
                (_, false) => 400,
            };
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            (status, Json(failure.payload())).into_response()
        }
    }
}

async fn socket_upgrade(
    ws: WebSocketUpgrade,
    Path(key): Path<String>,
    AxumState(shared): AxumState<Arc<Shared>>,
) -> Response {
    ws.on_upgrade(move |socket| run_socket(shared, key, socket))
}

async fn run_socket(shared: Arc<Shared>, key: String, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let attached = shared.lock().attach(&key, tx);
    let Some(id) = attached else {
        // Seed 002: opening an unauthenticated URL ends in EOS.
        let _ = send_eos(&mut socket, frames::eos(UNEXPECTED_REASON).to_string()).await;
        return;
    };
    shared.notify.notify_waiters();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Text(text)) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Out::Eos(text)) => {
                    let _ = send_eos(&mut socket, text).await;
                    break;
                }
                // Returning drops the connection without a close frame.
                Some(Out::Drop) | None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => handle_text(&shared, id, text.as_str()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                // Binary frames carry nothing in this protocol; WebSocket pings are
                // answered by the library.
                Some(Ok(_)) => {}
            },
        }
    }
    shared.lock().detach(id);
    shared.notify.notify_waiters();
}

fn handle_text(shared: &Shared, socket: u64, text: &str) {
    let mut state = shared.lock();
    let answer = state.on_frame(socket, text);
    if let (Some(answer), Some(tx)) = (answer, state.socket_tx(socket)) {
        let delay = state.faults.answer_delay;
        let out = Out::Text(answer.to_string());
        if delay.is_zero() {
            let _ = tx.send(out);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(out);
            });
        }
    }
    state.flush();
    drop(state);
    shared.notify.notify_waiters();
}

async fn send_eos(socket: &mut WebSocket, frame: String) -> Result<(), axum::Error> {
    socket.send(Message::Text(frame.into())).await?;
    socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await
}
