//! Cgroup files in the shapes the kubelet and each container runtime write them.

use super::*;

const UID: &str = "7d0e0a3c-5b1f-4e2a-9c44-2f1b8e6d9a10";
const UID_UNDERSCORES: &str = "7d0e0a3c_5b1f_4e2a_9c44_2f1b8e6d9a10";
const CID: &str = "4f1c2d3e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
const OTHER_CID: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const NODE_CID: &str = "e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4";

/// A cgroup v1 file: the same path under every hierarchy, as a container's processes have.
fn v1(path: &str) -> String {
    let controllers = [
        "hugetlb",
        "devices",
        "pids",
        "perf_event",
        "net_cls,net_prio",
        "cpuset",
        "memory",
        "cpu,cpuacct",
        "freezer",
        "blkio",
        "name=systemd",
    ];
    controllers
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}:{c}:{path}\n", controllers.len() - i))
        .collect()
}

fn found(pod: Option<&str>, container: &str) -> Option<PodContainer> {
    Some(PodContainer { pod_uid: pod.map(str::to_owned), container_id: container.to_owned() })
}

fn both(text: &str) -> [Option<PodContainer>; 2] {
    [CgroupLocator::Segments.locate(text).unwrap(), CgroupLocator::Legacy.locate(text).unwrap()]
}

#[test]
fn docker_with_the_cgroupfs_driver_on_cgroup_v1() {
    let text = v1(&format!("/kubepods/burstable/pod{UID}/{CID}"));
    assert_eq!(both(&text), [found(Some(UID), CID), found(Some(UID), CID)]);
}

#[test]
fn docker_with_the_systemd_driver_on_cgroup_v1() {
    let text = v1(&format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/docker-{CID}.scope"
    ));
    assert_eq!(both(&text), [found(Some(UID), CID), found(Some(UID), CID)]);
}

#[test]
fn cri_o_with_the_systemd_driver_turns_underscores_back_into_dashes() {
    let path = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_UNDERSCORES}.slice/crio-{CID}.scope"
    );
    let text = format!("{}3:rdma:/\n0::/system.slice/crio.service\n", v1(&path));
    assert_eq!(both(&text), [found(Some(UID), CID), found(Some(UID), CID)]);
}

#[test]
fn containerd_on_cgroup_v2_with_the_systemd_driver() {
    let scope = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_UNDERSCORES}.slice/cri-containerd-{CID}.scope\n"
    );
    assert_eq!(both(&scope), [found(Some(UID), CID), found(Some(UID), CID)]);
    // Some containerd versions join pod slice and container with colons in one segment.
    let colons =
        format!("0::/kubepods-besteffort-pod{UID_UNDERSCORES}.slice:cri-containerd:{CID}\n");
    assert_eq!(both(&colons), [found(Some(UID), CID), found(Some(UID), CID)]);
}

#[test]
fn cgroup_namespaces_show_paths_relative_to_the_agent_pod() {
    let other_pod = format!("0::/../pod{UID}/{CID}\n");
    assert_eq!(both(&other_pod), [found(Some(UID), CID), found(Some(UID), CID)]);
    // CRI-O under a cgroup namespace (e.g. with KubeEdge) leaves the pod UID out: the
    // container is then looked up in every pod.
    let crio = format!("0::/../crio-{CID}.scope");
    assert_eq!(both(&crio), [found(None, CID), found(None, CID)]);
}

#[test]
fn a_kind_node_lists_its_own_docker_container_beside_the_pod() {
    let pod_path = format!("/docker/{NODE_CID}/kubepods/besteffort/pod{UID}/{CID}");
    let text = format!("{}0::/docker/{NODE_CID}/system.slice/containerd.service\n", v1(&pod_path));
    assert_eq!(both(&text), [found(Some(UID), CID), found(Some(UID), CID)]);
    // The path with the pod wins whichever comes first.
    let reversed =
        format!("0::/docker/{NODE_CID}/system.slice/containerd.service\n{}", v1(&pod_path));
    assert_eq!(CgroupLocator::Segments.locate(&reversed).unwrap(), found(Some(UID), CID));
}

#[test]
fn a_process_outside_any_container_has_no_pod_or_container() {
    let text = "11:hugetlb:/\n10:devices:/user.slice\n9:pids:/user.slice/user-1000.slice\n\
                1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n";
    assert_eq!(both(text), [None, None]);
    assert_eq!(both("0::/init.scope\n"), [None, None]);
    assert_eq!(both(""), [None, None]);
}

#[test]
fn a_plain_docker_container_has_a_container_but_no_pod() {
    let text = format!("0::/system.slice/docker-{CID}.scope\n");
    assert_eq!(CgroupLocator::Segments.locate(&text).unwrap(), found(None, CID));
    // The legacy patterns know pods and CRI-O only.
    assert_eq!(CgroupLocator::Legacy.locate(&text).unwrap(), None);
}

#[test]
fn paths_naming_two_containers_or_two_pods_are_refused() {
    let other_uid = "11111111-2222-3333-4444-555555555555";
    let two_pods =
        format!("2:cpu:/kubepods/pod{UID}/{CID}\n1:memory:/kubepods/pod{other_uid}/{CID}\n");
    assert_eq!(
        CgroupLocator::Segments.locate(&two_pods).unwrap_err().to_string(),
        format!("multiple pod UIDs found (\"{UID}\", \"{other_uid}\")")
    );
    assert_eq!(
        CgroupLocator::Legacy.locate(&two_pods).unwrap_err().to_string(),
        format!("multiple pod UIDs found in cgroups ({UID}, {other_uid})")
    );
    let two_containers =
        format!("2:cpu:/kubepods/pod{UID}/{CID}\n1:memory:/kubepods/pod{UID}/{OTHER_CID}\n");
    assert_eq!(
        CgroupLocator::Segments.locate(&two_containers).unwrap_err().to_string(),
        format!("multiple container IDs found (\"{CID}\", \"{OTHER_CID}\")")
    );
    assert_eq!(
        CgroupLocator::Legacy.locate(&two_containers).unwrap_err().to_string(),
        format!("multiple container IDs found in cgroups ({CID}, {OTHER_CID})")
    );
}

#[test]
fn a_line_without_three_fields_is_refused() {
    let err = CgroupLocator::Segments.locate("0::/\nbroken line\n").unwrap_err();
    assert!(matches!(err, K8sError::Cgroups { .. }));
    assert_eq!(
        err.to_string(),
        "unable to obtain cgroups: invalid cgroup entry, contains 1 colon separated fields \
         but expected at least 3: \"broken line\""
    );
}

#[test]
fn hex_runs_that_are_not_whole_words_are_not_container_ids() {
    // 65 hex digits: no word boundary after the 64th.
    let text = format!("0::/kubepods/pod{UID}/{CID}a\n");
    assert_eq!(CgroupLocator::Segments.locate(&text).unwrap(), None);
}

#[test]
fn the_segment_walk_stops_at_an_empty_segment_as_spire_does() {
    assert_eq!(split_last_segment("/a/b/c"), ("/a/b", "c"));
    assert_eq!(split_last_segment("c"), ("", "c"));
    assert_eq!(split_last_segment("/a//"), ("/a/", ""));
    // The pod UID is behind an empty segment, so only the container is found.
    let text = format!("0::/pod{UID}//{CID}\n");
    assert_eq!(CgroupLocator::Segments.locate(&text).unwrap(), found(None, CID));
}

#[test]
fn legacy_uids_have_any_punctuation_turned_into_dashes() {
    assert_eq!(canonical_pod_uid("7d0e0a3c_5b1f.4e2a-9c44_2f1b8e6d9a10"), UID);
    assert_eq!(canonical_pod_uid("7d0e0a3c+5b1f"), "7d0e0a3c+5b1f");
}

#[test]
fn legacy_patterns_take_a_pod_uid_and_a_container_id_or_nothing() {
    let cases: Vec<(String, Option<(&str, &str)>)> = vec![
        (format!("/kubepods/pod{UID}/{CID}"), Some((UID, CID))),
        (format!("/kubepods/kubepods/besteffort/pod{UID}/{CID}"), Some((UID, CID))),
        (format!("/../../../burstable/pod{UID}/{CID}"), Some((UID, CID))),
        (format!("/something/pod{UID}/{CID}"), Some((UID, CID))),
        (format!("/pod{UID}/{CID}"), Some((UID, CID))),
        (
            format!("/kubepods-besteffort-pod{UID_UNDERSCORES}.slice:cri-containerd:{CID}"),
            Some((UID, CID)),
        ),
        (
            format!(
                "/kubepods.slice/kubepods-besteffort-pod{UID_UNDERSCORES}.slice/crio-{CID}.scope"
            ),
            Some((UID, CID)),
        ),
        (format!("/../crio-{CID}.scope"), Some(("", CID))),
        // A container with no pod, a pod with no container, a UID without dashes.
        (format!("/{CID}"), None),
        (format!("/kubepods/{CID}"), None),
        (format!("/kubepods/pod{UID}"), None),
        ("/kubepods/pod7d0e0a3c5b1f4e2a9c442f1b8e6d9a10".to_owned(), None),
    ];
    for (path, want) in cases {
        let got = legacy_pod_and_container(&path);
        let want = want.map(|(p, c)| (p.to_owned(), c.to_owned()));
        assert_eq!(got, want, "{path}");
    }
}
