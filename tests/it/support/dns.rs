//! A DNS server inside the test process (hickory-server), authoritative for `test.`, so that
//! Pebble and the federation checker resolve the test names without touching the machine's
//! resolver or `/etc/hosts`.
//!
//! Besides records, a name can be made to fail: [`Zone::servfail`] answers every query for it
//! with SERVFAIL, the "broken but present" case of an SRV name.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};

pub struct TestDns {
    pub addr: SocketAddr,
    _server: Server<Handler>,
}

/// The records of the `test.` zone.
#[derive(Default)]
pub struct Zone {
    records: Vec<Record>,
    servfail: Vec<LowerName>,
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

    /// `name SRV priority weight port target`; a target of `.` is RFC 2782's "not here".
    pub fn srv(mut self, owner: &str, priority: u16, weight: u16, port: u16, target: &str) -> Self {
        let target = if target == "." {
            Name::root()
        } else {
            name(target)
        };
        self.records.push(Record::from_rdata(
            name(owner),
            60,
            RData::SRV(SRV::new(priority, weight, port, target)),
        ));
        self
    }

    /// `alias CNAME target`.
    pub fn cname(mut self, alias: &str, target: &str) -> Self {
        self.records.push(Record::from_rdata(
            name(alias),
            60,
            RData::CNAME(CNAME(name(target))),
        ));
        self
    }

    /// Every query for `owner` is answered SERVFAIL, whatever records it has.
    pub fn servfail(mut self, owner: &str) -> Self {
        self.servfail.push(LowerName::from(name(owner)));
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
        let mut server = Server::new(Handler {
            catalog,
            servfail: self.servfail,
        });
        // UDP and TCP on the same port: the OS picks a free UDP port, and TCP may find that
        // number taken (by another test's client connection), so pick again, a bounded number
        // of times.
        let mut bound = None;
        for _ in 0..50 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                bound = Some((udp, tcp, addr));
                break;
            }
        }
        let (udp, tcp, addr) = bound.expect("a port free for both UDP and TCP");
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        TestDns {
            addr,
            _server: server,
        }
    }
}

/// The zone, with SERVFAIL for the names told to fail.
pub struct Handler {
    catalog: Catalog,
    servfail: Vec<LowerName>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let failing = request
            .request_info()
            .is_ok_and(|info| self.servfail.contains(info.query.name()));
        if !failing {
            return self
                .catalog
                .handle_request::<R, T>(request, response_handle)
                .await;
        }
        let response = MessageResponseBuilder::from_message_request(request)
            .error_msg(&request.metadata, ResponseCode::ServFail);
        response_handle.send_response(response).await.unwrap()
    }
}
