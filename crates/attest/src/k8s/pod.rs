//! The kubelet's pod list, and the selectors of the pod and container a workload runs in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;
use tracing::{error, warn};

use super::K8sError;

/// The pods of a kubelet's `/pods` answer (a `PodList`), by pod UID.
///
/// Each pod stays raw JSON until the attestor looks at it, as in SPIRE: when the cgroups
/// name the pod, only that pod is decoded, so one odd pod elsewhere on the node does not
/// fail every attestation.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<String, serde_json::Value>,
}

/// The parts of a `PodList` the index needs.
#[derive(Deserialize)]
struct PodListItems {
    #[serde(default)]
    items: Option<Vec<serde_json::Value>>,
}

impl PodIndex {
    /// Indexes the pods of a `/pods` response body; pods without a UID are skipped with a
    /// warning.
    ///
    /// # Errors
    /// [`K8sError::ParsePodList`] when the body is not a JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, K8sError> {
        let list: PodListItems = serde_json::from_slice(body)
            .map_err(|e| K8sError::ParsePodList { reason: e.to_string() })?;
        let mut pods = HashMap::new();
        for pod in list.items.unwrap_or_default() {
            let uid = pod.pointer("/metadata/uid").and_then(serde_json::Value::as_str);
            match uid {
                Some(uid) if !uid.is_empty() => {
                    pods.insert(uid.to_owned(), pod);
                }
                _ => {
                    let name = pod.pointer("/metadata/name").and_then(serde_json::Value::as_str);
                    warn!(pod = name.unwrap_or_default(), "pod has no UID");
                }
            }
        }
        Ok(Self { pods })
    }

    /// The number of pods indexed.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether the list had no pod with a UID.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The selector values (without the `k8s:` type) of the workload in container
    /// `container_id`, or `None` when no pod holds that container yet.
    ///
    /// With `pod_uid` known, only that pod is looked at. With `pod_selectors_only`
    /// (`disable_container_selectors`), the container selectors are left out, and a known
    /// pod whose container is not listed yet (not started, a `postStart` hook running) still
    /// yields the pod selectors.
    ///
    /// # Errors
    /// [`K8sError::DecodePod`] when a pod looked at is not a pod object;
    /// [`K8sError::DuplicateContainer`] when two pods hold the container.
    pub fn selector_values(
        &self,
        pod_uid: Option<&str>,
        container_id: &str,
        pod_selectors_only: bool,
    ) -> Result<Option<Vec<String>>, K8sError> {
        let candidates: Vec<&serde_json::Value> = match pod_uid {
            Some(uid) => self.pods.get(uid).into_iter().collect(),
            None => self.pods.values().collect(),
        };
        let mut found = None;
        for raw in candidates {
            let pod =
                Pod::deserialize(raw).map_err(|e| K8sError::DecodePod { reason: e.to_string() })?;
            let values = match pod.status.container(container_id) {
                Some(container) => {
                    let mut values = pod.selector_values();
                    if !pod_selectors_only {
                        values.extend(container.selector_values());
                    }
                    values
                }
                None if pod_uid.is_some() && pod_selectors_only => pod.selector_values(),
                None => continue,
            };
            if found.is_some() {
                warn!(container_id, "two pods found with same container Id");
                return Err(K8sError::DuplicateContainer);
            }
            found = Some(values);
        }
        Ok(found)
    }
}

/// A pod, as much of `v1.Pod` as selectors need. Absent and `null` fields read as empty,
/// as Go's decoder leaves them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pod {
    metadata: ObjectMeta,
    spec: PodSpec,
    status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ObjectMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    labels: Option<BTreeMap<String, Option<String>>>,
    #[serde(rename = "ownerReferences")]
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OwnerReference {
    kind: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodSpec {
    #[serde(rename = "serviceAccountName")]
    service_account_name: Option<String>,
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodStatus {
    #[serde(rename = "containerStatuses")]
    container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(rename = "initContainerStatuses")]
    init_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContainerStatus {
    name: Option<String>,
    image: Option<String>,
    #[serde(rename = "imageID")]
    image_id: Option<String>,
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

fn text(s: Option<&String>) -> &str {
    s.map_or("", String::as_str)
}

impl PodStatus {
    fn containers(&self) -> &[ContainerStatus] {
        self.container_statuses.as_deref().unwrap_or_default()
    }

    fn init_containers(&self) -> &[ContainerStatus] {
        self.init_container_statuses.as_deref().unwrap_or_default()
    }

    /// The status of container `id`, among the containers and then the init containers.
    /// The kubelet writes a container's ID as `<runtime>://<id>` (`containerd://`,
    /// `cri-o://`, `docker://`); a status without one (not started yet) never matches.
    fn container(&self, id: &str) -> Option<&ContainerStatus> {
        self.containers().iter().chain(self.init_containers()).find(|status| {
            let Some(reported) = status.container_id.as_deref().filter(|s| !s.is_empty()) else {
                return false;
            };
            match url::Url::parse(reported) {
                Ok(parsed) => parsed.host_str() == Some(id),
                Err(e) => {
                    error!(error = %e, container_id = reported, "malformed container id");
                    false
                }
            }
        })
    }
}

/// Both names of every image of `statuses`: the reference the pod asked for (`image`) and
/// the resolved digest (`imageID`), so entries may name either; sorted, without repeats.
fn image_identifiers(statuses: &[ContainerStatus]) -> BTreeSet<&str> {
    statuses.iter().flat_map(|s| [text(s.image_id.as_ref()), text(s.image.as_ref())]).collect()
}

impl Pod {
    /// The pod's selector values in SPIRE's order (SPIRE emits images, labels and owners in
    /// map order; ward sorts them).
    fn selector_values(&self) -> Vec<String> {
        let meta = &self.metadata;
        let status = &self.status;
        let mut values = vec![
            format!("sa:{}", text(self.spec.service_account_name.as_ref())),
            format!("ns:{}", text(meta.namespace.as_ref())),
            format!("node-name:{}", text(self.spec.node_name.as_ref())),
            format!("pod-uid:{}", text(meta.uid.as_ref())),
            format!("pod-name:{}", text(meta.name.as_ref())),
            format!("pod-image-count:{}", status.containers().len()),
            format!("pod-init-image-count:{}", status.init_containers().len()),
        ];
        values.extend(
            image_identifiers(status.containers()).iter().map(|i| format!("pod-image:{i}")),
        );
        values.extend(
            image_identifiers(status.init_containers())
                .iter()
                .map(|i| format!("pod-init-image:{i}")),
        );
        for (key, value) in meta.labels.iter().flatten() {
            values.push(format!("pod-label:{key}:{}", text(value.as_ref())));
        }
        for owner in meta.owner_references.iter().flatten() {
            let kind = text(owner.kind.as_ref());
            values.push(format!("pod-owner:{kind}:{}", text(owner.name.as_ref())));
            values.push(format!("pod-owner-uid:{kind}:{}", text(owner.uid.as_ref())));
        }
        values
    }
}

impl ContainerStatus {
    /// The workload container's selector values: its name, then both names of its image.
    fn selector_values(&self) -> Vec<String> {
        let mut values = vec![format!("container-name:{}", text(self.name.as_ref()))];
        values.extend(
            image_identifiers(std::slice::from_ref(self))
                .iter()
                .map(|i| format!("container-image:{i}")),
        );
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "4f1c2d3e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";

    fn pod(uid: &str, container_id: &str) -> serde_json::Value {
        serde_json::json!({
            "metadata": { "name": "web-0", "namespace": "prod", "uid": uid },
            "spec": { "serviceAccountName": "web", "nodeName": "n1" },
            "status": { "containerStatuses": [
                { "name": "web", "image": "web:1", "imageID": "web:1", "containerID": container_id }
            ] }
        })
    }

    #[test]
    fn pods_without_a_uid_are_skipped_and_null_items_are_no_pods() {
        let list =
            serde_json::json!({ "items": [ pod("", "x"), pod("u1", "y"), { "metadata": {} } ] });
        let index = PodIndex::parse(list.to_string().as_bytes()).unwrap();
        assert_eq!(index.len(), 1);
        assert!(PodIndex::parse(br#"{"kind":"PodList","items":null}"#).unwrap().is_empty());
        let err = PodIndex::parse(b"<html>").unwrap_err();
        assert!(err.to_string().starts_with("unable to parse kubelet response: "), "{err}");
    }

    #[test]
    fn a_minimal_pod_gives_selectors_with_one_image_name_when_both_are_equal() {
        let list = serde_json::json!({ "items": [ pod("u1", &format!("cri-o://{CID}")) ] });
        let index = PodIndex::parse(list.to_string().as_bytes()).unwrap();
        let values = index.selector_values(Some("u1"), CID, false).unwrap().unwrap();
        assert_eq!(
            values,
            [
                "sa:web",
                "ns:prod",
                "node-name:n1",
                "pod-uid:u1",
                "pod-name:web-0",
                "pod-image-count:1",
                "pod-init-image-count:0",
                "pod-image:web:1",
                "container-name:web",
                "container-image:web:1",
            ]
        );
        // Another pod UID, or a container ID without a runtime prefix, does not match.
        assert_eq!(index.selector_values(Some("u2"), CID, false).unwrap(), None);
        let bare = serde_json::json!({ "items": [ pod("u1", CID) ] });
        let index = PodIndex::parse(bare.to_string().as_bytes()).unwrap();
        assert_eq!(index.selector_values(None, CID, false).unwrap(), None);
    }

    #[test]
    fn a_pod_of_the_wrong_shape_is_a_decode_error_only_when_looked_at() {
        let mut broken = pod("u2", "docker://other");
        broken["metadata"]["labels"] = serde_json::json!(["not", "a", "map"]);
        let list =
            serde_json::json!({ "items": [ pod("u1", &format!("docker://{CID}")), broken ] });
        let index = PodIndex::parse(list.to_string().as_bytes()).unwrap();
        assert!(index.selector_values(Some("u1"), CID, false).unwrap().is_some());
        let err = index.selector_values(Some("u2"), CID, false).unwrap_err();
        assert!(matches!(err, K8sError::DecodePod { .. }));
        assert!(err.to_string().starts_with("unable to decode pod info from kubelet response: "));
    }
}
