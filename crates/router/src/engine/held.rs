//! What waited for its party: lines held while a handoff was PENDING, and the messages a
//! coalescing bot is given as one turn.

use handoff_platforms::content::content_from_response;
use handoff_proto::{Content, SendToBot};
use serde_json::Value;
use uuid::Uuid;

use super::work::Work;
use crate::model::Author;
use crate::store;

/// Lines held while PENDING (the customer's, and bot answers withheld from them), oldest
/// first, with who wrote them; no longer held.
pub(super) async fn release_held(
    work: &mut Work<'_>,
    conv: Uuid,
) -> anyhow::Result<Vec<(Author, Content)>> {
    work.pending.write_lines(work.tx).await?;
    let rows = store::messages::release_held(&mut **work.tx, conv).await?;
    Ok(rows
        .into_iter()
        .map(|(author, stored)| (author, stored_content(&stored)))
        .collect())
}

/// A transcript line's content as it is passed on. A line is stored as the platform sent
/// it when the model has no form for it (a `type` the model does not know, even one that
/// is not a string): it goes on in that same raw form, as it would have been relayed had
/// its party been there already. Refusing it would park the desk's acceptance and strand
/// the member in PENDING, or drop a coalesced customer message.
fn stored_content(stored: &Value) -> Content {
    content_from_response(stored).unwrap_or_else(|_| Content {
        kind: None,
        raw_json: stored.to_string(),
    })
}

/// The purpose of a `TurnDue` event: its id is `derived_id(first message's event, TURN_DUE, 0)`.
pub(crate) const TURN_DUE: &str = "turn_due";

/// What waited for a coalescing bot, as what it is told: texts joined into one message
/// carrying every platform message id, oldest first; a burst with anything but text
/// (a button, a picture) goes message by message, in order.
pub(super) fn one_turn(waiting: Vec<(Value, Option<String>)>) -> Vec<SendToBot> {
    let contents: Vec<(Content, Option<String>)> = waiting
        .into_iter()
        .map(|(stored, id)| (stored_content(&stored), id))
        .collect();
    let texts: Option<Vec<&str>> = contents
        .iter()
        .map(|(c, _)| match &c.kind {
            Some(handoff_proto::v1::content::Kind::Text(t)) => Some(t.text.as_str()),
            _ => None,
        })
        .collect();
    match texts {
        Some(texts) if texts.len() > 1 => vec![SendToBot {
            content: Some(crate::machine::text_content(&texts.join("\n"))),
            message_ids: contents.iter().filter_map(|(_, id)| id.clone()).collect(),
            ..Default::default()
        }],
        _ => contents
            .into_iter()
            .map(|(content, _)| SendToBot {
                content: Some(content),
                ..Default::default()
            })
            .collect(),
    }
}
