//! The JSON bodies of the Nacos 2.x messages the endpoint reads and writes.
//!
//! Every field is optional with a default: the Java client omits nulls, adds fields between
//! versions, and a missing field must never make a call fail to decode. Unknown fields are
//! ignored. Field names are the Java bean names (camelCase), as nacos-client's Jackson
//! mapper writes them; `tests/dubbo-nacos/golden/` holds the real client's output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Response code of a successful call (`ResponseCode.SUCCESS`).
pub const RESULT_SUCCESS: i32 = 200;
/// Response code of a failed call (`ResponseCode.FAIL`).
pub const RESULT_FAIL: i32 = 500;
/// `errorCode` of a query for a config that does not exist (`CONFIG_NOT_FOUND`). The client
/// treats it as "no content", not as an error.
pub const ERROR_NOT_FOUND: i32 = 300;
/// `errorCode` of a request whose type the server has no handler for (`NO_HANDLER`).
pub const ERROR_NO_HANDLER: i32 = 302;
/// `errorCode` of a request the server refuses for its content (`CLIENT_INVALID_PARAM`).
pub const ERROR_INVALID: i32 = 400;
/// `errorCode` of a request that failed on the server (`SERVER_ERROR`). Never 403: Dubbo
/// re-throws a 403 on a query and the app fails to start.
pub const ERROR_SERVER: i32 = 500;
/// `errorCode` of a request the server could not take now (`OVER_THRESHOLD`).
pub const ERROR_OVERLOADED: i32 = 503;

/// Fields every request carries (`Request`, `AbstractConfigRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigKey {
    /// The client's id of the request, echoed in the response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Config name; for group `mapping`, the (encoded) interface name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_id: Option<String>,
    /// Config group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Nacos namespace id ("" and "public" are the default one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl ConfigKey {
    /// The data id, or "".
    pub fn data_id(&self) -> &str {
        self.data_id.as_deref().unwrap_or_default()
    }
    /// The group, or "".
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or_default()
    }
    /// The tenant, or "".
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or_default()
    }
}

/// A request with only an id (`ServerCheckRequest`, `HealthCheckRequest`, and the fields
/// the endpoint reads of any other).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BareRequest {
    /// The client's id of the request.
    pub request_id: Option<String>,
}

/// `ConnectionSetupRequest`: the first message on the bi-stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConnectionSetupRequest {
    /// e.g. `Nacos-Java-Client:v2.5.1`.
    pub client_version: Option<String>,
    /// The client's namespace.
    pub tenant: Option<String>,
    /// Client labels (`module`, `source`, app name).
    pub labels: Option<BTreeMap<String, String>>,
}

/// `ConfigQueryRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigQueryRequest {
    /// Which config.
    #[serde(flatten)]
    pub key: ConfigKey,
    /// Gray-release tag; not supported (mappings have none).
    pub tag: Option<String>,
}

/// `ConfigPublishRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigPublishRequest {
    /// Which config.
    #[serde(flatten)]
    pub key: ConfigKey,
    /// New content; for `mapping`, comma-separated application names.
    pub content: Option<String>,
    /// MD5 the client expects the current content to have. Ignored for `mapping`: the
    /// union of names makes every publish commute, so a stale MD5 loses nothing.
    pub cas_md5: Option<String>,
    /// Extra parameters (type, tags, beta IPs); ignored.
    pub addition_map: Option<BTreeMap<String, Option<String>>>,
}

/// `ConfigRemoveRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigRemoveRequest {
    /// Which config.
    #[serde(flatten)]
    pub key: ConfigKey,
    /// Gray-release tag.
    pub tag: Option<String>,
}

/// One entry of a `ConfigBatchListenRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigListenContext {
    /// Config group.
    pub group: Option<String>,
    /// MD5 of the content the client holds; "" when it has none.
    pub md5: Option<String>,
    /// Config name.
    pub data_id: Option<String>,
    /// Namespace, as the client spells it (echoed in pushes).
    pub tenant: Option<String>,
}

/// `ConfigBatchListenRequest`: start (or stop) listening to configs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigBatchListenRequest {
    /// The client's id of the request.
    pub request_id: Option<String>,
    /// `true` to listen, `false` to stop.
    pub listen: Option<bool>,
    /// The configs.
    pub config_listen_contexts: Option<Vec<ConfigListenContext>>,
}

/// `ConfigChangeNotifyRequest`: the server's push, on the bi-stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigChangeNotifyRequest {
    /// Headers (always empty; the client needs the field).
    pub headers: BTreeMap<String, String>,
    /// Which config changed, as the client listened to it.
    #[serde(flatten)]
    pub key: ConfigKey,
    /// Always `config`.
    pub module: Option<String>,
}

/// The fields of every response (`Response`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ResponseHead {
    /// 200 or 500.
    pub result_code: i32,
    /// 0, or why it failed.
    pub error_code: i32,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The request's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Derived from `result_code` (written as the Java bean getter does).
    pub success: bool,
}

impl ResponseHead {
    /// A success answering `request_id`.
    pub fn ok(request_id: Option<String>) -> Self {
        Self {
            result_code: RESULT_SUCCESS,
            error_code: 0,
            message: None,
            request_id,
            success: true,
        }
    }

    /// A failure with `error_code` answering `request_id`.
    pub fn fail(request_id: Option<String>, error_code: i32, message: impl Into<String>) -> Self {
        Self {
            result_code: RESULT_FAIL,
            error_code,
            message: Some(message.into()),
            request_id,
            success: false,
        }
    }
}

/// `ServerCheckResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerCheckResponse {
    /// Result.
    #[serde(flatten)]
    pub head: ResponseHead,
    /// The server's name for the connection.
    pub connection_id: Option<String>,
    /// Always `false`: then the client needs no setup ack on the stream.
    pub support_ability_negotiation: bool,
}

/// `ConfigQueryResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigQueryResponse {
    /// Result.
    #[serde(flatten)]
    pub head: ResponseHead,
    /// The content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Lower-case hex MD5 of the UTF-8 content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// Content type (`text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Milliseconds since the epoch of the answer.
    pub last_modified: i64,
    /// Never a beta (gray) config.
    pub beta: bool,
}

/// A config in `changedConfigs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ChangedConfig {
    /// Group, as the client listened.
    pub group: Option<String>,
    /// Data id, as the client listened.
    pub data_id: Option<String>,
    /// Tenant, as the client listened.
    pub tenant: Option<String>,
}

/// `ConfigChangeBatchListenResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigChangeBatchListenResponse {
    /// Result.
    #[serde(flatten)]
    pub head: ResponseHead,
    /// The listened configs whose MD5 differs from the client's.
    pub changed_configs: Vec<ChangedConfig>,
}

/// A response the client reads only the result of (`HealthCheckResponse`,
/// `ConfigPublishResponse`, `ConfigRemoveResponse`, `ErrorResponse`), and the client's ack
/// of a push (`ConfigChangeNotifyResponse`).
pub type PlainResponse = ResponseHead;

/// The Java simple names of the message types the endpoint knows.
pub mod types {
    /// Unary: first call on a connection.
    pub const SERVER_CHECK: &str = "ServerCheckRequest";
    /// Unary: keep-alive.
    pub const HEALTH_CHECK: &str = "HealthCheckRequest";
    /// Unary: read a config.
    pub const CONFIG_QUERY: &str = "ConfigQueryRequest";
    /// Unary: write a config.
    pub const CONFIG_PUBLISH: &str = "ConfigPublishRequest";
    /// Unary: delete a config.
    pub const CONFIG_REMOVE: &str = "ConfigRemoveRequest";
    /// Unary: (un)listen to configs.
    pub const CONFIG_BATCH_LISTEN: &str = "ConfigBatchListenRequest";
    /// Stream, client to server: the connection's first message.
    pub const CONNECTION_SETUP: &str = "ConnectionSetupRequest";
    /// Stream, server to client: a listened config changed.
    pub const CONFIG_CHANGE_NOTIFY: &str = "ConfigChangeNotifyRequest";
    /// Stream, client to server: the ack of a push.
    pub const CONFIG_CHANGE_NOTIFY_RESPONSE: &str = "ConfigChangeNotifyResponse";
    /// Responses.
    pub const SERVER_CHECK_RESPONSE: &str = "ServerCheckResponse";
    /// Response.
    pub const HEALTH_CHECK_RESPONSE: &str = "HealthCheckResponse";
    /// Response.
    pub const CONFIG_QUERY_RESPONSE: &str = "ConfigQueryResponse";
    /// Response.
    pub const CONFIG_PUBLISH_RESPONSE: &str = "ConfigPublishResponse";
    /// Response.
    pub const CONFIG_REMOVE_RESPONSE: &str = "ConfigRemoveResponse";
    /// Response.
    pub const CONFIG_BATCH_LISTEN_RESPONSE: &str = "ConfigChangeBatchListenResponse";
    /// Response to a request the server has no handler for, or cannot decode.
    pub const ERROR_RESPONSE: &str = "ErrorResponse";
}
