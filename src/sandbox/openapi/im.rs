//! Card routes of the sandbox (§4): send, PATCH, delayed update. All need a valid
//! tenant_access_token; cards are parsed, checked and recorded.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::tokens::bearer;
use super::{
    CardPatch, DelayedCardUpdate, OpenApiRoute, SentCard, StoredMessage, apply_delay, fault_answer,
    json_answer, random_id,
};
use crate::openapi::im::{CARD_UPDATE_PATH, MAX_UUID_CHARS, MESSAGES_PATH};
use crate::sandbox::Shared;

/// Card content limit, bytes (§4.1).
const MAX_CARD_BYTES: usize = 30 * 1024;
/// Largest element count of a 2.0 card (§4.1, 11310).
const MAX_ELEMENTS: usize = 200;
/// A uuid sends at most one message per hour (§4.1).
const UUID_WINDOW: Duration = Duration::from_secs(3600);
/// Messages older than this cannot be patched (§4.2).
const PATCH_WINDOW: Duration = Duration::from_secs(14 * 86_400);
/// Card-update token lifetime and uses (§4.3).
const CARD_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);
const CARD_TOKEN_USES: u32 = 2;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(MESSAGES_PATH, web::post().to(send))
        .route(
            &format!("{MESSAGES_PATH}/{{message_id}}"),
            web::patch().to(patch),
        )
        .route(CARD_UPDATE_PATH, web::post().to(delayed_update));
}

type Refusal = (u16, i64, String);

fn refusal(status: u16, code: i64, msg: &str) -> Refusal {
    (status, code, msg.to_string())
}

/// The tenant token check shared by the IM routes (§6 general errors).
fn check_tenant_token(req: &HttpRequest, shared: &Shared) -> Result<(), Refusal> {
    let Some(token) = bearer(req) else {
        return Err(refusal(
            400,
            99_991_661,
            "Missing access token for authorization.",
        ));
    };
    let state = shared.lock();
    let now = state.openapi.now();
    if state
        .openapi
        .tenant_tokens
        .iter()
        .any(|t| t.token == token && now < t.expires_at)
    {
        Ok(())
    } else {
        Err(refusal(
            400,
            99_991_663,
            "Invalid access token for authorization.",
        ))
    }
}

/// Whether a card allows shared updates: `config.update_multi`, default true in 2.0 and
/// false in 1.0 (§4.1 table); templates are assumed to allow it.
fn update_multi(card: &Value) -> bool {
    if card["type"] == "template" || card["type"] == "card" {
        return true;
    }
    let default = card["schema"] == "2.0";
    card["config"]["update_multi"].as_bool().unwrap_or(default)
}

/// Parses and checks a card given as a string (`content`).
fn parse_card(content: &str) -> Result<Value, Refusal> {
    if content.len() > MAX_CARD_BYTES {
        return Err(refusal(400, 230_025, "The message content is too long."));
    }
    let card: Value = serde_json::from_str(content).map_err(|_| {
        refusal(
            400,
            230_099,
            "Failed to create card content, ext=ErrCode: 200621",
        )
    })?;
    check_card(&card)?;
    Ok(card)
}

/// Card JSON checks (§4.1): an object; a 2.0 card has `body.elements` (≤ 200) and
/// `update_multi` true; a 1.0 card has `elements`; templates need a `template_id`.
fn check_card(card: &Value) -> Result<(), Refusal> {
    let bad = |what: &str| {
        refusal(
            400,
            230_099,
            &format!("Failed to create card content, ext=ErrCode: 200621; {what}"),
        )
    };
    if !card.is_object() {
        return Err(bad("card is not an object"));
    }
    if card["type"] == "template" {
        return match card["data"]["template_id"].as_str() {
            Some(_) => Ok(()),
            None => Err(bad("template_id missing")),
        };
    }
    if card["schema"] == "2.0" {
        let Some(elements) = card["body"]["elements"].as_array() else {
            return Err(bad("body.elements missing"));
        };
        if elements.len() > MAX_ELEMENTS {
            return Err(refusal(
                400,
                230_099,
                "ErrCode: 11310; element exceeds the limit",
            ));
        }
        if card["elements"] != Value::Null {
            return Err(bad("unknown property elements in a 2.0 card"));
        }
        if !update_multi(card) {
            return Err(bad("update_multi must be true in a 2.0 card"));
        }
        return Ok(());
    }
    if card["elements"].is_array() {
        Ok(())
    } else {
        Err(bad("elements missing"))
    }
}

fn refused(shared: &Shared, (status, code, msg): Refusal) -> HttpResponse {
    json_answer(shared, status, json!({"code": code, "msg": msg}))
}

/// `POST /open-apis/im/v1/messages?receive_id_type=open_id` (§4.1).
async fn send(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let fault = shared.lock().openapi.take_fault(OpenApiRoute::SendMessage);
    if let Some(answer) = fault.as_ref().and_then(|f| fault_answer(&shared, f, false)) {
        return answer;
    }
    let answer = match send_inner(&req, &body, &shared) {
        Ok(data) => json_answer(
            &shared,
            200,
            json!({"code": 0, "msg": "success", "data": data}),
        ),
        Err(r) => refused(&shared, r),
    };
    shared.notify();
    apply_delay(&fault).await;
    answer
}

fn send_inner(req: &HttpRequest, body: &[u8], shared: &Shared) -> Result<Value, Refusal> {
    check_tenant_token(req, shared)?;
    let id_type = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "receive_id_type")
        .map(|(_, v)| v.into_owned());
    if id_type.as_deref() != Some("open_id") {
        return Err(refusal(
            400,
            230_001,
            "invalid receive_id_type (sandbox: open_id only)",
        ));
    }
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|_| refusal(400, 230_001, "request body is not JSON"))?;
    let receive_id = parsed["receive_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if parsed["msg_type"] != "interactive" {
        return Err(refusal(
            400,
            230_001,
            "msg_type must be interactive (sandbox)",
        ));
    }
    let Some(content) = parsed["content"].as_str() else {
        return Err(refusal(400, 230_001, "content must be a JSON string"));
    };
    let uuid = parsed["uuid"].as_str().map(str::to_string);
    if uuid
        .as_ref()
        .is_some_and(|u| u.chars().count() > MAX_UUID_CHARS)
    {
        return Err(refusal(400, 230_001, "uuid longer than 50 characters"));
    }
    if shared.config.openapi.user(&receive_id).is_none() {
        return Err(refusal(
            400,
            230_013,
            "Bot has NO availability to this user.",
        ));
    }
    let card = parse_card(content)?;
    let mut state = shared.lock();
    let o = &mut state.openapi;
    let now = o.now();
    let existing = uuid.as_ref().and_then(|u| {
        o.uuids
            .get(u)
            .filter(|(_, at)| now.saturating_duration_since(*at) < UUID_WINDOW)
            .map(|(id, _)| id.clone())
    });
    let message_id = match existing {
        Some(id) => id,
        None => {
            let message_id = random_id("om_sandbox_");
            if let Some(u) = &uuid {
                o.uuids.insert(u.clone(), (message_id.clone(), now));
            }
            o.sent_card_count += 1;
            if shared.config.openapi.keep_cards {
                o.messages.insert(
                    message_id.clone(),
                    StoredMessage {
                        card: card.clone(),
                        sent_at: now,
                    },
                );
                o.sent_cards.push(SentCard {
                    message_id: message_id.clone(),
                    receive_id: receive_id.clone(),
                    card,
                    uuid,
                });
            }
            message_id
        }
    };
    // Milliseconds since the epoch as a string (§4.1), on the sandbox clock.
    let millis = (std::time::SystemTime::now() + o.clock_offset)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string();
    Ok(json!({
        "message_id": message_id,
        "msg_type": "interactive",
        "create_time": millis,
        "update_time": millis,
        "chat_id": format!("oc_sandbox_p2p_{receive_id}"),
        "deleted": false,
        "updated": false,
        "sender": {"id": shared.config.app_id, "id_type": "app_id", "sender_type": "app",
                   "tenant_key": shared.config.openapi.tenant_key},
        "body": {"content": content},
    }))
}

/// `PATCH /open-apis/im/v1/messages/{message_id}` (§4.2).
async fn patch(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let fault = shared.lock().openapi.take_fault(OpenApiRoute::PatchMessage);
    if let Some(answer) = fault.as_ref().and_then(|f| fault_answer(&shared, f, false)) {
        return answer;
    }
    let answer = match patch_inner(&req, &path, &body, &shared) {
        Ok(()) => json_answer(&shared, 200, json!({"code": 0, "msg": "ok", "data": {}})),
        Err(r) => refused(&shared, r),
    };
    shared.notify();
    apply_delay(&fault).await;
    answer
}

fn patch_inner(
    req: &HttpRequest,
    message_id: &str,
    body: &[u8],
    shared: &Shared,
) -> Result<(), Refusal> {
    check_tenant_token(req, shared)?;
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|_| refusal(400, 230_001, "request body is not JSON"))?;
    let Some(content) = parsed["content"].as_str() else {
        return Err(refusal(400, 230_001, "content must be a JSON string"));
    };
    let card = parse_card(content)?;
    let mut state = shared.lock();
    let o = &mut state.openapi;
    let now = o.now();
    let Some(message) = o.messages.get_mut(message_id) else {
        return Err(refusal(400, 230_001, "invalid message_id"));
    };
    if now.saturating_duration_since(message.sent_at) > PATCH_WINDOW {
        return Err(refusal(
            400,
            230_031,
            "The message being updated has exceeded the 14-day limit.",
        ));
    }
    if !update_multi(&message.card) || !update_multi(&card) {
        return Err(refusal(
            400,
            230_099,
            "Failed to update card content: both cards need config.update_multi=true",
        ));
    }
    message.card = card.clone();
    o.patches.push(CardPatch {
        message_id: message_id.into(),
        card,
    });
    Ok(())
}

/// `POST /open-apis/interactive/v1/card/update` (§4.3).
async fn delayed_update(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let fault = shared.lock().openapi.take_fault(OpenApiRoute::CardUpdate);
    if let Some(answer) = fault.as_ref().and_then(|f| fault_answer(&shared, f, false)) {
        return answer;
    }
    let answer = match delayed_inner(&req, &body, &shared) {
        Ok(()) => json_answer(&shared, 200, json!({"code": 0, "msg": "ok"})),
        Err(r) => refused(&shared, r),
    };
    shared.notify();
    apply_delay(&fault).await;
    answer
}

fn delayed_inner(req: &HttpRequest, body: &[u8], shared: &Shared) -> Result<(), Refusal> {
    check_tenant_token(req, shared)?;
    let parsed: Value =
        serde_json::from_slice(body).map_err(|_| refusal(400, 100_030, "body is not JSON"))?;
    let card = &parsed["card"];
    if !card.is_object() {
        return Err(refusal(400, 10_002, "card must be an object"));
    }
    check_card(card).map_err(|_| refusal(400, 11_311, "bad card format"))?;
    let token = parsed["token"].as_str().unwrap_or_default();
    let mut state = shared.lock();
    let o = &mut state.openapi;
    let now = o.now();
    let Some(entry) = o.card_tokens.get_mut(token) else {
        return Err(refusal(400, 300_020, "card update token is invalid"));
    };
    if now.saturating_duration_since(entry.issued_at) >= CARD_TOKEN_LIFETIME {
        return Err(refusal(400, 300_030, "card update token has expired"));
    }
    if entry.uses >= CARD_TOKEN_USES {
        return Err(refusal(
            400,
            300_040,
            "card update token used more than twice",
        ));
    }
    entry.uses += 1;
    let message_id = entry.message_id.clone();
    if let Some(message) = o.messages.get_mut(&message_id) {
        message.card = card.clone();
    }
    o.delayed_updates.push(DelayedCardUpdate {
        token: crate::secret::Secret::new(token.into()),
        message_id,
        card: card.clone(),
    });
    Ok(())
}
