//! A kubelet-like test bed: containerd with its CRI plugin (snapshotter `dragonfly`, the
//! sandbox image a static pause binary this module builds and pushes), driven over its socket
//! with the CRI v1 API as kubelet drives it — PullImage, RunPodSandbox (host network),
//! CreateContainer, StartContainer, ExecSync, Stop/Remove, ImageFsInfo.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::Containerd;
use crate::oci::{build_image, push, Entry};
use crate::procs::run;

/// containerd's namespace for CRI objects.
pub const NAMESPACE: &str = "k8s.io";

const PAUSE_C: &str = r#"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"#;

/// Builds the sandbox image (a static pause binary, compiled here) into `dir` and pushes it
/// to `registry` as `pause:3.6`; its reference.
pub fn push_pause(dir: &Path, registry: &str) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    let src = dir.join("pause.c");
    std::fs::write(&src, PAUSE_C)?;
    let bin = dir.join("pause");
    run(Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(&src))
    .context("cannot build the pause binary (gcc -static)")?;
    let img = build_image(
        &dir.join("pause-oci"),
        &[vec![Entry::file("pause", std::fs::read(&bin)?, 0o755)]],
        &["/pause"],
    )?;
    let reference = format!("{registry}/pause:3.6");
    push(&img, &reference)?;
    Ok(reference)
}

/// The CRI plugin's configuration: sandbox image `pause`, `snapshotter`, runc state under
/// `dir`, host-network pods only (no CNI config), and `disable_snapshot_annotations` left at
/// containerd's default (true) unless `annotations` says otherwise.
pub fn config(dir: &Path, pause: &str, snapshotter: &str, annotations: Option<bool>) -> String {
    let annotations = match annotations {
        None => String::new(),
        Some(on) => format!("    disable_snapshot_annotations = {}\n", !on),
    };
    format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This machine lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj must not go below ours.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
{annotations}    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
        runc = dir.join("runc").display(),
        cni = dir.join("cni").display(),
        certs = dir.join("certs.d").display(),
    )
}

/// containerd with the CRI plugin, and CRI clients for it.
pub struct CriNode {
    /// Blocking calls run here.
    rt: tokio::runtime::Runtime,
    images: ImageServiceClient<Channel>,
    runtime: RuntimeServiceClient<Channel>,
    /// Where pods' logs go.
    logs: PathBuf,
    /// containerd (dropped last).
    pub containerd: Containerd,
}

/// A pod started by [`CriNode::run_pod`].
pub struct Pod {
    /// Its sandbox ID.
    pub id: String,
    config: cri::PodSandboxConfig,
}

impl CriNode {
    /// Starts containerd in `dir` with the CRI plugin (see [`config`]) and our daemon at
    /// `dragonfly_socket` as the `dragonfly` snapshotter.
    pub fn start(
        dir: &Path,
        dragonfly_socket: &Path,
        pause: &str,
        annotations: Option<bool>,
    ) -> Result<CriNode> {
        CriNode::start_with(dir, dragonfly_socket, pause, "dragonfly", annotations)
    }

    /// Like [`CriNode::start`] with the CRI's snapshotter `snapshotter` (`overlayfs`: the
    /// baseline).
    pub fn start_with(
        dir: &Path,
        dragonfly_socket: &Path,
        pause: &str,
        snapshotter: &str,
        annotations: Option<bool>,
    ) -> Result<CriNode> {
        let cri = config(dir, pause, snapshotter, annotations);
        let containerd = Containerd::start_with(dir, dragonfly_socket, Some(&cri))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = containerd.socket.clone();
        let channel = rt.block_on(async {
            Endpoint::try_from("http://[::]")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }))
                .await
        })?;
        let logs = dir.join("pod-logs");
        std::fs::create_dir_all(&logs)?;
        Ok(CriNode {
            rt,
            images: ImageServiceClient::new(channel.clone()),
            runtime: RuntimeServiceClient::new(channel),
            logs,
            containerd,
        })
    }

    /// PullImage: the image's ID.
    pub fn pull(&mut self, image: &str) -> Result<String> {
        let req = cri::PullImageRequest {
            image: Some(image_spec(image)),
            ..Default::default()
        };
        let images = &mut self.images;
        let r = self
            .rt
            .block_on(images.pull_image(req))
            .with_context(|| format!("PullImage {image}"))?;
        Ok(r.into_inner().image_ref)
    }

    /// RemoveImage.
    pub fn remove_image(&mut self, image: &str) -> Result<()> {
        let req = cri::RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        let images = &mut self.images;
        self.rt
            .block_on(images.remove_image(req))
            .with_context(|| format!("RemoveImage {image}"))?;
        Ok(())
    }

    /// Whether ImageStatus knows `image`.
    pub fn has_image(&mut self, image: &str) -> Result<bool> {
        let images = &mut self.images;
        let r = self
            .rt
            .block_on(images.image_status(cri::ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            }))
            .with_context(|| format!("ImageStatus {image}"))?;
        Ok(r.into_inner().image.is_some())
    }

    /// What container `name` of `pod` wrote (its CRI log file, one line per write).
    pub fn log_of(&self, pod: &Pod, name: &str) -> String {
        let dir = &pod.config.log_directory;
        std::fs::read_to_string(Path::new(dir).join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The mountpoint ImageFsInfo reports for images.
    pub fn image_fs(&mut self) -> Result<String> {
        let images = &mut self.images;
        let r = self
            .rt
            .block_on(images.image_fs_info(cri::ImageFsInfoRequest {}))
            .context("ImageFsInfo")?
            .into_inner();
        Ok(r.image_filesystems
            .first()
            .and_then(|f| f.fs_id.as_ref())
            .map(|f| f.mountpoint.clone())
            .unwrap_or_default())
    }

    /// RunPodSandbox of a host-network pod `name`.
    pub fn run_pod(&mut self, name: &str) -> Result<Pod> {
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: self.logs.join(name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let runtime = &mut self.runtime;
        let r = self
            .rt
            .block_on(runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .with_context(|| format!("RunPodSandbox {name}"))?;
        Ok(Pod {
            id: r.into_inner().pod_sandbox_id,
            config,
        })
    }

    /// CreateContainer + StartContainer of `image` running `cmd` in `pod`; its ID.
    pub fn start_container(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        cmd: &[&str],
    ) -> Result<String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(image_spec(image)),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        };
        let runtime = &mut self.runtime;
        let created = self
            .rt
            .block_on(runtime.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }))
            .with_context(|| format!("CreateContainer {name}"))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(runtime.start_container(cri::StartContainerRequest {
                container_id: created.clone(),
            }))
            .with_context(|| format!("StartContainer {name}"))?;
        Ok(created)
    }

    /// Waits until container `id` has exited (polling ContainerStatus every 10 ms, at most
    /// `limit`); its exit code.
    pub fn wait_exited(&mut self, id: &str, limit: std::time::Duration) -> Result<i32> {
        let deadline = std::time::Instant::now() + limit;
        let runtime = &mut self.runtime;
        loop {
            let st = self
                .rt
                .block_on(runtime.container_status(cri::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                }))
                .context("ContainerStatus")?
                .into_inner()
                .status
                .context("ContainerStatus without a status")?;
            if st.state == cri::ContainerState::ContainerExited as i32 {
                return Ok(st.exit_code);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "container {id} still running after {limit:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// ExecSync `cmd` in container `id`: exit code and stdout (stderr appended).
    pub fn exec(&mut self, id: &str, cmd: &[&str]) -> Result<(i32, String)> {
        let runtime = &mut self.runtime;
        let r = self
            .rt
            .block_on(runtime.exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 120,
            }))
            .with_context(|| format!("ExecSync {cmd:?}"))?
            .into_inner();
        let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
        out.push_str(&String::from_utf8_lossy(&r.stderr));
        Ok((r.exit_code, out))
    }

    /// StopPodSandbox + RemovePodSandbox (its containers go with it).
    pub fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        let runtime = &mut self.runtime;
        self.rt
            .block_on(runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }))
            .context("StopPodSandbox")?;
        self.rt
            .block_on(runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }))
            .context("RemovePodSandbox")?;
        Ok(())
    }
}

fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}
