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

/// Picks the text of a locale.
trait Pick {
    fn pick(self, zh: &'static str, en: &'static str) -> &'static str;
}

impl Pick for CardLocale {
    fn pick(self, zh: &'static str, en: &'static str) -> &'static str {
        match self {
            CardLocale::ZhCn => zh,
            CardLocale::EnUs => en,
        }
    }
}

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

/// Describes a scope in plain words; unknown scopes are shown as they are.
pub fn describe_scope(scope: &str, locale: CardLocale) -> String {
    let known = match scope {
        "offline_access" => Some(locale.pick(
            "保持授权（到期后自动续期，无需再次确认）",
            "stay authorized (renewed automatically, no need to approve again)",
        )),
        "auth:user.id:read" => Some(locale.pick("读取你的用户 ID", "read your user id")),
        "contact:user.base:readonly" => {
            Some(locale.pick("读取你的基本信息", "read your basic profile"))
        }
        "im:message" | "im:message:readonly" => {
            Some(locale.pick("读取和发送消息", "read and send messages"))
        }
        "calendar:calendar" | "calendar:calendar:readonly" => {
            Some(locale.pick("访问你的日历", "access your calendar"))
        }
        "docx:document" | "docx:document:readonly" => {
            Some(locale.pick("访问你的云文档", "access your documents"))
        }
        _ => None,
    };
    match known {
        Some(text) => format!("{text} (`{scope}`)"),
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
        let intro = match l {
            CardLocale::ZhCn => format!(
                "**{}** 请求以你的身份访问飞书：\n{}\n\n请在 {} 分钟内完成授权。只有你本人可以操作此卡片。",
                self.app_name,
                scopes.join("\n"),
                self.expires_in_minutes
            ),
            CardLocale::EnUs => format!(
                "**{}** asks to act on your behalf in Feishu:\n{}\n\nPlease decide within {} minutes. Only you can use this card.",
                self.app_name,
                scopes.join("\n"),
                self.expires_in_minutes
            ),
        };
        let mut authorize = vec![Behavior::OpenUrl { default_url: url }];
        if self.report_authorize_click {
            authorize.push(Behavior::Callback {
                value: callback_value(ACTION_AUTHORIZE, self.session_id),
            });
        }
        Card::new(
            l.pick("需要你的授权", "Authorization required"),
            "blue",
            vec![
                Element::Markdown { content: intro },
                Element::Button {
                    text: PlainText::new(l.pick("授权", "Authorize")),
                    kind: "primary_filled",
                    name: "authorize_button",
                    behaviors: authorize,
                },
                Element::Button {
                    text: PlainText::new(l.pick("拒绝", "Decline")),
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
    let (title, template, text) = match outcome {
        FinalCard::Authorized => (
            l.pick("已授权", "Authorized"),
            "green",
            match l {
                CardLocale::ZhCn => format!("你已授权 **{app_name}**。可随时联系管理员撤销。"),
                CardLocale::EnUs => format!(
                    "You authorized **{app_name}**. Ask your administrator to revoke it at any time."
                ),
            },
        ),
        FinalCard::Declined => (
            l.pick("已拒绝", "Declined"),
            "grey",
            match l {
                CardLocale::ZhCn => format!("你拒绝了 **{app_name}** 的授权请求。"),
                CardLocale::EnUs => format!("You declined **{app_name}**'s request."),
            },
        ),
        FinalCard::Expired => (
            l.pick("已过期", "Expired"),
            "grey",
            l.pick(
                "授权请求已过期。如仍需授权，请重新发起。",
                "The request expired. Ask for a new one if you still want to authorize.",
            )
            .to_string(),
        ),
        FinalCard::Failed(reason) => (
            l.pick("授权失败", "Authorization failed"),
            "red",
            match (l, reason) {
                (CardLocale::ZhCn, "wrong_user") => {
                    "授权由其他账号完成（链接可能被转发），已作废。请本人重新授权。".to_string()
                }
                (CardLocale::EnUs, "wrong_user") => "The approval came from another account (was the link forwarded?) and was discarded. Please authorize yourself.".to_string(),
                (CardLocale::ZhCn, r) => format!("授权未完成（原因：`{r}`）。请重新发起。"),
                (CardLocale::EnUs, r) => {
                    format!("The authorization did not complete (reason: `{r}`). Please try again.")
                }
            },
        ),
    };
    Card::new(title, template, vec![Element::Markdown { content: text }])
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
