//! The container a process runs in, read from its cgroup: what node mode labels each target
//! with (`container_id`, `pod_uid`) and what `--container` selects by.

/// The container a process runs in, from its cgroup path (cgroup v2 `0::/…`, or the v1
/// lines): the container runtime's 64-hex-digit id in the last component that has one
/// (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
/// or a bare `<id>` under cgroupfs), and the Kubernetes pod UID when a component names one
/// (`kubepods-…-pod<uid>.slice`, `pod<uid>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub pod_uid: Option<String>,
    /// The cgroup path it was read from.
    pub cgroup: String,
}

/// Parses `/proc/PID/cgroup` text; `None` outside a container.
pub fn container_from_cgroup(text: &str) -> Option<Container> {
    // The unified hierarchy first, then every v1 line: on hybrid hosts the runtime may manage
    // only the v1 controllers, and a v1 host's first line may be a controller it leaves alone.
    let mut paths: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("0::")).collect();
    paths.extend(text.lines().filter(|l| !l.starts_with("0::")).filter_map(|l| l.splitn(3, ':').nth(2)));
    paths.into_iter().find_map(|p| container_in(p.trim()))
}

fn container_in(path: &str) -> Option<Container> {
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let id = path.split('/').rev().find_map(|component| {
        let c = component.strip_suffix(".scope").unwrap_or(component);
        let c = ["docker-", "cri-containerd-", "crio-", "libpod-", "containerd-"]
            .iter()
            .find_map(|p| c.strip_prefix(p))
            .unwrap_or(c);
        is_id(c).then(|| c.to_owned())
    })?;
    let pod_uid = path.split('/').find_map(|component| {
        let c = component.strip_suffix(".slice").unwrap_or(component);
        let uid = c.rsplit_once("-pod").map(|(_, u)| u).or_else(|| c.strip_prefix("pod"))?;
        let uid = uid.replace('_', "-");
        (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
    });
    Some(Container { id, pod_uid, cgroup: path.to_owned() })
}

/// The container process `pid` runs in, if any.
pub fn container_of(pid: u32) -> Option<Container> {
    container_from_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_from_cgroup_paths() {
        let id = "4f1e2d3c4b5a69788796a5b4c3d2e1f04f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let k8s = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c8e5f7a_1b2c_4d3e_8f9a_0b1c2d3e4f5a.slice/cri-containerd-{id}.scope\n"
        );
        let c = container_from_cgroup(&k8s).expect("container");
        assert_eq!(c.id, id);
        assert_eq!(c.pod_uid.as_deref(), Some("0c8e5f7a-1b2c-4d3e-8f9a-0b1c2d3e4f5a"));
        let docker = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(container_from_cgroup(&docker).map(|c| (c.id, c.pod_uid)), Some((id.to_owned(), None)));
        let cgroupfs = format!("12:memory:/kubepods/besteffort/pod0c8e5f7a-1b2c-4d3e-8f9a-0b1c2d3e4f5a/{id}\n");
        let c = container_from_cgroup(&cgroupfs).expect("cgroupfs");
        assert_eq!((c.id.as_str(), c.pod_uid.as_deref()), (id, Some("0c8e5f7a-1b2c-4d3e-8f9a-0b1c2d3e4f5a")));
        assert_eq!(container_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        // Hybrid: the unified line says nothing, a v1 line names the container.
        let hybrid = format!("12:rdma:/\n4:memory:/docker/{id}\n0::/\n");
        assert_eq!(container_from_cgroup(&hybrid).map(|c| c.id), Some(id.to_owned()));
    }
}
