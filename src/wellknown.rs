//! `/.well-known/matrix/{server,client,support}`, answered from the config without touching the
//! backend.
//!
//! Always 200 with `application/json` and an explicit `Cache-Control: max-age` when configured,
//! a Matrix JSON 404 when not, and never a redirect: homeservers follow none reliably (Synapse
//! before 1.136 may not follow 308), and older clients follow none on the client file. The CORS
//! headers of the spec's "Web Browser Clients" section go on every answer, preflights included.

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ALLOW,
    CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue,
};
use http::{Method, Response, StatusCode};

use crate::config::WellKnown;
use crate::respond::{ProxyError, ResponseBody};
use crate::route::WellKnownFile;

/// The spec's recommended CORS values, verbatim.
const CORS_METHODS: &str = "GET, POST, PUT, DELETE, OPTIONS";
const CORS_HEADERS: &str = "X-Requested-With, Content-Type, Authorization";

/// The well-known files with their headers, prepared once per config.
#[derive(Clone, Debug)]
pub struct WellKnownFiles {
    files: WellKnown,
    cache_control: HeaderValue,
}

impl WellKnownFiles {
    pub fn new(files: WellKnown) -> Self {
        let cache_control = HeaderValue::try_from(format!("max-age={}", files.max_age.as_secs()))
            .unwrap_or(HeaderValue::from_static("max-age=3600"));
        WellKnownFiles {
            files,
            cache_control,
        }
    }

    pub fn respond(&self, file: WellKnownFile, method: &Method) -> Response<ResponseBody> {
        let mut resp = match *method {
            Method::OPTIONS => {
                let mut r = Response::new(ResponseBody::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            Method::GET | Method::HEAD => {
                let body = match file {
                    WellKnownFile::Server => &self.files.server,
                    WellKnownFile::Client => &self.files.client,
                    WellKnownFile::Support => &self.files.support,
                };
                match body {
                    Some(bytes) => {
                        let mut r = Response::new(ResponseBody::full(bytes.clone()));
                        r.headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        r.headers_mut()
                            .insert(CACHE_CONTROL, self.cache_control.clone());
                        r
                    }
                    None => ProxyError::NotFound.into_response(),
                }
            }
            _ => {
                let mut r = ProxyError::MethodNotAllowed.into_response();
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
                r
            }
        };
        add_cors(resp.headers_mut());
        resp
    }
}

fn add_cors(h: &mut HeaderMap) {
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_METHODS),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_HEADERS),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http_body_util::BodyExt;

    fn files(extra: &str) -> WellKnownFiles {
        let text = format!(
            "server_name = \"example.com\"\n[backend]\nurl = \"http://127.0.0.1:8008\"\n[tls]\nself_signed = true\n{extra}"
        );
        let loaded = Config::parse(&text).unwrap();
        WellKnownFiles::new(loaded.config.well_known)
    }

    async fn body(resp: Response<ResponseBody>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn server_file() {
        let f = files("[well_known]\nserver = \"matrix.example.com:443\"\nmax_age = \"2h\"\n");
        let resp = f.respond(WellKnownFile::Server, &Method::GET);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()[CACHE_CONTROL], "max-age=7200");
        assert_eq!(resp.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(
            body(resp).await,
            serde_json::json!({"m.server": "matrix.example.com:443"})
        );
    }

    #[tokio::test]
    async fn unconfigured_is_json_404() {
        let f = files("");
        let resp = f.respond(WellKnownFile::Client, &Method::GET);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(body(resp).await["errcode"], "M_UNRECOGNIZED");
    }

    #[tokio::test]
    async fn preflight_and_wrong_method() {
        let f = files("[well_known]\nclient = \"https://matrix.example.com\"\n");
        let resp = f.respond(WellKnownFile::Client, &Method::OPTIONS);
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()[ACCESS_CONTROL_ALLOW_METHODS], CORS_METHODS);
        assert_eq!(resp.headers()[ACCESS_CONTROL_ALLOW_HEADERS], CORS_HEADERS);
        let resp = f.respond(WellKnownFile::Client, &Method::POST);
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "GET, HEAD, OPTIONS");
    }

    #[tokio::test]
    async fn client_and_support_bodies() {
        let f = files(
            r#"[well_known]
client = "https://matrix.example.com"
identity_server = "https://id.example.com"
[well_known.client_extra]
"org.example.custom" = { app_url = "https://app.example.com" }
[well_known.support]
support_page = "https://example.com/help"
[[well_known.support.contacts]]
role = "m.role.admin"
matrix_id = "@admin:example.com"
email_address = "admin@example.com"
"#,
        );
        let client = body(f.respond(WellKnownFile::Client, &Method::GET)).await;
        assert_eq!(
            client["m.homeserver"]["base_url"],
            "https://matrix.example.com"
        );
        assert_eq!(
            client["m.identity_server"]["base_url"],
            "https://id.example.com"
        );
        assert_eq!(
            client["org.example.custom"]["app_url"],
            "https://app.example.com"
        );
        let support = body(f.respond(WellKnownFile::Support, &Method::GET)).await;
        assert_eq!(support["support_page"], "https://example.com/help");
        assert_eq!(support["contacts"][0]["role"], "m.role.admin");
        assert_eq!(support["contacts"][0]["matrix_id"], "@admin:example.com");
    }
}
