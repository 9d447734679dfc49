//! Interactive cards through the IM API, authenticated with the tenant_access_token (§4):
//!
//! - send: `POST {open}/open-apis/im/v1/messages?receive_id_type=open_id` with
//!   `{receive_id, msg_type: "interactive", content: "<card JSON as a string>", uuid}` (§4.1);
//! - PATCH: `PATCH {open}/open-apis/im/v1/messages/:message_id` with `{content}` (§4.2);
//! - delayed update: `POST {open}/open-apis/interactive/v1/card/update` with
//!   `{token, card}` where `card` is an **object** (§4.3).
//!
//! Cards are JSON 2.0 objects (`{"schema":"2.0", …}`) given as [`serde_json::Value`]. The
//! content limit is 30 KB (§4.1); the platform enforces it (230025).

use serde::{Deserialize, Serialize};

use super::error::CODE_TENANT_TOKEN_INVALID;
use super::{Call, OpenApiClient, OpenApiError, RawAnswer};
use crate::secret::Secret;

/// Path of message creation (§4.1).
pub const MESSAGES_PATH: &str = "/open-apis/im/v1/messages";
/// Path of the delayed card update (§4.3).
pub const CARD_UPDATE_PATH: &str = "/open-apis/interactive/v1/card/update";
/// Longest `uuid` idempotency key, characters (§4.1).
pub const MAX_UUID_CHARS: usize = 50;

/// Sending with a `uuid` is idempotent (same uuid → at most one message per hour, §4.1).
const SEND_WITH_UUID: Call = Call::new("send card", true);
const SEND_WITHOUT_UUID: Call = Call::new("send card", false);
/// PATCH replaces the content: sending it twice has the effect of once.
const PATCH: Call = Call::new("patch card", true);
/// Each delayed update spends one of the token's 2 uses (§4.3): not idempotent.
const DELAYED_UPDATE: Call = Call::new("delayed card update", false);

/// The card message that was sent (`data` of the answer, §4.1; only the fields used here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SentMessage {
    /// `om_…`: for PATCH and to match callbacks (`context.open_message_id`).
    pub message_id: String,
    /// `oc_…` of the p2p chat, when given.
    #[serde(default)]
    pub chat_id: Option<String>,
    /// Creation time in **milliseconds** since the epoch, as the string the platform sends.
    #[serde(default)]
    pub create_time: Option<String>,
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: T,
}

#[derive(Serialize)]
struct SendBody<'a> {
    receive_id: &'a str,
    msg_type: &'static str,
    content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    uuid: Option<&'a str>,
}

#[derive(Serialize)]
struct PatchBody {
    content: String,
}

#[derive(Serialize)]
struct DelayedBody<'a> {
    token: &'a str,
    card: &'a serde_json::Value,
}

impl OpenApiClient {
    /// Decodes an IM answer; a 99991663 (tenant token invalid, §6) drops the cached token
    /// so the next call fetches a fresh one.
    fn decode_im<T: serde::de::DeserializeOwned>(
        &self,
        answer: &RawAnswer,
        call: Call,
    ) -> Result<T, OpenApiError> {
        let result = answer.decode(call);
        if let Err(e) = &result
            && e.code() == Some(CODE_TENANT_TOKEN_INVALID)
        {
            self.invalidate_tenant_access_token();
        }
        result
    }

    /// Sends the interactive `card` (a JSON object, serialized into `content` as a string)
    /// to the user `open_id` as the app's bot. With `uuid` (≤ 50 characters) a resend of the
    /// same request within an hour sends no second message (§4.1), so it may be retried.
    ///
    /// # Errors
    /// [`OpenApiError::InvalidRequest`] for a `uuid` over 50 characters;
    /// [`OpenApiError::Api`] e.g. `code` 230013 (user outside the availability range),
    /// 230025 (content too long), 230099 (card build failure), 99991400 (rate limited,
    /// see [`OpenApiError::retry_advice`]), 99991663 (tenant token invalid: the cached token
    /// is dropped, a resend fetches a new one); plus the tenant-token errors
    /// ([`tenant_access_token`](Self::tenant_access_token)), timeouts and network errors.
    pub async fn send_card(
        &self,
        open_id: &str,
        card: &serde_json::Value,
        uuid: Option<&str>,
    ) -> Result<SentMessage, OpenApiError> {
        let call = if uuid.is_some() {
            SEND_WITH_UUID
        } else {
            SEND_WITHOUT_UUID
        };
        if let Some(u) = uuid
            && u.chars().count() > MAX_UUID_CHARS
        {
            return Err(OpenApiError::InvalidRequest {
                call: call.name,
                reason: format!("uuid longer than {MAX_UUID_CHARS} characters"),
            });
        }
        let token = self.tenant_access_token().await?;
        let t = self.transport();
        let body = SendBody {
            receive_id: open_id,
            msg_type: "interactive",
            content: card.to_string(),
            uuid,
        };
        let request = t
            .http
            .post(t.open_url(MESSAGES_PATH))
            .query(&[("receive_id_type", "open_id")])
            .map_err(|e| OpenApiError::InvalidRequest {
                call: call.name,
                reason: e.to_string(),
            })?
            .bearer_auth(token.expose())
            .send_json(&body);
        let answer = t.execute(call, request).await?;
        let parsed: DataEnvelope<SentMessage> = self.decode_im(&answer, call)?;
        Ok(parsed.data)
    }

    /// Replaces the content of a card message sent by this app with `card` (§4.2). Both the
    /// old and the new card must allow shared updates (`config.update_multi: true`, the
    /// default in JSON 2.0); messages older than 14 days cannot be updated.
    ///
    /// # Errors
    /// [`OpenApiError::Api`] e.g. `code` 230031 (older than 14 days), 230011 (recalled),
    /// 230099 (card build failure); tenant-token errors, timeouts, network errors.
    pub async fn patch_card(
        &self,
        message_id: &str,
        card: &serde_json::Value,
    ) -> Result<(), OpenApiError> {
        let token = self.tenant_access_token().await?;
        let t = self.transport();
        let url = t.open_url(&format!(
            "{MESSAGES_PATH}/{}",
            url::form_urlencoded::byte_serialize(message_id.as_bytes()).collect::<String>()
        ));
        let request = t
            .http
            .patch(url)
            .bearer_auth(token.expose())
            .send_json(&PatchBody {
                content: card.to_string(),
            });
        let answer = t.execute(PATCH, request).await?;
        self.decode_im::<serde_json::Value>(&answer, PATCH)
            .map(drop)
    }

    /// The delayed card update with a callback's card-update `token` (`event.token`, `c-…`;
    /// valid 30 minutes, at most 2 uses, §4.3). Call it only after the callback has been
    /// answered. `card` is the whole card JSON object.
    ///
    /// # Errors
    /// [`OpenApiError::Api`] e.g. `code` 300030 (token expired), 300040 (token used more
    /// than twice), 300020 (bad token), 11311 (bad card); tenant-token errors, timeouts,
    /// network errors. Not idempotent: a resend spends another use of the token.
    pub async fn update_card_delayed(
        &self,
        token: &Secret<String>,
        card: &serde_json::Value,
    ) -> Result<(), OpenApiError> {
        let tenant_token = self.tenant_access_token().await?;
        let t = self.transport();
        let request = t
            .http
            .post(t.open_url(CARD_UPDATE_PATH))
            .bearer_auth(tenant_token.expose())
            .send_json(&DelayedBody {
                token: token.expose(),
                card,
            });
        let answer = t.execute(DELAYED_UPDATE, request).await?;
        answer.decode::<serde_json::Value>(DELAYED_UPDATE).map(drop)
    }
}
