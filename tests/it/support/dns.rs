//! A DNS server inside the test process (hickory-server), authoritative for `test.`, so that
//! Pebble (and later the federation checker) resolve the test names without touching the
//! machine's resolver or `/etc/hosts`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

pub struct TestDns {
    pub addr: SocketAddr,
    _server: Server<Catalog>,
}

/// The records of the `test.` zone.
#[derive(Default)]
pub struct Zone {
    records: Vec<Record>,
}

fn name(n: &str) -> Name {
    let full = if n.ends_with('.') {
        n.to_owned()
    } else {
        format!("{n}.")
    };
    Name::from_ascii(full).unwrap()
}

impl Zone {
    pub fn addr(mut self, host: &str, ip: IpAddr) -> Self {
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        self.records.push(Record::from_rdata(name(host), 60, rdata));
        self
    }

    pub async fn serve(self) -> TestDns {
        let origin = name("test");
        let mut zone: InMemoryZoneHandler<TokioRuntimeProvider> =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(name("ns.test"), name("admin.test"), 1, 3600, 600, 86400, 60);
        zone.upsert_mut(Record::from_rdata(origin.clone(), 3600, RData::SOA(soa)), 1);
        for record in self.records {
            zone.upsert_mut(record, 1);
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::from(origin), vec![Arc::new(zone)]);
        let mut server = Server::new(catalog);
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        TestDns {
            addr,
            _server: server,
        }
    }
}
