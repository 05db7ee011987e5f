//! `model delete`: a model version (MLflow `model-versions/delete`) or a registered model with all its versions
//! (`registered-models/delete`). The runs `create` made to hold the files are deleted with them (MLflow's soft
//! delete: `mlflow gc` purges their artifacts). MLflow never reuses a deleted version's number, and its REST API
//! no longer shows the version, so the highest deleted number is kept in the registered model's tag
//! `olive.deleted_up_to`, from which `create` computes the next number.

use crate::api::{ModelVersion, Registry, Tag};
use crate::publish::{validate_version, MANIFEST_TAG};
use crate::RegistryError;

/// Registered model tag: the highest version number deleted through `delete`.
pub(crate) const DELETED_TAG: &str = "olive.deleted_up_to";

/// What `delete` removed.
#[derive(Debug)]
pub struct DeleteReport {
    /// The versions deleted, in ascending order.
    pub versions: Vec<String>,
    /// Whether the registered model itself was deleted.
    pub model_deleted: bool,
}

/// Deletes version `version` of `name`, or (None) the registered model `name` and every version of it.
pub fn delete(
    registry: &Registry,
    name: &str,
    version: Option<&str>,
) -> Result<DeleteReport, RegistryError> {
    crate::validate_name(name)?;
    let Some(model) = registry.registered_model(name)? else {
        return Err(RegistryError::NotFound {
            what: format!("model `{name}`"),
        });
    };
    match version {
        Some(version) => {
            let number = validate_version(version)?;
            let mv =
                registry
                    .model_version(name, version)?
                    .ok_or_else(|| RegistryError::NotFound {
                        what: format!("model `{name}` version {version}"),
                    })?;
            let deleted_up_to = deleted_up_to(&model.tags).max(number);
            registry.delete_model_version(name, version)?;
            registry.set_registered_model_tag(
                name,
                &Tag {
                    key: DELETED_TAG.into(),
                    value: deleted_up_to.to_string(),
                },
            )?;
            delete_run(registry, &mv);
            Ok(DeleteReport {
                versions: vec![mv.version],
                model_deleted: false,
            })
        }
        None => {
            let versions = registry.model_versions(name)?;
            registry.delete_registered_model(name)?;
            for mv in &versions {
                delete_run(registry, mv);
            }
            Ok(DeleteReport {
                versions: versions.into_iter().map(|v| v.version).collect(),
                model_deleted: true,
            })
        }
    }
}

/// The highest version number deleted through `delete`, from a registered model's tags (0 when none).
pub(crate) fn deleted_up_to(tags: &[Tag]) -> u64 {
    tags.iter()
        .find(|t| t.key == DELETED_TAG)
        .and_then(|t| t.value.parse().ok())
        .unwrap_or(0)
}

/// Deletes the run holding a version's files when `create` made it (the version has a manifest); a failure only
/// warns, as the version is gone already.
fn delete_run(registry: &Registry, mv: &ModelVersion) {
    if mv.tag(MANIFEST_TAG).is_none() || mv.run_id.is_empty() {
        return;
    }
    if let Err(error) = registry.delete_run(&mv.run_id) {
        tracing::warn!(
            "version {} is deleted, but not the run {} holding its files: {error}",
            mv.version,
            mv.run_id
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deleted_number_comes_from_the_tag() {
        let tag = |v: &str| Tag {
            key: DELETED_TAG.into(),
            value: v.into(),
        };
        assert_eq!(deleted_up_to(&[]), 0);
        assert_eq!(deleted_up_to(&[tag("4")]), 4);
        assert_eq!(deleted_up_to(&[tag("x")]), 0);
    }
}
