//! Typed builders for the authorization cards (Feishu card JSON 2.0), in Chinese or
//! English.
//!
//! Card facts (`lark-openapi-auth.md` §4.1): JSON 2.0 cards carry `"schema":"2.0"`,
//! elements under `body.elements`, buttons placed directly, `config.update_multi` only
//! `true` (needed to PATCH the card later, §4.2), unknown properties rejected. Button
//! behaviours: `callback` (sends `card.action.trigger` with an object `value`) and
//! `open_url` (an AppLink may wrap the target so it opens inside Feishu, §0). Whether one
//! button may carry both behaviours is unconfirmed, so that is a switch
//! ([`AuthorizeCard::report_authorize_click`]).

use serde::Serialize;
use serde_json::{Map, Value};

use super::texts::card as text;

/// Callback `value.action` of the Authorize button.
pub const ACTION_AUTHORIZE: &str = "authorize";
/// Callback `value.action` of the Decline button.
pub const ACTION_DECLINE: &str = "decline";
/// Callback `value` key carrying the session id.
pub const VALUE_SESSION_ID: &str = "session_id";

/// The AppLink that opens a web page inside the Feishu client's side panel (§0, as the
/// official `openclaw-lark` does).
pub const FEISHU_APPLINK_WEB: &str = "https://applink.feishu.cn/client/web_url/open?mode=sidebar-semi&max_width=800&reload=false&url=";

/// Language of the card text (defined with the configuration, `auth.card_locale`).
pub use crate::config::CardLocale;

/// A card JSON 2.0 document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Card {
    schema: &'static str,
    config: CardConfig,
    header: CardHeader,
    body: CardBody,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct CardConfig {
    update_multi: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct CardHeader {
    title: PlainText,
    template: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct PlainText {
    tag: &'static str,
    content: String,
}

impl PlainText {
    fn new(content: impl Into<String>) -> Self {
        PlainText {
            tag: "plain_text",
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct CardBody {
    elements: Vec<Element>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "tag", rename_all = "snake_case")]
enum Element {
    Markdown {
        content: String,
    },
    Button {
        text: PlainText,
        #[serde(rename = "type")]
        kind: &'static str,
        name: &'static str,
        behaviors: Vec<Behavior>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Behavior {
    Callback { value: Map<String, Value> },
    OpenUrl { default_url: String },
}

fn callback_value(action: &str, session_id: &str) -> Map<String, Value> {
    let mut value = Map::new();
    value.insert("action".into(), Value::String(action.into()));
    value.insert(VALUE_SESSION_ID.into(), Value::String(session_id.into()));
    value
}

impl Card {
    fn new(title: impl Into<String>, template: &'static str, elements: Vec<Element>) -> Card {
        Card {
            schema: "2.0",
            config: CardConfig { update_multi: true },
            header: CardHeader {
                title: PlainText::new(title),
                template,
            },
            body: CardBody { elements },
        }
    }

    /// The card as a JSON value (for the IM API, which wants it as a string in `content`,
    /// or the delayed update, which wants the object).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Describes a scope in plain words ([`text::scope`]); unknown scopes are shown as they
/// are.
pub fn describe_scope(scope: &str, locale: CardLocale) -> String {
    match text::scope(scope) {
        Some(words) => format!("{} (`{scope}`)", words.get(locale)),
        None => format!("`{scope}`"),
    }
}

/// The card asking the user to authorize.
#[derive(Debug, Clone)]
pub struct AuthorizeCard<'a> {
    /// Shown as the requester.
    pub app_name: &'a str,
    /// The session the buttons report.
    pub session_id: &'a str,
    /// The page the Authorize button opens (device verification or authorize URL).
    pub target_url: &'a str,
    /// Requested scopes.
    pub scopes: &'a [String],
    /// Minutes until the session expires (shown to the user).
    pub expires_in_minutes: u64,
    /// Wrap `target_url` in the Feishu AppLink so it opens inside the client.
    pub use_applink: bool,
    /// Also attach a callback behaviour to the Authorize button so the click is reported
    /// over the long connection (polling then speeds up).
    pub report_authorize_click: bool,
    /// Language.
    pub locale: CardLocale,
    /// The API call(s) that asked for the scopes (the OpenAPI proxy's missing-scope
    /// authorizations), named on the card.
    pub requested_by: Option<&'a str>,
}

impl AuthorizeCard<'_> {
    /// Builds the card.
    pub fn build(&self) -> Card {
        let l = self.locale;
        let url = if self.use_applink {
            let encoded: String =
                url::form_urlencoded::byte_serialize(self.target_url.as_bytes()).collect();
            format!("{FEISHU_APPLINK_WEB}{encoded}")
        } else {
            self.target_url.to_string()
        };
        let scopes: Vec<String> = self
            .scopes
            .iter()
            .map(|s| format!("- {}", describe_scope(s, l)))
            .collect();
        let mut intro = text::authorize_intro(
            l,
            self.app_name,
            &scopes.join("\n"),
            self.expires_in_minutes,
        );
        if let Some(api) = self.requested_by {
            intro.push_str("\n\n");
            intro.push_str(&text::requested_by(l, api));
        }
        let mut authorize = vec![Behavior::OpenUrl { default_url: url }];
        if self.report_authorize_click {
            authorize.push(Behavior::Callback {
                value: callback_value(ACTION_AUTHORIZE, self.session_id),
            });
        }
        Card::new(
            text::AUTHORIZE_TITLE.get(l),
            "blue",
            vec![
                Element::Markdown { content: intro },
                Element::Button {
                    text: PlainText::new(text::AUTHORIZE_BUTTON.get(l)),
                    kind: "primary_filled",
                    name: "authorize_button",
                    behaviors: authorize,
                },
                Element::Button {
                    text: PlainText::new(text::DECLINE_BUTTON.get(l)),
                    kind: "default",
                    name: "decline_button",
                    behaviors: vec![Behavior::Callback {
                        value: callback_value(ACTION_DECLINE, self.session_id),
                    }],
                },
            ],
        )
    }
}

/// The final card of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalCard<'a> {
    /// Authorized.
    Authorized,
    /// Declined by the user.
    Declined,
    /// Expired.
    Expired,
    /// Failed, with the reason code (e.g. `wrong_user`).
    Failed(&'a str),
}

/// Builds the card that replaces the authorize card when the session ends.
pub fn final_card(app_name: &str, outcome: FinalCard<'_>, locale: CardLocale) -> Card {
    let l = locale;
    let (title, template, body) = match outcome {
        FinalCard::Authorized => (
            text::AUTHORIZED_TITLE,
            "green",
            text::authorized_body(l, app_name),
        ),
        FinalCard::Declined => (
            text::DECLINED_TITLE,
            "grey",
            text::declined_body(l, app_name),
        ),
        FinalCard::Expired => (
            text::EXPIRED_TITLE,
            "grey",
            text::EXPIRED_BODY.get(l).to_string(),
        ),
        FinalCard::Failed(reason) => (text::FAILED_TITLE, "red", text::failed_body(l, reason)),
    };
    Card::new(
        title.get(l),
        template,
        vec![Element::Markdown { content: body }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorize_card(locale: CardLocale, report: bool) -> Value {
        AuthorizeCard {
            app_name: "Demo App",
            session_id: "sess_1",
            target_url: "https://accounts.example.test/verify?user_code=AB-CD",
            scopes: &[
                "offline_access".to_string(),
                "calendar:calendar".to_string(),
            ],
            expires_in_minutes: 10,
            use_applink: true,
            report_authorize_click: report,
            locale,
            requested_by: None,
        }
        .build()
        .to_value()
    }

    #[test]
    fn the_authorize_card_has_the_shape_of_the_reference_card() {
        let card = authorize_card(CardLocale::EnUs, true);
        let reference: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/openapi/card_v2_authorize.json"
        ))
        .unwrap();
        assert_eq!(card["schema"], reference["schema"]);
        assert_eq!(card["config"], reference["config"]);
        assert_eq!(card["header"]["title"]["tag"], "plain_text");
        let elements = card["body"]["elements"].as_array().unwrap();
        assert_eq!(elements[0]["tag"], "markdown");
        let authorize = &elements[1];
        assert_eq!(authorize["tag"], "button");
        assert_eq!(authorize["type"], "primary_filled");
        let behaviors = authorize["behaviors"].as_array().unwrap();
        assert_eq!(behaviors[0]["type"], "open_url");
        let url = behaviors[0]["default_url"].as_str().unwrap();
        assert!(url.starts_with(FEISHU_APPLINK_WEB));
        assert!(url.ends_with("https%3A%2F%2Faccounts.example.test%2Fverify%3Fuser_code%3DAB-CD"));
        assert_eq!(
            behaviors[1]["value"],
            serde_json::json!({"action": "authorize", "session_id": "sess_1"})
        );
        let decline = &elements[2]["behaviors"][0];
        assert_eq!(decline["type"], "callback");
        assert_eq!(decline["value"]["action"], "decline");
        assert_eq!(decline["value"]["session_id"], "sess_1");
        let text = elements[0]["content"].as_str().unwrap();
        assert!(text.contains("Demo App") && text.contains("10 minutes"));
        assert!(text.contains("calendar:calendar") && text.contains("stay authorized"));
    }

    #[test]
    fn the_click_report_is_a_switch_and_the_card_speaks_chinese() {
        let card = authorize_card(CardLocale::ZhCn, false);
        let behaviors = card["body"]["elements"][1]["behaviors"].as_array().unwrap();
        assert_eq!(behaviors.len(), 1);
        assert_eq!(card["header"]["title"]["content"], "需要你的授权");
        assert_eq!(card["body"]["elements"][2]["text"]["content"], "拒绝");
    }

    #[test]
    fn final_cards_name_the_outcome() {
        for (outcome, title) in [
            (FinalCard::Authorized, "Authorized"),
            (FinalCard::Declined, "Declined"),
            (FinalCard::Expired, "Expired"),
            (FinalCard::Failed("wrong_user"), "Authorization failed"),
        ] {
            let card = final_card("Demo App", outcome, CardLocale::EnUs).to_value();
            assert_eq!(card["header"]["title"]["content"], title);
            assert_eq!(card["config"]["update_multi"], true);
        }
        let failed = final_card(
            "Demo App",
            FinalCard::Failed("wrong_user"),
            CardLocale::EnUs,
        )
        .to_value();
        assert!(
            failed["body"]["elements"][0]["content"]
                .as_str()
                .unwrap()
                .contains("forwarded")
        );
        assert_eq!(CardLocale::from_platform("zh-CN"), Some(CardLocale::ZhCn));
        assert_eq!(CardLocale::from_platform("en_us"), Some(CardLocale::EnUs));
        assert_eq!(CardLocale::from_platform("ja_jp"), None);
    }
}
