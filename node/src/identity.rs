//! Reading a Herald identity (`herald://node/<id>`, `herald://edge`,
//! [`herald_proto::identity`]) out of a certificate the TLS layer has
//! already verified against the cluster CA. This module decides nothing
//! about trust: it only names who the CA vouched for, and a certificate
//! naming no identity, or more than one, names none.

use herald_proto::identity::{self, Identity};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity a DER certificate's subject-alternative-name URIs give.
pub fn of_certificate(der: &[u8]) -> Option<Identity> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut found = None;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name
            && uri.starts_with(identity::SCHEME)
        {
            let id = identity::parse(uri)?;
            if found.is_some_and(|f| f != id) {
                return None;
            }
            found = Some(id);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with(uris: &[&str]) -> Vec<u8> {
        let mut p = CertificateParams::new(vec!["herald-node".to_string()]).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI(u.to_string().try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_one_identity() {
        assert_eq!(
            of_certificate(&cert_with(&["herald://node/3"])),
            Some(Identity::Node(3))
        );
        assert_eq!(
            of_certificate(&cert_with(&["https://example.com", "herald://edge"])),
            Some(Identity::Edge)
        );
    }

    #[test]
    fn none_when_absent_ambiguous_or_malformed() {
        assert_eq!(of_certificate(&cert_with(&[])), None);
        assert_eq!(
            of_certificate(&cert_with(&["herald://node/3", "herald://node/4"])),
            None
        );
        assert_eq!(
            of_certificate(&cert_with(&["herald://edge", "herald://node/1"])),
            None
        );
        assert_eq!(of_certificate(&cert_with(&["herald://node/x"])), None);
        assert_eq!(of_certificate(b"not a certificate"), None);
    }
}
