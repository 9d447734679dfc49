//! TEMPORARY stub, replaced by the event types from branch `proto`.
#![allow(missing_docs)]
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ProtocolError;

pub const EVENT_TYPE_CARD_ACTION_TRIGGER: &str = "card.action.trigger";

#[derive(Debug, Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    header: Option<RawHeader<'a>>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
}
#[derive(Debug, Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
}
#[derive(Debug)]
pub struct EnvelopeRef<'a> {
    pub event_id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    pub event: Option<&'a RawValue>,
}
impl<'a> EnvelopeRef<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<EnvelopeRef<'a>, ProtocolError> {
        let raw: Raw<'a> = serde_json::from_slice(payload).map_err(ProtocolError::Envelope)?;
        let h = raw
            .header
            .ok_or_else(|| ProtocolError::Envelope(serde::de::Error::custom("no header")))?;
        Ok(EnvelopeRef {
            event_id: h.event_id,
            event_type: h.event_type,
            event: raw.event,
        })
    }
}
#[derive(Debug, Clone, Deserialize)]
pub struct Operator {
    pub open_id: String,
}
#[derive(Debug, Clone, Deserialize)]
pub struct CardActionTrigger {
    pub operator: Operator,
    #[serde(default)]
    pub action: serde_json::Value,
}
impl CardActionTrigger {
    pub fn from_event(event: &RawValue) -> Result<Self, ProtocolError> {
        serde_json::from_str(event.get()).map_err(ProtocolError::Envelope)
    }
}
#[derive(Debug, Clone, Default, Serialize)]
pub struct CardActionResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toast: Option<serde_json::Value>,
}
