//! `herald certs`: a throwaway cluster CA and one certificate per identity
//! (`docs/security.md`), for development and tests. Production clusters
//! bring their own CA (cert-manager, Vault, ...); the requirements are that
//! a node certificate carries the DNS name `herald-node` and the URI
//! `herald://node/<id>` of that one node, and an edge certificate the URI
//! `herald://edge`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use herald_proto::identity;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The DNS name nodes verify each other by.
pub(crate) const NODE_NAME: &str = "herald-node";

#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    /// Directory to write `ca.pem`, `ca-key.pem`, `node-<id>.pem`,
    /// `node-<id>-key.pem` for every node id, `edge.pem`, `edge-key.pem`.
    #[arg(long)]
    out: PathBuf,
    /// Write node certificates for ids 1 to this.
    #[arg(long, default_value_t = 16)]
    nodes: u64,
}

/// Paths of a generated set.
pub(crate) struct CertSet {
    pub(crate) ca: PathBuf,
    dir: PathBuf,
}

impl CertSet {
    /// The set already in `dir`.
    pub(crate) fn existing(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            dir: dir.to_path_buf(),
        }
    }

    /// Node `id`'s certificate and key.
    pub(crate) fn node(&self, id: u64) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("node-{id}.pem")),
            self.dir.join(format!("node-{id}-key.pem")),
        )
    }

    /// The edge certificate and key.
    pub(crate) fn edge(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("edge.pem"), self.dir.join("edge-key.pem"))
    }
}

pub(crate) fn run(args: CertsArgs) -> anyhow::Result<()> {
    let set = generate(&args.out, 1..=args.nodes)?;
    println!("ca {}", set.ca.display());
    for id in 1..=args.nodes {
        println!("node {id} {}", set.node(id).0.display());
    }
    println!("edge {}", set.edge().0.display());
    Ok(())
}

/// Write a fresh CA, a certificate for each node in `nodes` and one for
/// edges to `dir`.
pub(crate) fn generate(
    dir: &Path,
    nodes: impl IntoIterator<Item = u64>,
) -> anyhow::Result<CertSet> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Herald cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let set = CertSet::existing(dir);
    write(&set.ca, &ca_cert.pem())?;
    write_key(&dir.join("ca-key.pem"), &issuer.key().serialize_pem())?;

    let issue = |dns: Vec<String>, cn: &str, uri: String, (cert, key): (PathBuf, PathBuf)| {
        let mut params = CertificateParams::new(dns)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        let pair = KeyPair::generate()?;
        let signed = params.signed_by(&pair, &issuer)?;
        write(&cert, &signed.pem())?;
        write_key(&key, &pair.serialize_pem())
    };
    for id in nodes {
        issue(
            vec![NODE_NAME.to_string(), "localhost".to_string()],
            &format!("{NODE_NAME}-{id}"),
            identity::node_uri(id),
            set.node(id),
        )?;
    }
    issue(
        Vec::new(),
        "herald-edge",
        identity::EDGE_URI.to_string(),
        set.edge(),
    )?;
    Ok(set)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A private key is readable by its owner only (0600), whatever the umask,
/// also when it replaces an older file.
fn write_key(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let context = || format!("writing {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(context)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(context)?;
    file.write_all(text.as_bytes()).with_context(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let set = generate(dir.path(), 1..=2).unwrap();
        let (n2, k2) = set.node(2);
        let (e, ek) = set.edge();
        for p in [&set.ca, &n2, &k2, &e, &ek] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.starts_with("-----BEGIN"), "{}", p.display());
        }
        assert!(!set.node(3).0.exists());
    }

    #[test]
    fn private_keys_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        // An older, world-readable key is tightened when replaced.
        let old = dir.path().join("node-1-key.pem");
        std::fs::write(&old, "old").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let set = generate(dir.path(), 1..=2).unwrap();
        for key in [set.node(1).1, set.edge().1, dir.path().join("ca-key.pem")] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
    }
}
