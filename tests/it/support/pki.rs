//! A test certificate authority and leaf certificates written as PEM files, so the proxy loads
//! real files and the clients verify real chains.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "matrix-edge test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// Issues a certificate for `names` and writes `<stem>.pem` (chain) and `<stem>.key`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> LeafFiles {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let files = LeafFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).unwrap();
    }

    /// A PEM bundle as the ACME cache stores it (PKCS#8 key, then the certificate), valid from
    /// `not_before` to `not_after`.
    pub fn bundle(
        &self,
        names: &[&str],
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> (Vec<u8>, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        (pem.into_bytes(), cert.der().clone())
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert.der().to_vec()))
            .unwrap();
        Arc::new(roots)
    }
}
