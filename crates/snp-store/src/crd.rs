//! The `ServiceNameMapping` custom resource, typed, with the CRD generated from the type.
//!
//! The group and version are runtime settings (the seed used `extensions.istio.io/v1alpha1`,
//! dubbo-admin `dubbo.apache.org`), so objects are handled as [`MappingObject`], a kube
//! `Object` whose `ApiResource` comes from the flags; the derived `ServiceNameMapping` type
//! exists to generate the CRD schema.

use std::collections::BTreeMap;

use kube::core::{ApiResource, GroupVersionKind, NotUsed, Object};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use snp_core::{naming, AppSet, MappingKey};

/// Default API group, as in the seed server.
pub const DEFAULT_GROUP: &str = "extensions.istio.io";
/// Default API version.
pub const DEFAULT_VERSION: &str = "v1alpha1";
/// Kind.
pub const KIND: &str = "ServiceNameMapping";
/// Plural resource name.
pub const PLURAL: &str = "servicenamemappings";

/// Which applications provide an interface in this namespace. Consumers index these by
/// `(namespace, spec.interfaceName)`, never by object name.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "extensions.istio.io",
    version = "v1alpha1",
    kind = "ServiceNameMapping",
    plural = "servicenamemappings",
    shortname = "snp",
    namespaced,
    printcolumn = r#"{"name":"Interface","type":"string","jsonPath":".spec.interfaceName"}"#,
    printcolumn = r#"{"name":"Apps","type":"string","description":"Number of applications (kept by the writers in an annotation)","jsonPath":".metadata.annotations.snp\\.dubbo\\.apache\\.org/application-count"}"#,
    printcolumn = r#"{"name":"Applications","type":"string","priority":1,"jsonPath":".spec.applicationNames"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceNameMappingSpec {
    /// Fully-qualified interface name, exactly as registered.
    pub interface_name: String,
    /// Applications providing it. Only ever grows: writers merge by union.
    #[serde(default)]
    pub application_names: Vec<String>,
}

/// The annotation that holds `len(spec.applicationNames)`, for `kubectl get`'s `Apps` column
/// (a printer column cannot count a list). Every write of this project sets it together with
/// the list, in the same request; objects of other writers lack it until we next write them.
pub const ANNOTATION_APP_COUNT: &str = "snp.dubbo.apache.org/application-count";

/// A `ServiceNameMapping` under a runtime group/version.
pub type MappingObject = Object<ServiceNameMappingSpec, NotUsed>;

/// The `ApiResource` of `ServiceNameMapping` under `group`/`version`.
pub fn api_resource(group: &str, version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, KIND), PLURAL)
}

/// The CRD, for `group`/`version`, as YAML.
pub fn crd_yaml(group: &str, version: &str) -> Result<String, serde_yaml_ng::Error> {
    let mut crd = ServiceNameMapping::crd();
    crd.metadata.name = Some(format!("{PLURAL}.{group}"));
    crd.spec.group = group.to_owned();
    for v in &mut crd.spec.versions {
        v.name = version.to_owned();
    }
    serde_yaml_ng::to_string(&crd)
}

/// A new object named `name` holding `key -> apps`, labelled by `snp_core::naming`.
pub fn new_object(ar: &ApiResource, name: &str, key: &MappingKey, apps: &AppSet) -> MappingObject {
    let mut obj = MappingObject::new(
        name,
        ar,
        ServiceNameMappingSpec {
            interface_name: key.interface.clone(),
            application_names: apps.as_slice().to_vec(),
        },
    );
    obj.metadata.namespace = Some(key.namespace.clone());
    let labels: BTreeMap<String, String> = naming::labels(&key.interface)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    obj.metadata.labels = Some(labels);
    set_app_count(&mut obj.metadata, apps.len());
    obj
}

/// Sets [`ANNOTATION_APP_COUNT`] to `count`, keeping every other annotation.
pub fn set_app_count(meta: &mut kube::core::ObjectMeta, count: usize) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_APP_COUNT.to_owned(), count.to_string());
}

/// The key an object holds, if it has a namespace.
pub fn key_of(obj: &MappingObject) -> Option<MappingKey> {
    Some(MappingKey::new(
        obj.metadata.namespace.clone()?,
        obj.spec.interface_name.clone(),
    ))
}

/// The application names of an object, as a set (objects written by others may be unsorted
/// or hold duplicates).
pub fn apps_of(obj: &MappingObject) -> AppSet {
    obj.spec.application_names.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_follows_the_group_and_version() {
        let yaml = crd_yaml("dubbo.apache.org", "v1beta1").unwrap();
        assert!(yaml.contains("name: servicenamemappings.dubbo.apache.org"));
        assert!(yaml.contains("group: dubbo.apache.org"));
        assert!(yaml.contains("name: v1beta1"));
        assert!(yaml.contains("- snp"));
        assert!(yaml.contains("interfaceName"));
        assert!(
            yaml.contains(r".metadata.annotations.snp\.dubbo\.apache\.org/application-count"),
            "{yaml}"
        );
    }

    #[test]
    fn objects_carry_spec_labels_and_type() {
        let ar = api_resource(DEFAULT_GROUP, DEFAULT_VERSION);
        let key = MappingKey::new("default", "org.apache.dubbo.demo.DemoService");
        let apps: AppSet = ["b", "a"].into_iter().collect();
        let obj = new_object(&ar, "org-apache-dubbo-demo-demoservice", &key, &apps);
        let json = serde_json::to_value(&obj).unwrap();
        assert_eq!(json["apiVersion"], "extensions.istio.io/v1alpha1");
        assert_eq!(json["kind"], "ServiceNameMapping");
        assert_eq!(
            json["spec"]["applicationNames"],
            serde_json::json!(["a", "b"])
        );
        assert_eq!(
            json["metadata"]["labels"]["interface"],
            "org.apache.dubbo.demo.DemoService"
        );
        assert_eq!(
            json["metadata"]["annotations"][ANNOTATION_APP_COUNT], "2",
            "the count kubectl shows"
        );
        assert_eq!(key_of(&obj), Some(key));
    }
}
