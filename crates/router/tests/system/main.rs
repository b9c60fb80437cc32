//! System tests: the real services against a real Postgres and a real NATS JetStream,
//! talking over loopback HTTP to the simulated platforms. Each test has its own database,
//! its own stream/subject prefix and its own ports.

mod helpers;

mod admin;
mod bad_input;
mod bot_flow;
mod browser;
mod crash_recovery;
mod hours;
mod independence;
mod live_chat;
mod notices;
mod poison;
mod selarti;
mod stalls;
mod stepping_out;
mod takeover;
mod timers;
mod traces;
mod walls;
mod webchat;
mod zendesk;
