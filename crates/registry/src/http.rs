//! HTTP for the registry: the endpoint and its credentials, JSON requests and streamed file bodies, retried
//! with exponential backoff on transient failures (connection refused or reset, timeouts, HTTP 5xx and 429).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use base64::Engine;

use crate::RegistryError;

/// Credentials sent with every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    None,
    /// HTTP basic auth (`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`).
    Basic { user: String, password: String },
    /// A bearer token (`MLFLOW_TRACKING_TOKEN`; for Azure ML, an Entra ID access token).
    Bearer(String),
}

/// Where the registry is and how to authenticate to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The base URL the REST paths (`/api/2.0/...`) are appended to, without a trailing `/`.
    pub base: String,
    pub auth: Auth,
}

impl Endpoint {
    /// Resolves a tracking URI: `http(s)://host[:port][/prefix]`, or Azure ML's
    /// `azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/<id>/resourceGroups/<rg>/providers/
    /// Microsoft.MachineLearningServices/workspaces/<ws>` (spoken over https, a bearer token required).
    /// `env` reads the credentials' environment variables.
    pub fn from_uri(
        uri: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, RegistryError> {
        let bad = |reason: &str| RegistryError::Uri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let token = env("MLFLOW_TRACKING_TOKEN").filter(|t| !t.is_empty());
        let (base, azure) = if let Some(rest) = uri.strip_prefix("azureml://") {
            (format!("https://{rest}"), true)
        } else if uri.starts_with("http://") || uri.starts_with("https://") {
            (uri.to_string(), false)
        } else {
            return Err(bad("expected http://, https:// or azureml:// (a local file store has no REST API; start `mlflow server`)"));
        };
        let base = base.trim_end_matches('/').to_string();
        let host = base.split("://").nth(1).unwrap_or_default();
        if host.is_empty() || host.starts_with('/') {
            return Err(bad("no host"));
        }
        let auth = if let Some(token) = token {
            Auth::Bearer(token)
        } else if azure {
            return Err(bad("Azure ML needs a bearer token in MLFLOW_TRACKING_TOKEN (`az account get-access-token --query accessToken -o tsv`)"));
        } else {
            match (
                env("MLFLOW_TRACKING_USERNAME"),
                env("MLFLOW_TRACKING_PASSWORD"),
            ) {
                (Some(user), Some(password)) => Auth::Basic { user, password },
                (Some(_), None) | (None, Some(_)) => return Err(bad(
                    "set both MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or neither",
                )),
                (None, None) => Auth::None,
            }
        };
        Ok(Endpoint { base, auth })
    }
}

/// How often and how patiently a failed request is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first backoff; each retry doubles it.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 5,
            backoff: Duration::from_millis(500),
        }
    }
}

/// A request body.
pub(crate) enum Body<'a> {
    Empty,
    Json(&'a serde_json::Value),
    /// A file streamed from disk (reopened on each attempt), with its length and a callback told the bytes sent
    /// so far in the attempt.
    File(&'a Path, u64, &'a dyn Fn(u64)),
}

/// The HTTP side of a registry: an agent, the endpoint, the retry policy.
pub(crate) struct Http {
    agent: ureq::Agent,
    endpoint: Endpoint,
    retry: RetryPolicy,
}

impl Http {
    pub(crate) fn new(endpoint: Endpoint, retry: RetryPolicy) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(300))
            .timeout_write(Duration::from_secs(300))
            .build();
        Http {
            agent,
            endpoint,
            retry,
        }
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends a request to `path` (from the base URL, already percent-encoded) and returns the 2xx response.
    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Body,
    ) -> Result<ureq::Response, RegistryError> {
        let url = format!("{}{}", self.endpoint.base, path);
        let mut delay = self.retry.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.attempt(method, &url, query, &body)?;
            let retry_left = attempt <= self.retry.retries;
            match result {
                Ok(response) => return Ok(response),
                Err(ureq::Error::Status(status, response)) => {
                    let (code, message) = error_text(response);
                    if (status >= 500 || status == 429) && retry_left {
                        tracing::warn!(
                            "{method} {url}: HTTP {status} {message}; retrying in {delay:?}"
                        );
                    } else if status == 401 || status == 403 {
                        return Err(RegistryError::Auth {
                            url,
                            status,
                            message,
                        });
                    } else {
                        let code = if code.is_empty() {
                            code
                        } else {
                            format!(" {code}")
                        };
                        return Err(RegistryError::Api {
                            url,
                            status,
                            code,
                            message,
                        });
                    }
                }
                Err(ureq::Error::Transport(transport)) => {
                    if !retry_left {
                        return Err(RegistryError::Unreachable {
                            url,
                            attempts: attempt,
                            reason: transport_reason(&transport),
                        });
                    }
                    tracing::warn!("{method} {url}: {transport}; retrying in {delay:?}");
                }
            }
            std::thread::sleep(delay);
            delay = delay.saturating_mul(2).min(Duration::from_secs(30));
        }
    }

    fn attempt(
        &self,
        method: &str,
        url: &str,
        query: &[(&str, &str)],
        body: &Body,
    ) -> Result<Result<ureq::Response, ureq::Error>, RegistryError> {
        let mut request = self.agent.request(method, url);
        for (key, value) in query {
            request = request.query(key, value);
        }
        match &self.endpoint.auth {
            Auth::None => {}
            Auth::Basic { user, password } => {
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                request = request.set("Authorization", &format!("Basic {encoded}"));
            }
            Auth::Bearer(token) => {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
        }
        Ok(match body {
            Body::Empty => request.call(),
            Body::Json(value) => request
                .set("Content-Type", "application/json")
                .send_string(&value.to_string()),
            Body::File(path, len, on_sent) => {
                let file = std::fs::File::open(path).map_err(|e| RegistryError::io(*path, e))?;
                let reader = Counting {
                    inner: file.take(*len),
                    sent: 0,
                    on_sent: *on_sent,
                };
                request
                    .set("Content-Type", "application/octet-stream")
                    .set("Content-Length", &len.to_string())
                    .send(reader)
            }
        })
    }

    /// A JSON request; the answer parsed as JSON.
    pub(crate) fn json(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, RegistryError> {
        let body = body.map_or(Body::Empty, Body::Json);
        let response = self.send(method, path, query, body)?;
        let url = response.get_url().to_string();
        let mut text = String::new();
        response
            .into_reader()
            .read_to_string(&mut text)
            .map_err(|e| RegistryError::Unreachable {
                url: url.clone(),
                attempts: 1,
                reason: e.to_string(),
            })?;
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Object(Default::default()));
        }
        serde_json::from_str(&text).map_err(|e| RegistryError::Response {
            url,
            reason: format!(
                "not JSON ({e}): {}",
                text.chars().take(200).collect::<String>()
            ),
        })
    }
}

/// A reader that tells a callback how many bytes it has given so far.
struct Counting<'a, R> {
    inner: R,
    sent: u64,
    on_sent: &'a dyn Fn(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        (self.on_sent)(self.sent);
        Ok(n)
    }
}

/// A transport failure without the URL (the error names it): kind, message and the underlying cause.
fn transport_reason(transport: &ureq::Transport) -> String {
    let mut reason = transport.kind().to_string();
    if let Some(message) = transport.message() {
        reason.push_str(&format!(": {message}"));
    }
    if let Some(source) = std::error::Error::source(transport) {
        reason.push_str(&format!(": {source}"));
    }
    reason
}

/// MLflow's error JSON (`error_code`, `message`), or the body's text.
fn error_text(response: ureq::Response) -> (String, String) {
    let mut text = String::new();
    let _ = response
        .into_reader()
        .take(64 * 1024)
        .read_to_string(&mut text);
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
        let code = value["error_code"].as_str().unwrap_or_default().to_string();
        if let Some(message) = value["message"].as_str() {
            return (code, message.to_string());
        }
    }
    (String::new(), text.trim().chars().take(500).collect())
}

/// Percent-encodes a `/`-separated path, segment by segment (RFC 3986 unreserved characters kept).
pub(crate) fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::from_uri("http://127.0.0.1:5000/", &env(&[])).unwrap();
        assert_eq!(e.base, "http://127.0.0.1:5000");
        assert_eq!(e.auth, Auth::None);
        let e = Endpoint::from_uri(
            "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices/workspaces/w",
            &env(&[("MLFLOW_TRACKING_TOKEN", "t")]),
        )
        .unwrap();
        assert!(e
            .base
            .starts_with("https://eastus.api.azureml.ms/mlflow/v1.0/"));
        assert_eq!(e.auth, Auth::Bearer("t".into()));
        assert!(Endpoint::from_uri("azureml://x/y", &env(&[])).is_err());
        assert!(Endpoint::from_uri("file:///tmp/mlruns", &env(&[])).is_err());
        assert!(Endpoint::from_uri("http://", &env(&[])).is_err());
        let e = Endpoint::from_uri(
            "https://h",
            &env(&[
                ("MLFLOW_TRACKING_USERNAME", "u"),
                ("MLFLOW_TRACKING_PASSWORD", "p"),
            ]),
        )
        .unwrap();
        assert_eq!(
            e.auth,
            Auth::Basic {
                user: "u".into(),
                password: "p".into()
            }
        );
        assert!(
            Endpoint::from_uri("https://h", &env(&[("MLFLOW_TRACKING_USERNAME", "u")])).is_err()
        );
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(
            encode_path("0/abc/artifacts/model/a b+c.json"),
            "0/abc/artifacts/model/a%20b%2Bc.json"
        );
    }
}
