//! A mapping held on the router, per protocol: asked for (PCP or NAT-PMP through
//! `crab_nat`, UPnP-IGD through `igd-next`), renewed at half its lease, and removed.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    ipv4, local_ip_towards, renew_at, whole_secs, Mapping, PortMapError, Protocol, DESCRIPTION,
    GATEWAY_TIMING, SILENCE_TIMEOUT,
};

type UpnpGateway = igd_next::aio::Gateway<igd_next::aio::tokio::Tokio>;

/// What renewing and removing a mapping needs, per protocol.
pub(super) enum Handle {
    /// PCP or NAT-PMP, as `crab_nat` keeps it.
    Gateway(crab_nat::PortMapping),
    /// UPnP: the device and our lease request, repeated to renew.
    Upnp(Box<UpnpGateway>),
}

/// A mapping we hold on the router.
pub(super) struct Lease {
    pub(super) mapping: Mapping,
    pub(super) handle: Handle,
    /// When to renew; `None` for a permanent mapping.
    pub(super) renew_at: Option<Instant>,
}

impl Lease {
    /// Asks the renewal; on success the mapping may have a new lease (or even a new port,
    /// after a router restart).
    pub(super) async fn renew(&mut self, lease: Duration) -> Result<(), PortMapError> {
        match &mut self.handle {
            Handle::Gateway(m) => {
                m.renew().await?;
                self.mapping.external.set_port(m.external_port().get());
                self.mapping.lease = Duration::from_secs(m.lifetime().into());
            }
            Handle::Upnp(gw) => {
                gw.add_port(
                    igd_next::PortMappingProtocol::UDP,
                    self.mapping.external.port(),
                    self.mapping.internal.into(),
                    whole_secs(lease),
                    DESCRIPTION,
                )
                .await
                .map_err(igd_next::Error::from)?;
            }
        }
        self.renew_at = renew_at(self.mapping.lease);
        Ok(())
    }

    /// Deletes the mapping on the router.
    pub(super) async fn remove(self) -> Result<(), PortMapError> {
        match self.handle {
            Handle::Gateway(m) => m.try_drop().await.map_err(|(e, _)| e.into()),
            Handle::Upnp(gw) => gw
                .remove_port(
                    igd_next::PortMappingProtocol::UDP,
                    self.mapping.external.port(),
                )
                .await
                .map_err(|e| igd_next::Error::from(e).into()),
        }
    }
}

/// PCP, falling back to NAT-PMP when the router speaks only that (one exchange more).
pub(super) async fn via_gateway(
    gateway: Ipv4Addr,
    bound: Ipv4Addr,
    port: NonZeroU16,
    lease: Duration,
) -> Result<Lease, PortMapError> {
    let client = local_ip_towards(bound, gateway.into())?;
    let options = crab_nat::PortMappingOptions {
        // The same port outside as inside, as a hand-forwarded port usually is.
        external_port: Some(port),
        lifetime_seconds: Some(whole_secs(lease)),
        timeout_config: Some(GATEWAY_TIMING),
    };
    let m = crab_nat::PortMapping::new(
        gateway.into(),
        client.into(),
        crab_nat::InternetProtocol::Udp,
        port,
        options,
    )
    .await?;
    let (protocol, external_ip) = match m.mapping_type() {
        crab_nat::PortMappingType::Pcp { external_ip, .. } => (Protocol::Pcp, ipv4(external_ip)),
        // A NAT-PMP mapping answer carries no address: ask for it separately.
        crab_nat::PortMappingType::NatPmp => (
            Protocol::NatPmp,
            crab_nat::natpmp::external_address(gateway.into(), Some(GATEWAY_TIMING))
                .await
                .map_err(PortMapError::from),
        ),
    };
    let external_ip = match external_ip {
        Ok(ip) => ip,
        Err(e) => {
            // Useless without its address; do not leave it on the router.
            let _ = m.try_drop().await;
            return Err(e);
        }
    };
    let granted = Duration::from_secs(m.lifetime().into());
    Ok(Lease {
        mapping: Mapping {
            protocol,
            external: SocketAddrV4::new(external_ip, m.external_port().get()),
            internal: SocketAddrV4::new(client, port.get()),
            lease: granted,
        },
        handle: Handle::Gateway(m),
        renew_at: renew_at(granted),
    })
}

/// UPnP: find the router by SSDP multicast, then `AddPortMapping`, unless another protocol
/// has `won` by then (no need to make the router change anything twice).
pub(super) async fn via_upnp(
    bound: Ipv4Addr,
    port: NonZeroU16,
    lease: Duration,
    won: Arc<AtomicBool>,
    heard: impl FnOnce(),
) -> Result<Lease, PortMapError> {
    let mut options = igd_next::SearchOptions::default();
    options.bind_addr = SocketAddr::new(bound.into(), 0);
    options.timeout = Some(SILENCE_TIMEOUT);
    options.single_search_timeout = Some(SILENCE_TIMEOUT);
    options.gateway_ip_version = igd_next::GatewayIpVersion::V4;
    let gateway = igd_next::aio::tokio::search_gateway(options)
        .await
        .map_err(igd_next::Error::from)?;
    heard();
    let local = local_ip_towards(bound, gateway.addr.ip())?;
    let internal = SocketAddrV4::new(local, port.get());
    // Asked before mapping anything, so a router without a usable address leaves nothing behind.
    let external_ip = ipv4(
        gateway
            .get_external_ip()
            .await
            .map_err(igd_next::Error::from)?,
    )?;
    if external_ip.is_unspecified() {
        return Err(PortMapError::NotIpv4(external_ip.into()));
    }
    if won.load(Ordering::Acquire) {
        return Err(PortMapError::NotNeeded);
    }
    let udp = igd_next::PortMappingProtocol::UDP;
    let mut granted = lease;
    let mut external_port = port.get();
    match gateway
        .add_port(
            udp,
            external_port,
            internal.into(),
            whole_secs(lease),
            DESCRIPTION,
        )
        .await
    {
        Ok(()) => {}
        // IGDv1 routers may only do permanent mappings; we remove it at exit all the same.
        Err(igd_next::AddPortError::OnlyPermanentLeasesSupported) => {
            granted = Duration::ZERO;
            gateway
                .add_port(udp, external_port, internal.into(), 0, DESCRIPTION)
                .await
                .map_err(igd_next::Error::from)?;
        }
        // Someone else has that port outside: any other will do.
        Err(igd_next::AddPortError::PortInUse) => {
            external_port = gateway
                .add_any_port(udp, internal.into(), whole_secs(lease), DESCRIPTION)
                .await
                .map_err(igd_next::Error::from)?;
        }
        Err(e) => return Err(igd_next::Error::from(e).into()),
    }
    Ok(Lease {
        mapping: Mapping {
            protocol: Protocol::Upnp,
            external: SocketAddrV4::new(external_ip, external_port),
            internal,
            lease: granted,
        },
        handle: Handle::Upnp(Box::new(gateway)),
        renew_at: renew_at(granted),
    })
}
