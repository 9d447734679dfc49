//! `GET {open}/open-apis/authen/v1/user_info` with `Authorization: Bearer
//! <user_access_token>` (§6): who the token belongs to. After every exchange, compare
//! [`UserInfo::open_id`] with the user the authorization was for (§0, §8 item 6).

use serde::Deserialize;

use super::{Call, OpenApiClient, OpenApiError};
use crate::secret::Secret;

/// Path of `user_info` (§6).
pub const USER_INFO_PATH: &str = "/open-apis/authen/v1/user_info";

const USER_INFO: Call = Call::new("user_info", true);

/// The `data` of `user_info` (§6). Fields that need extra scopes are optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserInfo {
    /// `ou_…`: the user's id for this app.
    pub open_id: String,
    /// `on_…`: the user's id for this developer.
    #[serde(default)]
    pub union_id: Option<String>,
    /// The user's tenant.
    #[serde(default)]
    pub tenant_key: Option<String>,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// English name.
    #[serde(default)]
    pub en_name: Option<String>,
    /// Avatar URL.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// Needs `contact:user.employee_id:readonly`.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Needs `contact:user.email:readonly`; not verified — never a login identity (§6).
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    data: UserInfo,
}

impl OpenApiClient {
    /// The identity behind `user_access_token` (§6).
    ///
    /// # Errors
    /// [`OpenApiError::Api`]: 20005 (token invalid), 99991677 (token expired: refresh),
    /// 20021/20022/20023 (user resigned, frozen, not registered); 20050 retryable. Timeouts
    /// and network errors are retryable (the call reads only).
    pub async fn user_info(
        &self,
        user_access_token: &Secret<String>,
    ) -> Result<UserInfo, OpenApiError> {
        let t = self.transport();
        let request = t
            .http
            .get(t.open_url(USER_INFO_PATH))
            .bearer_auth(user_access_token.expose())
            .send();
        let answer = t.execute(USER_INFO, request).await?;
        let envelope: Envelope = answer.decode(USER_INFO)?;
        Ok(envelope.data)
    }
}
