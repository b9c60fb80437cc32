//! One typed configuration for every Handoff service, and the channels file.
//!
//! Settings are layered: built-in defaults, then an optional YAML file named by
//! `HANDOFF_CONFIG`, then `HANDOFF_*` environment variables (`__` separates levels, e.g.
//! `HANDOFF_NATS__URL`). Channels live in their own YAML file (`HANDOFF_CHANNELS`), because
//! they are data an operator edits, not process tuning.

mod channels;
mod hours;
mod notices;
mod settings;

pub use channels::{
    Channel, ChannelError, Channels, CsatRules, HandoffRules, LiveChatRules, OnBotDown, OnNoReply,
    Platform, Role, env_reference, member_id,
};
pub use hours::{Availability, BusinessHours, Offline, opening_stamp, opening_text};
pub use notices::{Notice, NoticeKind, Notices, render};
pub use settings::{
    AdminSettings, DatabaseSettings, DeliverySettings, HttpSettings, NatsSettings,
    RetentionSettings, Settings, SettingsError, TelemetrySettings,
};
