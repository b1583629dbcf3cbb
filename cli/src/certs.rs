//! `herald certs`: a throwaway cluster CA and node certificates for the QUIC
//! delivery plane, for development and tests. Production clusters bring
//! their own CA (cert-manager, Vault, ...); the only requirement is that a
//! node certificate carries the DNS name `herald-node`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The DNS name nodes verify each other by.
pub(crate) const NODE_NAME: &str = "herald-node";

#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    /// Directory to write `ca.pem`, `ca-key.pem`, `node.pem`, `node-key.pem`.
    #[arg(long)]
    out: PathBuf,
}

/// Paths of a generated set.
pub(crate) struct CertSet {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

pub(crate) fn run(args: CertsArgs) -> anyhow::Result<()> {
    let set = generate(&args.out)?;
    println!("ca {}", set.ca.display());
    println!("cert {}", set.cert.display());
    println!("key {}", set.key.display());
    Ok(())
}

/// Write a fresh CA and one node certificate (valid for every node) to `dir`.
pub(crate) fn generate(dir: &Path) -> anyhow::Result<CertSet> {
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

    let mut node_params =
        CertificateParams::new(vec![NODE_NAME.to_string(), "localhost".to_string()])?;
    node_params
        .distinguished_name
        .push(DnType::CommonName, NODE_NAME);
    let node_key = KeyPair::generate()?;
    let node_cert = node_params.signed_by(&node_key, &issuer)?;

    let set = CertSet {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node-key.pem"),
    };
    write(&set.ca, &ca_cert.pem())?;
    write_key(&dir.join("ca-key.pem"), &issuer.key().serialize_pem())?;
    write(&set.cert, &node_cert.pem())?;
    write_key(&set.key, &node_key.serialize_pem())?;
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
        let set = generate(dir.path()).unwrap();
        for p in [&set.ca, &set.cert, &set.key] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.starts_with("-----BEGIN"), "{}", p.display());
        }
    }

    #[test]
    fn private_keys_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        // An older, world-readable key is tightened when replaced.
        let old = dir.path().join("node-key.pem");
        std::fs::write(&old, "old").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let set = generate(dir.path()).unwrap();
        for key in [set.key, dir.path().join("ca-key.pem")] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
    }
}
