//! `dfctl image pull`: pulls an image into containerd through the swarm, with nothing asked of
//! the registry that the swarm can answer. The daemon resolves the reference and fetches the
//! index, manifest and config through the swarm (a tag from the registry, or — when it is
//! down — from the manager's record of the last preheat); dfctl writes them into containerd's
//! content store, has every layer prepared by our snapshotter through containerd's snapshots
//! API (the daemon fetches the layer through the swarm, mounts it lazily or unpacks it, and
//! commits it), and creates the image. All under a lease, so containerd's garbage collector
//! cannot take anything half-way; the content carries the usual `gc.ref` labels afterwards.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use containerd_client::services::v1 as cd;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::tonic::{self, transport::Channel, Code, Request};
use containerd_client::types::Descriptor;
use dragonfly_proto::dfdaemon::image_client::ImageClient;
use dragonfly_proto::dfdaemon::{OciObject, ResolveImageRequest, ResolveImageResponse};
use dragonfly_registry::{Descriptor as LayerDescriptor, ImageConfig, ImageDocument};
use sha2::{Digest, Sha256};

/// What `dfctl image pull` was asked.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Image reference, [REGISTRY/]REPO[:TAG][@DIGEST].
    pub reference: String,
    /// os/arch[/variant] for multi-platform images (default: this machine's).
    #[arg(long, default_value = "")]
    pub platform: String,
    /// containerd's socket.
    #[arg(
        long,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd: PathBuf,
    /// containerd namespace.
    #[arg(long, short, env = "CONTAINERD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Our snapshotter's name in containerd's proxy_plugins.
    #[arg(long, default_value = "dragonfly")]
    pub snapshotter: String,
    /// Only print the image name.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Chain IDs of `diff_ids`, bottom layer first (the OCI image spec's definition).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// The request with containerd's namespace (and lease) headers.
fn req<T>(msg: T, ns: &str, lease: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    let md = r.metadata_mut();
    md.insert(
        "containerd-namespace",
        ns.parse().expect("namespace is ASCII"),
    );
    if let Some(l) = lease {
        md.insert("containerd-lease", l.parse().expect("lease id is ASCII"));
    }
    r
}

fn status(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {} ({:?})", s.message(), s.code())
}

struct Containerd {
    channel: Channel,
    ns: String,
    lease: String,
}

impl Containerd {
    /// Writes `o` into the content store with `labels` (added to what is there if it exists).
    async fn write(&self, o: &OciObject, labels: HashMap<String, String>) -> anyhow::Result<()> {
        let mut content = cd::content_client::ContentClient::new(self.channel.clone());
        let first = cd::WriteContentRequest {
            action: cd::WriteAction::Commit as i32,
            r#ref: format!("dfctl-{}", o.digest),
            total: o.data.len() as i64,
            expected: o.digest.clone(),
            offset: 0,
            data: o.data.clone(),
            labels: labels.clone(),
        };
        let stream = tokio_stream::once(first);
        let res = content
            .write(req(stream, &self.ns, Some(&self.lease)))
            .await
            .map(|r| r.into_inner());
        let exists = match res {
            Ok(mut responses) => match responses.message().await {
                Ok(_) => false,
                Err(s) if s.code() == Code::AlreadyExists => true,
                Err(s) => {
                    return Err(status(
                        &format!("cannot write {} to containerd", o.digest),
                        s,
                    ))
                }
            },
            Err(s) if s.code() == Code::AlreadyExists => true,
            Err(s) => {
                return Err(status(
                    &format!("cannot write {} to containerd", o.digest),
                    s,
                ))
            }
        };
        if exists && !labels.is_empty() {
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            content
                .update(req(
                    cd::UpdateRequest {
                        info: Some(cd::Info {
                            digest: o.digest.clone(),
                            labels,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask { paths }),
                    },
                    &self.ns,
                    Some(&self.lease),
                ))
                .await
                .map_err(|s| status(&format!("cannot label {} in containerd", o.digest), s))?;
        }
        Ok(())
    }

    /// Has the snapshotter prepare layer `chain` on `parent` (it answers ALREADY_EXISTS once
    /// the layer is committed); skipped if it is there already.
    async fn unpack_layer(
        &self,
        snapshotter: &str,
        chain: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<bool> {
        let mut sn = snap::snapshots_client::SnapshotsClient::new(self.channel.clone());
        let stat = sn
            .stat(req(
                snap::StatSnapshotRequest {
                    snapshotter: snapshotter.to_owned(),
                    key: chain.to_owned(),
                },
                &self.ns,
                None,
            ))
            .await;
        match stat {
            Ok(_) => return Ok(false),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(status(&format!("cannot stat snapshot {chain}"), s)),
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let key = format!("extract-{nanos}-dfctl {chain}");
        let prepared = sn
            .prepare(req(
                snap::PrepareSnapshotRequest {
                    snapshotter: snapshotter.to_owned(),
                    key: key.clone(),
                    parent: parent.to_owned(),
                    labels,
                },
                &self.ns,
                Some(&self.lease),
            ))
            .await;
        match prepared {
            Err(s) if s.code() == Code::AlreadyExists => Ok(true),
            Err(s) => Err(status(
                &format!("the {snapshotter} snapshotter could not prepare layer {chain}"),
                s,
            )),
            Ok(_) => {
                // The snapshotter did not take the layer over (is it ours?): leave nothing behind.
                let _ = sn
                    .remove(req(
                        snap::RemoveSnapshotRequest {
                            snapshotter: snapshotter.to_owned(),
                            key,
                        },
                        &self.ns,
                        Some(&self.lease),
                    ))
                    .await;
                bail!("snapshotter {snapshotter:?} did not fetch layer {chain} itself; is it Dragonfly-rs's snapshotter (--snapshotter)?")
            }
        }
    }

    async fn create_image(&self, name: &str, target: Descriptor) -> anyhow::Result<()> {
        let mut images = cd::images_client::ImagesClient::new(self.channel.clone());
        let image = cd::Image {
            name: name.to_owned(),
            target: Some(target),
            ..Default::default()
        };
        let created = images
            .create(req(
                cd::CreateImageRequest {
                    image: Some(image.clone()),
                    ..Default::default()
                },
                &self.ns,
                Some(&self.lease),
            ))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                images
                    .update(req(
                        cd::UpdateImageRequest {
                            image: Some(image),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["target".into()],
                            }),
                            ..Default::default()
                        },
                        &self.ns,
                        Some(&self.lease),
                    ))
                    .await
                    .map_err(|s| status(&format!("cannot update image {name}"), s))?;
                Ok(())
            }
            Err(s) => Err(status(&format!("cannot create image {name}"), s)),
        }
    }
}

fn descriptor(o: &OciObject) -> Descriptor {
    Descriptor {
        media_type: o.media_type.clone(),
        digest: o.digest.clone(),
        size: o.data.len() as i64,
        ..Default::default()
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// What the daemon resolved, checked: the manifest's layers and their chain IDs.
struct Resolved {
    answer: ResolveImageResponse,
    manifest: OciObject,
    config: OciObject,
    layers: ImageDocument,
    chains: Vec<String>,
}

/// Asks the daemon for the image's index, manifest and config (through the swarm).
async fn resolve(daemon: Channel, a: &PullArgs) -> anyhow::Result<Resolved> {
    let answer = ImageClient::new(daemon)
        .resolve_image(ResolveImageRequest {
            reference: a.reference.clone(),
            platform: a.platform.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("cannot resolve {}", a.reference))?
        .into_inner();
    let (Some(manifest), Some(config)) = (answer.manifest.clone(), answer.config.clone()) else {
        bail!(
            "the daemon answered without a manifest or config for {}",
            a.reference
        );
    };
    let layers = ImageDocument::parse(&manifest.data)
        .with_context(|| format!("the manifest of {} is not valid", a.reference))?;
    let cfg: ImageConfig = serde_json::from_slice(&config.data)
        .with_context(|| format!("the config of {} is not valid", a.reference))?;
    if cfg.rootfs.diff_ids.len() != layers.layers.len() {
        bail!(
            "{} has {} layers but its config lists {} diff IDs",
            a.reference,
            layers.layers.len(),
            cfg.rootfs.diff_ids.len()
        );
    }
    let chains = chain_ids(&cfg.rootfs.diff_ids);
    Ok(Resolved {
        answer,
        manifest,
        config,
        layers,
        chains,
    })
}

/// A lease on containerd that expires by itself if dfctl dies half-way.
async fn lease(channel: &Channel, a: &PullArgs) -> anyhow::Result<String> {
    let id = format!("dfctl-pull-{}", std::process::id());
    let expire = chrono::Utc::now() + chrono::Duration::hours(1);
    cd::leases_client::LeasesClient::new(channel.clone())
        .create(req(
            cd::CreateRequest {
                id: id.clone(),
                labels: HashMap::from([(
                    "containerd.io/gc.expire".to_owned(),
                    expire.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                )]),
            },
            &a.namespace,
            None,
        ))
        .await
        .map_err(|s| status("cannot create a containerd lease", s))?;
    Ok(id)
}

/// Config, manifest and index (if any) into the content store, with the GC references that
/// keep config, layers and snapshots alive; the image's target descriptor.
async fn write_documents(
    c: &Containerd,
    r: &Resolved,
    snapshotter: &str,
) -> anyhow::Result<Descriptor> {
    let mut config_labels = HashMap::new();
    if let Some(top) = r.chains.last() {
        config_labels.insert(
            format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
            top.clone(),
        );
    }
    c.write(&r.config, config_labels).await?;
    let mut manifest_labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_owned(),
        r.config.digest.clone(),
    )]);
    for (i, l) in r.layers.layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    c.write(&r.manifest, manifest_labels).await?;
    let Some(index) = &r.answer.index else {
        return Ok(descriptor(&r.manifest));
    };
    let labels = HashMap::from([(
        "containerd.io/gc.ref.content.m.0".to_owned(),
        r.manifest.digest.clone(),
    )]);
    c.write(index, labels).await?;
    Ok(descriptor(index))
}

/// The labels `ctr-remote` sends for a layer, plus its size, so our snapshotter fetches it
/// through the swarm.
fn layer_labels(l: &LayerDescriptor, chain: &str, image: &str) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        ("containerd.io/snapshot.ref".to_owned(), chain.to_owned()),
        (
            "containerd.io/snapshot/remote/stargz.reference".to_owned(),
            image.to_owned(),
        ),
        (
            "containerd.io/snapshot/remote/stargz.digest".to_owned(),
            l.digest.clone(),
        ),
        (
            "containerd.io/snapshot/dragonfly.blob-size".to_owned(),
            l.size.to_string(),
        ),
        // The daemon's own error when it cannot take the layer (a refused entry, say), not
        // an empty snapshot for containerd to unpack into.
        (
            "containerd.io/snapshot/dragonfly.no-fallback".to_owned(),
            "true".to_owned(),
        ),
    ]);
    if let Some(toc) = l
        .annotations
        .get("containerd.io/snapshot/stargz/toc.digest")
    {
        labels.insert(
            "containerd.io/snapshot/stargz/toc.digest".to_owned(),
            toc.clone(),
        );
    }
    labels
}

/// Every layer prepared by the snapshotter, bottom up.
async fn unpack_layers(c: &Containerd, r: &Resolved, a: &PullArgs) -> anyhow::Result<()> {
    let total = r.layers.layers.len();
    let mut parent = String::new();
    for (i, (l, chain)) in r.layers.layers.iter().zip(&r.chains).enumerate() {
        let t = Instant::now();
        let labels = layer_labels(l, chain, &r.answer.name);
        let fetched = c
            .unpack_layer(&a.snapshotter, chain, &parent, labels)
            .await
            .with_context(|| format!("layer {} ({})", i + 1, l.digest))?;
        if !a.quiet {
            let took = if fetched {
                format!("ready in {:.1}s", t.elapsed().as_secs_f64())
            } else {
                "already present".to_owned()
            };
            eprintln!(
                "layer {}/{total} {} {:>10} {took}",
                i + 1,
                short(&l.digest),
                indicatif::HumanBytes(l.size).to_string(),
            );
        }
        parent = chain.clone();
    }
    Ok(())
}

/// Runs `dfctl image pull`: resolve through the daemon, then, under a lease, write the
/// documents into containerd, have the snapshotter prepare every layer, create the image.
pub async fn pull(daemon: Channel, a: PullArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let r = resolve(daemon, &a).await?;
    if !a.quiet {
        eprintln!(
            "{}: manifest {} ({} layers), tag resolved by {}",
            r.answer.name,
            short(&r.manifest.digest),
            r.layers.layers.len(),
            r.answer.resolved_by
        );
    }
    let channel = containerd_client::connect(&a.containerd)
        .await
        .with_context(|| {
            format!(
                "cannot connect to containerd at {} (--containerd)",
                a.containerd.display()
            )
        })?;
    let lease_id = lease(&channel, &a).await?;
    let c = Containerd {
        channel: channel.clone(),
        ns: a.namespace.clone(),
        lease: lease_id.clone(),
    };
    let result = async {
        let target = write_documents(&c, &r, &a.snapshotter).await?;
        unpack_layers(&c, &r, &a).await?;
        c.create_image(&r.answer.name, target).await
    }
    .await;
    let _ = cd::leases_client::LeasesClient::new(channel)
        .delete(req(
            cd::DeleteRequest {
                id: lease_id,
                sync: false,
            },
            &a.namespace,
            None,
        ))
        .await;
    result?;
    if !a.quiet {
        eprintln!(
            "{} pulled in {:.1}s",
            r.answer.name,
            started.elapsed().as_secs_f64()
        );
    }
    println!("{}", r.answer.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = "sha256:aaaa".to_owned();
        let b = "sha256:bbbb".to_owned();
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(
            chains[1],
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb"))
            )
        );
        assert!(chain_ids(&[]).is_empty());
    }
}
