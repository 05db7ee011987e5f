//! The MLflow REST API 2.0 calls the registry client makes: registered models, model versions, experiments
//! and runs (`/api/2.0/mlflow/...`), and the artifact proxy (`/api/2.0/mlflow-artifacts/artifacts/...`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::{encode_path, Body, Endpoint, Http, RetryPolicy};
use crate::RegistryError;

const API: &str = "/api/2.0/mlflow";
const ARTIFACTS: &str = "/api/2.0/mlflow-artifacts/artifacts";
/// The largest page MLflow's search endpoints serve.
const PAGE: &str = "1000";

/// A key/value tag of a model, version or run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// A registered model as the registry returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisteredModel {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub latest_versions: Vec<ModelVersion>,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// A model version as the registry returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl ModelVersion {
    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }
}

/// A run: its id, artifact URI and tags.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    pub id: String,
    pub artifact_uri: String,
    pub tags: Vec<Tag>,
}

/// One entry of an artifact folder listing.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct FileInfo {
    pub path: String,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default)]
    pub file_size: Option<Value>,
}

/// A connection to an MLflow tracking server's registry and artifact proxy.
pub struct Registry {
    http: Http,
}

fn parse<T: serde::de::DeserializeOwned>(value: &Value, url: &str) -> Result<T, RegistryError> {
    serde_json::from_value(value.clone()).map_err(|e| RegistryError::Response {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

fn is_not_found(error: &RegistryError) -> bool {
    matches!(error, RegistryError::Api { status: 404, .. })
        || matches!(error, RegistryError::Api { code, .. } if code.trim() == "RESOURCE_DOES_NOT_EXIST")
}

/// An MLflow search filter's string literal.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Registry {
    pub fn new(endpoint: Endpoint, retry: RetryPolicy) -> Self {
        Registry {
            http: Http::new(endpoint, retry),
        }
    }

    /// The base URL of the registry.
    pub fn base(&self) -> &str {
        &self.http.endpoint().base
    }

    fn get(&self, call: &str, query: &[(&str, &str)]) -> Result<Value, RegistryError> {
        self.http.json("GET", &format!("{API}/{call}"), query, None)
    }

    fn post(&self, call: &str, body: Value) -> Result<Value, RegistryError> {
        self.http
            .json("POST", &format!("{API}/{call}"), &[], Some(&body))
    }

    fn delete(&self, call: &str, body: Value) -> Result<Value, RegistryError> {
        self.http
            .json("DELETE", &format!("{API}/{call}"), &[], Some(&body))
    }

    /// The registered model `name`, or None where it does not exist.
    pub fn registered_model(&self, name: &str) -> Result<Option<RegisteredModel>, RegistryError> {
        match self.get("registered-models/get", &[("name", name)]) {
            Ok(v) => Ok(Some(parse(
                &v["registered_model"],
                "registered-models/get",
            )?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn create_registered_model(
        &self,
        name: &str,
        description: &str,
    ) -> Result<(), RegistryError> {
        self.post(
            "registered-models/create",
            json!({"name": name, "description": description}),
        )
        .map(drop)
    }

    pub(crate) fn delete_registered_model(&self, name: &str) -> Result<(), RegistryError> {
        self.delete("registered-models/delete", json!({"name": name}))
            .map(drop)
    }

    pub(crate) fn set_registered_model_tag(
        &self,
        name: &str,
        tag: &Tag,
    ) -> Result<(), RegistryError> {
        self.post(
            "registered-models/set-tag",
            json!({"name": name, "key": tag.key, "value": tag.value}),
        )
        .map(drop)
    }

    /// Every registered model, page by page.
    pub fn registered_models(&self) -> Result<Vec<RegisteredModel>, RegistryError> {
        let mut models = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("max_results", PAGE)];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let v = self.get("registered-models/search", &query)?;
            if let Some(page) = v.get("registered_models") {
                models.extend(parse::<Vec<RegisteredModel>>(
                    page,
                    "registered-models/search",
                )?);
            }
            match v["next_page_token"].as_str() {
                Some(next) if !next.is_empty() => token = next.to_string(),
                _ => return Ok(models),
            }
        }
    }

    /// Every version of `name`, page by page, in ascending version order.
    pub fn model_versions(&self, name: &str) -> Result<Vec<ModelVersion>, RegistryError> {
        let filter = format!("name={}", quoted(name));
        let mut versions = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("filter", filter.as_str()), ("max_results", PAGE)];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let v = self.get("model-versions/search", &query)?;
            if let Some(page) = v.get("model_versions") {
                versions.extend(parse::<Vec<ModelVersion>>(page, "model-versions/search")?);
            }
            match v["next_page_token"].as_str() {
                Some(next) if !next.is_empty() => token = next.to_string(),
                _ => break,
            }
        }
        versions.sort_by_key(|v| v.version.parse::<u64>().unwrap_or(u64::MAX));
        Ok(versions)
    }

    /// Version `version` of `name`, or None where it does not exist.
    pub fn model_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<ModelVersion>, RegistryError> {
        match self.get(
            "model-versions/get",
            &[("name", name), ("version", version)],
        ) {
            Ok(v) => Ok(Some(parse(&v["model_version"], "model-versions/get")?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn create_model_version(
        &self,
        name: &str,
        source: &str,
        run_id: &str,
        tags: &[Tag],
        description: &str,
    ) -> Result<ModelVersion, RegistryError> {
        let v = self.post(
            "model-versions/create",
            json!({"name": name, "source": source, "run_id": run_id, "tags": tags,
                   "description": description}),
        )?;
        parse(&v["model_version"], "model-versions/create")
    }

    pub(crate) fn delete_model_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<(), RegistryError> {
        self.delete(
            "model-versions/delete",
            json!({"name": name, "version": version}),
        )
        .map(drop)
    }

    pub(crate) fn set_model_version_tag(
        &self,
        name: &str,
        version: &str,
        tag: &Tag,
    ) -> Result<(), RegistryError> {
        self.post(
            "model-versions/set-tag",
            json!({"name": name, "version": version, "key": tag.key, "value": tag.value}),
        )
        .map(drop)
    }

    pub(crate) fn update_model_version(
        &self,
        name: &str,
        version: &str,
        description: &str,
    ) -> Result<(), RegistryError> {
        self.http
            .json(
                "PATCH",
                &format!("{API}/model-versions/update"),
                &[],
                Some(&json!({"name": name, "version": version, "description": description})),
            )
            .map(drop)
    }

    /// The id of experiment `name`, created where missing.
    pub(crate) fn experiment_id(&self, name: &str) -> Result<String, RegistryError> {
        match self.get("experiments/get-by-name", &[("experiment_name", name)]) {
            Ok(v) => text(&v["experiment"]["experiment_id"], "experiments/get-by-name"),
            Err(e) if is_not_found(&e) => {
                let v = self.post("experiments/create", json!({"name": name}))?;
                text(&v["experiment_id"], "experiments/create")
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn create_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        tags: &[Tag],
    ) -> Result<Run, RegistryError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let v = self.post(
            "runs/create",
            json!({"experiment_id": experiment_id, "run_name": run_name, "start_time": now,
                   "tags": tags}),
        )?;
        run_from(&v["run"], "runs/create")
    }

    /// The runs of an experiment that match an MLflow search filter.
    pub(crate) fn search_runs(
        &self,
        experiment_id: &str,
        filter: &str,
    ) -> Result<Vec<Run>, RegistryError> {
        let v = self.post(
            "runs/search",
            json!({"experiment_ids": [experiment_id], "filter": filter, "max_results": 100}),
        )?;
        let empty = Vec::new();
        v["runs"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|r| run_from(r, "runs/search"))
            .collect()
    }

    pub(crate) fn run(&self, run_id: &str) -> Result<Run, RegistryError> {
        let v = self.get("runs/get", &[("run_id", run_id)])?;
        run_from(&v["run"], "runs/get")
    }

    pub(crate) fn set_run_tag(&self, run_id: &str, tag: &Tag) -> Result<(), RegistryError> {
        self.post(
            "runs/set-tag",
            json!({"run_id": run_id, "key": tag.key, "value": tag.value}),
        )
        .map(drop)
    }

    pub(crate) fn finish_run(&self, run_id: &str) -> Result<(), RegistryError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.post(
            "runs/update",
            json!({"run_id": run_id, "status": "FINISHED", "end_time": now}),
        )
        .map(drop)
    }

    pub(crate) fn delete_run(&self, run_id: &str) -> Result<(), RegistryError> {
        self.post("runs/delete", json!({"run_id": run_id}))
            .map(drop)
    }

    /// Streams a local file of `len` bytes to the artifact proxy at `path` (relative to the artifact root);
    /// `on_sent` is told the bytes sent so far (from 0 again on a retry).
    pub(crate) fn put_artifact(
        &self,
        path: &str,
        file: &Path,
        len: u64,
        on_sent: &dyn Fn(u64),
    ) -> Result<(), RegistryError> {
        let url = format!("{ARTIFACTS}/{}", encode_path(path));
        self.http
            .send("PUT", &url, &[], Body::File(file, len, on_sent))
            .map(drop)
    }

    /// The body of the artifact at `path`, as a reader.
    pub(crate) fn get_artifact(
        &self,
        path: &str,
    ) -> Result<Box<dyn std::io::Read + Send + Sync>, RegistryError> {
        let url = format!("{ARTIFACTS}/{}", encode_path(path));
        Ok(self.http.send("GET", &url, &[], Body::Empty)?.into_reader())
    }

    /// The entries of the artifact folder `path`.
    pub(crate) fn list_artifacts(&self, path: &str) -> Result<Vec<FileInfo>, RegistryError> {
        let v = self.http.json("GET", ARTIFACTS, &[("path", path)], None)?;
        match v.get("files") {
            Some(files) => parse(files, "mlflow-artifacts list"),
            None => Ok(Vec::new()),
        }
    }

    /// Deletes the artifact (file or folder) at `path`.
    pub(crate) fn delete_artifact(&self, path: &str) -> Result<(), RegistryError> {
        let url = format!("{ARTIFACTS}/{}", encode_path(path));
        self.http.send("DELETE", &url, &[], Body::Empty).map(drop)
    }
}

fn text(value: &Value, url: &str) -> Result<String, RegistryError> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| RegistryError::Response {
            url: url.to_string(),
            reason: format!("expected a string, found {value}"),
        })
}

fn run_from(value: &Value, url: &str) -> Result<Run, RegistryError> {
    let tags = match value["data"].get("tags") {
        Some(tags) => parse(tags, url)?,
        None => Vec::new(),
    };
    Ok(Run {
        id: text(&value["info"]["run_id"], url)?,
        artifact_uri: text(&value["info"]["artifact_uri"], url)?,
        tags,
    })
}

/// The artifact proxy's path (relative to its root) of an artifact URI: `mlflow-artifacts:/p`,
/// `mlflow-artifacts://host:port/p`, or `http(s)://host/.../api/2.0/mlflow-artifacts/artifacts/p`.
pub(crate) fn proxy_path(uri: &str) -> Result<String, RegistryError> {
    let path = if let Some(rest) = uri.strip_prefix("mlflow-artifacts://") {
        rest.split_once('/').map_or("", |(_, p)| p)
    } else if let Some(rest) = uri.strip_prefix("mlflow-artifacts:") {
        rest
    } else if let Some((_, rest)) = uri.split_once(&format!("{ARTIFACTS}/")) {
        rest
    } else {
        return Err(RegistryError::Uri {
            uri: uri.to_string(),
            reason: "artifacts are not served by the tracking server's artifact proxy (expected mlflow-artifacts:/...; start the server with --serve-artifacts)".to_string(),
        });
    };
    let path = path.trim_matches('/');
    if path.split('/').any(|s| s == "..") {
        return Err(RegistryError::Uri {
            uri: uri.to_string(),
            reason: "`..` in an artifact path".to_string(),
        });
    }
    Ok(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths() {
        assert_eq!(
            proxy_path("mlflow-artifacts:/1/abc/artifacts").unwrap(),
            "1/abc/artifacts"
        );
        assert_eq!(
            proxy_path("mlflow-artifacts://h:5000/1/abc/artifacts/model").unwrap(),
            "1/abc/artifacts/model"
        );
        assert_eq!(
            proxy_path("http://h/api/2.0/mlflow-artifacts/artifacts/1/a").unwrap(),
            "1/a"
        );
        assert!(proxy_path("s3://bucket/1/a").is_err());
        assert!(proxy_path("mlflow-artifacts:/1/../x").is_err());
    }

    #[test]
    fn filter_literals_are_escaped() {
        assert_eq!(quoted("a'b"), "'a\\'b'");
    }
}
