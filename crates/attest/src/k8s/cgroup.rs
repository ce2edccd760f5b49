//! Finding the pod UID and container ID of a process from `/proc/<pid>/cgroup`.
//!
//! Every line of the file is `hierarchy-ID:controller-list:cgroup-path` (cgroup v1 has one
//! line per hierarchy, v2 a single `0::<path>`). The kubelet and the container runtime name
//! the cgroups of a container after the pod UID and the 64-hex-digit container ID, in forms
//! that vary with the cgroup driver and the runtime:
//!
//! | runtime, driver | path |
//! |---|---|
//! | docker, cgroupfs | `/kubepods/burstable/pod<uid>/<id>` |
//! | docker, systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/docker-<id>.scope` |
//! | containerd, systemd | `/kubepods.slice/.../kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope` or `...slice:cri-containerd:<id>` |
//! | CRI-O, systemd | `/kubepods.slice/.../kubepods-besteffort-pod<uid_>.slice/crio-<id>.scope` |
//! | cgroup namespace (v2, k8s 1.21+) | `0::/../pod<uid>/<id>` or `0::/../crio-<id>.scope` (no pod UID) |
//! | kind (a node in docker) | `/docker/<node id>/kubepods/besteffort/pod<uid>/<id>` |
//!
//! [`CgroupLocator::Segments`] is SPIRE's default ("new container locator",
//! `pkg/common/containerinfo/extract.go`): walk each path back from its end to the first
//! segment holding a container ID, then on to the first holding `pod<uid>`.
//! [`CgroupLocator::Legacy`] is SPIRE's `use_new_container_locator = false` matcher
//! (`k8s_posix.go`). SPIRE's default first reads the cgroup mounts of
//! `/proc/<pid>/mountinfo`; ward never does, because a process that can mount (a privileged
//! container, or one with its own user namespace) writes its own mountinfo and could name
//! another pod's container there, while `/proc/<pid>/cgroup` is the kernel's record of where
//! the process is.

use std::sync::LazyLock;

use regex::Regex;

use super::K8sError;

/// What the cgroups of a process say about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainer {
    /// The pod UID in its Kubernetes form (dashes), or `None` when the paths do not carry it
    /// (CRI-O in a cgroup namespace): then the container is looked up in every pod.
    pub pod_uid: Option<String>,
    /// The container ID, 64 hex digits, as the kubelet reports it after `<runtime>://`.
    pub container_id: String,
}

/// Which algorithm reads the container out of the cgroup paths (`use_new_container_locator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupLocator {
    /// SPIRE's default locator: path segments walked from the end.
    #[default]
    Segments,
    /// SPIRE's legacy regular expressions over whole paths.
    Legacy,
}

impl CgroupLocator {
    /// The pod and container named by the cgroup file `text`, or `None` when no path names a
    /// container (a process that is not in a pod).
    ///
    /// # Errors
    /// [`K8sError::Cgroups`] for a line that is not `id:controllers:path`;
    /// [`K8sError::MultiplePodUids`] or [`K8sError::MultipleContainerIds`] (or their legacy
    /// forms) when the paths disagree.
    pub fn locate(self, text: &str) -> Result<Option<PodContainer>, K8sError> {
        let paths = cgroup_paths(text)?;
        match self {
            Self::Segments => locate_by_segments(&paths),
            Self::Legacy => locate_legacy(&paths),
        }
    }
}

/// The paths of a cgroup file, refusing lines with fewer than three `:`-separated fields.
fn cgroup_paths(text: &str) -> Result<Vec<&str>, K8sError> {
    text.lines()
        .map(|line| {
            let mut fields = line.splitn(3, ':');
            match (fields.next(), fields.next(), fields.next()) {
                (Some(_), Some(_), Some(path)) => Ok(path),
                _ => Err(K8sError::Cgroups {
                    reason: format!(
                        "invalid cgroup entry, contains {} colon separated fields but expected \
                         at least 3: {line:?}",
                        line.split(':').count()
                    ),
                }),
            }
        })
        .collect()
}

/// Builds a regular expression written in this file.
#[expect(clippy::expect_used, reason = "the patterns are constants checked by the unit tests")]
fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("constant regular expression")
}

/// A container ID: 64 hex digits between word boundaries (ASCII ones, as Go's `\b`).
static CONTAINER_ID: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?-u:\b)([[:xdigit:]]{64})(?-u:\b)"));

/// `pod<uid>`, with dashes (cgroupfs driver) or underscores (systemd driver, which does not
/// allow dashes in a slice name component).
static POD_UID: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?-u:\b)pod([[:xdigit:]]{8}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{12})(?-u:\b)",
    )
});

/// Splits the last `/`-separated segment off `path`: `("/a/b", "c")` for `"/a/b/c"`.
fn split_last_segment(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => {
            let (dir, segment) = path.split_at(i);
            (dir, segment.strip_prefix('/').unwrap_or(segment))
        }
        None => ("", path),
    }
}

/// The pod UID (if any) and container ID of one cgroup path, walking segments from the end.
///
/// The container ID is usually the last segment, but some drivers put more segments after
/// it, and some put the pod UID and the container ID in one segment separated by `:`; so the
/// part of the segment before the container ID is searched for the pod UID first. An empty
/// segment (`//`) ends the walk, as in SPIRE.
fn segments_pod_and_container(path: &str) -> Option<(Option<String>, &str)> {
    let (mut rest, mut segment) = split_last_segment(path);
    let mut container_id = None;
    while !segment.is_empty() {
        if let Some(found) = CONTAINER_ID.captures(segment).and_then(|c| c.get(1)) {
            container_id = Some(found.as_str());
            segment = segment.get(..found.start()).unwrap_or_default();
            break;
        }
        (rest, segment) = split_last_segment(rest);
    }
    let container_id = container_id?;
    if segment.is_empty() {
        (rest, segment) = split_last_segment(rest);
    }
    while !segment.is_empty() {
        if let Some(uid) = POD_UID.captures(segment).and_then(|c| c.get(1)) {
            return Some((Some(uid.as_str().replace('_', "-")), container_id));
        }
        (rest, segment) = split_last_segment(rest);
    }
    Some((None, container_id))
}

/// SPIRE's default locator over all paths of the file.
///
/// A path with a pod UID wins over one without (kind on a cgroup v1 host lists the node's
/// own docker container in the unified hierarchy), and two paths naming different pods or
/// containers are an error rather than a guess. A path naming no container (`3:rdma:/`) is
/// skipped.
fn locate_by_segments(paths: &[&str]) -> Result<Option<PodContainer>, K8sError> {
    let mut pod_uid: Option<String> = None;
    let mut container_id: Option<&str> = None;
    for path in paths {
        let Some((found_pod, found_container)) = segments_pod_and_container(path) else {
            continue;
        };
        match (&pod_uid, &found_pod) {
            (Some(_), None) => continue,
            (None, Some(_)) => {
                pod_uid.clone_from(&found_pod);
                container_id = Some(found_container);
            }
            _ => {}
        }
        if let (Some(first), Some(second)) = (&pod_uid, &found_pod)
            && first != second
        {
            return Err(K8sError::MultiplePodUids { first: first.clone(), second: second.clone() });
        }
        if let Some(first) = container_id
            && first != found_container
        {
            return Err(K8sError::MultipleContainerIds {
                first: first.to_owned(),
                second: found_container.to_owned(),
            });
        }
        container_id = Some(found_container);
        pod_uid = found_pod;
    }
    Ok(container_id.map(|id| PodContainer { pod_uid, container_id: id.to_owned() }))
}

/// The pieces of a legacy pod-UID pattern: 8-4-4-4-12 hex digits, each group optionally
/// followed by one punctuation character.
const LEGACY_UID: &str = "[[:xdigit:]]{8}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?\
                          [[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{12}";

/// The legacy locator's two patterns (each path must match exactly one): `pod<uid>`, then
/// any punctuation-separated segments, then the container ID at the end; or, for CRI-O
/// without the pod UID in the path, `crio-<id>` at the end of a path naming no pod.
static LEGACY: LazyLock<[Regex; 2]> = LazyLock::new(|| {
    [
        regex(&format!(
            "[[:punct:]]pod(?P<poduid>{LEGACY_UID})[[:punct:]]\
             (?:[[:^punct:]]+[[:punct:]])*(?P<containerid>[[:xdigit:]]{{64}})$"
        )),
        regex(&format!(
            "(?P<poduid>)(?P<mustnotmatch>pod{LEGACY_UID}[[:punct:]])?\
             (?:[[:^punct:]]*/*)*crio[[:punct:]](?P<containerid>[[:xdigit:]]{{64}})$"
        )),
    ]
});

/// The pod UID and container ID of one path under the legacy patterns, `None` when no
/// pattern (or, ambiguously, more than one) matches.
fn legacy_pod_and_container(path: &str) -> Option<(String, String)> {
    let path = path.strip_suffix(".scope").unwrap_or(path);
    let mut found = None;
    for re in LEGACY.iter() {
        let Some(caps) = re.captures(path) else { continue };
        if caps.name("mustnotmatch").is_some_and(|m| !m.as_str().is_empty()) {
            continue;
        }
        if found.is_some() {
            tracing::debug!(cgroup = path, "more than one pattern matches the cgroup path");
            return None;
        }
        let pod = caps.name("poduid").map(|m| canonical_pod_uid(m.as_str())).unwrap_or_default();
        let container = caps.name("containerid").map(|m| m.as_str().to_owned())?;
        found = Some((pod, container));
    }
    found
}

/// A pod UID as Kubernetes writes it: the punctuation a cgroup driver put between the groups
/// becomes `-` (Go's `unicode.IsPunct`, which leaves symbols such as `+` alone).
fn canonical_pod_uid(uid: &str) -> String {
    uid.chars()
        .map(|c| if c.is_ascii_punctuation() && !"$+<=>^`|~".contains(c) { '-' } else { c })
        .collect()
}

/// SPIRE's legacy locator over all paths: the first match decides, and any other path naming
/// another container or pod is an error.
fn locate_legacy(paths: &[&str]) -> Result<Option<PodContainer>, K8sError> {
    let mut found: Option<(String, String)> = None;
    for path in paths {
        let Some((pod, container)) = legacy_pod_and_container(path) else { continue };
        match &found {
            None => found = Some((pod, container)),
            Some((_, first)) if *first != container => {
                return Err(K8sError::LegacyMultipleContainerIds {
                    first: first.clone(),
                    second: container,
                });
            }
            Some((first, _)) if *first != pod => {
                return Err(K8sError::LegacyMultiplePodUids { first: first.clone(), second: pod });
            }
            Some(_) => {}
        }
    }
    Ok(found.map(|(pod, container_id)| PodContainer {
        pod_uid: Some(pod).filter(|p| !p.is_empty()),
        container_id,
    }))
}

#[cfg(test)]
mod tests;
