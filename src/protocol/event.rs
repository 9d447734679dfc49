//! Event envelopes (protocol doc §6.2) and the `card.action.trigger` callback with its
//! response (`lark-openapi-auth.md` §5).
//!
//! - [`EnvelopeRef::parse`] reads the (reassembled) payload of a data message without
//!   copying: ids borrow from the payload when they contain no JSON escapes, and the `event`
//!   body stays unparsed as a [`RawValue`] until the handler for its type deserializes it
//!   (e.g. with [`EnvelopeRef::deserialize_event`]). Schema 2.0 and legacy 1.0 are both read.
//! - [`CardActionTrigger`] is the typed `event` body of `card.action.trigger`.
//! - [`CardActionResponse`] is what the callback answers; its JSON goes, base64-encoded, into
//!   the `data` of the response frame ([`AckPayload::ok_with_data`](super::AckPayload)).
//!
//! The envelope's verification token (`header.token` / 1.0 `token`) is never read. The
//! card-update token is kept in a [`Secret`] and the raw event body is not printed by
//! `Debug`, so neither reaches a log line.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::ProtocolError;
use crate::secret::Secret;

/// `header.event_type` of the new-style card interaction callback (§6.2).
pub const EVENT_TYPE_CARD_ACTION_TRIGGER: &str = "card.action.trigger";

/// Envelope schema of an event payload (§6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Legacy form: `{"uuid","token","ts","type":"event_callback","event":{"type",…}}`,
    /// recognised by a non-empty `uuid`.
    V1,
    /// Normal form: `{"schema":"2.0","header":{…},"event":{…}}`.
    V2,
}

/// An event envelope borrowed from the payload bytes it was parsed from.
///
/// `Debug` prints the ids and the length of the event body, never the body itself (it may
/// hold the card-update token).
#[derive(Clone)]
pub struct EnvelopeRef<'a> {
    /// Which envelope form the payload used.
    pub schema: Schema,
    /// Unique id of the delivery, for de-duplication (§8): `header.event_id` (2.0) or
    /// `uuid` (1.0). Redelivered events carry the same id.
    pub event_id: Cow<'a, str>,
    /// Event type selecting the handler: `header.event_type` (2.0) or `event.type` (1.0),
    /// e.g. `im.message.receive_v1` or [`EVENT_TYPE_CARD_ACTION_TRIGGER`].
    pub event_type: Cow<'a, str>,
    /// `header.create_time` (2.0; decimal string, milliseconds for events, microseconds for
    /// callbacks) or `ts` (1.0; seconds, possibly fractional). `None` when absent.
    pub create_time: Option<Cow<'a, str>>,
    /// `header.app_id` (2.0) or `event.app_id` (1.0), `None` when absent.
    pub app_id: Option<Cow<'a, str>>,
    /// `header.tenant_key` (2.0) or `event.tenant_key` (1.0), `None` when absent.
    pub tenant_key: Option<Cow<'a, str>>,
    /// The `event` body, unparsed JSON.
    pub event: &'a RawValue,
}

impl fmt::Debug for EnvelopeRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeRef")
            .field("schema", &self.schema)
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("create_time", &self.create_time)
            .field("app_id", &self.app_id)
            .field("tenant_key", &self.tenant_key)
            .field("event_bytes", &self.event.get().len())
            .finish()
    }
}

/// The top level of both schemas. Unknown keys (including `token`) are skipped unread.
#[derive(Deserialize)]
struct WireEnvelope<'a> {
    #[serde(borrow, default)]
    header: Option<WireHeader<'a>>,
    #[serde(borrow, default)]
    uuid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ts: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
}

/// Schema 2.0 `header`, without `token`.
#[derive(Deserialize)]
struct WireHeader<'a> {
    #[serde(borrow, default)]
    event_id: Cow<'a, str>,
    #[serde(borrow, default)]
    event_type: Cow<'a, str>,
    #[serde(borrow, default)]
    create_time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    app_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tenant_key: Option<Cow<'a, str>>,
}

/// The fields a schema 1.0 `event` body carries about itself.
#[derive(Deserialize)]
struct WireV1Event<'a> {
    #[serde(borrow, default, rename = "type")]
    event_type: Cow<'a, str>,
    #[serde(borrow, default)]
    app_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tenant_key: Option<Cow<'a, str>>,
}

fn envelope_error(msg: &str) -> ProtocolError {
    ProtocolError::Envelope(<serde_json::Error as serde::de::Error>::custom(msg))
}

impl<'a> EnvelopeRef<'a> {
    /// Parses a (reassembled) data message payload: UTF-8 JSON, never encrypted over the
    /// long connection (§6.2).
    ///
    /// A payload with a `header` object is schema 2.0; otherwise a non-empty `uuid` makes it
    /// schema 1.0 (as the SDK dispatchers decide). Unknown keys are ignored.
    ///
    /// # Errors
    /// [`ProtocolError::Envelope`] when the bytes are not JSON, a known key has the wrong
    /// type, the payload has neither a `header` nor a non-empty `uuid`, the `event` body is
    /// missing or `null`, or the event type is empty.
    ///
    /// ```
    /// use lark_auth::protocol::event::{EnvelopeRef, Schema};
    ///
    /// let payload = br#"{"schema":"2.0","header":{"event_id":"e1","event_type":"im.message.receive_v1",
    ///   "create_time":"1","token":"t","app_id":"cli_a","tenant_key":"tk"},"event":{"x":1}}"#;
    /// let envelope = EnvelopeRef::parse(payload)?;
    /// assert_eq!(envelope.schema, Schema::V2);
    /// assert_eq!(envelope.event_type, "im.message.receive_v1");
    /// assert_eq!(envelope.event.get(), r#"{"x":1}"#);
    /// # Ok::<(), lark_auth::protocol::ProtocolError>(())
    /// ```
    pub fn parse(payload: &'a [u8]) -> Result<EnvelopeRef<'a>, ProtocolError> {
        let wire: WireEnvelope<'a> =
            serde_json::from_slice(payload).map_err(ProtocolError::Envelope)?;
        let Some(event) = wire.event else {
            return Err(envelope_error("envelope has no event body"));
        };
        let envelope = if let Some(header) = wire.header {
            EnvelopeRef {
                schema: Schema::V2,
                event_id: header.event_id,
                event_type: header.event_type,
                create_time: header.create_time,
                app_id: header.app_id,
                tenant_key: header.tenant_key,
                event,
            }
        } else {
            match wire.uuid {
                Some(uuid) if !uuid.is_empty() => {
                    let body: WireV1Event<'a> =
                        serde_json::from_str(event.get()).map_err(ProtocolError::Envelope)?;
                    EnvelopeRef {
                        schema: Schema::V1,
                        event_id: uuid,
                        event_type: body.event_type,
                        create_time: wire.ts,
                        app_id: body.app_id,
                        tenant_key: body.tenant_key,
                        event,
                    }
                }
                _ => {
                    return Err(envelope_error(
                        "envelope has neither a schema 2.0 header nor a 1.0 uuid",
                    ));
                }
            }
        };
        if envelope.event_type.is_empty() {
            return Err(envelope_error("envelope has an empty event type"));
        }
        Ok(envelope)
    }

    /// True when this is a `card.action.trigger` callback, which must be answered with a
    /// [`CardActionResponse`] within 3 s.
    pub fn is_card_action_trigger(&self) -> bool {
        self.event_type == EVENT_TYPE_CARD_ACTION_TRIGGER
    }

    /// Deserializes the `event` body into the handler's type, e.g. [`CardActionTrigger`].
    ///
    /// # Errors
    /// [`ProtocolError::Envelope`] when the body does not have the shape of `T`.
    pub fn deserialize_event<T: Deserialize<'a>>(&self) -> Result<T, ProtocolError> {
        serde_json::from_str(self.event.get()).map_err(ProtocolError::Envelope)
    }
}

/// What routing needs of an envelope: the ids and the type, without the `event` body.
///
/// [`EnvelopeHead::parse`] stops reading at the `event` key when the schema 2.0 `header`
/// came before it (as the platform and the SDKs write envelopes), so the event body is
/// neither scanned nor validated; any other layout (1.0 envelopes, `event` before
/// `header`, anything unusual) goes through [`EnvelopeRef::parse`]. Whenever
/// [`EnvelopeRef::parse`] accepts a payload, this gives the same fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHead<'a> {
    /// Which envelope form the payload used.
    pub schema: Schema,
    /// As [`EnvelopeRef::event_id`].
    pub event_id: Cow<'a, str>,
    /// As [`EnvelopeRef::event_type`].
    pub event_type: Cow<'a, str>,
    /// As [`EnvelopeRef::create_time`].
    pub create_time: Option<Cow<'a, str>>,
    /// As [`EnvelopeRef::app_id`].
    pub app_id: Option<Cow<'a, str>>,
    /// As [`EnvelopeRef::tenant_key`].
    pub tenant_key: Option<Cow<'a, str>>,
}

impl<'a> From<EnvelopeRef<'a>> for EnvelopeHead<'a> {
    fn from(e: EnvelopeRef<'a>) -> Self {
        EnvelopeHead {
            schema: e.schema,
            event_id: e.event_id,
            event_type: e.event_type,
            create_time: e.create_time,
            app_id: e.app_id,
            tenant_key: e.tenant_key,
        }
    }
}

impl<'a> EnvelopeHead<'a> {
    /// Reads the routing fields of a (reassembled) data message payload.
    ///
    /// # Errors
    /// As [`EnvelopeRef::parse`], except that a payload whose `header` precedes a
    /// non-null `event` object is accepted without reading that body (a body that is not
    /// valid JSON, or a repeated key after it, is then not noticed).
    ///
    /// ```
    /// use lark_auth::protocol::event::{EnvelopeHead, Schema};
    ///
    /// let payload = br#"{"schema":"2.0","header":{"event_id":"e1","event_type":"im.message.receive_v1"},"event":{"x":1}}"#;
    /// let head = EnvelopeHead::parse(payload)?;
    /// assert_eq!((head.schema, head.event_id.as_ref()), (Schema::V2, "e1"));
    /// # Ok::<(), lark_auth::protocol::ProtocolError>(())
    /// ```
    pub fn parse(payload: &'a [u8]) -> Result<EnvelopeHead<'a>, ProtocolError> {
        match head_before_event(payload) {
            Some(head) if !head.event_type.is_empty() => Ok(head),
            _ => EnvelopeRef::parse(payload).map(EnvelopeHead::from),
        }
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(i) {
        i += 1;
    }
    i
}

/// Reads one self-delimiting JSON value (string, object, array) at `at`; returns it and
/// the offset just past it.
fn value_at<'a, T: Deserialize<'a>>(payload: &'a [u8], at: usize) -> Option<(T, usize)> {
    let rest = payload.get(at..)?;
    let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<T>();
    let value = stream.next()?.ok()?;
    Some((value, at + stream.byte_offset()))
}

/// The fast path of [`EnvelopeHead::parse`]: top-level keys in order until `event`; `None`
/// for anything it does not handle (the caller then parses the whole envelope).
fn head_before_event(payload: &[u8]) -> Option<EnvelopeHead<'_>> {
    let mut i = skip_ws(payload, 0);
    if payload.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut header: Option<WireHeader<'_>> = None;
    loop {
        i = skip_ws(payload, i);
        if payload.get(i) != Some(&b'"') {
            return None;
        }
        let (key, next) = value_at::<Cow<'_, str>>(payload, i)?;
        i = skip_ws(payload, next);
        if payload.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(payload, i + 1);
        match key.as_ref() {
            "header" => {
                if header.is_some() || payload.get(i) != Some(&b'{') {
                    return None;
                }
                let (h, next) = value_at::<WireHeader<'_>>(payload, i)?;
                header = Some(h);
                i = next;
            }
            "event" => {
                let h = header?;
                if payload.get(i) != Some(&b'{') {
                    return None;
                }
                return Some(EnvelopeHead {
                    schema: Schema::V2,
                    event_id: h.event_id,
                    event_type: h.event_type,
                    create_time: h.create_time,
                    app_id: h.app_id,
                    tenant_key: h.tenant_key,
                });
            }
            _ => {
                let b = *payload.get(i)?;
                if !matches!(b, b'"' | b'{' | b'[') {
                    // Numbers and literals are not self-delimiting for the stream reader.
                    return None;
                }
                let (_, next) = value_at::<serde::de::IgnoredAny>(payload, i)?;
                i = next;
            }
        }
        i = skip_ws(payload, i);
        match payload.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

/// The `event` body of a `card.action.trigger` callback (`lark-openapi-auth.md` §5.1,
/// protocol doc §6.2). Unknown fields are ignored; optional ones may be missing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CardActionTrigger {
    /// Who clicked.
    pub operator: Operator,
    /// Card-update token (`c-…`) for the delayed-update API: valid 30 minutes, at most 2
    /// updates. Empty when absent.
    #[serde(default)]
    pub token: Secret<String>,
    /// What was clicked or submitted.
    pub action: CardAction,
    /// Where the card is shown, e.g. `im_message`.
    #[serde(default)]
    pub host: Option<String>,
    /// `url_preview` for link-preview cards; absent for message cards.
    #[serde(default)]
    pub delivery_type: Option<String>,
    /// The message and chat of the card.
    #[serde(default)]
    pub context: Option<CardContext>,
}

impl CardActionTrigger {
    /// Parses a `card.action.trigger` `event` body (JSON bytes).
    ///
    /// # Errors
    /// [`ProtocolError::Envelope`] when the JSON lacks `operator.open_id`,
    /// `operator.tenant_key` or `action`, or a field has the wrong type.
    pub fn from_event_json(body: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(body).map_err(ProtocolError::Envelope)
    }
}

/// The user who interacted with the card (`event.operator`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Operator {
    /// The user's tenant.
    pub tenant_key: String,
    /// Tenant-wide user id; present only with scope `contact:user.employee_id:readonly`.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Per-app user id (`ou_…`).
    pub open_id: String,
    /// Per-developer user id (`on_…`).
    #[serde(default)]
    pub union_id: Option<String>,
}

/// The interaction (`event.action`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CardAction {
    /// The `value` the card author attached to the component. An empty object when absent
    /// or `null`.
    #[serde(default)]
    pub value: ActionValue,
    /// Component tag, e.g. `button`. Empty when absent.
    #[serde(default)]
    pub tag: String,
    /// Component `name` (set for form components).
    #[serde(default)]
    pub name: Option<String>,
    /// Form submission: component name → value or list of values.
    #[serde(default)]
    pub form_value: Option<Map<String, Value>>,
    /// Input box value (outside forms).
    #[serde(default)]
    pub input_value: Option<String>,
    /// Selected option of a single-select or picker (outside forms).
    #[serde(default)]
    pub option: Option<String>,
    /// Selected options of a multi-select (outside forms).
    #[serde(default)]
    pub options: Option<Vec<String>>,
    /// State of a checker component.
    #[serde(default)]
    pub checked: Option<bool>,
    /// Time zone of a date/time picker.
    #[serde(default)]
    pub timezone: Option<String>,
}

/// A component's callback `value`: an object (recommended) or a string (the docs allow it;
/// some SDKs fail on it, error 200671).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ActionValue {
    /// A JSON object value.
    Object(Map<String, Value>),
    /// A string value.
    String(String),
}

impl Default for ActionValue {
    fn default() -> Self {
        ActionValue::Object(Map::new())
    }
}

impl ActionValue {
    /// The string at `key` of an object value; `None` for a string value, a missing key or
    /// a non-string entry.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self {
            ActionValue::Object(map) => map.get(key).and_then(Value::as_str),
            ActionValue::String(_) => None,
        }
    }

    /// The value itself when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ActionValue::String(s) => Some(s),
            ActionValue::Object(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for ActionValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ActionValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object, a string or null")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ActionValue, E> {
                Ok(ActionValue::String(v.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<ActionValue, E> {
                Ok(ActionValue::String(v))
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<ActionValue, E> {
                Ok(ActionValue::default())
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<ActionValue, E> {
                Ok(ActionValue::default())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ActionValue, A::Error> {
                Map::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ActionValue::Object)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Where the card lives (`event.context`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CardContext {
    /// Link-preview URL (link previews only).
    #[serde(default)]
    pub url: Option<String>,
    /// Link-preview token (link previews only); kept secret.
    #[serde(default)]
    pub preview_token: Option<Secret<String>>,
    /// `om_…` id of the card message (for PATCH updates).
    #[serde(default)]
    pub open_message_id: Option<String>,
    /// `oc_…` id of the chat.
    #[serde(default)]
    pub open_chat_id: Option<String>,
}

/// The answer to a `card.action.trigger` callback (`lark-openapi-auth.md` §5.2). The default
/// (`{}`) leaves the card unchanged.
///
/// ```
/// use lark_auth::protocol::event::{CardActionResponse, Toast};
///
/// let response = CardActionResponse { toast: Some(Toast::info("Declined")), card: None };
/// assert_eq!(response.to_json()?, br#"{"toast":{"type":"info","content":"Declined"}}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CardActionResponse {
    /// A toast shown to the clicking user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toast: Option<Toast>,
    /// A card replacing the clicked one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CardResponse>,
}

impl CardActionResponse {
    /// Renders the compact JSON to put (base64-encoded by
    /// [`AckPayload`](super::AckPayload)) into the response frame.
    ///
    /// # Errors
    /// Only if `serde_json` fails to write a [`Value`] (not expected: all map keys are
    /// strings).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// A toast in a [`CardActionResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toast {
    /// Style of the toast (`type`).
    #[serde(rename = "type")]
    pub kind: ToastKind,
    /// Single-language text.
    pub content: String,
    /// Texts by locale (`zh_cn`, `en_us`, `ja_jp`, …); takes precedence over `content` in the
    /// client when the user's locale is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i18n: Option<BTreeMap<String, String>>,
}

impl Toast {
    /// A toast of `kind` with `content` and no translations.
    pub fn new(kind: ToastKind, content: impl Into<String>) -> Self {
        Toast {
            kind,
            content: content.into(),
            i18n: None,
        }
    }

    /// An `info` toast.
    pub fn info(content: impl Into<String>) -> Self {
        Toast::new(ToastKind::Info, content)
    }

    /// A `success` toast.
    pub fn success(content: impl Into<String>) -> Self {
        Toast::new(ToastKind::Success, content)
    }

    /// An `error` toast.
    pub fn error(content: impl Into<String>) -> Self {
        Toast::new(ToastKind::Error, content)
    }

    /// A `warning` toast.
    pub fn warning(content: impl Into<String>) -> Self {
        Toast::new(ToastKind::Warning, content)
    }
}

/// `toast.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToastKind {
    /// `info`.
    Info,
    /// `success`.
    Success,
    /// `error`.
    Error,
    /// `warning`.
    Warning,
}

/// A replacement card in a [`CardActionResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardResponse {
    /// How `data` is to be read (`type`).
    #[serde(rename = "type")]
    pub kind: CardResponseKind,
    /// `raw`: the full card JSON object, same schema version as the sent card; `template`:
    /// `{"template_id", "template_version_name"?, "template_variable"?}`.
    pub data: Value,
}

impl CardResponse {
    /// A raw card (the card JSON object).
    pub fn raw(card: Value) -> Self {
        CardResponse {
            kind: CardResponseKind::Raw,
            data: card,
        }
    }

    /// A template card.
    pub fn template(
        template_id: impl Into<String>,
        template_version_name: Option<String>,
        template_variable: Option<Map<String, Value>>,
    ) -> Self {
        let mut data = Map::new();
        data.insert("template_id".into(), Value::String(template_id.into()));
        if let Some(version) = template_version_name {
            data.insert("template_version_name".into(), Value::String(version));
        }
        if let Some(variables) = template_variable {
            data.insert("template_variable".into(), Value::Object(variables));
        }
        CardResponse {
            kind: CardResponseKind::Template,
            data: Value::Object(data),
        }
    }
}

/// `card.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardResponseKind {
    /// `raw`: `data` is a card JSON object.
    Raw,
    /// `template`: `data` names a card template.
    Template,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &[u8] = br#"{"schema":"2.0","header":{"event_id":"ev_1","token":"verif_tok_SECRET","create_time":"1767225600000000","event_type":"card.action.trigger","tenant_key":"tk","app_id":"cli_a"},"event":{"operator":{"tenant_key":"tk","open_id":"ou_1","extra":1},"token":"c-card_tok_SECRET","action":{"value":{"session_id":"s1","n":2},"tag":"button"},"context":{"open_message_id":"om_1","preview_token":"pv_SECRET"},"new_field":[1,2]}}"#;

    #[test]
    fn schema_2_envelope_borrows_and_hides_tokens() {
        let env = EnvelopeRef::parse(CARD).unwrap();
        assert_eq!(env.schema, Schema::V2);
        assert_eq!(env.event_id, "ev_1");
        assert!(matches!(env.event_id, Cow::Borrowed(_)));
        assert!(env.is_card_action_trigger());
        assert_eq!(env.create_time.as_deref(), Some("1767225600000000"));
        assert_eq!(env.app_id.as_deref(), Some("cli_a"));
        assert_eq!(env.tenant_key.as_deref(), Some("tk"));
        assert!(env.event.get().starts_with(r#"{"operator""#));
        let debug = format!("{env:?}");
        assert!(!debug.contains("SECRET"), "{debug}");

        let trigger: CardActionTrigger = env.deserialize_event().unwrap();
        assert_eq!(trigger.operator.open_id, "ou_1");
        assert_eq!(trigger.operator.user_id, None);
        assert_eq!(trigger.token.expose(), "c-card_tok_SECRET");
        assert_eq!(trigger.action.value.get_str("session_id"), Some("s1"));
        assert_eq!(trigger.action.value.get_str("n"), None);
        assert_eq!(trigger.action.value.as_str(), None);
        assert_eq!(trigger.action.tag, "button");
        let context = trigger.context.as_ref().unwrap();
        assert_eq!(context.open_message_id.as_deref(), Some("om_1"));
        let debug = format!("{trigger:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
    }

    #[test]
    fn escaped_ids_are_unescaped() {
        let payload = br#"{"header":{"event_id":"a\"b\u00e9","event_type":"x.y"},"event":{}}"#;
        let env = EnvelopeRef::parse(payload).unwrap();
        assert_eq!(env.event_id, "a\"b\u{e9}");
        assert_eq!(env.create_time, None);
    }

    #[test]
    fn schema_1_envelope_uses_uuid_and_event_type() {
        let payload = br#"{"uuid":"u-1","token":"verif_SECRET","ts":"1502199207.7171419","type":"event_callback","event":{"type":"message","app_id":"cli_a","tenant_key":"tk","text":"hi"}}"#;
        let env = EnvelopeRef::parse(payload).unwrap();
        assert_eq!(env.schema, Schema::V1);
        assert_eq!(env.event_id, "u-1");
        assert_eq!(env.event_type, "message");
        assert_eq!(env.create_time.as_deref(), Some("1502199207.7171419"));
        assert_eq!(env.app_id.as_deref(), Some("cli_a"));
        assert_eq!(env.tenant_key.as_deref(), Some("tk"));
        assert!(!format!("{env:?}").contains("SECRET"));
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        for payload in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            br#"{"uuid":"","event":{"type":"x"}}"#,
            br#"{"uuid":"u","event":{}}"#,
            br#"{"header":{"event_id":"e","event_type":"t"}}"#,
            br#"{"header":{"event_id":"e","event_type":"t"},"event":null}"#,
            br#"{"header":{"event_id":"e","event_type":""},"event":{}}"#,
            br#"{"header":{"event_id":1,"event_type":"t"},"event":{}}"#,
            b"{\"header\":{\"event_id\":\"e\",\"event_type\":\"t\"},\"event\":{}",
        ] {
            assert!(
                matches!(EnvelopeRef::parse(payload), Err(ProtocolError::Envelope(_))),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    fn head_matches_full(payload: &[u8]) {
        let full = EnvelopeRef::parse(payload).map(EnvelopeHead::from);
        let head = EnvelopeHead::parse(payload);
        match full {
            Ok(full) => assert_eq!(head.unwrap(), full, "{}", String::from_utf8_lossy(payload)),
            Err(_) => assert!(
                head.is_err() || head_before_event(payload).is_some(),
                "{}",
                String::from_utf8_lossy(payload)
            ),
        }
    }

    #[test]
    fn head_stops_after_the_header_and_falls_back_otherwise() {
        // Header first: the (here broken) body is not read.
        let broken_body =
            br#"{"schema":"2.0","header":{"event_id":"e","event_type":"t"},"event":{"x":"#;
        let head = EnvelopeHead::parse(broken_body).unwrap();
        assert_eq!(
            (head.event_id.as_ref(), head.event_type.as_ref()),
            ("e", "t")
        );
        assert!(matches!(head.event_id, Cow::Borrowed(_)));
        assert!(EnvelopeRef::parse(broken_body).is_err());
        // Event first, 1.0, escapes, odd values before the header: the full parse decides.
        for payload in [
            CARD,
            &br#"{"event":{"k":1},"schema":"2.0","header":{"event_id":"e","event_type":"t"}}"#[..],
            br#"{"uuid":"u-1","ts":"1","event":{"type":"message","app_id":"a"}}"#,
            br#"{"n":1,"header":{"event_id":"e","event_type":"t"},"event":{}}"#,
            br#" { "header" : {"event_id":"a\"b\u00e9","event_type":"x.y","app_id":"a"} , "event" : {} } "#,
            br#"{"header":{"event_id":"e","event_type":"t"},"event":null}"#,
            br#"{"header":{"event_id":"e","event_type":""},"event":{}}"#,
            br#"{"header":{"event_id":"e","event_type":"t"},"header":{"event_id":"f","event_type":"t"},"event":{}}"#,
            br#"{"header":null,"uuid":"u","event":{"type":"x"}}"#,
            br#"{"header":{"event_id":1,"event_type":"t"},"event":{}}"#,
            br#"{"header":{"event_id":"e","event_type":"t"},"event":"s"}"#,
            br#"{"header":{"event_id":"e","event_type":"t"}}"#,
            b"",
            b"{}",
            b"[]",
        ] {
            head_matches_full(payload);
        }
        let escaped =
            EnvelopeHead::parse(br#"{"header":{"event_id":"a\"b","event_type":"t"},"event":{}}"#)
                .unwrap();
        assert_eq!(escaped.event_id, "a\"b");
    }

    #[test]
    fn action_value_forms() {
        let parse = |json: &str| -> CardAction { serde_json::from_str(json).unwrap() };
        assert_eq!(
            parse(r#"{"value":"authorize","tag":"button"}"#).value,
            ActionValue::String("authorize".into())
        );
        assert_eq!(parse(r#"{"value":null}"#).value, ActionValue::default());
        assert_eq!(parse(r#"{}"#).value, ActionValue::default());
        assert!(serde_json::from_str::<CardAction>(r#"{"value":3}"#).is_err());
        let form = parse(
            r#"{"tag":"button","form_value":{"a":["x"]},"options":["p","q"],"checked":true,"input_value":"in","option":"o","timezone":"Asia/Shanghai"}"#,
        );
        assert_eq!(form.options, Some(vec!["p".to_string(), "q".to_string()]));
        assert_eq!(form.checked, Some(true));
        assert_eq!(form.input_value.as_deref(), Some("in"));
        assert_eq!(form.option.as_deref(), Some("o"));
        assert_eq!(form.timezone.as_deref(), Some("Asia/Shanghai"));
        assert_eq!(
            form.form_value.unwrap().get("a"),
            Some(&serde_json::json!(["x"]))
        );
    }

    #[test]
    fn trigger_requires_operator_and_action() {
        assert!(CardActionTrigger::from_event_json(br#"{"action":{}}"#).is_err());
        assert!(
            CardActionTrigger::from_event_json(br#"{"operator":{"tenant_key":"t"},"action":{}}"#)
                .is_err()
        );
        let minimal = CardActionTrigger::from_event_json(
            br#"{"operator":{"tenant_key":"t","open_id":"ou"},"action":{}}"#,
        )
        .unwrap();
        assert!(minimal.token.is_empty());
        assert_eq!(minimal.context, None);
    }

    #[test]
    fn response_serializes_compactly_in_field_order() {
        let response = CardActionResponse {
            toast: Some(Toast::success("ok")),
            card: Some(CardResponse::template("tpl", Some("1.0.0".into()), None)),
        };
        assert_eq!(
            String::from_utf8(response.to_json().unwrap()).unwrap(),
            r#"{"toast":{"type":"success","content":"ok"},"card":{"type":"template","data":{"template_id":"tpl","template_version_name":"1.0.0"}}}"#
        );
        assert_eq!(CardActionResponse::default().to_json().unwrap(), b"{}");
        let raw = CardResponse::raw(serde_json::json!({"schema":"2.0"}));
        assert_eq!(
            serde_json::to_string(&raw).unwrap(),
            r#"{"type":"raw","data":{"schema":"2.0"}}"#
        );
        assert_eq!(
            serde_json::to_string(&Toast::warning("w")).unwrap(),
            r#"{"type":"warning","content":"w"}"#
        );
        assert_eq!(
            serde_json::to_string(&Toast::error("e")).unwrap(),
            r#"{"type":"error","content":"e"}"#
        );
    }
}
