//! A desk's business hours: outside them a handoff calls nobody (or leaves a marked
//! ticket), and the customer and the bot hear when the desk opens.

use std::time::Duration;

use handoff_simulators::Api;
use time::OffsetDateTime;

use crate::helpers::*;

/// Hours that are closed today (UTC) and open all of tomorrow: `(hours, when it opens as
/// the customer reads it, as the bot reads it)`.
async fn closed_until_tomorrow(offline: &str) -> (String, String, String) {
    // Not across midnight: the test's "today" and the hub's must be the same day.
    let now = OffsetDateTime::now_utc();
    let to_midnight =
        86_400 - i64::from(now.time().hour()) * 3600 - i64::from(now.time().minute()) * 60;
    if to_midnight < 120 {
        tokio::time::sleep(Duration::from_secs(to_midnight.unsigned_abs() + 5)).await;
    }
    let today = OffsetDateTime::now_utc().date();
    let tomorrow = today.next_day().unwrap();
    let every_day = "mon: ['00:00-24:00'], tue: ['00:00-24:00'], wed: ['00:00-24:00'], \
                     thu: ['00:00-24:00'], fri: ['00:00-24:00'], sat: ['00:00-24:00'], \
                     sun: ['00:00-24:00']";
    let hours = format!(
        "{{timezone: UTC, weekly: {{{every_day}}}, closed: ['{today}'], offline: {offline}}}"
    );
    (
        hours,
        format!("{} 00:00 (UTC)", tomorrow.weekday()),
        format!("{tomorrow}T00:00:00+00:00"),
    )
}

#[tokio::test]
async fn outside_hours_a_handoff_tells_the_customer_and_the_bot_when_the_desk_opens_and_calls_no_desk()
 {
    // Arrange
    let (hours, reads, stamp) = closed_until_tomorrow("notify").await;
    let hub = TestHub::start_with(HubOptions {
        desk_hours: Some(hours),
        notices: None,
        ..Default::default()
    })
    .await;

    // Act
    hub.say("ola", "talk to a human").await;

    // Assert
    let got = hub.wait_received("ola", 1).await;
    assert_eq!(
        text_of(&got[0]),
        format!(
            "Our team is offline right now and back {reads}. Our assistant will keep helping you."
        )
    );
    let told = hub
        .wait_bot(|c| c["event"] == "handoff_failed" && c["member"]["externalId"] == "ola")
        .await;
    assert_eq!(told["handoffError"]["reason"], "outside_hours");
    assert_eq!(told["handoffError"]["nextOpenAt"], stamp.as_str());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        hub.desk.calls(Api::Livechat).is_empty(),
        "no desk was called"
    );
    let mut db = hub.db().await;
    let conversations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM conversations WHERE member_id = $1::uuid")
            .bind(member_id("ola"))
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(conversations, 0);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_desk_taking_offline_tickets_gets_the_request_marked_offline_and_the_bot_keeps_the_customer()
 {
    // Arrange
    let (hours, _, _) = closed_until_tomorrow("ticket").await;
    let hub = TestHub::start_with(HubOptions {
        desk_hours: Some(hours),
        ..Default::default()
    })
    .await;

    // Act
    hub.say("pam", "talk to a human").await;
    let tickets = hub.wait_desk(Api::Livechat, 1).await;
    hub.say("pam", "still there?").await;

    // Assert
    assert_eq!(
        tickets[0].body["meta"]["offline"], true,
        "{}",
        tickets[0].body
    );
    assert!(tickets[0].body["chatHistoryURL"].as_str().is_some());
    // The outside-hours notice, the bot's own words on it, then the bot as usual.
    let got = hub.wait_received("pam", 3).await;
    assert!(text_of(&got[0]).starts_with("Our team is offline right now"));
    assert_eq!(text_of(&got[2]), "You said: still there?");
    let mut db = hub.db().await;
    let reason: Option<String> =
        sqlx::query_scalar("SELECT close_reason FROM conversations WHERE member_id = $1::uuid")
            .bind(member_id("pam"))
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("outside_hours"));
    hub.shutdown().await;
}

#[tokio::test]
async fn an_outlet_an_operator_switches_unavailable_takes_no_handoff_until_it_is_switched_back() {
    // Arrange
    let hub = TestHub::start_with(HubOptions {
        notices: None,
        ..Default::default()
    })
    .await;
    let (ok, out) = hub.handoffctl(&["channels", "unavailable", OUTLET]).await;
    assert!(ok, "{out}");
    let (ok, out) = hub.handoffctl(&["channels", "get", OUTLET, "--json"]).await;
    let got: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    assert!(ok && got["available"] == false, "{out}");
    let (ok, _) = hub.handoffctl(&["channels", "unavailable", INLET]).await;
    assert!(!ok, "only an outlet takes handoffs");

    // Act: switched off, then back on
    hub.say("una", "talk to a human").await;
    let told = hub
        .wait_bot(|c| c["event"] == "handoff_failed" && c["member"]["externalId"] == "una")
        .await;
    let (ok, out) = hub.handoffctl(&["channels", "available", OUTLET]).await;
    assert!(ok, "{out}");
    // The switch reaches the router through the catalog: a handoff is tried until it calls.
    let calls = loop {
        hub.say("una", "talk to a human").await;
        let calls = hub
            .desk
            .wait_for(Api::Livechat, 1, Duration::from_secs(2))
            .await;
        if !calls.is_empty() {
            break calls;
        }
    };

    // Assert
    assert_eq!(told["handoffError"]["reason"], "unavailable");
    let got = hub.wait_received("una", 2).await;
    assert_eq!(
        text_of(&got[0]),
        "No one from our team is available right now. Our assistant will keep helping you."
    );
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["member"]["externalId"], "una");
    hub.shutdown().await;
}
