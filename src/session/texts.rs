//! Every text a user reads, in one place: the authorization and final cards
//! ([`card`]), the toasts answering a click ([`toast`]) and the OAuth landing page
//! ([`landing`]). Cards and toasts speak Simplified Chinese and English ([`CardLocale`]);
//! the landing page is English only (the browser shows it, and the redirect carries no
//! language).
//!
//! The builders (`cards`, the session and router actors, the HTTP front) only place these
//! texts: changing a wording happens here and nowhere else. The card JSON is compared
//! byte for byte with fixtures in the tests, so a change here shows there.

use crate::config::CardLocale;

/// A fixed text in both card languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text {
    /// Simplified Chinese.
    pub zh_cn: &'static str,
    /// English.
    pub en_us: &'static str,
}

impl Text {
    const fn new(zh_cn: &'static str, en_us: &'static str) -> Text {
        Text { zh_cn, en_us }
    }

    /// The text in `locale`.
    pub fn get(self, locale: CardLocale) -> &'static str {
        match locale {
            CardLocale::ZhCn => self.zh_cn,
            CardLocale::EnUs => self.en_us,
        }
    }
}

/// Texts of the authorization card and of the card replacing it when the session ends.
pub mod card {
    use super::{CardLocale, Text};

    /// Header of the authorization card.
    pub const AUTHORIZE_TITLE: Text = Text::new("需要你的授权", "Authorization required");
    /// The Authorize button.
    pub const AUTHORIZE_BUTTON: Text = Text::new("授权", "Authorize");
    /// The Decline button.
    pub const DECLINE_BUTTON: Text = Text::new("拒绝", "Decline");

    /// The body of the authorization card: who asks, the scope lines (already one per
    /// line), and the minutes left.
    pub fn authorize_intro(
        locale: CardLocale,
        app_name: &str,
        scope_lines: &str,
        minutes: u64,
    ) -> String {
        match locale {
            CardLocale::ZhCn => format!(
                "**{app_name}** 请求以你的身份访问飞书：\n{scope_lines}\n\n请在 {minutes} 分钟内完成授权。只有你本人可以操作此卡片。",
            ),
            CardLocale::EnUs => format!(
                "**{app_name}** asks to act on your behalf in Feishu:\n{scope_lines}\n\nPlease decide within {minutes} minutes. Only you can use this card.",
            ),
        }
    }

    /// The line naming the API call(s) that asked for the scopes (`api` already
    /// formatted, e.g. `GET /open-apis/task/v2/tasks`).
    pub fn requested_by(locale: CardLocale, api: &str) -> String {
        match locale {
            CardLocale::ZhCn => format!("请求这些权限的接口：`{api}`"),
            CardLocale::EnUs => format!("Asked for by the API call `{api}`."),
        }
    }

    /// Plain words for a known scope; `None` for the others (shown as they are).
    pub fn scope(scope: &str) -> Option<Text> {
        Some(match scope {
            "offline_access" => Text::new(
                "保持授权（到期后自动续期，无需再次确认）",
                "stay authorized (renewed automatically, no need to approve again)",
            ),
            "auth:user.id:read" => Text::new("读取你的用户 ID", "read your user id"),
            "contact:user.base:readonly" => {
                Text::new("读取你的基本信息", "read your basic profile")
            }
            "im:message" | "im:message:readonly" => {
                Text::new("读取和发送消息", "read and send messages")
            }
            "calendar:calendar" | "calendar:calendar:readonly" => {
                Text::new("访问你的日历", "access your calendar")
            }
            "docx:document" | "docx:document:readonly" => {
                Text::new("访问你的云文档", "access your documents")
            }
            _ => return None,
        })
    }

    /// Header of the final card of an authorized session.
    pub const AUTHORIZED_TITLE: Text = Text::new("已授权", "Authorized");
    /// Header of the final card of a declined session.
    pub const DECLINED_TITLE: Text = Text::new("已拒绝", "Declined");
    /// Header of the final card of an expired session.
    pub const EXPIRED_TITLE: Text = Text::new("已过期", "Expired");
    /// Header of the final card of a failed session.
    pub const FAILED_TITLE: Text = Text::new("授权失败", "Authorization failed");
    /// Body of the final card of an expired session.
    pub const EXPIRED_BODY: Text = Text::new(
        "授权请求已过期。如仍需授权，请重新发起。",
        "The request expired. Ask for a new one if you still want to authorize.",
    );

    /// Body of the final card of an authorized session.
    pub fn authorized_body(locale: CardLocale, app_name: &str) -> String {
        match locale {
            CardLocale::ZhCn => format!("你已授权 **{app_name}**。可随时联系管理员撤销。"),
            CardLocale::EnUs => format!(
                "You authorized **{app_name}**. Ask your administrator to revoke it at any time."
            ),
        }
    }

    /// Body of the final card of a declined session.
    pub fn declined_body(locale: CardLocale, app_name: &str) -> String {
        match locale {
            CardLocale::ZhCn => format!("你拒绝了 **{app_name}** 的授权请求。"),
            CardLocale::EnUs => format!("You declined **{app_name}**'s request."),
        }
    }

    /// Body of the final card of a failed session, by failure reason code.
    pub fn failed_body(locale: CardLocale, reason: &str) -> String {
        match (locale, reason) {
            (CardLocale::ZhCn, "wrong_user") => {
                "授权由其他账号完成（链接可能被转发），已作废。请本人重新授权。".to_string()
            }
            (CardLocale::EnUs, "wrong_user") => "The approval came from another account (was the link forwarded?) and was discarded. Please authorize yourself.".to_string(),
            (CardLocale::ZhCn, r) => format!("授权未完成（原因：`{r}`）。请重新发起。"),
            (CardLocale::EnUs, r) => {
                format!("The authorization did not complete (reason: `{r}`). Please try again.")
            }
        }
    }
}

/// Texts of the toasts answering a click on a card. A toast carries both languages
/// (`i18n`), its `content` in the session's language.
pub mod toast {
    use super::{CardLocale, Text};
    use crate::protocol::event::{Toast, ToastKind};

    /// A toast of `kind` carrying both languages in `i18n`, its `content` in `locale`.
    pub fn bilingual(kind: ToastKind, zh_cn: String, en_us: String, locale: CardLocale) -> Toast {
        let content = match locale {
            CardLocale::ZhCn => zh_cn.clone(),
            CardLocale::EnUs => en_us.clone(),
        };
        Toast {
            kind,
            content,
            i18n: Some([("zh_cn".to_string(), zh_cn), ("en_us".to_string(), en_us)].into()),
        }
    }

    /// A toast of `kind` with a fixed text ([`bilingual`]).
    pub fn fixed(kind: ToastKind, text: Text, locale: CardLocale) -> Toast {
        bilingual(kind, text.zh_cn.to_string(), text.en_us.to_string(), locale)
    }

    /// The toast answering a click on a session that has ended in `state` (`authorized`,
    /// `denied`, …).
    pub fn already_finished(state: &str, locale: CardLocale) -> Toast {
        bilingual(
            ToastKind::Info,
            format!("此授权已结束（{state}）"),
            format!("This authorization has already ended ({state})"),
            locale,
        )
    }

    /// Authorize clicked: the page opens.
    pub const OPENING: Text = Text::new("正在打开授权页面", "Opening the authorization page");
    /// Decline clicked.
    pub const DECLINED: Text = Text::new("已拒绝授权", "Authorization declined");
    /// Someone other than the session's user clicked.
    pub const NOT_YOURS: Text = Text::new(
        "此授权请求不是发给你的",
        "This authorization is for someone else",
    );
    /// A click for a session nobody knows (never existed or pruned).
    pub const REQUEST_NO_LONGER_VALID: Text = Text::new(
        "此授权请求已失效",
        "This authorization request is no longer valid",
    );
}

/// Texts of the page the browser lands on after the authorization page
/// (`GET /oauth/callback`): `(title, text)` pairs. Refusals of the redirect itself show
/// the `RedirectError` message under [`landing::LINK_NOT_VALID`] or [`landing::ENDED`].
pub mod landing {
    /// The router is not part of this front.
    pub const NOT_RUNNING: (&str, &str) = (
        "Service unavailable",
        "The authorization service is not running. Try again later.",
    );
    /// No `state` in the query.
    pub const STATE_MISSING: (&str, &str) = (
        "Invalid link",
        "This page expects the redirect from the Feishu authorization page (state missing). Start again from the card.",
    );
    /// The user refused on the authorization page.
    pub const DECLINED: (&str, &str) = (
        "Authorization declined",
        "You declined. You can close this page.",
    );
    /// The code was handed to the session.
    pub const RECEIVED: (&str, &str) = (
        "Authorization received",
        "Thank you. The authorization is being completed; the card in Feishu will show the result. You can close this page.",
    );
    /// Reason: no session issued this `state` (`RedirectError::UnknownState`).
    pub const UNKNOWN_STATE: &str = "unknown authorization request: start again from the card";
    /// Reason: the `state` was used before (`RedirectError::StateAlreadyUsed`).
    pub const STATE_ALREADY_USED: &str = "this authorization link was already used";
    /// Reason, followed by the session's state in parentheses
    /// (`RedirectError::SessionEnded`).
    pub const SESSION_ENDED: &str = "this authorization has already ended";
    /// Reason: neither `code` nor `error` in the redirect (`RedirectError::MissingCode`).
    pub const MISSING_CODE: &str = "the redirect carries no code";
    /// Reason: the router or the session is stopping (`RedirectError::Stopping`).
    pub const STOPPING: &str = "the service is stopping";
    /// Title above a refused redirect's reason (unknown or used `state`, no code).
    pub const LINK_NOT_VALID: &str = "Link not valid";
    /// Title above the reason when the session has ended.
    pub const ENDED: &str = "Authorization ended";
    /// The router or the session is stopping.
    pub const RESTARTING: (&str, &str) = (
        "Service unavailable",
        "The authorization service is restarting. Open the link from the card again in a minute.",
    );
}
